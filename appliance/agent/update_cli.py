"""``renkei-agent update``: the command line of the secure update (a thin shell over ``update.py``).

Exit codes of ``update``:

====  ==================================================================
0     updated, or nothing newer to install
1     failed (network, server, disk); nothing changed; the next run tries again
2     usage or configuration error (agent.toml, [update], the trusted root, the key)
3     refused: the clock is not known to be right (NTP), so expiry cannot be checked
4     busy: another update is running
5     the new release failed its install or self-test: still on the old one, and the
      new version is marked bad (never tried again)
6     the update repository failed verification (signature, rollback, freeze,
      tampered file): nothing installed — tell the help desk
100   (``--check``) a newer release can be installed
====  ==================================================================

``update self-test`` is what the *new* release runs before it becomes
current: a signed ping that the server answers with the version it saw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import DEFAULT_PATH, ENV_CONFIG, AgentConfig, load_config
from .errors import BusyError, ConfigError
from .preflight import check_clock, ntp_offset
from .transport import TransportError

__all__ = ["update"]

EXIT_CONFIG = 2
EXIT_BUSY = 4

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="agent.toml to read (default: $RENKEI_AGENT_CONFIG, else /etc/renkei/agent.toml).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _config_path(path: Path | None) -> Path:
    if path is None:
        path = Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else DEFAULT_PATH
    return Path(path).absolute()


def _load(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group("update", invoke_without_command=True)
@click.option("--check", is_flag=True, help="Only say whether a newer release is available.")
@_json_option
@_config_option
@click.pass_context
def update(ctx: click.Context, check: bool, as_json: bool, config_path: Path | None) -> None:
    """Install a newer agent release from the server, verified with TUF (docs/updates.md).

    Refuses to run when the clock is not synchronised (NTP).  The new release
    is unpacked beside the running one, tested, and only then made current;
    a release that fails is never tried again.

    Exit status: 0 updated or up to date, 1 failed (retried next run), 2
    configuration, 3 clock not synchronised, 4 busy, 5 the new release failed
    and was rolled back, 6 the repository failed verification, 100 (--check)
    a newer release is available.

    \b
    Example:
      renkei-agent update --check --json    # is there something to install?
      systemctl start renkei-update.service # install it now, in the unit's sandbox
    """
    if ctx.invoked_subcommand is not None:
        return
    path = _config_path(config_path)
    config = _load(path)

    def transport():  # type: ignore[no-untyped-def]
        from .cli import open_transport

        return open_transport(config)

    def clock():  # type: ignore[no-untyped-def]
        return check_clock(
            config.ntp_servers,
            query=lambda server: ntp_offset(server, timeout=1.5),
            warn=config.clock_warn,
            refuse=config.clock_refuse,
        )

    from .update import run_update  # python-tuf only for this command, not for every start

    try:
        report = run_update(
            config, path, open_transport=transport, clock_check=clock, check_only=check
        )
    except BusyError as exc:
        _say(exc.message, exc.message_ja)
        sys.exit(EXIT_BUSY)
    except ConfigError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        _say(
            f"the update stopped: {exc}",
            "更新を中断しました（ディスクの空き・権限を確認してください）。"
            "動作中のバージョンはそのままです。",
        )
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        _print(report)
    sys.exit(report.exit_code)


def _say(message: str, message_ja: str | None) -> None:
    click.echo(f"renkei-agent: {message}", err=True)
    if message_ja and message_ja != message:
        click.echo(f"renkei-agent: {message_ja}", err=True)


def _print(report: Any) -> None:
    click.echo(f"renkei-agent update: {report.status} (running {report.current})")
    if report.message:
        click.echo(f"  {report.message}")
    if report.message_ja:
        click.echo(f"  {report.message_ja}")
    for item in report.ignored:
        click.echo(f"  ignored target {item['target']}: {item['reason']}")
    for step in report.self_test:
        if not step["ok"]:
            click.echo(f"  self-test {step['command']}: {step.get('error')}")
    for what in report.recovered:
        click.echo(f"  cleaned up after an interrupted run: {what}")
    if report.pruned:
        click.echo(f"  removed old releases: {', '.join(report.pruned)}")


@update.command("self-test")
@_json_option
@_config_option
def self_test(as_json: bool, config_path: Path | None) -> None:
    """Send a signed ping as this release; the server must see this version (run by update).

    Exit status: 0 the server answered and saw this version, 1 it did not
    (network, refused, another version), 2 configuration.

    \b
    Example:
      /opt/renkei/releases/0.2.0/bin/renkei-agent update self-test --json
    """
    config = _load(_config_path(config_path))
    from .cli import open_transport

    try:
        transport = open_transport(config)
    except ConfigError as exc:
        click.echo(f"renkei-agent: {exc.message}", err=True)
        sys.exit(EXIT_CONFIG)
    expected = transport.agent_version
    try:
        answer = transport.get_json("/updates/ping")
    except TransportError as exc:
        data = {"ok": False, "version": __version__, "error": exc.code, "message": exc.message}
        click.echo(json.dumps(data) if as_json else f"self-test failed: {exc}")
        sys.exit(1)
    finally:
        transport.close()
    ok = (
        isinstance(answer, dict)
        and answer.get("agent_version") == expected
        and answer.get("terminal_id") == config.terminal_id
    )
    data = {"ok": ok, "version": __version__, "agent_version": expected, "answer": answer}
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo(f"self-test {'ok' if ok else 'FAILED'}: the server saw {answer!r}")
    sys.exit(0 if ok else 1)
