"""``renkei-agent media …``: registered USB media (a thin click shell over media and usbguard).

Every media command needs root: the allow-list is root's, and mounting,
unmounting and the mounted medium (owned by root) are too.  Exit codes: 0
done; 1 some imported files were refused (the reports are on the medium);
2 usage, configuration or not root; 5 the medium failed (absent, broken,
pulled, full).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import click

from .config import load_config
from .errors import AgentError, ConfigError
from .media import (
    DEVICE_LINK,
    JOURNAL_NAME,
    MOUNT_POINT,
    MediaError,
    export_to_media,
    import_from_media,
)
from .mount import Mounter
from .usbguard import (
    RULES_FILE,
    Medium,
    UsbguardCli,
    UsbguardError,
    read_allow_list,
    write_allow_list,
)

__all__ = ["EXIT_MEDIA", "media"]

EXIT_CONFIG = 2
EXIT_MEDIA = 5

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
_config = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="agent.toml to read (default: $RENKEI_AGENT_CONFIG, else /etc/renkei/agent.toml).",
)
_rules = click.option(
    "--rules-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=RULES_FILE,
    show_default=True,
    help="The USBGuard allow-list file.",
)
_device = click.option(
    "--device",
    type=click.Path(path_type=Path),
    default=DEVICE_LINK,
    show_default=True,
    help="Block device of the medium (made by the udev rule).",
)
_where = click.option(
    "--mount-point",
    type=click.Path(file_okay=False, path_type=Path),
    default=MOUNT_POINT,
    show_default=True,
    help="Where the medium is mounted (nosuid,nodev,noexec).",
)


def _fail(exc: AgentError, status: int) -> None:
    click.echo(f"renkei-agent: {exc.message}", err=True)
    if exc.message_ja != exc.message:
        click.echo(f"renkei-agent: {exc.message_ja}", err=True)
    sys.exit(status)


def _need_root() -> None:
    if os.geteuid() != 0:
        _fail(
            AgentError(
                "media commands must run as root (sudo renkei-agent media …)",
                code="media.root",
                message_ja="この操作には管理者（root）の権限が必要です。",
            ),
            EXIT_CONFIG,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@click.group()
def media() -> None:
    """Registered USB media: register, list, revoke; export, import, eject.

    \b
    Example:
      sudo renkei-agent media export    # today's ministry notices onto the medium
      sudo renkei-agent media eject
    """


@media.command()
@click.option("--vendor", help="USB vendor id (4 hex digits), with --product and --serial.")
@click.option("--product", help="USB product id (4 hex digits).")
@click.option("--serial", help="The device's serial number (iSerial).")
@click.option("--name", default="", help="A label, e.g. the stick's product name.")
@_rules
@_json
def register(vendor, product, serial, name, rules_file, as_json) -> None:
    """Allow one USB stick: the one USBGuard is blocking now, or the one named by ids.

    \b
    Example:
      sudo renkei-agent media register        # plug the new stick in first
      sudo renkei-agent media register --vendor 0781 --product 5583 --serial 4C53000123
    """
    _need_root()
    cli = UsbguardCli()
    try:
        if vendor or product or serial:
            if not (vendor and product and serial):
                raise click.UsageError("give --vendor, --product and --serial together")
            medium = Medium(vendor.lower(), product.lower(), serial, name)
        else:
            blocked = cli.blocked_storage()
            if len(blocked) != 1:
                listed = "; ".join(f"{m.vendor}:{m.product} {m.serial!r} {m.name}" for m in blocked)
                raise UsbguardError(
                    f"{len(blocked)} blocked USB storage devices ({listed or 'none'}); "
                    "plug in exactly one, or give --vendor/--product/--serial",
                    code="media.usbguard",
                )
            medium = blocked[0]
        media_list = read_allow_list(rules_file)
        if medium.key not in {m.key for m in media_list}:
            media_list.append(medium)
        write_allow_list(media_list, rules_file)
        reloaded = cli.reload()
    except UsbguardError as exc:
        _fail(exc, EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps({"registered": medium.to_json(), "reloaded": reloaded}))
    else:
        click.echo(f"registered {medium.vendor}:{medium.product} serial {medium.serial!r}")


@media.command("list")
@_rules
@_json
def list_media(rules_file, as_json) -> None:
    """List the registered media.

    \b
    Example:
      sudo renkei-agent media list --json
    """
    _need_root()
    try:
        found = read_allow_list(rules_file)
    except UsbguardError as exc:
        _fail(exc, EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps([m.to_json() for m in found], ensure_ascii=False))
        return
    for m in found:
        click.echo(f"{m.vendor}:{m.product}\t{m.serial}\t{m.name}")


@media.command()
@click.option("--serial", required=True, help="Serial number of the medium to revoke.")
@_rules
def revoke(serial, rules_file) -> None:
    """Stop allowing the medium with this serial number.

    \b
    Example:
      sudo renkei-agent media revoke --serial 4C53000123
    """
    _need_root()
    try:
        found = read_allow_list(rules_file)
        kept = [m for m in found if m.serial != serial]
        if len(kept) == len(found):
            raise UsbguardError(f"no registered medium has serial {serial!r}", code="media.unknown")
        write_allow_list(kept, rules_file)
        UsbguardCli().reload()
    except UsbguardError as exc:
        _fail(exc, EXIT_CONFIG)
    click.echo(f"revoked {len(found) - len(kept)} medium (serial {serial!r})")


def _setup(config_path, device, where):
    _need_root()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(exc, EXIT_CONFIG)
    mounter = Mounter()
    try:
        mounted = mounter.attach(device, where)
    except MediaError as exc:
        _fail(exc, EXIT_MEDIA)
    return config, mounter, mounted


@media.command("export")
@click.option("--date", help="Export the files of this business date (YYYY-MM-DD) again.")
@click.option("--all", "everything", is_flag=True, help="Export every file in the inbox.")
@_device
@_where
@_config
@_json
def export_cmd(date, everything, device, mount_point, config_path, as_json) -> None:
    """Copy the ministry notices not yet exported onto the medium (MINISTRY/, with a manifest).

    \b
    Example:
      sudo renkei-agent media export --date 2025-04-01
    """
    if date and everything:
        raise click.UsageError("--date and --all exclude each other")
    config, mounter, mounted = _setup(config_path, device, mount_point)
    try:
        result = export_to_media(
            config.folder_root / "inbox",
            mounted.where,
            config.state_dir / JOURNAL_NAME,
            mounter.identify(mounted.source),
            now=_now,
            date=date,
            everything=everything,
        )
    except (MediaError, ValueError) as exc:
        if isinstance(exc, MediaError):
            _fail(exc, EXIT_MEDIA)
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        click.echo(f"exported {len(result.files)} file(s); manifest {result.manifest or '-'}")


@media.command("import")
@_device
@_where
@_config
@_json
def import_cmd(device, mount_point, config_path, as_json) -> None:
    """Take municipality notices from MUNICIPALITY/ on the medium into the outbox.

    Bad files stay on the medium (MUNICIPALITY/refused/) with a Japanese report.

    \b
    Example:
      sudo renkei-agent media import
    """
    config, mounter, mounted = _setup(config_path, device, mount_point)
    try:
        result = import_from_media(
            mounted.where,
            config.folder_root / "outbox",
            config.state_dir / JOURNAL_NAME,
            mounter.identify(mounted.source),
            now=_now,
            reporter=config.lasdec,
            max_bytes=config.max_file_bytes,
        )
    except MediaError as exc:
        _fail(exc, EXIT_MEDIA)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        for f in result.files:
            click.echo(f"{f.outcome}\t{f.name}\t{f.code}".rstrip())
    sys.exit(1 if result.refused else 0)


@media.command()
@_where
def eject(mount_point) -> None:
    """Write everything out and unmount the medium; then it may be pulled.

    \b
    Example:
      sudo renkei-agent media eject
    """
    _need_root()
    try:
        done = Mounter().eject(mount_point)
    except MediaError as exc:
        _fail(exc, EXIT_MEDIA)
    click.echo("媒体を取り外せます / the medium may be removed" if done else "nothing mounted")
