"""Opt-in degeneration (縮退): encode with the MJ縮退マップ as a reported fallback.

Only a spelling with no Juki code of its own is replaced, and only by what
the MJ縮退マップ gives for the MJ character it spells (see ``SOURCE.md`` for
the order in which its tables are tried). Every replacement is returned as a
``Substitution`` so it can be shown to staff and recorded; a spelling the map
does not cover is still an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import ENCODING, JukiEncodeError, _spelling_bounds, encode_reason
from .tables import degeneration, tables


@dataclass(frozen=True)
class Substitution:
    """One degenerated spelling.

    ``position`` is the ``str`` index of ``original`` in the input text;
    ``source`` names the MJ縮退マップ table that gave ``replacement``.
    """

    position: int
    original: str
    replacement: str
    source: str


def encode_degenerate(text: str) -> tuple[bytes, list[Substitution]]:
    """Encode ``text``, degenerating spellings without a Juki code.

    Returns the bytes and every substitution made (empty when ``text`` was
    directly encodable). Raises ``JukiEncodeError`` at the first spelling
    that has neither a Juki code nor an MJ縮退マップ entry.
    """
    t = tables()
    search, table = t.encode_scan.search, t.encode
    m = search(text)
    if m is None:
        return text.encode("utf-16-be"), []
    fallback = degeneration().replacements
    out: list[bytes] = []
    subs: list[Substitution] = []
    done = 0
    while m is not None:
        start, end = _spelling_bounds(text, m.start(), done)
        spelling = text[start:end]
        unit = table.get(spelling)
        if unit is None:
            entry = fallback.get(spelling)
            if entry is None:
                raise JukiEncodeError(
                    ENCODING, text, start, end, encode_reason(spelling) + "; no MJ縮退マップ entry"
                )
            replacement, source = entry
            unit = table[replacement]
            subs.append(Substitution(start, spelling, replacement, source))
        out.append(text[done:start].encode("utf-16-be"))
        out.append(unit)
        done = end
        m = search(text, done)
    out.append(text[done:].encode("utf-16-be"))
    return b"".join(out), subs


def degeneration_sources() -> tuple[str, ...]:
    """The MJ縮退マップ table names, in the order they are tried."""
    return degeneration().sources
