"""Strict encode/decode between Unicode ``str`` and 住基統一文字コード bytes.

Each character is one big-endian 16-bit unit. Most units are their own UCS-2
code point, so both directions run Python's C ``utf-16-be`` codec over the
whole input and then one compiled character class (``tables.Tables``) finds
the few places that need the table: added kanji (J+AAxx-D6FF), kanji whose
plain Unicode form sits at another code, spellings with variation selectors,
and everything that is not Juki at all. A per-character Python loop would be
an order of magnitude slower.

Errors are never replaced silently: strict is the default everywhere; the
standard handlers ("replace", "ignore", ...) work only when asked for by name.
Positions in encode errors are ``str`` indexes; in decode errors, byte
offsets (``offset`` counts from the start of the stream for incremental
decoding, ``start`` is relative to the chunk as ``UnicodeDecodeError``
requires).
"""

from __future__ import annotations

import codecs
import typing
import unicodedata
from types import EllipsisType

from .tables import VARIATION_SELECTORS, tables

ENCODING = "juki"
# Windows maps six JIS X 0208 characters to other code points; Juki (like
# JIS X 0221) uses the standard ones. Named in messages, never substituted.
_CP932_LOOKALIKES = {
    "\uff5e": "\u301c",  # ～ -> 〜 WAVE DASH
    "\u2225": "\u2016",  # ∥ -> ‖
    "\uff0d": "\u2212",  # － -> − MINUS SIGN
    "\uffe0": "\u00a2",  # ￠ -> ¢
    "\uffe1": "\u00a3",  # ￡ -> £
    "\uffe2": "\u00ac",  # ￢ -> ¬
}
_INT_MAX = 0x7FFFFFFF  # TextIOWrapper keeps decoder flags in a C int


class JukiEncodeError(UnicodeEncodeError):
    """A character (or base + variation selector) has no Juki code.

    ``start``/``end`` index the offending spelling in ``object``.
    """

    def __str__(self) -> str:
        return (
            f"position {self.start}: {describe(self.object[self.start : self.end])}: {self.reason}"
        )


class JukiDecodeError(UnicodeDecodeError):
    """A 16-bit unit is not an assigned Juki code, or the data has an odd length.

    ``offset`` is the absolute byte offset in the stream (equal to ``start``
    for one-shot decoding), or None when a seek made it unknown.
    """

    def __init__(self, *args: object, offset: int | None | EllipsisType = ...) -> None:
        super().__init__(*args)
        self.offset = self.start if offset is ... else offset

    def __str__(self) -> str:
        unit = bytes(self.object[self.start : self.end])
        if len(unit) % 2:
            what = f"trailing byte 0x{unit.hex().upper()}"
        else:
            what = " ".join(f"J+{unit[i : i + 2].hex().upper()}" for i in range(0, len(unit), 2))
        where = "unknown offset" if self.offset is None else f"byte offset {self.offset}"
        return f"{where}: {what}: {self.reason}"


def describe(s: str) -> str:
    """``U+8FBB U+E0102 '辻󠄂'`` — code points first, so invisible selectors show."""
    return " ".join(f"U+{ord(c):04X}" for c in s) + f" {s!r}"


def _spelling_bounds(text: str, hit: int, done: int) -> tuple[int, int]:
    """The spelling around a scanner hit: a character plus an optional selector.

    A selector hit whose base lies before ``done`` (already encoded) stands
    alone; otherwise the base is the character before it, which the scanner
    passed over because it encodes to itself on its own.
    """
    if text[hit] in VARIATION_SELECTORS:
        if hit - 1 >= done and text[hit - 1] not in VARIATION_SELECTORS:
            return hit - 1, hit + 1
        return hit, hit + 1
    if hit + 1 < len(text) and text[hit + 1] in VARIATION_SELECTORS:
        return hit, hit + 2
    return hit, hit + 1


def encode_reason(spelling: str) -> str:
    """Why ``spelling`` has no Juki code, in words that say what to do."""
    t = tables()
    first = ord(spelling[0])
    if spelling[0] in VARIATION_SELECTORS:
        return "variation selector without a base character"
    if 0xD800 <= first <= 0xDFFF:
        return "lone surrogate (not a character)"
    if first == 0xFEFF:
        return "byte order mark / zero width no-break space: Juki text carries no BOM"
    if 0xAC00 <= first <= 0xD7A3:
        return "Hangul has no Juki code (J+AD00-D6FF are added kanji, not Hangul)"
    if len(spelling) > 1:
        base = t.encode.get(spelling[0])
        hint = f"; the base alone is J+{base.hex().upper()}" if base is not None else ""
        return f"this variation sequence is not in the MJ table{hint}"
    if unicodedata.category(spelling) == "Cc":
        return "control character (only TAB, LF and CR are Juki)"
    if spelling in _CP932_LOOKALIKES:
        jis = _CP932_LOOKALIKES[spelling]
        return f"Microsoft cp932 form, not Juki; the JIS X 0208 character is {describe(jis)}"
    return "no Juki code (not in the MJ table nor the Juki non-kanji set)"


def decode_reason(code: int) -> str:
    if code == 0xFEFF:
        return "byte order mark: Juki data carries no BOM"
    if code == 0xFFFE:
        return "byte-swapped BOM: this looks like little-endian UTF-16, not Juki"
    if 0xD800 <= code <= 0xDFFF:
        return "not an assigned Juki code (surrogate range)"
    if code < 0x20 or code == 0x7F:
        return "control code (only J+0009, J+000A and J+000D are Juki)"
    elsewhere = tables().encode.get(chr(code))
    if elsewhere is not None:
        return f"not an assigned Juki code ({describe(chr(code))} is J+{elsewhere.hex().upper()})"
    return "not an assigned Juki code"


def encode(text: str) -> bytes:
    """Encode ``text`` strictly; raise ``JukiEncodeError`` at the first unmapped spelling."""
    return encode_with(text, "strict")


def encode_with(text: str, errors: str = "strict") -> bytes:
    """Encode with a named codecs error handler ("strict" unless asked otherwise)."""
    t = tables()
    parts = t.encode_scan.split(text)
    if len(parts) == 1:
        return text.encode("utf-16-be")
    fast = t.encode_fast
    try:
        # Odd items are the scanner's hits; each becomes the character whose
        # UTF-16 unit is its Juki code. A selector or a bad character is not
        # in `fast` and takes the careful path.
        parts[1::2] = [fast[c] for c in parts[1::2]]
    except KeyError:
        pass  # (outside the handler, so errors do not chain the KeyError)
    else:
        return "".join(parts).encode("utf-16-be")
    return _encode_careful(text, errors)


def _encode_careful(text: str, errors: str) -> bytes:
    """Spelling by spelling: variation sequences, error reporting and handlers."""
    t = tables()
    search = t.encode_scan.search
    m = search(text)
    table = t.encode
    out: list[bytes] = []
    done = 0
    while m is not None:
        start, end = _spelling_bounds(text, m.start(), done)
        unit = table.get(text[start:end])
        if start > done:
            out.append(text[done:start].encode("utf-16-be"))
        if unit is not None:
            out.append(unit)
            done = end
        else:
            exc = JukiEncodeError(ENCODING, text, start, end, encode_reason(text[start:end]))
            if errors == "strict":
                raise exc
            replacement, done = codecs.lookup_error(errors)(exc)
            if done < 0:
                done += len(text)
            if isinstance(replacement, str):
                replacement = encode(replacement)
            out.append(bytes(replacement))
        m = search(text, done)
    out.append(text[done:].encode("utf-16-be"))
    return b"".join(out)


def unencodable(text: str) -> list[tuple[int, str]]:
    """Every spelling of ``text`` without a Juki code, as (str index, spelling).

    A spelling is one character, or a base character with its variation
    selector. Lets validation report all problems of a record at once.
    """
    t = tables()
    search, table = t.encode_scan.search, t.encode
    hits = t.encode_scan.findall(text)
    if all(c in t.encode_fast for c in hits):
        return []  # no selectors and nothing unmapped
    bad: list[tuple[int, str]] = []
    done = 0
    while (m := search(text, done)) is not None:
        start, end = _spelling_bounds(text, m.start(), done)
        if text[start:end] not in table:
            bad.append((start, text[start:end]))
        done = end
    return bad


def is_encodable(text: str) -> bool:
    """True when ``encode(text)`` would succeed."""
    return not unencodable(text)


def decode(data: bytes) -> str:
    """Decode ``data`` strictly; raise ``JukiDecodeError`` on any invalid unit or odd length."""
    text, _ = decode_chunk(data, "strict", final=True)
    return text


def decode_chunk(
    data: bytes | bytearray | memoryview, errors: str, *, final: bool, offset: int | None = 0
) -> tuple[str, int]:
    """Decode a chunk; return (text, bytes consumed).

    Unless ``final``, a trailing odd byte is left unconsumed for the next
    chunk. ``offset`` is the chunk's position in the stream, for messages
    (None: unknown, after a seek past 2 GiB).
    """
    # surrogatepass: unpaired surrogate units come out as lone surrogates
    # (a valid pair as one astral character) so the scanner sees them.
    text, consumed = codecs.utf_16_be_decode(data, "surrogatepass", False)
    t = tables()
    parts = t.decode_scan.split(text)
    if consumed == len(data) or not final:
        if len(parts) == 1:
            return text, consumed
        try:
            parts[1::2] = [t.decode_fast[c] for c in parts[1::2]]
            return "".join(parts), consumed
        except KeyError:
            pass  # an invalid unit: find and report it below
    m = t.decode_scan.search(text)
    out: list[str] = []
    done = 0  # index into text
    astral = 0  # astral characters before `done` (each came from two units)
    while m is not None:
        i = m.start()
        code = ord(text[i])
        canonical = t.decode.get(code)  # astral characters are never keys
        out.append(text[done:i])
        if canonical is not None:
            out.append(canonical)
        else:
            start = 2 * (i + astral)
            width = 2 if code < 0x10000 else 4
            unit = code if width == 2 else 0xD800 + ((code - 0x10000) >> 10)
            rep, newpos = _decode_error(
                data, errors, start, start + width, decode_reason(unit), offset
            )
            out.append(rep)
            if newpos != start + width:  # the handler moved elsewhere: restart there
                more = None if offset is None else offset + newpos
                rest, used = decode_chunk(data[newpos:], errors, final=final, offset=more)
                return "".join(out) + rest, newpos + used
            astral += width == 4
        done = i + 1
        m = t.decode_scan.search(text, done)
    out.append(text[done:])
    if final and consumed < len(data):
        start = consumed
        if len(data) - start >= 2:  # an unpaired high surrogate held back
            rep, _ = _decode_error(data, errors, start, start + 2, decode_reason(0xD800), offset)
            out.append(rep)
            start += 2
        if len(data) - start == 1:
            reason = "odd number of bytes: every Juki character is two bytes"
            rep, _ = _decode_error(data, errors, start, start + 1, reason, offset)
            out.append(rep)
        consumed = len(data)
    return "".join(out), consumed


def _decode_error(
    data: bytes | bytearray | memoryview,
    errors: str,
    start: int,
    end: int,
    reason: str,
    offset: int | None,
) -> tuple[str, int]:
    where = None if offset is None else offset + start
    exc = JukiDecodeError(ENCODING, bytes(data), start, end, reason, offset=where)
    if errors == "strict":
        raise exc
    replacement, newpos = codecs.lookup_error(errors)(exc)
    return replacement, newpos if newpos >= 0 else newpos + len(data)


class IncrementalEncoder(codecs.IncrementalEncoder):
    """Stateless: each chunk is encoded on its own.

    A variation selector must arrive in the same chunk as its base character
    (``TextIOWrapper.write`` never splits one ``write`` call).
    """

    def __init__(self, errors: str = "strict") -> None:
        super().__init__(errors)
        self._split = tables().encode_scan.split  # one call per write: keep it short

    def encode(self, input: str, final: bool = False) -> bytes:
        if len(self._split(input)) == 1:
            return input.encode("utf-16-be")
        return encode_with(input, self.errors)


class IncrementalDecoder(codecs.IncrementalDecoder):
    """Keeps an odd trailing byte until the next chunk; counts the stream offset.

    ``getstate`` returns ``(pending bytes, offset)`` so ``TextIOWrapper``'s
    tell/seek round-trips it; past 2 GiB the offset no longer fits the C int
    TextIOWrapper uses and is reported as unknown after a seek.
    """

    def __init__(self, errors: str = "strict") -> None:
        super().__init__(errors)
        self._pending = b""
        self._offset: int | None = 0

    def decode(self, input: bytes, final: bool = False) -> str:
        data = self._pending + bytes(input) if self._pending else input
        text, consumed = decode_chunk(data, self.errors, final=final, offset=self._offset)
        self._pending = bytes(data[consumed:])
        if self._offset is not None:
            self._offset += consumed
        return text

    def reset(self) -> None:
        self._pending = b""
        self._offset = 0

    def getstate(self) -> tuple[bytes, int]:
        known = self._offset is not None and self._offset < _INT_MAX
        return self._pending, self._offset if known else _INT_MAX

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._pending, flags = state
        self._offset = None if flags == _INT_MAX else flags


class StreamWriter(codecs.StreamWriter):
    def encode(self, input: str, errors: str = "strict") -> tuple[bytes, int]:
        return encode_with(input, errors), len(input)


class StreamReader(codecs.StreamReader):
    """``codecs.StreamReader`` that refuses a trailing odd byte at end of stream."""

    def __init__(self, stream: typing.BinaryIO, errors: str = "strict") -> None:
        super().__init__(stream, errors)
        self._consumed = 0

    def decode(self, input: bytes, errors: str = "strict") -> tuple[str, int]:
        text, used = decode_chunk(input, errors, final=False, offset=self._consumed)
        self._consumed += used
        return text, used

    def read(self, size: int = -1, chars: int = -1, firstline: bool = False) -> str:
        text = super().read(size, chars, firstline)
        if self.bytebuffer and (not text or size < 0 and chars < 0):
            rest, _ = decode_chunk(self.bytebuffer, self.errors, final=True, offset=self._consumed)
            self.bytebuffer = b""
            text += rest
        return text

    def reset(self) -> None:
        super().reset()
        self._consumed = 0


def _codec_encode(input: str, errors: str = "strict") -> tuple[bytes, int]:
    return encode_with(input, errors), len(input)


def _codec_decode(input: bytes, errors: str = "strict") -> tuple[str, int]:
    return decode_chunk(memoryview(input), errors, final=True)


CODEC_INFO = codecs.CodecInfo(
    name=ENCODING,
    encode=_codec_encode,
    decode=_codec_decode,
    incrementalencoder=IncrementalEncoder,
    incrementaldecoder=IncrementalDecoder,
    streamreader=StreamReader,
    streamwriter=StreamWriter,
)


def search_function(name: str) -> codecs.CodecInfo | None:
    """``codecs.register`` hook: answers to ``"juki"`` only."""
    return CODEC_INFO if name == ENCODING else None
