"""``renkei-server operator …`` and ``renkei-server report``: the dashboard's accounts and the morning mails.

Registered on the main group by ``server/cli.py``; see docs/operations.md
("Dashboard", "Mail").
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from .cli_options import (
    DATE_OPTION,
    EXIT_OK,
    EXIT_PROBLEMS,
    Failure,
    config_option,
    echo,
    echo_json,
    json_option,
    load,
    now,
    open_storage,
)
from .errors import ServerError
from .mailreport import run_report
from .operators import add_operator, list_operators, set_disabled, set_password
from .storage import TOKYO, Storage, business_day

__all__ = ["operator_group", "report_command"]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("パスワード", hide_input=True, confirmation_prompt="確認のため再入力")


PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from one line of standard input."
)


@click.group("operator")
def operator_group() -> None:
    """Dashboard accounts of ministry operators (運用者).

    \b
    Example:
      renkei-server operator add tanaka
      renkei-server operator list
      renkei-server operator disable tanaka
    """


def _operator_call(config_path: Path | None, action: Callable[[Storage], Any]) -> Any:
    storage = open_storage(load(config_path))
    try:
        return action(storage)
    except ServerError as exc:
        raise Failure(exc.message) from None
    finally:
        storage.dispose()


@operator_group.command("add")
@config_option
@click.argument("name")
@PASSWORD_STDIN
@json_option
def operator_add(config_path: Path | None, name: str, password_stdin: bool, as_json: bool) -> None:
    """Create an operator account (password asked twice, at least 12 characters).

    \b
    Example:
      renkei-server operator add tanaka
      printf '%s\\n' "$PASSWORD" | renkei-server operator add tanaka --password-stdin
    """
    password = _read_password(password_stdin)
    operator = _operator_call(
        config_path, lambda storage: add_operator(storage, name, password, now=now())
    )
    if as_json:
        echo_json(operator.to_json())
    else:
        echo(f"運用者 {operator.name}（{operator.operator_id}）を作成しました")


@operator_group.command("list")
@config_option
@json_option
def operator_list(config_path: Path | None, as_json: bool) -> None:
    """List operator accounts (never their passwords).

    \b
    Example:
      renkei-server operator list --json
    """
    found = _operator_call(config_path, list_operators)
    if as_json:
        echo_json([o.to_json() for o in found])
        return
    if not found:
        echo("運用者はいません（renkei-server operator add NAME）")
    for o in found:
        last = (
            o.last_login_at.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M") if o.last_login_at else "-"
        )
        echo(
            f"{o.operator_id}\t{o.name}\t{'無効' if o.disabled_at else '有効'}\t最終ログイン {last}"
        )


def _toggle(config_path: Path | None, name: str, disabled: bool, as_json: bool) -> None:
    changed = _operator_call(
        config_path, lambda storage: set_disabled(storage, name, disabled, now=now())
    )
    if as_json:
        echo_json({"name": name, "disabled": disabled, "changed": changed})
    else:
        state = "無効にしました" if disabled else "有効にしました（ロックも解除）"
        echo(f"{name} を{state}" if changed else f"{name} は既にその状態です")


@operator_group.command("disable")
@config_option
@click.argument("name")
@json_option
def operator_disable(config_path: Path | None, name: str, as_json: bool) -> None:
    """Disable an account; its open sessions end at once.

    \b
    Example:
      renkei-server operator disable tanaka
    """
    _toggle(config_path, name, True, as_json)


@operator_group.command("enable")
@config_option
@click.argument("name")
@json_option
def operator_enable(config_path: Path | None, name: str, as_json: bool) -> None:
    """Enable an account again; also lifts a lockout after failed logins.

    \b
    Example:
      renkei-server operator enable tanaka
    """
    _toggle(config_path, name, False, as_json)


@operator_group.command("password")
@config_option
@click.argument("name")
@PASSWORD_STDIN
def operator_password(config_path: Path | None, name: str, password_stdin: bool) -> None:
    """Set a new password; the account's open sessions end.

    \b
    Example:
      renkei-server operator password tanaka
    """
    password = _read_password(password_stdin)
    operator = _operator_call(
        config_path, lambda storage: set_password(storage, name, password, now=now())
    )
    echo(f"{operator.name} のパスワードを変更しました")


@click.command("report")
@config_option
@DATE_OPTION
@click.option("--dry-run", is_flag=True, help="Print the mails; spool and send nothing.")
@json_option
def report_command(
    config_path: Path | None, day: datetime | None, dry_run: bool, as_json: bool
) -> None:
    """Mail the daily report: a summary to operators, each municipality its rejected records.

    Reports the business date (default: yesterday in Japan).  Every mail is
    spooled before it is sent; what the relay did not take stays spooled and
    is sent by the next run, once.  Exit 0 all mails delivered (or none to
    send), 1 some are still spooled (relay down or refusing), 2 configuration,
    contacts file or database error.

    \b
    Example:
      renkei-server report --dry-run
      renkei-server report --date 2026-11-27 --json
    """
    config = load(config_path)
    at = now()
    business_date = day.date() if day is not None else business_day(at) - timedelta(days=1)
    storage = open_storage(config)
    try:
        run = run_report(storage, config.mail, day=business_date, now=at, dry_run=dry_run)
    except ServerError as exc:
        raise Failure(exc.message) from None
    except OSError as exc:
        raise Failure(f"{exc.filename or config.mail.spool_dir}: {exc.strerror}") from None
    finally:
        storage.dispose()
    if as_json:
        echo_json(run.to_json())
    elif dry_run:
        for mail in run.mails:
            echo(f"--- {mail.key}  To: {mail.message['To']}")
            echo(f"件名: {mail.message['Subject']}")
            echo(mail.message.get_content())
    else:
        echo(
            f"{business_date.isoformat()} の報告: 作成 {len(run.created)} 通（作成済み "
            f"{len(run.known)} 通）、送信 {len(run.delivery.sent)} 通、未送信 {len(run.delivery.failed)} 通"
        )
        for key, code, message in run.delivery.failed:
            echo(f"未送信 {key}: [{code}] {message}（次回の実行で再送します）", err=True)
    for lasdec in run.unreachable:
        echo(f"{lasdec}: 不備がありますが連絡先が未登録です（mail.contacts_file）", err=True)
    sys.exit(EXIT_OK if run.ok else EXIT_PROBLEMS)
