"""``renkei-agent update``: find, verify, install and self-test a newer agent release, or change nothing.

The steps of one run (:func:`run_update`), and why each is there:

1. **Lock, then recover.**  One update at a time (``update_state.lock``).
   Leftovers of a cut run are removed (``Releases.recover``); an install that
   was under way (``pending`` in the state) is undone: if ``current`` already
   names the new release, it is switched back to the one before — the
   install is then done again from step 5, so a run cut anywhere is finished
   by the next one, and ``current`` only ever names a complete release that
   passed its self-test.
2. **The clock.**  TUF metadata expires (the timestamp after a day): with a
   wrong clock, an expired (frozen) repository can look fresh, or a fresh
   one expired.  The run is refused unless the NTP check
   (``preflight.check_clock``) found the clock within ``clock_refuse``;
   with no NTP servers configured it is refused too (exit 3).
3. **TUF refresh** (python-tuf's ``ngclient``, spec 1.0) over the signed
   transport (``update_fetch.py``): root rotation, then timestamp, snapshot
   and targets, each checked for signatures, versions (no rollback) and
   expiry (no freeze).  The trust anchor is the newer of the root shipped in
   the image (``update.trusted_root``) and the one ngclient keeps in the
   state folder.
4. **Choose**: the highest version in the verified targets that is newer
   than ``current`` (never a downgrade, nor the same version again) and not
   marked bad.  ``--check`` stops here.
5. **Download and verify** (ngclient checks length and hashes), **unpack**
   side by side (``install.py``: checked members, fsync, rename).
6. **Self-test the new release before it is current**: its own
   ``renkei-agent status --json`` and ``renkei-agent update self-test`` (a
   signed ping made by the new code, which the server answers with the
   version it saw).  A failure marks the version bad, removes it, and
   changes nothing else (exit 5).
7. **Switch** ``current`` in one rename, then check through it
   (``current``'s ``renkei-agent --version``); if that fails, switch back,
   mark the version bad (exit 5).
8. **Prune**: keep the new and the previous release, remove older ones.

Each step boundary is a crash checkpoint (:data:`CHECKPOINTS`), as in
``sync.py``: ``RENKEI_UPDATE_CRASH_AT=<checkpoint>[:<n>]`` SIGKILLs the
process the n-th time it gets there (tests only).

Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater

from . import __version__
from .config import AgentConfig
from .errors import AgentError, BusyError, ConfigError
from .install import InstallError, Limits, Releases
from .preflight import Check
from .transport import HttpsTransport, TransportError
from .update_selftest import run_self_test, version_through
from .update_state import MAX_ATTEMPTS, StateStore, UpdateState, lock
from .update_tuf import classify, open_repository, releases_offered
from .update_version import Version

__all__ = [
    "CHECKPOINTS",
    "CRASH_ENV",
    "EXIT_AVAILABLE",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_REJECTED",
    "EXIT_ROLLED_BACK",
    "UpdateReport",
    "run_update",
]

_log = logging.getLogger("renkei.agent.update")

EXIT_FAILED = 1
EXIT_ROLLED_BACK = 5
EXIT_REJECTED = 6
EXIT_AVAILABLE = 100
#: status → exit code (2 configuration and 4 busy come from the command line).
EXIT_CODES = {
    "up_to_date": 0,
    "updated": 0,
    "available": EXIT_AVAILABLE,
    "failed": EXIT_FAILED,
    "refused": 3,
    "rolled_back": EXIT_ROLLED_BACK,
    "rejected": EXIT_REJECTED,
}

CRASH_ENV = "RENKEI_UPDATE_CRASH_AT"
CHECKPOINTS: tuple[str, ...] = (
    "update.recovered",  # leftovers removed, an interrupted install undone
    "update.downloaded",  # the verified bundle is in the state folder, nothing unpacked
    "update.unpack",  # after each member written into releases/.<v>.partial
    "update.unpacked",  # releases/<v> complete and renamed into place, not yet tested
    "update.testing",  # state: pending/testing written, the self-test not yet run
    "update.tested",  # the self-test passed, current not yet switched
    "update.switched",  # current names the new release; the state still says pending
    "update.done",  # the state says installed; older releases not yet pruned
)

_JA = {
    "failed": "更新を確認できませんでした。次回の自動実行で再試行します。",
    "rejected": (
        "更新データの検証に失敗しました（改ざん・巻き戻し・期限切れの可能性）。"
        "更新は行っていません。運用担当に連絡してください。"
    ),
}


class _Crash:
    """SIGKILL this process at the n-th arrival at a checkpoint (``RENKEI_UPDATE_CRASH_AT``)."""

    def __init__(self, spec: str | None):
        self.step, self.target, self.count = None, 0, 0
        if not spec:
            return
        step, _, number = spec.partition(":")
        if step not in CHECKPOINTS or (number and not number.isdigit()):
            raise ConfigError(
                f"{CRASH_ENV}: {spec!r} is not <checkpoint>[:<n>]; known: {', '.join(CHECKPOINTS)}",
                key=CRASH_ENV,
            )
        self.step, self.target = step, int(number or 1)

    def __call__(self, step: str) -> None:
        if step == self.step:
            self.count += 1
            if self.count == self.target:
                os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class UpdateReport:
    """What one run did; ``status`` is a key of :data:`EXIT_CODES`."""

    status: str = "up_to_date"
    current: str | None = None
    available: str | None = None
    installed: str | None = None
    previous: str | None = None
    code: str | None = None
    message: str = ""
    message_ja: str = ""
    recovered: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    self_test: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def stop(self, status: str, code: str, message: str, message_ja: str | None = None) -> None:
        self.status, self.code, self.message = status, code, message
        self.message_ja = message_ja or _JA.get(status, "")
        level = {"rolled_back": logging.ERROR, "rejected": logging.ERROR}.get(status)
        level = level or (logging.WARNING if status in ("failed", "refused") else logging.INFO)
        _log.log(level, "update %s: %s: %s", status, code, message)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "current": self.current,
            "available": self.available,
            "installed": self.installed,
            "previous": self.previous,
            "code": self.code,
            "message": self.message,
            "message_ja": self.message_ja,
            "recovered": self.recovered,
            "pruned": self.pruned,
            "ignored": self.ignored,
            "checks": [check.to_json() for check in self.checks],
            "self_test": self.self_test,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the run ------------------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        config: AgentConfig,
        config_path: Path,
        *,
        open_transport: Callable[[], HttpsTransport],
        clock_check: Callable[[], Check],
        check_only: bool,
        crash: Callable[[str], None],
    ):
        self.config = config
        self.config_path = config_path
        self.open_transport = open_transport
        self.clock_check = clock_check
        self.check_only = check_only
        self.crash = crash
        self.releases = Releases(config.update.install_root)
        self.store = StateStore(config.update.state_dir)
        self.report = UpdateReport()
        self.state = UpdateState()

    def save(self) -> None:
        self.store.save(self.state)

    def recover(self) -> None:
        report, state, releases = self.report, self.state, self.releases
        report.recovered = releases.recover()
        pending = state.pending
        if pending:
            version, previous = str(pending.get("version")), pending.get("previous")
            if pending.get("phase") == "switched" and releases.current_version() == version:
                if previous and releases.is_complete(previous):
                    releases.switch(previous)
                    report.recovered.append(f"current back to {previous} from {version}")
            _log.warning("an install of %s was cut short (%s); undone", version, pending)
            state.pending = None
            if state.attempts.get(version, 0) >= MAX_ATTEMPTS:
                state.mark_bad(
                    version,
                    "update.interrupted",
                    f"its install was cut short {MAX_ATTEMPTS} times",
                    _now(),
                )
                self._remove(version)
            self.save()
        self.crash("update.recovered")

    def _remove(self, version: str) -> None:
        if version != self.releases.current_version():
            self.releases.remove(version)

    def _fail_release(self, version: str, code: str, message: str, previous: str | None) -> None:
        self.state.mark_bad(version, code, message, _now())
        self.state.pending = None
        self.state.record({"at": _now(), "version": version, "result": "bad", "code": code})
        self.save()
        self._remove(version)
        shutil.rmtree(self.config.update.state_dir / "tuf" / "download", ignore_errors=True)
        self.report.stop(
            "rolled_back",
            code,
            f"release {version} was not installed and is marked bad: {message}",
            f"新しいバージョン {version} は検査に失敗したため使用しません"
            f"（現在のバージョン {previous or '-'} のままです）。運用担当に連絡してください。",
        )

    def run(self) -> UpdateReport:
        report, config = self.report, self.config
        folder = config.update.state_dir
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with lock(folder):
            self.state = self.store.load()
            self.recover()
            current = self.releases.current_version()
            report.current = current or __version__
            check = self.clock_check()
            report.checks.append(check)
            if check.status == "fail" or not config.ntp_servers:
                why = check.detail if config.ntp_servers else "no NTP servers are configured"
                report.stop(
                    "refused",
                    "update.clock",
                    f"the clock is not known to be right, so metadata expiry cannot be "
                    f"checked: {why}",
                    check.hint or "NTPサーバが設定されていないため、更新を行いません。",
                )
                return report
            try:
                running = Version.parse(report.current)
            except ValueError as exc:
                raise InstallError(
                    f"{self.releases.current}: {exc}", code="install.layout"
                ) from None
            transport = self.open_transport()
            try:
                self._update(transport, running)
            finally:
                transport.close()
        return report

    def _update(self, transport: HttpsTransport, running: Version) -> None:
        report, config, state = self.report, self.config, self.state
        try:
            repository = open_repository(config, transport)
            repository.refresh()
            offered = releases_offered(config.update.state_dir / "tuf" / "metadata", report.ignored)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            report.stop(*classify(exc))
            return
        newer = [v for v in offered if v > running and v.text not in state.bad]
        if not newer:
            report.stop("up_to_date", "update.none", f"no release newer than {running} to install")
            return
        chosen = max(newer)
        version, name = chosen.text, offered[chosen]
        report.available = version
        if self.check_only:
            report.stop("available", "update.available", f"release {version} can be installed")
            return
        if not self.releases.is_complete(version):
            if not self._download_and_unpack(repository, name, version):
                return
        self._test_and_switch(version, running.text)

    def _download_and_unpack(self, repository: Updater, name: str, version: str) -> bool:
        report, config = self.report, self.config
        try:
            info = repository.get_targetinfo(name)
            if info is None:
                raise tuf_errors.RepositoryError(f"{name} vanished from the targets")
            if info.length > config.update.max_bundle_bytes:
                self._fail_release(
                    version,
                    "bundle.too_large",
                    f"{info.length} bytes, more than update.max_bundle_bytes "
                    f"({config.update.max_bundle_bytes})",
                    report.current,
                )
                return False
            path = config.update.state_dir / "tuf" / "download" / name
            cached = repository.find_cached_target(info, str(path))
            if cached is None:
                _log.info("downloading %s (%d bytes)", name, info.length)
                repository.download_target(info, str(path))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            report.stop(*classify(exc))
            return False
        self.crash("update.downloaded")
        try:
            self.releases.unpack(
                path,
                version,
                limits=Limits(max_bytes=config.update.max_unpacked_bytes),
                progress=lambda count: self.crash("update.unpack"),
            )
        except InstallError as exc:
            if exc.code.startswith("bundle."):
                self._fail_release(version, exc.code, exc.message, report.current)
                return False
            raise
        self.crash("update.unpacked")
        return True

    def _test_and_switch(self, version: str, previous: str) -> None:
        report, state, releases = self.report, self.state, self.releases
        previous_installed = releases.current_version()
        state.pending = {"version": version, "previous": previous_installed, "phase": "testing"}
        state.attempts[version] = state.attempts.get(version, 0) + 1
        self.save()
        self.crash("update.testing")
        ok, report.self_test = run_self_test(
            releases.path(version), version, self.config, self.config_path
        )
        if not ok:
            failed = next(step for step in report.self_test if not step["ok"])
            self._fail_release(
                version,
                "update.self_test",
                f"its self-test failed: {failed['command']}: {failed.get('error')}",
                previous,
            )
            return
        self.crash("update.tested")
        state.pending = {**state.pending, "phase": "switched"}
        self.save()
        releases.switch(version)
        self.crash("update.switched")
        seen = version_through(releases, self.config.update.self_test_timeout)
        if seen != version:
            if previous_installed and releases.is_complete(previous_installed):
                releases.switch(previous_installed)
            self._fail_release(
                version,
                "update.switch_check",
                f"after the switch, current/bin/renkei-agent --version said {seen!r}",
                previous,
            )
            return
        state.pending = None
        state.attempts.pop(version, None)
        state.record({"at": _now(), "version": version, "result": "installed", "from": previous})
        self.save()
        self.crash("update.done")
        report.installed, report.previous = version, previous_installed
        report.current = version
        report.pruned = releases.prune({version, previous_installed} - {None})  # type: ignore[arg-type]
        shutil.rmtree(self.config.update.state_dir / "tuf" / "download", ignore_errors=True)
        report.stop(
            "updated",
            "update.installed",
            f"renkei-agent {previous} → {version}",
            f"renkei-agent を {previous} から {version} に更新しました。",
        )


def run_update(
    config: AgentConfig,
    config_path: Path,
    *,
    open_transport: Callable[[], HttpsTransport],
    clock_check: Callable[[], Check],
    check_only: bool = False,
    crash: Callable[[str], None] | None = None,
) -> UpdateReport:
    """One update run (see the module docstring); returns its report.

    ``open_transport()`` gives the signed transport (called only once the
    clock is known good); ``clock_check()`` the NTP check.  Raises
    :class:`~.errors.BusyError` when another run holds the lock,
    :class:`ConfigError` for a bad trusted root or crash spec; a failure of
    the network, the repository or a release is in the report instead.
    ``OSError`` (disk full, permissions) is raised as it is.
    """
    hook = crash or _Crash(os.environ.get(CRASH_ENV))
    run = _Run(
        config,
        config_path,
        open_transport=open_transport,
        clock_check=clock_check,
        check_only=check_only,
        crash=hook,
    )
    try:
        return run.run()
    except (ConfigError, BusyError):
        raise
    except (TransportError, AgentError) as exc:
        run.report.stop("failed", exc.code, exc.message)
        return run.report
