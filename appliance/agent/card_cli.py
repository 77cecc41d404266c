"""``renkei-agent card …``: the residence-card reader-writer at the counter (a thin click shell).

Over ``card.reader`` (PC/SC), ``card.session`` (read) and
``card.address_write`` (the MODEL address write, docs/card-write.md).
Human output is Japanese, for counter staff; ``--json`` is for machines.
The card number is personal data: it is never logged, and human output
shows only its last four characters.

Exit codes:

====  ======================================================================
0     done (read; the entry was written and read back, or was already there)
1     card or write error: wrong card number, authentication refused, the
      address block full, the card pulled, the read-back differs, …
2     usage, configuration or input error: bad option, bad ``[card]``
      settings, no usable key provider, bad date / code / address text
3     not confirmed: staff answered no at the confirmation
5     no PC/SC service, no card reader, or no card on the reader
====  ======================================================================
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from cryptography import x509

from common.atomicwrite import atomic_write

from .card import reader, session
from .card.address_write import (
    AddressInputError,
    WritePlan,
    WriteResult,
    card_type_dict,
    execute_write,
    plan_write,
    prepare_entry,
)
from .card.apdu import CardError
from .card.crypto import check_card_number
from .card.keyprovider import KeyProvider, KeyProviderError, KeyProviderSettings, make_key_provider
from .config import CardConfig, ConfigError, load_card_config

__all__ = ["EXIT_DECLINED", "EXIT_NO_CARD", "card", "mask_card_number"]

EXIT_CARD = 1
EXIT_USAGE = 2
EXIT_DECLINED = 3
EXIT_NO_CARD = 5
_NO_CARD_CODES = {"card.no_pcsc", "card.no_reader", "card.no_card"}
_USAGE_CODES = {"card.bad_card_number"}

# The PC/SC edge, looked up at call time so tests can put a virtual chip behind it.
connect_card = reader.connect
list_reader_names = reader.list_readers

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
_config = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="agent.toml to read [card] from (default: $RENKEI_AGENT_CONFIG, else "
    "/etc/renkei/agent.toml; without either, the defaults).",
)
_reader = click.option(
    "--reader",
    "reader_name",
    default=None,
    help="PC/SC reader name (default: [card] reader, else the reader holding a card).",
)

_KIND_JA = {
    session.KIND_RESIDENCE: "在留カード",
    session.KIND_SPECIAL_PERMANENT: "特別永住者証明書",
}
_SIGNATURE_JA = {
    "valid": "有効(券面・写真のデータは発行時のままです)",
    "invalid": "無効(データが改ざんされているおそれがあります)",
    "not_checked": "未確認",
    "untrusted_certificate": "証明書を確認できません(信頼する発行元証明書と一致しません)",
}
_FRONT_JA = {
    "card_expiry_date": "有効期限",
    "date_of_birth": "生年月日",
    "sex": "性別",
    "nationality_code": "国籍・地域",
    "status_of_residence_code": "在留資格(コード)",
    "period_of_stay_code": "在留期間(コード)",
    "permission_type_code": "許可の種類(コード)",
    "permission_date": "許可年月日",
    "work_restriction_ja": "就労制限の有無",
    "period_of_stay_expiry_date": "在留期間の満了日",
}
_FRONT_HIDDEN = {"raw", "sex_code", "work_restriction_code", "period_of_stay_indefinite"}
_SEX_JA = {"male": "男", "female": "女", "unspecified": "その他"}


def mask_card_number(number: str | None) -> str:
    """All but the last four characters as ``*``: for human output only."""
    if not number:
        return "-"
    return "*" * max(len(number) - 4, 0) + number[-4:]


def _exit_code(exc: Exception) -> int:
    if isinstance(exc, ConfigError | KeyProviderError | AddressInputError):
        return EXIT_USAGE
    code = getattr(exc, "code", "")
    if code in _USAGE_CODES:
        return EXIT_USAGE
    if code in _NO_CARD_CODES:
        return EXIT_NO_CARD
    return EXIT_CARD


def _fail(exc: CardError | ConfigError, as_json: bool) -> NoReturn:
    """Japanese for the staff, the English detail and code for a technician; JSON on stdout."""
    japanese = exc.message_ja
    if isinstance(exc, ConfigError):
        japanese = (
            "設定ファイル(agent.toml)の[card]に誤りがあります。システム管理者に連絡してください。"
        )
    click.echo(f"renkei-agent: {japanese}", err=True)
    if exc.message != japanese:
        click.echo(f"  [{exc.code}] {exc.message}", err=True)
    if as_json:
        click.echo(json.dumps({"error": exc.to_json()}, ensure_ascii=False))
    sys.exit(_exit_code(exc))


def _load(config_path: Path | None, as_json: bool) -> CardConfig:
    try:
        return load_card_config(config_path)
    except ConfigError as exc:
        _fail(exc, as_json)


def _card_number(value: str | None, as_json: bool) -> str | None:
    if value is None:
        return None
    try:
        return check_card_number(value).decode("ascii")
    except CardError:
        _fail(
            CardError(
                "--card-number must be 12 letters and digits (two letters, eight digits, "
                "two letters)",
                code="card.bad_card_number",
                message_ja="在留カード等番号は英数字12文字で入力してください(例: AB12345678CD)。",
            ),
            as_json,
        )


def _trust_anchors(config: CardConfig, as_json: bool) -> list[x509.Certificate]:
    path = config.trust_anchor_file
    if path is None:
        return []
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        _fail(
            ConfigError(
                f"card.trust_anchor_file: {path}: not readable PEM certificates ({exc})",
                key="card.trust_anchor_file",
            ),
            as_json,
        )


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


@click.group()
def card() -> None:
    """Residence card (在留カード) and special permanent resident certificate chip: read, write address.

    Exit status: 0 done, 1 card or write error, 2 usage/configuration/input,
    3 not confirmed, 5 no PC/SC service, no reader or no card.

    \b
    Example:
      renkei-agent card readers
      renkei-agent card read --card-number AB12345678CD
    """


@card.command()
@_json
@_config
def readers(as_json: bool, config_path: Path | None) -> None:
    """List the card readers PC/SC sees and whether a card is on each.

    \b
    Example:
      renkei-agent card readers --json
    """
    config = _load(config_path, as_json)
    try:
        names = list_reader_names()
    except CardError as exc:
        _fail(exc, as_json)
    rows = [
        {"name": name, "card_present": _card_present(name), "configured": name == config.reader}
        for name in names
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
    else:
        for row in rows:
            mark = "カードあり" if row["card_present"] else "カードなし"
            click.echo(f"{row['name']}\t{mark}{' (設定済み)' if row['configured'] else ''}")
    if not rows:
        click.echo("renkei-agent: カードリーダーが接続されていません。", err=True)
        sys.exit(EXIT_NO_CARD)


def _card_present(name: str) -> bool:
    try:
        connect_card(name).close()
    except CardError:
        return False
    return True


_IMAGE_TYPES = (
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"\x00\x00\x00\x0cjP  ", ".jp2"),
    (b"\xff\x4f\xff\x51", ".j2k"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG", ".png"),
)


def _save_images(images: dict[str, bytes], folder: Path) -> dict[str, str]:
    """Write each image as NAME.EXT (mode 0600: a face photo is personal data), atomically."""
    saved = {}
    for name, data in images.items():
        ext = next((e for magic, e in _IMAGE_TYPES if data.startswith(magic)), ".bin")
        target = folder / f"{name}{ext}"
        with atomic_write(target, mode=0o600) as handle:
            handle.write(data)
        saved[name] = str(target)
    return saved


@card.command()
@click.option("--card-number", default=None, help="The 12-character number printed on the card.")
@_reader
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, exists=True, writable=True, path_type=Path),
    default=None,
    help="Also save the card's images (front/name image, face photo) into this folder.",
)
@_json
@_config
def read(
    card_number: str | None,
    reader_name: str | None,
    images_dir: Path | None,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Read the card: its type; with the card number also the number, front data, addresses and signature.

    Without --card-number only the card type is read (no authentication).

    \b
    Example:
      renkei-agent card read --card-number AB12345678CD
      renkei-agent card read --card-number AB12345678CD --json --images /tmp/card
    """
    config = _load(config_path, as_json)
    number = _card_number(card_number, as_json)
    anchors = _trust_anchors(config, as_json)
    if images_dir is not None and number is None:
        raise click.UsageError(
            "--images needs --card-number (the images are read after authentication)"
        )
    try:
        with connect_card(reader_name or config.reader) as connection:
            result = session.read_card(
                connection, number, trust_anchors=anchors, read_images=images_dir is not None
            )
        saved = _save_images(result.images, images_dir) if images_dir is not None else {}
    except CardError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        _fail(
            CardError(
                f"cannot save the images: {exc}",
                code="card.images",
                message_ja=f"画像を保存できません: {exc}",
            ),
            as_json,
        )
    data = result.to_dict()
    if images_dir is not None:
        data["images"] = saved
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    _print_read(data)


def _kind_ja(card_type: dict[str, Any]) -> str:
    kind = _KIND_JA.get(card_type["kind"], card_type["kind"])
    prefix = "特定" if card_type["specified"] else ""
    return f"{prefix}{kind}(第{card_type['generation']}世代、種別コード {card_type['code']})"


def _date_ja(text: str) -> str:
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}年{text[4:6]}月{text[6:]}日"
    return text or "-"


def _print_read(data: dict[str, Any]) -> None:
    number = data.get("card_number")
    click.echo(f"カードの種類: {_kind_ja(data['card_type'])}")
    if number is None:
        click.echo("(在留カード等番号を指定すると、券面の情報と住居地を読み取ります)")
        return
    click.echo(f"在留カード等番号: {mask_card_number(number)}")
    for key, value in (data.get("front") or {}).items():
        if key in _FRONT_HIDDEN or value is None:
            continue
        if key == "sex":
            value = _SEX_JA.get(value, value)
        if isinstance(value, str) and value == number:
            value = mask_card_number(value)
        click.echo(f"{_FRONT_JA.get(key, key)}: {value}")
    addresses = data.get("addresses") or []
    if addresses:
        click.echo("住居地の記載:")
    for i, entry in enumerate(addresses, 1):
        click.echo(f"  {i}. {_date_ja(entry['write_date'])}  {entry['lasdec']}  {entry['address']}")
    signature = data.get("signature")
    if signature is not None:
        status = _SIGNATURE_JA.get(signature["status"], signature["status"])
        click.echo(f"電子署名: {status}")
    for name, path in (data.get("images") or {}).items():
        click.echo(f"画像 {name}: {path}")


def _provider(config: CardConfig) -> KeyProvider:
    settings = KeyProviderSettings(
        kind=config.key_provider,
        test_key_file=config.test_key_file,
        pkcs11_module=config.pkcs11_module,
        pkcs11_slot=config.pkcs11_slot,
        pkcs11_key_label=config.pkcs11_key_label,
        sam_reader=config.sam_reader,
    )
    provider = make_key_provider(settings)
    provider.ensure_ready()
    return provider


def _show_plan(plan: WritePlan, provider: KeyProvider) -> None:
    entry = plan.entry
    out = {"err": True}
    click.echo("次の内容をカードの住居地欄に書き込みます:", **out)
    click.echo(
        f"  カード: {_kind_ja(card_type_dict(plan.card_type))} 番号 "
        f"{mask_card_number(plan.card_number)}",
        **out,
    )
    last = plan.entries[-1] if plan.entries else None
    current = f"{_date_ja(last.write_date)} {last.lasdec} {last.address}" if last else "なし"
    click.echo(f"  最新の記載: {current}", **out)
    click.echo(f"  書込日: {_date_ja(entry.write_date)}", **out)
    click.echo(f"  市区町村: {entry.lasdec} {entry.municipality}", **out)
    click.echo(f"  住居地: {entry.address}", **out)
    click.echo(f"  書込位置: {plan.target + 1} / {len(plan.slots)} 欄目", **out)
    if plan.completes_partial:
        click.echo("  (前回中断した書込みをこの内容で完了します)", **out)
    if provider.for_tests_only:
        click.echo("  注意: 試験用の鍵です(開発・試験専用。本物のカードには使えません)", **out)


def _confirm() -> bool:
    try:
        return click.confirm("書き込みますか?", default=False, err=True)
    except click.Abort:  # end of input or Ctrl-C at the prompt: not confirmed
        click.echo("", err=True)
        return False


def _print_result(result: WriteResult) -> None:
    entry = result.plan.entry
    if result.written:
        click.echo(f"書き込みました({result.slot + 1}欄目)。読み出して一致を確認しました。")
    else:
        click.echo(f"この内容はすでにカードに書き込まれています({result.slot + 1}欄目)。")
    click.echo(
        f"  {_date_ja(entry.write_date)}  {entry.lasdec} {entry.municipality}  {entry.address}"
    )


@card.command("write-address")
@click.option("--card-number", required=True, help="The 12-character number printed on the card.")
@click.option(
    "--lasdec", required=True, help="Local government code (6 digits) of the new address."
)
@click.option("--address", required=True, help="The new address (住居地) as it goes on the card.")
@click.option("--date", "write_date", required=True, help="Write date as YYYYMMDD (usually today).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts; staff confirmed).")
@_reader
@_json
@_config
def write_address(
    card_number: str,
    lasdec: str,
    address: str,
    write_date: str,
    yes: bool,
    reader_name: str | None,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Write a new address entry (date, local government code, address) into the card's chip.

    The write is a MODEL (docs/card-write.md): it needs a key provider in
    [card]. On a terminal it shows what will be written and asks; without a
    terminal it needs --yes. The block is read back and compared; if the
    card is pulled, put it back and run the same command again.

    \b
    Example:
      renkei-agent card write-address --card-number AB12345678CD \\
          --lasdec 131016 --address 東京都千代田区霞が関1丁目1番1号 --date 20250401
    """
    config = _load(config_path, as_json)
    number = _card_number(card_number, as_json)
    assert number is not None
    try:
        entry = prepare_entry(write_date, lasdec, address.strip(), today=dt.date.today())
        provider = _provider(config)
    except CardError as exc:
        _fail(exc, as_json)
    if not yes and not _stdin_is_tty():
        raise click.UsageError("not on a terminal: review the entry and pass --yes to write")
    try:
        with connect_card(reader_name or config.reader) as connection:
            plan = plan_write(connection, number, entry)
            if not yes and not plan.already_written:
                _show_plan(plan, provider)
                if not _confirm():
                    click.echo(
                        "renkei-agent: 書き込みを取りやめました(カードは変更していません)。",
                        err=True,
                    )
                    sys.exit(EXIT_DECLINED)
            result = execute_write(connection, plan, provider)
    except CardError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_result(result)
