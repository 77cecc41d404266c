"""The allow-list of registered USB media, as USBGuard rules (Debian package ``usbguard``).

The image's policy (docs/staff-exchange.md, "USBGuard rule set")::

    /etc/usbguard/usbguard-daemon.conf   ImplicitPolicyTarget=block (Debian's default)
    /etc/usbguard/rules.d/10-renkei-media.conf   registered media — this module writes it
    /etc/usbguard/rules.d/90-renkei-base.conf    keyboards, hubs, card readers (shipped)

USBGuard applies the first rule that matches a device, reading rules.conf and
then rules.d/ in name order, and blocks whatever no rule allows.  A registered
medium is allowed by vendor id, product id *and* serial number, and only while
every interface it presents is mass storage (``match-all { 08:*:* }``): a
stick that also presents a keyboard (a "BadUSB" stick) is blocked even with a
registered serial.  Every other storage device matches no allow rule and is
blocked; the daemon logs each decision (``journalctl -u usbguard``, and
``/var/log/usbguard/usbguard-audit.log``).

The rules are text; building and reading them is pure (tested against
``usbguard-rule-parser``).  The one edge, :class:`UsbguardCli`, runs the
``usbguard`` client to list blocked devices and the daemon restart that makes
a changed file take effect.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.atomicwrite import atomic_write

from .errors import AgentError

__all__ = [
    "RULES_FILE",
    "Medium",
    "UsbguardCli",
    "UsbguardError",
    "parse_device_line",
    "parse_rules",
    "read_allow_list",
    "rule_for",
    "rules_text",
    "write_allow_list",
]

#: The allow-list the agent manages; the daemon reads it at start (RuleFolder=).
RULES_FILE = Path("/etc/usbguard/rules.d/10-renkei-media.conf")
#: Marks the lines this module writes; anything else in the file is kept as it is.
_HEADER = (
    "# renkei: registered removable media (renkei-agent media register|list|revoke).\n"
    "# Written by renkei-agent; edit with the command, not by hand.\n"
    "# Only vendor:product + serial, and only while every interface is mass storage.\n"
)
_ID = re.compile(r"[0-9a-f]{4}")
_SERIAL_OK = re.compile(r"[\x21-\x7e]{1,126}")  # printable ASCII, no space, no quote issues
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(\{)|(\})|([^\s{}"]+))')


class UsbguardError(AgentError, ValueError):
    """A rule or device line cannot be read or made, or the usbguard tools failed.

    Codes: ``media.rule`` (bad rule text), ``media.serial`` (a device without a
    usable serial number cannot be registered), ``media.usbguard`` (the client
    or daemon failed).
    """

    code = "media.rule"


@dataclass(frozen=True)
class Medium:
    """One registered (or blocked, when listed from the daemon) USB device."""

    vendor: str
    product: str
    serial: str
    name: str = ""
    interfaces: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.vendor, self.product, self.serial)

    @property
    def is_storage(self) -> bool:
        return bool(self.interfaces) and all(i.startswith("08:") for i in self.interfaces)

    def to_json(self) -> dict:
        return {
            "vendor": self.vendor,
            "product": self.product,
            "serial": self.serial,
            "name": self.name,
            "interfaces": list(self.interfaces),
        }


def _quote(text: str) -> str:
    """A USBGuard string: double quotes; backslash, quote and non-ASCII escaped as \\xHH bytes."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or not 0x20 <= byte < 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _unquote(text: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            nxt = text[index + 1]
            if nxt == "x" and index + 3 < len(text) + 1:
                raw += bytes([int(text[index + 2 : index + 4], 16)])
                index += 4
                continue
            raw += {"n": b"\n", "t": b"\t", "a": b"\a"}.get(nxt, nxt.encode())
            index += 2
            continue
        raw += char.encode("utf-8")
        index += 1
    return raw.decode("utf-8", "replace")


def rule_for(medium: Medium) -> str:
    """The allow rule for one medium (one line, no newline).

    Raises UsbguardError ``media.serial`` when the serial is empty or not
    printable ASCII: without a serial every stick of that model would match.
    """
    vendor, product = medium.vendor.lower(), medium.product.lower()
    if not (_ID.fullmatch(vendor) and _ID.fullmatch(product)):
        raise UsbguardError(f"{vendor}:{product} is not a USB id (four hex digits each)")
    if not _SERIAL_OK.fullmatch(medium.serial or ""):
        raise UsbguardError(
            f"{vendor}:{product}: the device reports no usable serial number "
            f"({medium.serial!r}); use another model — without a serial every stick of "
            "this model would be allowed",
            code="media.serial",
            message_ja="この USB メモリには製造番号（シリアル番号）がないため登録できません。"
            "別の機種を使ってください。",
        )
    rule = f"allow id {vendor}:{product} serial {_quote(medium.serial)}"
    if medium.name:
        rule += f" name {_quote(medium.name)}"
    return rule + " with-interface match-all { 08:*:* }"


def rules_text(media: Iterable[Medium]) -> str:
    """The whole allow-list file: a header and one rule per medium, sorted, no duplicates."""
    seen: dict[tuple[str, str, str], Medium] = {}
    for medium in media:
        seen.setdefault(
            (medium.vendor.lower(), medium.product.lower(), medium.serial),
            medium,
        )
    lines = [rule_for(seen[key]) for key in sorted(seen)]
    return _HEADER + "".join(line + "\n" for line in lines)


def _tokens(text: str) -> list[str | tuple[str]]:
    """Words; quoted strings come back as 1-tuples so they are never taken for keywords."""
    out: list[str | tuple[str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise UsbguardError(f"cannot read the rule at {text[pos:]!r}")
        quoted, opening, closing, word = match.groups()
        if quoted is not None:
            out.append((_unquote(quoted),))
        else:
            out.append(opening or closing or word)
        pos = match.end()
    return out


def _rule_medium(tokens: list[str | tuple[str]]) -> tuple[str, Medium | None]:
    """(target, medium) of one rule; medium is None when the rule names no id + serial."""
    if not tokens or not isinstance(tokens[0], str):
        raise UsbguardError("a rule starts with allow, block or reject")
    target = tokens[0]
    if target not in ("allow", "block", "reject", "match", "device"):
        raise UsbguardError(f"unknown rule target {target!r}")
    attrs: dict[str, list[str]] = {}
    index = 1
    while index < len(tokens):
        key = tokens[index]
        if not isinstance(key, str):
            raise UsbguardError(f"expected an attribute name, got {key[0]!r}")
        index += 1
        values: list[str] = []
        if index < len(tokens) and tokens[index] in (
            "all-of",
            "one-of",
            "none-of",
            "equals",
            "equals-ordered",
            "match-all",
        ):
            index += 1
        if index < len(tokens) and tokens[index] == "{":
            index += 1
            while index < len(tokens) and tokens[index] != "}":
                value = tokens[index]
                values.append(value[0] if isinstance(value, tuple) else value)
                index += 1
            index += 1
        elif index < len(tokens):
            value = tokens[index]
            values.append(value[0] if isinstance(value, tuple) else value)
            index += 1
        attrs[key] = values
    ident = (attrs.get("id") or [""])[0]
    serial = attrs.get("serial")
    if ":" not in ident or not serial:
        return target, None
    vendor, _, product = ident.partition(":")
    name = (attrs.get("name") or [""])[0]
    return target, Medium(vendor, product, serial[0], name, tuple(attrs.get("with-interface", ())))


def parse_rules(text: str) -> list[Medium]:
    """The media allowed by ``allow id V:P serial "S" …`` rules in a rules file's text.

    Comments and blank lines are skipped; other rules are ignored.  Raises
    UsbguardError for a line that is not a rule.
    """
    media = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            target, medium = _rule_medium(_tokens(line))
        except UsbguardError as exc:
            raise UsbguardError(f"line {number}: {exc.message}") from None
        if target == "allow" and medium is not None:
            media.append(medium)
    return media


def parse_device_line(line: str) -> tuple[int, str, Medium | None]:
    """One line of ``usbguard list-devices``: ``N: block id V:P serial "S" …`` →
    (device number, target, medium or None when it has no id)."""
    number, sep, rule = line.partition(":")
    if not sep or not number.strip().isdigit():
        raise UsbguardError(f"not a usbguard device line: {line!r}")
    target, medium = _rule_medium(_tokens(rule.strip()))
    if medium is None:
        tokens = _tokens(rule.strip())
        if "id" in tokens and "serial" not in tokens:
            ident = tokens[tokens.index("id") + 1]
            if isinstance(ident, str) and ":" in ident:
                vendor, _, product = ident.partition(":")
                medium = Medium(vendor, product, "", "", _interfaces(tokens))
    return int(number), target, medium


def _interfaces(tokens: list[str | tuple[str]]) -> tuple[str, ...]:
    if "with-interface" not in tokens:
        return ()
    index = tokens.index("with-interface") + 1
    if index < len(tokens) and tokens[index] == "{":
        end = tokens.index("}", index)
        return tuple(t for t in tokens[index + 1 : end] if isinstance(t, str))
    value = tokens[index] if index < len(tokens) else ""
    return (value,) if isinstance(value, str) else ()


def read_allow_list(path: Path = RULES_FILE) -> list[Medium]:
    """The registered media in ``path`` (none when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_rules(text)


def write_allow_list(media: Iterable[Medium], path: Path = RULES_FILE) -> str:
    """Replace the allow-list atomically (mode 0600, as usbguard-daemon requires); return it."""
    text = rules_text(media)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode=0o600) as handle:
        handle.write(text.encode("utf-8"))
    return text


class UsbguardCli:
    """The ``usbguard`` client and the daemon's restart: the only part that runs programs."""

    def __init__(self, usbguard: str | None = None, systemctl: str | None = None):
        self.usbguard = usbguard or shutil.which("usbguard")
        self.systemctl = systemctl or shutil.which("systemctl")

    def _run(self, argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise UsbguardError(f"{argv[0]}: {exc}", code="media.usbguard") from None
        if done.returncode != 0:
            raise UsbguardError(
                f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}",
                code="media.usbguard",
            )
        return done.stdout

    def blocked_storage(self) -> list[Medium]:
        """Storage devices the daemon is blocking now (candidates for ``register``)."""
        if self.usbguard is None:
            raise UsbguardError("usbguard is not installed", code="media.usbguard")
        found = []
        for line in self._run([self.usbguard, "list-devices", "--blocked"]).splitlines():
            if line.strip():
                _number, _target, medium = parse_device_line(line)
                if medium is not None and medium.is_storage:
                    found.append(medium)
        return found

    def reload(self) -> bool:
        """Restart the daemon so a changed rules file takes effect; False when not running here.

        usbguard-daemon reads rules.d/ only at start; a restart keeps
        present devices as the new policy says (PresentDevicePolicy=apply-policy).
        """
        if self.systemctl is None or not os.path.isdir("/run/systemd/system"):
            return False
        self._run([self.systemctl, "try-restart", "usbguard.service"])
        return True
