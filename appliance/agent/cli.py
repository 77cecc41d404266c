"""``renkei-agent``: the terminal agent's command line (a thin click shell over ``sync``).

Exit codes (``sync``; ``status`` uses 0 and 2 only):

====  ==================================================================
0     everything was done, nothing was refused
1     the run completed, but something was rejected, quarantined or failed
      (the report says what; failed uploads are retried by the next run), or
      the run stopped on an error it printed (e.g. the disk is full)
2     usage or configuration error (bad option, bad agent.toml, unreadable key)
3     refused by the preflight: the clock is too far off to sign requests
4     busy: another renkei-agent run holds the lock
====  ==================================================================

Progress lines go to stderr when it is a terminal; ``--json`` prints the
run's report (the same JSON the queue records) on stdout.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from . import __version__
from .card_cli import card
from .config import AgentConfig, load_config
from .errors import AgentError, BusyError, ConfigError
from .folders import Folders
from .media_cli import media
from .preflight import make_resolver
from .queue import Queue
from .sync import RunReport, make_preflight, run_sync
from .transport import HttpsTransport, TransportError, load_private_key

__all__ = ["EXIT_BUSY", "EXIT_CONFIG", "EXIT_REFUSED", "main", "next_scheduled_run", "status_data"]

EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_BUSY = 4
TIMER = "renkei-agent.timer"


def _config(path: Path | None) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)


def open_transport(config: AgentConfig) -> HttpsTransport:
    """The real transport: the terminal key, the pinned CA, the name through the LGWAN DNS."""
    try:
        key = load_private_key(config.key_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key_path: {exc}", key="key_path") from None
    try:
        return HttpsTransport(
            config.server_url,
            terminal_id=config.terminal_id,
            key=key,
            ca_file=config.ca_file,
            resolve=make_resolver(config.dns_servers),
            agent_version=f"renkei-agent/{__version__}",
        )
    except TransportError as exc:
        raise ConfigError(f"ca_file: {exc.message}", key="ca_file") from None


def _notifier(config: AgentConfig) -> Callable[[str, str], None] | None:
    smtp = config.smtp
    if smtp is None or not smtp.recipients:
        return None

    def notify(subject: str, body: str) -> None:
        from .mail import send_failure_notice

        send_failure_notice(smtp, subject=subject, body=body)

    return notify


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="agent.toml to read (default: $RENKEI_AGENT_CONFIG, else /etc/renkei/agent.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="renkei-agent")
def main() -> None:
    """The renkei terminal agent (情報連携端末): daily exchange with the linkage server.

    \b
    Example:
      renkei-agent sync            # download the ministry notices, send the outbox, now
      renkei-agent status --json   # what the agent knows, for a monitoring script
      renkei-agent update --check  # is a newer release available? (docs/updates.md)
    """


@main.command()
@click.option("--download-only", is_flag=True, help="Only fetch ministry notices into inbox/.")
@click.option("--upload-only", is_flag=True, help="Only send the files in outbox/.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Also send failed and given-up files now, without waiting for their next try.",
)
@json_option
@config_option
def sync(
    download_only: bool,
    upload_only: bool,
    retry_failed: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Run the daily cycle now: preflight, download into inbox/, upload from outbox/.

    Exit status: 0 all good, 1 something was rejected, quarantined or failed
    (the run completed), 2 usage or configuration error, 3 refused by the
    preflight (clock), 4 another run is busy.

    \b
    Example:
      renkei-agent sync --upload-only --retry-failed   # staff's "send now"
    """
    if download_only and upload_only:
        raise click.UsageError("--download-only and --upload-only exclude each other")
    config = _config(config_path)
    progress = (lambda line: click.echo(line, err=True)) if sys.stderr.isatty() else None
    folders = Folders(config.folder_root, config.state_dir)
    try:
        folders.ensure()
        queue = Queue(config.queue_path)
    except (AgentError, OSError) as exc:
        _stopped(exc)
        sys.exit(1 if _disk_full(exc) else EXIT_CONFIG)  # a full disk is no configuration error
    try:
        transport = open_transport(config)
    except ConfigError as exc:
        queue.close()
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        report = run_sync(
            config,
            transport=transport,
            queue=queue,
            folders=folders,
            clock=time.time,
            download=not upload_only,
            upload=not download_only,
            preflight=make_preflight(config),
            notify=_notifier(config),
            progress=progress,
            retry_failed=retry_failed,
        )
    except BusyError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_BUSY)
    except ConfigError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    except (AgentError, OSError) as exc:  # the run stopped on an error it could not report
        _stopped(exc, "the run stopped: ")
        sys.exit(1)
    finally:
        transport.close()
        queue.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return getattr(exc, "code", None) == "queue.disk_full"


def _stopped(exc: AgentError | OSError, prefix: str = "") -> None:
    """Say why nothing (more) could be done, in English and, where there is one, Japanese."""
    message = exc.message if isinstance(exc, AgentError) else str(exc)
    click.echo(f"renkei-agent: {prefix}{message}", err=True)
    japanese = exc.message_ja if isinstance(exc, AgentError) else None
    if japanese is None and _disk_full(exc):
        japanese = (
            "ディスクの空きが足りません。空きを作ってください（ファイルは失われていません）。"
        )
    if japanese and japanese != message:
        click.echo(f"renkei-agent: {japanese}", err=True)


def _print_report(report: RunReport) -> None:
    counts = report.counts()
    down, up = counts["downloads"], counts["uploads"]
    click.echo(f"renkei-agent {report.kind}: {report.status}")
    click.echo(
        f"  download: {down['placed']} placed, {down['acknowledged']} acknowledged, "
        f"{down['quarantined']} quarantined"
    )
    click.echo(
        f"  upload:   {up['sent']} sent, {up['rejected'] + up['refused']} rejected, "
        f"{up['failed']} failed (retried later), {up['given_up']} given up"
    )
    for warning in report.warnings:
        click.echo(f"  warning [{warning.code}] {warning.message}")
        if warning.message_ja:
            click.echo(f"          {warning.message_ja}")
    for problem in report.problems:
        click.echo(f"  problem [{problem.code}] {problem.message}")
        if problem.message_ja:
            click.echo(f"          {problem.message_ja}")


# --- status ------------------------------------------------------------------------------------


def next_scheduled_run(
    run: Callable[..., Any] = subprocess.run, *, systemctl: str | None = None
) -> str:
    """When the timer fires next, as systemd says it (``NextElapseUSecRealtime``), or "unknown"."""
    systemctl = systemctl or shutil.which("systemctl")
    if systemctl is None:
        return "unknown"
    try:
        result = run(
            [systemctl, "show", TIMER, "-p", "NextElapseUSecRealtime", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    value = (result.stdout or "").strip()
    if result.returncode != 0 or not value or value in ("0", "n/a"):
        return "unknown"
    return value


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_data(
    config: AgentConfig,
    *,
    checks: bool = True,
    now: float | None = None,
    next_run: Callable[[], str] = next_scheduled_run,
) -> dict:
    """Everything ``renkei-agent status`` shows, as JSON-ready data."""
    now = time.time() if now is None else now
    folders = Folders(config.folder_root, config.state_dir)
    data: dict[str, Any] = {
        "lasdec": config.lasdec,
        "terminal_id": config.terminal_id,
        "server_url": config.server_url,
        "last_run": None,
        "last_ok_run": None,
        "queue": None,
        "uploads_waiting": [],
        "last_placed_sequence": None,
    }
    if config.queue_path.exists():
        with Queue(config.queue_path) as queue:
            last = queue.last_run()
            if last is not None:
                data["last_run"] = _run_json(last)
            last_ok = queue.last_run(status="ok")
            data["last_ok_run"] = _iso(last_ok.started_at) if last_ok else None
            data["queue"] = queue.counts()
            data["uploads_waiting"] = [
                {
                    "upload_id": row.upload_id,
                    "file_name": row.file_name,
                    "state": row.state,
                    "attempts": row.attempts,
                    "next_try": _iso(row.next_try) if row.state != "given_up" else None,
                    "last_error": row.last_error,
                }
                for row in queue.uploads(["queued", "sending", "failed", "given_up"])
            ]
            placed = queue.placed_sequences()
            data["last_placed_sequence"] = placed[-1] if placed else None
    scan = folders.scan_outbox(
        now=now, settle=config.settle_seconds, max_bytes=config.max_file_bytes
    )
    data["outbox"] = {
        "complete": [file.name for file in scan.complete],
        "waiting": [file.name for file in scan.waiting],
        "ignored": [name for name, _why in scan.ignored],
    }
    data["checks"] = [check.to_json() for check in make_preflight(config)()] if checks else []
    data["next_run"] = next_run()
    return data


def _run_json(run: Any) -> dict:
    try:
        summary = json.loads(run.summary_json)
    except ValueError:
        summary = {}
    return {
        "run_id": run.run_id,
        "kind": run.kind,
        "status": "cut short" if run.status == "running" else run.status,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "downloads": summary.get("downloads"),
        "uploads": summary.get("uploads"),
        "problems": len(summary.get("problems") or []),
    }


@main.command()
@json_option
@config_option
def status(as_json: bool, config_path: Path | None) -> None:
    """Show the last run, the queue, the outbox, the clock and DNS checks, the next run.

    The clock and DNS checks are run now (a few seconds at most).

    \b
    Example:
      renkei-agent status
    """
    config = _config(config_path)
    try:
        data = status_data(config)
    except AgentError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    last = data["last_run"]
    click.echo(f"terminal {data['terminal_id']} ({data['lasdec']}) → {data['server_url']}")
    if last is None:
        click.echo("last run:      never")
    else:
        click.echo(
            f"last run:      {last['started_at']} {last['kind']} {last['status']} "
            f"({last['problems']} problem(s))"
        )
    click.echo(f"last ok run:   {data['last_ok_run'] or 'never'}")
    click.echo(f"next run:      {data['next_run']}")
    click.echo(f"last placed:   sequence {data['last_placed_sequence'] or '-'}")
    if data["queue"]:
        counts = data["queue"]
        click.echo(
            "downloads:     " + ", ".join(f"{k} {v}" for k, v in counts["downloads"].items())
        )
        click.echo("uploads:       " + ", ".join(f"{k} {v}" for k, v in counts["uploads"].items()))
    for row in data["uploads_waiting"]:
        click.echo(
            f"  waiting: {row['file_name']} {row['state']} attempts {row['attempts']} "
            f"next {row['next_try'] or '-'} {row['last_error'] or ''}".rstrip()
        )
    outbox = data["outbox"]
    click.echo(
        f"outbox:        {len(outbox['complete'])} ready, {len(outbox['waiting'])} being written"
    )
    for check in data["checks"]:
        click.echo(f"{check['name'] + ':':<15}{check['status']} — {check['detail']}")
        if check["hint"]:
            click.echo(f"{'':<15}{check['hint']}")


# The staff console (console.py) imports this module only inside its functions, so no cycle.
from .console import console as _console  # noqa: E402

main.add_command(_console)


main.add_command(media)  # renkei-agent media …: registered USB media (media_cli.py)
main.add_command(card)  # renkei-agent card …: residence-card reader-writer (card_cli.py)

# renkei-agent update …: secure updates (update_cli.py; it imports open_transport from here).
from .update_cli import update as _update  # noqa: E402

main.add_command(_update)

if __name__ == "__main__":
    main()
