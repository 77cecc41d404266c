"""One run of the agent: preflight, download (spec §5.1), upload (spec §5.2), record, notify.

:func:`run_sync` is the whole cycle.  It is safe to cut at any line — by a
power failure, ``kill -9`` or a full disk — because every step is one of:

* a transaction in the local queue (``queue.py``), which either happened or not;
* an atomic file placement (a temporary name in the target folder, fsync,
  rename), which leaves either no file or a whole one;
* a request the server treats idempotently (acknowledging a batch again,
  sending the same file bytes again: same receipt, nothing stored twice).

and every step first looks at what is already done, so the next run finishes
what a cut one began and repeats nothing visible.  The phases live in
``download.py`` and ``upload.py`` (with ``outbox.py``, which takes files in
and files them in sent/ or rejected/); this module holds what they share —
the run's report, the context, the crash checkpoints — and the run itself.

**Crash checkpoints.**  Each step boundary is a named checkpoint
(:data:`CHECKPOINTS`).  When the environment variable ``RENKEI_AGENT_CRASH_AT``
is ``<checkpoint>[:<n>]``, the process kills itself with SIGKILL the n-th time
(default 1st) it reaches that checkpoint — nothing is flushed or cleaned up,
exactly like a power cut as far as the process is concerned.  The crash
tests use it to cut a real ``renkei-agent sync`` at every boundary.  Unset
(always, in production) it costs one dictionary lookup per checkpoint.

**Mail.**  When runs keep failing (status ``failed`` or ``refused``) for
longer than ``retry.give_up_after`` since the first failed run after the last
successful one, ``notify(subject, body)`` is called once for that incident
(the run that sent it records ``"notified": true``; a later success ends the
incident).  A failing mail relay is logged and reported as a warning; it
never fails the run.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import signal
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common import statement
from common.atomicwrite import fsync_dir, is_temporary

from . import download as download_phase
from . import upload as upload_phase
from .config import AgentConfig
from .errors import AgentError, ConfigError
from .folders import Folders, printable_name
from .preflight import Check, check_clock, check_dns, dns_resolve, ntp_offset
from .queue import Queue, RunRow
from .reports import JST
from .transport import Transport

__all__ = [
    "CHECKPOINTS",
    "CRASH_ENV",
    "Context",
    "CrashHook",
    "RunProblem",
    "RunReport",
    "failure_notice",
    "make_preflight",
    "run_sync",
    "sweep_temporaries",
]

_log = logging.getLogger("renkei.agent")

CRASH_ENV = "RENKEI_AGENT_CRASH_AT"

#: Every place a run can be cut by the crash hook, in the order a run reaches them.
CHECKPOINTS: tuple[str, ...] = (
    "run.started",  # the run is recorded "running"
    # download, per batch
    "download.recorded",  # queue: downloading (manifest verified), nothing fetched yet
    "download.write",  # in the middle of writing a received block to partial/
    "download.fetched",  # partial/ complete and fsynced, not yet verified
    "download.quarantined",  # bad batch copied to quarantine/ with its report, queue not yet told
    "download.placed_file",  # the file is in the inbox, the queue does not know yet
    "download.placed",  # queue: placed; not acknowledged
    "download.acked",  # the server has the acknowledgement, the queue does not know yet
    "download.done",  # queue: acknowledged
    # upload, per file
    "upload.rejected_report",  # a refused file's report is in rejected/, the file not yet
    "upload.spooled",  # the file moved from outbox/ to the spool, not yet queued
    "upload.queued",  # queue: queued
    "upload.sending",  # queue: sending; the request not yet sent
    "upload.sent",  # the server answered with a verified receipt, the queue does not know yet
    "upload.done",  # queue: done; the original still in the spool
    "upload.sidecars",  # receipt (and report) in sent/ or rejected/, the original not yet
    "upload.filed",  # the original is in sent/ or rejected/
    "run.finished",  # the run is about to be recorded finished
)

#: Statuses of a run, as recorded in the queue's ``runs`` table.
#: ok: nothing went wrong; partial: a file or batch was refused (staff or help desk act),
#: but everything that could be done was; failed: something could not be done (server
#: unreachable, refused by it, disk full …) and is tried again next run; refused: the
#: preflight stopped the run before anything was done.
STATUSES = ("ok", "partial", "failed", "refused")
INCIDENT_STATUSES = frozenset({"failed", "refused"})


class CrashHook:
    """SIGKILL this process at the n-th arrival at a named checkpoint (tests only; see above)."""

    def __init__(self, spec: str | None):
        self.step: str | None = None
        self.count = 0
        self.target = 0
        if not spec:
            return
        step, _, number = spec.partition(":")
        if step not in CHECKPOINTS:
            raise ConfigError(
                f"{CRASH_ENV}: unknown checkpoint {step!r}; known: {', '.join(CHECKPOINTS)}",
                key=CRASH_ENV,
            )
        if number and (not number.isdigit() or int(number) < 1):
            raise ConfigError(f"{CRASH_ENV}: {number!r} is not a count from 1", key=CRASH_ENV)
        self.step = step
        self.target = int(number or 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CrashHook:
        return cls((os.environ if env is None else env).get(CRASH_ENV))

    def __call__(self, step: str) -> None:
        if step != self.step:
            return
        self.count += 1
        if self.count == self.target:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RunProblem:
    """Something a person should know about a run.

    ``failure``: True when something could not be done and will be tried
    again (it makes the run ``failed`` and counts toward the mail); False
    when input was refused — a file to rejected/, a batch quarantined, a
    gap — which makes the run ``partial``.  ``subject`` is the batch id or
    file name ("" for the run as a whole).
    """

    code: str
    subject: str
    message: str
    message_ja: str = ""
    failure: bool = True

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "subject": self.subject,
            "message": self.message,
            "message_ja": self.message_ja,
            "failure": self.failure,
        }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


#: Outcomes counted in :meth:`RunReport.counts`.
BATCH_OUTCOMES = ("placed", "acknowledged", "quarantined", "failed")
FILE_OUTCOMES = (
    "queued",  # accepted from the outbox into the spool
    "rejected",  # refused by the local check: in rejected/ with a report, not sent
    "sent",  # receipted by the server: in sent/ with its receipt
    "refused",  # refused by the server as a whole (file_error, too large): in rejected/
    "duplicate",  # the same bytes as a file queued before: sent once, filed with its receipt
    "failed",  # this attempt failed; tried again at next_try
    "given_up",  # failed past the retry window; waits for `sync --retry-failed`
    "deferred",  # not attempted: the server could not be reached for an earlier file
)


@dataclass
class RunReport:
    """What one run did.  ``batches`` and ``files`` list events in the order they happened."""

    kind: str
    started_at: float
    finished_at: float | None = None
    refused: bool = False
    checks: list[Check] = field(default_factory=list)
    batches: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    problems: list[RunProblem] = field(default_factory=list)
    warnings: list[RunProblem] = field(default_factory=list)
    notified: bool = False
    incident_since: float | None = None
    run_id: int | None = None

    # -- recording ---------------------------------------------------------------------------

    def batch(self, batch_id: str, outcome: str, **info: object) -> None:
        self.batches.append({"batch_id": batch_id, "outcome": outcome, **info})

    def file(self, name: str, outcome: str, **info: object) -> None:
        self.files.append({"name": printable_name(name), "outcome": outcome, **info})

    def problem(
        self, code: str, subject: str, message: str, message_ja: str = "", *, failure: bool = True
    ) -> None:
        self.problems.append(
            RunProblem(code, printable_name(subject), message, message_ja, failure)
        )

    def warning(self, code: str, subject: str, message: str, message_ja: str = "") -> None:
        self.warnings.append(RunProblem(code, subject, message, message_ja, False))

    # -- verdicts ----------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.refused:
            return "refused"
        if any(problem.failure for problem in self.problems):
            return "failed"
        if self.problems:
            return "partial"
        return "ok"

    @property
    def exit_code(self) -> int:
        """0 all good; 1 something was refused or failed but the run completed; 3 refused."""
        if self.refused:
            return 3
        return 1 if self.problems else 0

    def counts(self) -> dict[str, dict[str, int]]:
        downloads = dict.fromkeys(BATCH_OUTCOMES, 0)
        for event in self.batches:
            downloads[event["outcome"]] = downloads.get(event["outcome"], 0) + 1
        uploads = dict.fromkeys(FILE_OUTCOMES, 0)
        for event in self.files:
            uploads[event["outcome"]] = uploads.get(event["outcome"], 0) + 1
        return {"downloads": downloads, "uploads": uploads}

    def to_json(self) -> dict:
        counts = self.counts()
        return {
            "kind": self.kind,
            "status": self.status,
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "checks": [check.to_json() for check in self.checks],
            "downloads": counts["downloads"],
            "uploads": counts["uploads"],
            "batches": self.batches,
            "files": self.files,
            "gaps": self.gaps,
            "problems": [problem.to_json() for problem in self.problems],
            "warnings": [warning.to_json() for warning in self.warnings],
            "notified": self.notified,
            "incident_since": _iso(self.incident_since),
        }


@dataclass
class Context:
    """Everything a phase needs; built by :func:`run_sync`, one per run."""

    config: AgentConfig
    transport: Transport
    queue: Queue
    folders: Folders
    clock: Callable[[], float]
    report: RunReport
    server_key: Ed25519PublicKey
    checkpoint: Callable[[str], None]
    progress: Callable[[str], None] | None = None

    def say(self, line: str) -> None:
        _log.info("%s", line)
        if self.progress is not None:
            self.progress(line)


# --- preflight ---------------------------------------------------------------------------------


def make_preflight(config: AgentConfig, *, timeout: float = 1.5) -> Callable[[], list[Check]]:
    """The real checks: the clock against ``ntp_servers``, the server's name against ``dns_servers``.

    ``timeout`` is per try; each query is tried :data:`~appliance.agent.preflight.ATTEMPTS`
    times, so a silent server costs at most ``ATTEMPTS × timeout`` seconds.

    No DNS check when ``server_url`` names an IP address.  The thresholds are used as they
    are: :func:`~appliance.agent.config.load_config` guarantees ``clock_warn < clock_refuse``.
    """
    host = urllib.parse.urlsplit(config.server_url).hostname or ""

    def run() -> list[Check]:
        checks = [
            check_clock(
                config.ntp_servers,
                query=lambda server: ntp_offset(server, timeout=timeout),
                warn=config.clock_warn,
                refuse=config.clock_refuse,
            )
        ]
        if not _is_ip(host):
            found, _addresses = check_dns(
                host,
                config.dns_servers,
                resolve=lambda name, server: dns_resolve(name, server, timeout=timeout),
            )
            checks.append(found)
        return checks

    return run


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: Checks whose failure stops the run: every request is signed with the clock.
REFUSING_CHECKS = frozenset({"clock"})


def _run_preflight(ctx: Context, preflight: Callable[[], Sequence[Check]]) -> None:
    report = ctx.report
    for check in preflight():
        report.checks.append(check)
        ctx.say(f"preflight: {check.name} {check.status}: {check.detail}")
        if check.status == "warn":
            report.warning(f"preflight.{check.name}", "", check.detail, check.hint)
        elif check.status == "fail":
            if check.name in REFUSING_CHECKS:
                report.refused = True
                report.problem(
                    f"preflight.{check.name}",
                    "",
                    f"the run was refused: {check.detail}",
                    check.hint,
                )
            else:
                report.problem(
                    f"preflight.{check.name}", "", check.detail, check.hint, failure=False
                )


# --- mail after an incident -----------------------------------------------------------------


def _incident(queue: Queue, run_id: int | None) -> tuple[float | None, bool]:
    """(start of the current run of failures before this run, whether it was mailed already).

    Walks back over earlier runs until one that was ``ok`` or ``partial``;
    runs cut short (still ``running``) say nothing either way.
    """
    since: float | None = None
    notified = False
    rows = queue.db.execute(
        "SELECT started_at, status, summary_json FROM runs WHERE run_id != ? "
        "ORDER BY started_at DESC, run_id DESC",
        [run_id if run_id is not None else -1],
    )
    for started_at, status, summary in rows:
        if status in ("ok", "partial"):
            break
        if status not in INCIDENT_STATUSES:
            continue
        since = started_at
        try:
            notified = notified or bool(json.loads(summary).get("notified"))
        except (ValueError, AttributeError):
            pass
    return since, notified


def _jst(moment: float) -> str:
    return datetime.fromtimestamp(moment, JST).strftime("%Y-%m-%d %H:%M")


def failure_notice(config: AgentConfig, report: RunReport, since: float) -> tuple[str, str]:
    """Subject and body (Japanese first, then English) of the mail after a long failure."""
    hours = max(0.0, (report.finished_at or report.started_at) - since) / 3600
    subject = (
        f"[renkei-agent {config.lasdec}] 連携処理が {int(hours)} 時間以上失敗しています"
        f" / sync failing since {_jst(since)} JST"
    )
    lines = [
        f"情報連携端末（団体コード {config.lasdec}、端末 {config.terminal_id}）の連携処理が、",
        f"{_jst(since)}（日本時間）から失敗し続けています。",
        "",
        "■ 最後の実行で起きたこと",
    ]
    for problem in report.problems:
        subject_text = f"{problem.subject}: " if problem.subject else ""
        lines.append(f"・{subject_text}{problem.message_ja or problem.message}")
    lines += [
        "",
        "■ 次にすること",
        "1. 端末で renkei-agent status を実行し、時刻・DNS・サーバへの接続の状態を確認してください。",
        "2. 原因を直したら renkei-agent sync --retry-failed で、送信できなかったファイルも含めて"
        "すぐに連携し直せます。",
        "3. 分からないときは、このメールを添えてヘルプデスクへ連絡してください。",
        "",
        "----",
        f"The terminal agent of {config.lasdec} (terminal {config.terminal_id}) has failed every "
        f"run since {_iso(since)}.",
        "Last run:",
    ]
    for problem in report.problems:
        subject_text = f"{problem.subject}: " if problem.subject else ""
        lines.append(f"- [{problem.code}] {subject_text}{problem.message}")
    lines += [
        "",
        "Run `renkei-agent status` on the terminal; after fixing the cause, "
        "`renkei-agent sync --retry-failed` sends everything now.",
        "This notice is sent once per incident; the next successful run ends it.",
    ]
    return subject, "\n".join(lines) + "\n"


def _maybe_notify(
    ctx: Context, notify: Callable[[str, str], None] | None, run_id: int | None
) -> None:
    report = ctx.report
    if report.status not in INCIDENT_STATUSES:
        return
    earlier, notified = _incident(ctx.queue, run_id)
    since = min(earlier, report.started_at) if earlier is not None else report.started_at
    report.incident_since = since
    if notified or notify is None:
        report.notified = notified
        return
    if ctx.clock() - since < ctx.config.retry.give_up_after:
        return
    subject, body = failure_notice(ctx.config, report, since)
    try:
        notify(subject, body)
    except Exception as exc:  # whatever the relay does, the run must not fail
        code = getattr(exc, "code", "mail.error")
        _log.warning("the failure notice could not be mailed: %s", exc)
        report.warning(
            code,
            "",
            f"the failure notice could not be mailed: {exc}",
            "障害のお知らせメールを送れませんでした（メールサーバの設定を確認してください）",
        )
        return
    report.notified = True
    ctx.say("mail: failure notice sent")


# --- the run ----------------------------------------------------------------------------------


def run_sync(
    config: AgentConfig,
    *,
    transport: Transport,
    queue: Queue,
    folders: Folders,
    clock: Callable[[], float] = time.time,
    download: bool = True,
    upload: bool = True,
    preflight: Callable[[], Sequence[Check]] | None = None,
    notify: Callable[[str, str], None] | None = None,
    progress: Callable[[str], None] | None = None,
    retry_failed: bool = False,
) -> RunReport:
    """Run the cycle once and return what it did (also recorded in the queue's ``runs``).

    ``preflight()`` returns the checks to run first (:func:`make_preflight`;
    None skips them); a failed clock check refuses the run.  ``notify(subject,
    body)`` mails the failure notice (see the module docstring).
    ``progress(line)`` receives a line per step.  ``retry_failed`` sends
    failed and given-up uploads now, ignoring their wait (staff's "send now").

    Raises BusyError (``agent.busy``) when another run holds the lock, and
    ConfigError for a bad crash hook.  Errors of single batches and files
    are problems in the report, never exceptions.
    """
    crash = CrashHook.from_env()
    if not (download or upload):
        raise ConfigError("nothing to do: download and upload are both off", key=None)
    kind = "sync" if download and upload else ("download" if download else "upload")
    with queue.lock():
        folders.ensure()
        sweep_temporaries(folders)
        report = RunReport(kind=kind, started_at=clock())
        run = RunRow(started_at=report.started_at, status="running", kind=kind)
        report.run_id = queue.record_run(run)
        ctx = Context(
            config=config,
            transport=transport,
            queue=queue,
            folders=folders,
            clock=clock,
            report=report,
            server_key=statement.public_key_from_text(config.server_key),
            checkpoint=crash,
            progress=progress,
        )
        crash("run.started")
        if preflight is not None:
            _run_preflight(ctx, preflight)
        if not report.refused:
            if download:
                _phase(ctx, "download", lambda: download_phase.run_downloads(ctx))
            if upload:
                _phase(
                    ctx, "upload", lambda: upload_phase.run_uploads(ctx, retry_failed=retry_failed)
                )
        report.finished_at = clock()
        _maybe_notify(ctx, notify, report.run_id)
        crash("run.finished")
        run.status = report.status
        run.finished_at = report.finished_at
        run.summary_json = _summary_json(report)
        queue.record_run(run)
        ctx.say(_summary_line(report))
        return report


def _summary_json(report: RunReport) -> str:
    """The run's report as JSON text for the queue; ASCII-escaped if anything in it is not
    valid Unicode (a path with bytes that are not UTF-8), so recording the run cannot fail."""
    text = json.dumps(report.to_json(), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(report.to_json(), ensure_ascii=True)
    return text


def sweep_temporaries(folders: Folders) -> list[Path]:
    """Remove the agent's own half-written files (``.NAME.tmp-*``) a power cut left behind.

    Only in the folders the agent alone writes to (not outbox/, which is the
    staff's), and only under the lock, so no other agent is writing them.
    These are never a delivered file: a file appears under its real name
    only by the final rename.
    """
    removed: list[Path] = []
    for folder in (
        folders.inbox,
        folders.sent,
        folders.rejected,
        folders.spool,
        folders.partial,
        folders.quarantine,
    ):
        for entry in os.scandir(folder):
            if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        if removed and removed[-1].parent == folder:
            fsync_dir(folder)
    for path in removed:
        _log.info("removed a half-written temporary file left by a crash: %s", path)
    return removed


def _phase(ctx: Context, name: str, body: Callable[[], None]) -> None:
    """Run a phase; an error no step handled (the queue's disk is full …) ends only the phase."""
    try:
        body()
    except (AgentError, OSError) as exc:
        code = str(getattr(exc, "code", None) or "io.error")
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            code = "disk.full"
        phase_ja = {"download": "受信", "upload": "送信"}.get(name, name)
        if code in ("disk.full", "queue.disk_full"):
            message = (
                f"the {name} phase stopped: the disk is full ({exc}); nothing was lost: "
                "free space, and the next run continues from here"
            )
            message_ja = (
                f"ディスクの空きが足りないため、{phase_ja}の処理を途中で中止しました。"
                "ファイルは失われていません。空きを作ると、次回の連携で続きから処理します。"
            )
            _log.error("%s", message)  # an expected condition: no traceback
        else:
            message = f"the {name} phase stopped: {exc}"
            message_ja = f"{phase_ja}の処理を途中で中止しました（ディスクの空きや端末の状態を確認してください）"
            _log.exception("the %s phase stopped", name)
        ctx.report.problem(code, "", message, message_ja)


def _summary_line(report: RunReport) -> str:
    counts = report.counts()
    down, up = counts["downloads"], counts["uploads"]
    return (
        f"{report.kind} {report.status}: {down['placed']} batch(es) placed, "
        f"{down['quarantined']} quarantined; {up['sent']} file(s) sent, "
        f"{up['rejected'] + up['refused']} rejected, {up['failed'] + up['given_up']} failed; "
        f"{len(report.problems)} problem(s)"
    )
