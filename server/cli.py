"""``renkei-server``: the ministry operator's commands.

A thin click shell over the server's services: each command loads the
configuration, calls one service and prints its result — Japanese text for
people, ``--json`` for machines.  The clock is read here, at the edge, and
passed in as ``now``.

Exit codes: 0 done; 1 the input had problems (some records rejected, a file
error) — the rest was done; 2 usage, configuration or I/O error (nothing done).
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from common.atomicwrite import atomic_write
from common.printable import printable
from common.statement import key_id, public_key_to_text

from . import tls
from .blobs import BlobStore
from .cli_options import (
    DATE_OPTION,
    EXIT_OK,
    EXIT_PROBLEMS,
    Failure,
    config_option,
    echo,
    json_option,
    open_new_storage,
)
from .cli_options import echo_json as _echo_json
from .cli_options import load as _config
from .cli_options import now as _now
from .cli_options import open_storage as _storage
from .cli_options import report_day as _day
from .closeday import close_day
from .enrollment import find_terminal, issue_token, list_terminals, revoke_terminal
from .errors import ServerError
from .export import export_received
from .ingest import import_notices
from .keys import load_or_create_signing_key, load_signing_key
from .municipalities import get_municipality, load_master
from .operator_cli import operator_group, report_command
from .retention import purge
from .serve_cli import SERVE_COMMANDS
from .status import server_status
from .storage import TOKYO, iso_utc
from .update_cli import UPDATE_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="renkei")
def main() -> None:
    """The linkage server's operator commands (市町村連携サーバ).

    \b
    A day's work:
      renkei-server import notices-20261127.jsonl
      renkei-server close-day
      renkei-server status
      renkei-server export --since 2026-11-27 -o received-20261127.jsonl
      renkei-server report            # the morning mails

    Exit codes: 0 done, 1 the input had problems (the rest was done),
    2 usage, configuration or I/O error.
    """


# --- init ----------------------------------------------------------------------------------------


@main.command("init")
@config_option
@click.option(
    "--dev-tls",
    is_flag=True,
    help="Also make a demo CA and server certificate in DATA_DIR/tls (not for production).",
)
@click.option("--hostname", multiple=True, help="Extra host name for the --dev-tls certificate.")
@click.option("--ip", multiple=True, help="Extra IP address for the --dev-tls certificate.")
@json_option
def init_command(
    config_path: Path | None,
    dev_tls: bool,
    hostname: tuple[str, ...],
    ip: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create the data folder, the database, the signing key; load the municipality master.

    Safe to run again: the database is migrated, an existing key is kept, the
    master is updated.  The signing key is never printed, only its key id.

    \b
    Example:
      renkei-server init --config /etc/renkei-server/server.toml
      renkei-server init --dev-tls --hostname renkei.example.lg.jp
    """
    config = _config(config_path)
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.blob_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise Failure(f"cannot create {config.data_dir}: {exc.strerror}") from None
    storage = open_new_storage(config)
    try:
        applied = storage.migrate()
        key_existed = config.signing_key_path.exists()
        key = load_or_create_signing_key(config.signing_key_path)
        master = load_master(storage)
    except ServerError as exc:
        raise Failure(exc.message) from None
    except OSError as exc:
        raise Failure(f"{exc.filename or config.data_dir}: {exc.strerror}") from None
    except SQLAlchemyError as exc:
        raise Failure(f"cannot set up the database {storage.safe_url}: {exc}") from None
    finally:
        storage.dispose()
    summary: dict[str, Any] = {
        "data_dir": str(config.data_dir),
        "database_url": storage.safe_url,
        "migrations_applied": applied,
        "signing_key": str(config.signing_key_path),
        "signing_key_created": not key_existed,
        "key_id": key_id(key.public_key()),
        "municipalities": master.to_json(),
        "tls_cert": None,
        "tls_key": None,
        "ca_cert": None,
    }
    if dev_tls:
        cert = config.tls_dir / tls.SERVER_CERT
        ca_cert, ca_key = tls.make_dev_ca(config.tls_dir)
        if not cert.exists() or hostname or ip:
            cert, _key = tls.make_server_cert(config.tls_dir, ca_cert, ca_key, hostname, ip)
        summary.update(
            tls_cert=str(cert), tls_key=str(config.tls_dir / tls.SERVER_KEY), ca_cert=str(ca_cert)
        )
    if as_json:
        _echo_json(summary)
        return
    echo(f"データフォルダ: {config.data_dir}")
    echo(f"データベース: {storage.safe_url}（適用した移行: {', '.join(applied) or 'なし'}）")
    state = "作成しました" if not key_existed else "既存の鍵を使います"
    echo(f"署名鍵: {config.signing_key_path}（{state}）key id {summary['key_id']}")
    echo(
        f"市区町村マスタ: 追加 {master.added}、更新 {master.updated}、変更なし {master.unchanged}、"
        f"廃止 {master.retired}（受信単位 {master.receiving}）"
    )
    if dev_tls:
        echo(f"開発用 TLS: 証明書 {summary['tls_cert']}、CA {summary['ca_cert']}")


# --- import --------------------------------------------------------------------------------------


@main.command("import")
@config_option
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@DATE_OPTION
@click.option(
    "--degenerate",
    is_flag=True,
    help="Replace characters without a Juki code by their MJ縮退マップ fallback (each is listed).",
)
@json_option
def import_command(
    config_path: Path | None, file: str, day: datetime | None, degenerate: bool, as_json: bool
) -> None:
    """Load ministry notices (UTF-8 JSON Lines or CSV) from the issuance system.

    Every record is validated; a bad one is listed with every problem and not
    loaded, the rest load.  Importing the same file again loads nothing twice.
    Exit 0 if every record loaded (or was a duplicate), 1 if some were rejected
    or the file could not be read (then nothing loaded), 2 on usage errors.

    \b
    Example:
      renkei-server import notices-20261127.jsonl
      renkei-server import --date 2026-11-27 --json notices.csv | jq .rejected
    """
    config = _config(config_path)
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise Failure(f"{file}: {exc.strerror}") from None
    storage = _storage(config)
    try:
        result = import_notices(
            storage,
            data,
            file_name=file,
            business_date=_day(day),
            now=_now(),
            degenerate=degenerate,
        )
    except ServerError as exc:
        raise Failure(exc.message) from None
    finally:
        storage.dispose()
    if as_json:
        _echo_json(result.to_json())
    else:
        echo(f"ファイル: {printable(file)}（業務日 {result.business_date.isoformat()}）")
        if result.file_error:
            error = result.file_error
            line = f"{error['line']} 行目: " if error.get("line") else ""
            echo(f"ファイルエラー: {line}[{error['code']}] {printable(error['message'])}")
            echo(f"  ({printable(error['message_en'])}) — 何も取り込んでいません")
        for entry in result.rejected:
            rid = printable(entry.get("record_id") or "（番号なし）")  # a line break too
            echo(f"{entry['line']} 行目 レコード {rid}:")
            for problem in entry["problems"]:
                echo(f"  [{problem['code']}] {printable(problem['message'])}")
        for sub in result.substitutions:
            echo(
                f"縮退: レコード {printable(sub['record_id'])} 項目 {sub['column']} "
                f"{sub['position'] + 1} 文字目 "
                f"「{sub['original']}」→「{sub['replacement']}」"
            )
        echo(
            f"結果: {result.records} 件中 取込 {result.loaded} 件、重複 {len(result.duplicates)} 件、"
            f"不備 {len(result.rejected)} 件"
        )
    sys.exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


# --- close-day -----------------------------------------------------------------------------------


@main.command("close-day")
@config_option
@DATE_OPTION
@json_option
def close_day_command(config_path: Path | None, day: datetime | None, as_json: bool) -> None:
    """Cut the day's batches: one per municipality (empty if nothing happened), numbered and signed.

    Takes every notice not yet delivered with a business date on or before
    the date.  Running it again for the same date changes nothing.

    \b
    Example:
      renkei-server close-day
      renkei-server close-day --date 2026-11-27 --json
    """
    config = _config(config_path)
    try:
        key = load_signing_key(config.signing_key_path)
    except ServerError as exc:
        raise Failure(exc.message) from None
    storage = _storage(config)
    try:
        result = close_day(storage, BlobStore(config.blob_dir), key, _day(day), now=_now())
    except ServerError as exc:
        raise Failure(exc.message) from None
    finally:
        storage.dispose()
    if as_json:
        _echo_json(result.to_json())
        return
    label = result.business_date.isoformat()
    if not result.changed:
        echo(f"{label} は締め済みです（{result.existing} 団体）。変更はありません。")
    else:
        echo(
            f"{label} を締めました: バッチ {result.created} 件（うち空 {result.empty} 件）、"
            f"通知 {result.records} 件"
        )
    if result.waiting:
        echo(f"次の締めを待つ通知: {result.waiting} 件")


# --- terminals -----------------------------------------------------------------------------------


@main.group("terminal")
def terminal_group() -> None:
    """Enrollment tokens and terminals (情報連携端末).

    \b
    Example:
      renkei-server terminal token --lasdec 131016
      renkei-server terminal list --lasdec 131016
      renkei-server terminal revoke t_0123456789abcdef
    """


@terminal_group.command("token")
@config_option
@click.option("--lasdec", required=True, help="The municipality's (or ward's) 6-digit code.")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    help="Hours the token is valid (default: config token_ttl).",
)
@json_option
def token_command(config_path: Path | None, lasdec: str, ttl: int | None, as_json: bool) -> None:
    """Issue a one-time, expiring enrollment token for a field technician.

    The token is printed once and stored only as a hash: hand it over now.

    \b
    Example:
      renkei-server terminal token --lasdec 131016 --ttl 48
    """
    config = _config(config_path)
    storage = _storage(config)
    now = _now()
    seconds = ttl * 3600 if ttl else config.token_ttl
    try:
        token = issue_token(storage, lasdec, now=now, ttl=seconds)
        municipality = get_municipality(storage, lasdec)
    except ServerError as exc:
        raise Failure(exc.message) from None
    finally:
        storage.dispose()
    expires = datetime.fromtimestamp(now.timestamp() + seconds, UTC)
    if as_json:
        _echo_json(
            {
                "token": token,
                "lasdec": lasdec,
                "expires_at": iso_utc(expires),
                "name": municipality.full_name if municipality else None,
            }
        )
        return
    echo(f"{lasdec} {municipality.full_name if municipality else ''} の登録トークン:")
    echo(token)
    echo(f"有効期限: {expires.astimezone(TOKYO):%Y-%m-%d %H:%M} (JST)・1回のみ使用可")


@terminal_group.command("list")
@config_option
@click.option("--lasdec", help="Only this municipality's terminals.")
@json_option
def list_command(config_path: Path | None, lasdec: str | None, as_json: bool) -> None:
    """List enrolled terminals (revoked ones too).

    \b
    Example:
      renkei-server terminal list --json
    """
    storage = _storage(_config(config_path))
    try:
        found = list_terminals(storage, lasdec)
    finally:
        storage.dispose()
    if as_json:
        _echo_json([t.to_json() for t in found])
        return
    if not found:
        echo("端末はありません")
    for t in found:
        seen = (
            t.last_seen_at.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M") if t.last_seen_at else "-"
        )
        state = "失効" if t.revoked_at else "有効"
        version = printable(t.agent_version or "-")  # as the terminal reported it: a tab too
        echo(f"{t.terminal_id}\t{t.lasdec}\t{state}\t{t.key_id}\t最終接続 {seen}\t{version}")


@terminal_group.command("revoke")
@config_option
@click.argument("terminal_id")
@json_option
def revoke_command(config_path: Path | None, terminal_id: str, as_json: bool) -> None:
    """Revoke a terminal: its requests are refused from now on.

    \b
    Example:
      renkei-server terminal revoke t_0123456789abcdef
    """
    storage = _storage(_config(config_path))
    try:
        terminal = find_terminal(storage, terminal_id)
        if terminal is None:
            raise Failure(f"no terminal {terminal_id!r}; see `renkei-server terminal list`")
        revoked = revoke_terminal(storage, terminal_id, now=_now())
    finally:
        storage.dispose()
    if as_json:
        _echo_json({"terminal_id": terminal_id, "revoked": revoked, "already_revoked": not revoked})
    elif revoked:
        echo(f"{terminal_id} を失効させました")
    else:
        echo(f"{terminal_id} は既に失効しています")


# --- status, export ------------------------------------------------------------------------------


@main.command("status")
@config_option
@click.option(
    "--all",
    "all_rows",
    is_flag=True,
    help="Every municipality, not only those with something to say.",
)
@json_option
def status_command(config_path: Path | None, all_rows: bool, as_json: bool) -> None:
    """Per municipality: terminals, last contact, batches, today's uploads and rejections.

    By default only rows with something to say: uploads or rejections today,
    or an enrolled municipality with an overdue batch (!), a silent terminal
    or a skewed clock; --all for every municipality.

    \b
    Example:
      renkei-server status
      renkei-server status --json | jq '.municipalities[] | select(.overdue)'
    """
    storage = _storage(_config(config_path))
    now = _now()
    try:
        status = server_status(storage, now=now)
    finally:
        storage.dispose()
    if as_json:
        _echo_json(status.to_json(all_rows=all_rows))
        return
    for line in status.text_lines(all_rows=all_rows):
        echo(line)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            value = datetime.combine(date.fromisoformat(text), time(0))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not an ISO date or time", param_hint="--since"
            ) from None
    return value.replace(tzinfo=TOKYO) if value.tzinfo is None else value


@main.command("export")
@config_option
@click.option(
    "--since", help="Only notices received at or after this ISO date/time (no zone: Japan time)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write here (atomically); default stdout.",
)
def export_command(config_path: Path | None, since: str | None, output: str | None) -> None:
    """Write received municipality notices as UTF-8 JSON Lines for the ministry's systems.

    One line per record: the decoded record with lasdec, upload id and
    received time, and the characters that are variation sequences.

    \b
    Example:
      renkei-server export --since 2026-11-27 -o received-20261127.jsonl
      renkei-server export --since 2026-11-27T18:00:00+09:00 | wc -l
    """
    start = _since(since)
    storage = _storage(_config(config_path))
    try:
        if output:
            try:
                with atomic_write(output) as sink:
                    text = _utf8(sink)
                    count = export_received(storage, text, since=start)
                    text.flush()
                    text.detach()
            except OSError as exc:
                raise Failure(f"{output}: {exc.strerror}") from None
        else:
            count = export_received(storage, click.get_text_stream("stdout"), since=start)
    finally:
        storage.dispose()
    echo(f"{count} 件を出力しました", err=True)


def _utf8(sink: Any) -> io.TextIOWrapper:
    return io.TextIOWrapper(sink, encoding="utf-8", newline="\n", write_through=True)


# --- purge ---------------------------------------------------------------------------------------


@main.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@json_option
def purge_command(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    """Remove batch files and uploaded originals older than retention_days; keep their rows.

    A file goes only when every batch or upload that refers to it is past the
    retention period and, for batches, acknowledged; an unacknowledged batch is
    never removed (it is listed).  Manifests and receipts stay, and a download
    of a removed batch answers 410.  Safe to run again: it finishes a run that
    was interrupted.  Exit 0 done, 1 some files could not be deleted (run
    again), 2 usage, configuration or database error.

    \b
    Example:
      renkei-server purge --dry-run
      renkei-server purge --json | jq .bytes_removed
    """
    config = _config(config_path)
    storage = _storage(config)
    try:
        result = purge(
            storage,
            BlobStore(config.blob_dir),
            now=_now(),
            retention_days=config.retention_days,
            dry_run=dry_run,
        )
    except SQLAlchemyError as exc:
        raise Failure(f"the database {storage.safe_url} failed: {exc}") from None
    finally:
        storage.dispose()
    if as_json:
        _echo_json(result.to_json())
    else:
        for line in result.text_lines():
            echo(line)
    sys.exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


# --- operators, report: operator_cli.py ----------------------------------------------------------

main.add_command(operator_group)
main.add_command(report_command)
for _command in UPDATE_COMMANDS:  # publish-update, update-keys, -timestamp, -status: update_cli.py
    main.add_command(_command)
for _command in SERVE_COMMANDS:  # serve (gunicorn), front (nginx): serve_cli.py
    main.add_command(_command)


# --- keys ----------------------------------------------------------------------------------------


@main.command("public-key")
@config_option
@json_option
def public_key_command(config_path: Path | None, as_json: bool) -> None:
    """Print the server's public signing key (base64) and key id, for terminals and auditors.

    \b
    Example:
      renkei-server public-key --json
    """
    config = _config(config_path)
    try:
        key = load_signing_key(config.signing_key_path).public_key()
    except ServerError as exc:
        raise Failure(exc.message) from None
    if as_json:
        _echo_json({"key_id": key_id(key), "public_key": public_key_to_text(key)})
    else:
        echo(f"{key_id(key)} {public_key_to_text(key)}")


if __name__ == "__main__":  # pragma: no cover
    main()
