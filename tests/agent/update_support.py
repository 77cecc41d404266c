"""Shared parts of the update tests (no tests here): a server with a real TUF repository, releases.

* :class:`UpdateWorld` — the linkage server under gunicorn with TLS
  (:class:`tests.agent.conftest.AgentServer`) whose update repository is made
  by the server's own key ceremony (``server.update_keys.init_repository``)
  and publishing (``UpdateRepository.publish``); the offline keys in a folder
  of the test's own.  Plus one enrolled terminal (:class:`Site`) with its
  ``agent.toml`` (``[update]`` pointing at the test's folders) and an install
  root holding release 0.1.0 as ``current``.
* :func:`fake_bundle` — a release bundle in the contract's shape whose
  ``bin/renkei-agent`` runs *this* source tree's agent under another version
  (``appliance.agent.__version__`` set before the CLI is imported), so the
  self-test is real code making a real signed ping; ``broken=True`` gives one
  whose ``renkei-agent`` fails to start.
* :func:`run_update` — ``renkei-agent update --json`` as a child process
  (the crash tests SIGKILL it), returning the exit status and the report.

This module is named ``test_update_*`` only to stay inside the test files the
update work may add; it holds no tests.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.agent.install import PREFIX_ROOT, Releases
from server.update_keys import init_repository, rotate_keys
from server.update_repo import UpdateRepository, load_signer
from tests.agent.conftest import AgentServer
from tests.agent.helpers import Site
from tests.server.conftest import API_A

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]

__all__ = [
    "UpdateWorld",
    "fake_bundle",
    "release_tree_ok",
    "run_update",
]


# --- bundles -----------------------------------------------------------------------------------

_SCRIPT = """#!{prefix}/bin/python
# A test release: this source tree's agent, calling itself {version}.
import sys

sys.path[:0] = [{repo!r}, {site!r}]
{broken}import appliance.agent

appliance.agent.__version__ = {version!r}
from appliance.agent.cli import main

sys.exit(main())
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, **info: Any) -> None:
    member = tarfile.TarInfo(name)
    member.mtime = 1_700_000_000
    for key, value in info.items():
        setattr(member, key, value)
    if data is None:
        tar.addfile(member)
    else:
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))


def fake_bundle(
    folder: Path,
    version: str,
    *,
    broken: bool = False,
    extra: list[tuple[str, dict[str, Any], bytes | None]] | None = None,
    release_json: dict[str, Any] | None = None,
) -> Path:
    """``folder/renkei-agent-<version>.tar.gz`` in the contract's shape (see the module doc)."""
    prefix = f"{PREFIX_ROOT}/{version}"
    script = _SCRIPT.format(
        prefix=prefix,
        version=version,
        repo=str(REPO),
        site=SITE_PACKAGES,
        broken="raise ImportError('this release is broken on purpose')\n" if broken else "",
    )
    document = release_json or {"format": 1, "version": version, "python": "3.11", "prefix": prefix}
    path = Path(folder) / f"renkei-agent-{version}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "release", type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "release/release.json", json.dumps(document).encode(), mode=0o644)
        _add(tar, "release/bin", type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "release/bin/python", type=tarfile.SYMTYPE, linkname=PYTHON)
        _add(tar, "release/bin/python3", type=tarfile.SYMTYPE, linkname="python")
        _add(tar, "release/bin/renkei-agent", script.encode(), mode=0o755)
        _add(tar, "release/lib", type=tarfile.DIRTYPE, mode=0o755)
        for index in range(6):  # some bulk, so a cut mid-unpack leaves a partial tree
            _add(tar, f"release/lib/module{index}.py", b"# filler\n" * 2000, mode=0o644)
        for name, info, data in extra or []:
            _add(tar, name, data, **info)
    return path


def release_tree_ok(releases: Releases, version: str) -> str:
    """Run ``current``'s ``renkei-agent --version``; assert it names ``version``; return it."""
    assert releases.current_version() == version
    result = subprocess.run(
        Releases.command(releases.current, "--version"),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == version, result.stdout
    return result.stdout


# --- the world ---------------------------------------------------------------------------------


@dataclass
class Terminal:
    site: Site
    config: Path
    releases: Releases
    state_dir: Path
    trusted_root: Path


class UpdateWorld:
    """The server with an update repository, and ways to publish, rotate and tamper (server side)."""

    def __init__(self, root: Path, *, now: datetime | None = None):
        self.root = root
        self.now = now or datetime.now(UTC)
        self.server = AgentServer(root / "server", batches={API_A: 1})
        self.data_dir = self.server.config.data_dir
        self.offline = root / "offline-keys"
        self.repo = UpdateRepository.for_data_dir(self.data_dir)
        result = init_repository(
            self.repo, data_dir=self.data_dir, offline_dir=self.offline, now=self.now
        )
        #: What the image ships: version 1 of the root, copied out of the ceremony's output.
        self.root_v1 = root / "update-root.json"
        self.root_v1.write_bytes(Path(result.root_path).read_bytes())
        self.bundles = root / "bundles"
        self.sites: list[Site] = []

    def start(self) -> UpdateWorld:
        self.server.start()
        return self

    def close(self) -> None:
        for site in self.sites:
            site.close()
        self.server.close()

    # -- server side ----------------------------------------------------------------------------

    def offline_key(self, role: str) -> Path:
        found = sorted(self.offline.glob(f"{role}-*.pem"), key=lambda p: p.stat().st_mtime_ns)
        assert found, f"no {role} key in {self.offline}"
        return found[-1]

    def publish(self, bundle: Path) -> dict[str, Any]:
        signer = load_signer(self.offline_key("targets"))
        return self.repo.publish(bundle, signer, now=datetime.now(UTC))

    def publish_fake(self, version: str, **options: Any) -> Path:
        bundle = fake_bundle(self.bundles / version, version, **options)
        self.publish(bundle)
        return bundle

    def metadata(self, name: str) -> Path:
        return self.repo.files.metadata_dir / name

    def target_file(self, version: str) -> Path:
        (found,) = self.repo.files.targets_dir.glob(f"*.renkei-agent-{version}.tar.gz")
        return found

    def resign_timestamp(self, now: datetime) -> None:
        self.repo.refresh_timestamp(now=now)

    def rotate(self, roles: list[str]) -> None:
        """Rotate ``roles`` with the current root key (the targets key passed along when rotated)."""
        old_targets = load_signer(self.offline_key("targets"))
        time.sleep(0.01)  # new key files sort after the old ones by mtime
        rotate_keys(
            self.repo,
            roles,
            [load_signer(self.offline_key("root"))],
            data_dir=self.data_dir,
            now=datetime.now(UTC),
            offline_dir=self.offline,
            old_targets_signer=old_targets,
        )

    # -- the terminal ---------------------------------------------------------------------------

    def terminal(
        self,
        name: str,
        *,
        ntp: str,
        dns: str,
        version: str = "0.1.0",
        trusted_root: Path | None = None,
    ) -> Terminal:
        """An enrolled terminal whose install root holds ``version`` as current."""
        home = self.root / name
        site = Site(self.server, home / "site", API_A)
        self.sites.append(site)
        state_dir = home / "update-state"
        releases = Releases(home / "opt")
        releases.unpack(fake_bundle(home / "image", version), version)
        releases.switch(version)
        config = site.write_config(
            home / "agent.toml", dns_servers=[dns], ntp_servers=[ntp], settle_seconds=0.0
        )
        trusted = trusted_root or self.root_v1
        with config.open("a", encoding="utf-8") as handle:
            handle.write(
                "\n[update]\n"
                f"install_root = {json.dumps(str(releases.root))}\n"
                f"state_dir = {json.dumps(str(state_dir))}\n"
                f"trusted_root = {json.dumps(str(trusted))}\n"
                "self_test_timeout = 120.0\n"
            )
        return Terminal(site, config, releases, state_dir, trusted)


def run_update(
    terminal: Terminal, *args: str, crash: str | None = None, timeout: float = 300
) -> tuple[int, dict[str, Any] | None, str]:
    """``renkei-agent update --json --config <terminal's>``: (exit status, report or None, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
    if crash:
        env["RENKEI_UPDATE_CRASH_AT"] = crash
    result = subprocess.run(
        [sys.executable, "-m", "appliance.agent.cli", "update", *args, "--json"]
        + ["--config", str(terminal.config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    try:
        report = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        report = None
    return result.returncode, report, result.stderr


def expired(days: int = 2) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)
