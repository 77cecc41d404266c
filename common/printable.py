"""Text a terminal shows as it is: every character it could act on written as an escape.

Strings that came from outside (an agent version a terminal reported, a file
name staff chose, a record id in an imported file) are shown to operators on
a terminal.  Some characters are not text there: C0 and C1 controls start
escape sequences (``ESC [``, the one-byte CSI ``0x9B``) that move the cursor,
rewrite earlier lines or set the window title; bidirectional overrides
(U+202E …) and other format characters make one string look like another;
line and paragraph separators break a line where none was printed.

:func:`printable` writes each such character as a Python-style escape
(``\\x9b``, ``\\u202e``, ``\\U000e0041``), so what is shown is exactly what
was stored, in plain view.  :func:`printable_json` does the same for JSON
text as ``\\uXXXX`` escapes, which any JSON reader turns back into the same
string (``json.dumps(..., ensure_ascii=False)`` leaves C1 controls, DEL,
format characters and lone surrogates as they are).

The unsafe set is by Unicode category: ``Cc`` (C0, DEL, C1), ``Cf`` (format:
bidi controls, zero-width characters, the BOM, tag characters), ``Cs`` (lone
surrogates, which no UTF-8 output can even encode), ``Zl`` and ``Zp``.
Everything else, Japanese included, is shown as it is.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache

__all__ = ["UNSAFE_CATEGORIES", "is_printable", "printable", "printable_json"]

#: Unicode categories a terminal may act on instead of showing.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@cache
def _unsafe_pattern() -> re.Pattern[str]:
    """One character class of every unsafe code point (built once from the Unicode database)."""
    ranges: list[str] = []
    start = None
    for point in range(sys.maxunicode + 2):
        unsafe = point <= sys.maxunicode and unicodedata.category(chr(point)) in UNSAFE_CATEGORIES
        if unsafe and start is None:
            start = point
        elif not unsafe and start is not None:
            end = point - 1
            ranges.append(f"\\U{start:08x}" if start == end else f"\\U{start:08x}-\\U{end:08x}")
            start = None
    return re.compile("[" + "".join(ranges) + "]")


def is_printable(text: str) -> bool:
    """True when ``text`` has no character :func:`printable` would escape."""
    # str.isprintable (C speed) is False for every unsafe category (and for a few safe ones,
    # such as tabs and unassigned code points): only then is the character class needed.
    return text.isprintable() or _unsafe_pattern().search(text) is None


def _escape(match: re.Match[str]) -> str:
    point = ord(match.group())
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def printable(text: str, *, keep: str = "") -> str:
    """``text`` with every unsafe character escaped, except those in ``keep`` (e.g. ``"\\t"``).

    ``keep`` is for a caller's own layout (the tab between columns, the line
    break between lines): only the caller knows which of those it wrote.
    """
    if is_printable(text):
        return text
    if not keep:
        return _unsafe_pattern().sub(_escape, text)
    return _unsafe_pattern().sub(
        lambda match: match.group() if match.group() in keep else _escape(match), text
    )


def _json_escape(match: re.Match[str]) -> str:
    point = ord(match.group())
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    point -= 0x10000  # astral: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def printable_json(text: str) -> str:
    """JSON text (from ``json.dumps``) with every unsafe character inside it as ``\\uXXXX``.

    Line breaks and tabs outside strings are the JSON's own layout (``indent``)
    and stay; inside strings ``json.dumps`` has already escaped every C0
    control.  The result parses to exactly the same value.
    """
    if is_printable(text):
        return text
    return _unsafe_pattern().sub(
        lambda match: match.group() if match.group() in "\n\t" else _json_escape(match), text
    )
