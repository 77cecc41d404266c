"""``renkei-provision``: a thin click shell over settings, render, apply, enroll, checks and report.

Every command takes ``--root DIR`` (default ``/``): the tree to read and
write.  Errors of the library become ``click.ClickException`` (exit 1) with
the library's message, which names the setting and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from common.lasdec import lookup

from . import apply as applying
from .render import PROVISION_TOML, render_all
from .settings import (
    FIELDS,
    SettingsError,
    interface_exists,
    parse_settings,
    read_settings_file,
)

_root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Write into this tree instead of the running system (image build, tests).",
)


def _real(root: Path) -> bool:
    return root.resolve() == Path("/")


def load_saved_settings(root: Path):  # type: ignore[no-untyped-def]
    """The settings ``configure`` saved in ``root`` (ClickException when there are none)."""
    path = applying.under(root, PROVISION_TOML)
    if not path.exists():
        raise click.ClickException(f"{path} does not exist: run 'renkei-provision configure' first")
    try:
        return parse_settings(read_settings_file(path))
    except SettingsError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Set up the appliance's LGWAN port, enroll it, check it, and write the report.

    \b
    Example (on site, as root):
      renkei-provision configure
      renkei-provision enroll --token 7K2QM-4TZ9W-ABCDE-12345
      renkei-provision check
      renkei-provision report --out /root/report
    """


def _prompt_settings(given: dict[str, Any]) -> dict[str, Any]:
    """Ask for every missing setting, re-asking a field until it is valid on its own."""
    data = dict(given)

    def ask(name: str, text: str, default: Any = None, **options: Any) -> None:
        if name in data:
            return
        while True:
            value = click.prompt(text, default=default, **options)
            trial = {**data, name: value}
            try:
                parse_settings(trial)
            except SettingsError as exc:
                if exc.field == name:
                    click.echo(f"  ✗ {exc.message}", err=True)
                    continue
            data[name] = value
            return

    ask("interface", "LGWAN interface (LGWAN側のインタフェース)", "eth0")
    ask("dhcp", "Use DHCP? (DHCPを使う)", False, type=bool)
    if not data.get("dhcp"):
        ask("address", "Address/prefix (IPアドレス/プレフィックス), e.g. 10.1.2.10/24")
        ask("gateway", "Gateway (ゲートウェイ)")
    ask("dns_servers", "DNS servers, comma separated (DNSサーバ)")
    ask("ntp_servers", "NTP servers, comma separated (NTPサーバ)")
    ask("server_url", "Linkage server (連携サーバ)", "https://renkei.moj.lg.jp")
    ask("server_address", "Linkage server address or prefix (連携サーバのアドレス)")
    while "lasdec" not in data:
        value = click.prompt("Local government code, 6 digits (地方公共団体コード)")
        try:
            parse_settings({**data, "lasdec": value})
        except SettingsError as exc:
            if exc.field == "lasdec":
                click.echo(f"  ✗ {exc.message}", err=True)
                continue
        found = lookup(value.strip())
        name = found.full_name if found else value
        if click.confirm(f"  {value.strip()} = {name} ?", default=True):
            data["lasdec"] = value.strip()
    if "smtp_host" not in data and click.confirm("Configure an SMTP relay? (メール中継)", False):
        ask("smtp_host", "SMTP relay address (SMTPサーバ)")
        ask("smtp_port", "SMTP port", 25, type=int)
    return data


def _key_lines(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--lan-drop-key``: a key line as is; anything else is a file of key lines."""
    from .landrop import is_key_line

    lines: list[str] = []
    for value in values:
        if is_key_line(value):
            lines.append(value)
            continue
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(
                f"{value}: neither a public key nor a readable file ({exc})"
            ) from None
        lines += [line for line in text.splitlines() if line.strip() and line[0] != "#"]
    return tuple(lines)


@main.command()
@_root_option
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the settings from a TOML file (keys as in provision.toml).",
)
@click.option("--interface")
@click.option("--dhcp/--static", default=None)
@click.option("--address", help="Address with prefix, e.g. 10.1.2.10/24.")
@click.option("--gateway")
@click.option("--dns", "dns_servers", multiple=True, help="A DNS server (repeat for several).")
@click.option("--ntp", "ntp_servers", multiple=True, help="An NTP server (repeat for several).")
@click.option("--server-url")
@click.option("--server-address", help="The server's IPv4 address or prefix on the LGWAN.")
@click.option("--lasdec", help="Local government code (6 digits, with check digit).")
@click.option("--smtp-host")
@click.option("--smtp-port", type=int)
@click.option(
    "--business-end", help="End of business hours, HH:MM (the agent runs 15 minutes later)."
)
@click.option("--lan-drop-interface", help="LAN drop: the second interface (off when not given).")
@click.option("--lan-drop-address", help="LAN drop: this appliance's LAN address/prefix.")
@click.option("--lan-drop-allow", multiple=True, help="LAN drop: a staff PC address or prefix.")
@click.option(
    "--lan-drop-key",
    "lan_drop_keys",
    multiple=True,
    callback=lambda _ctx, _param, values: _key_lines(values),
    help="LAN drop: a staff public key line, or a .pub / authorized_keys file of them.",
)
@click.option("--lan-drop-gateway", help="LAN drop: the LAN router, for PCs in other subnets.")
@click.option("--dry-run", is_flag=True, help="Show what would change (a diff); write nothing.")
@click.option("--yes", is_flag=True, help="Do not prompt: every setting comes from flags/file.")
def configure(root: Path, from_file: Path | None, dry_run: bool, yes: bool, **flags: Any) -> None:
    """Write the LGWAN network, chrony, resolver, firewall and agent settings.

    \b
    Example:
      renkei-provision configure --yes --interface eth1 --address 10.1.2.10/24 \\
        --gateway 10.1.2.1 --dns 10.1.2.3 --ntp 10.1.2.5 \\
        --server-url https://renkei.moj.lg.jp --server-address 10.20.0.0/16 --lasdec 131016
    """
    data: dict[str, Any] = {}
    try:
        if from_file is not None:
            data.update(read_settings_file(from_file))
        for name, value in flags.items():
            if value not in (None, ()):
                data[name] = list(value) if isinstance(value, tuple) else value
        if not yes:
            data = _prompt_settings(data)
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise SettingsError(sorted(unknown)[0], "unknown setting")
        settings = parse_settings(data)
    except SettingsError as exc:
        raise click.ClickException(f"{exc} — nothing was written") from None
    if _real(root) and not interface_exists(settings.interface):
        raise click.ClickException(
            f"interface: {settings.interface!r} does not exist on this appliance "
            "(see 'ip link'); nothing was written"
        )
    lan = settings.lan_drop
    if _real(root) and lan is not None and not interface_exists(lan.interface):
        raise click.ClickException(
            f"lan_drop_interface: {lan.interface!r} does not exist (see 'ip link'); "
            "nothing was written"
        )
    files = render_all(settings, applying.read_enrollment(root))
    click.echo(f"{settings.lasdec} {settings.municipality}")
    if dry_run:
        changes = applying.plan(root, files)
        click.echo(applying.diff_text(changes) or "no changes", nl=False)
        return
    try:
        changes = applying.apply(root, files)
    except applying.ApplyError as exc:
        raise click.ClickException(str(exc)) from None
    for change in changes:
        click.echo(f"wrote {change.path}")
    if not changes:
        click.echo("no changes")
    elif _real(root):
        click.echo(
            "now: networkctl reload; systemctl restart chrony nftables; systemctl daemon-reload"
        )
        if settings.lan_drop is not None:
            click.echo("LAN drop: systemctl enable --now renkei-landrop-sshd.service")


@main.command()
@_root_option
def rollback(root: Path) -> None:
    """Put back the files the last configure/enroll changed (once).

    \b
    Example:
      renkei-provision rollback
    """
    try:
        restored = applying.rollback(root)
    except applying.ApplyError as exc:
        raise click.ClickException(str(exc)) from None
    for path in restored:
        click.echo(f"restored {path}")


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=1) if as_json else text)


@main.command("enroll")
@_root_option
@click.option(
    "--token",
    required=True,
    prompt="Enrollment token (登録トークン)",
    hide_input=False,
    help="The one-time token from 'renkei-server terminal token'.",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The CA that signs the server's certificate (copied to /etc/renkei).",
)
@click.option("--force", is_flag=True, help="Enroll again although this appliance is enrolled.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def enroll_command(
    root: Path, token: str, ca_file: Path | None, force: bool, as_json: bool
) -> None:
    """Make the terminal key and enroll it with the server using a one-time token.

    \b
    Example:
      renkei-provision enroll --token 7K2QM-4TZ9W-ABCDE-12345 --ca-file /media/usb/ca.pem
    """
    from .enroll import EnrollError, enroll

    settings = load_saved_settings(root)
    existing = applying.read_enrollment(root)
    if existing is not None and not force:
        raise click.ClickException(
            f"already enrolled as {existing.terminal_id}; use --force to enroll a new key "
            "(ask the operator to revoke the old terminal)"
        )
    try:
        result = enroll(settings, root, token, ca_file=ca_file)
    except EnrollError as exc:
        hint = f"\n  {exc.hint}" if exc.hint else ""
        raise click.ClickException(f"{exc}{hint}\nnothing was written") from None
    data = {
        "terminal_id": result.terminal_id,
        "lasdec": result.lasdec,
        "municipality": result.municipality,
        "key_fingerprint": result.key_fingerprint,
        "server_key_id": result.server_key_id,
    }
    _emit(
        data,
        as_json,
        f"enrolled: {result.terminal_id} {result.lasdec} {result.municipality}\n"
        f"terminal key {result.key_fingerprint}; server key pinned {result.server_key_id}",
    )


def _context(root: Path):  # type: ignore[no-untyped-def]
    from .checks import Context

    return Context(load_saved_settings(root), applying.read_enrollment(root), root=root)


_MARK = {"pass": "OK  ", "warn": "WARN", "fail": "NG  "}


@main.command("check")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def check_command(root: Path, as_json: bool) -> None:
    """Check link, gateway, DNS, NTP, chrony, TLS, signed request, clock, firewall and timer.

    Exit code 0 only when every check passes (1: a failure, 2: warnings only).

    \b
    Example:
      renkei-provision check
    """
    from .checks import run_checks, summary_exit_code

    checks = run_checks(_context(root))
    lines = []
    for item in checks:
        lines.append(f"[{_MARK[item.status]}] {item.name}: {item.detail}")
        if item.hint:
            lines.append(f"        → {item.hint}")
    _emit([c.to_json() for c in checks], as_json, "\n".join(lines))
    raise SystemExit(summary_exit_code(checks))


@main.command("report")
@_root_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for the JSON and HTML report.",
)
def report_command(root: Path, out: Path) -> None:
    """Run every check and write the signed installation report (JSON + printable HTML).

    \b
    Example:
      renkei-provision report --out /media/usb
    """
    from datetime import UTC, datetime

    from appliance.agent.transport import load_private_key

    from .checks import run_checks_timed
    from .report import build_report, write_report

    ctx = _context(root)
    if ctx.enrollment is None:
        raise click.ClickException("not enrolled: run 'renkei-provision enroll' first")
    key = load_private_key(applying.under(root, ctx.enrollment.key_path))
    results = run_checks_timed(ctx)
    signed = build_report(ctx.settings, ctx.enrollment, key, results, now=datetime.now(UTC))
    for path in write_report(signed, out):
        click.echo(f"wrote {path}")
    click.echo(f"result: {signed['statement']['result']}")
