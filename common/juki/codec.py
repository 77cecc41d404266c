"""Strict encode/decode between Unicode ``str`` and 住基統一文字コード bytes.

Each character is one big-endian 16-bit unit. Most units are their own UCS-2
code point, so both directions run Python's C ``utf-16-be`` codec over the
whole input and then a *scanner* finds the few places that need the table:
added kanji (J+AAxx-D6FF), kanji whose plain Unicode form sits at another
code, spellings with variation selectors, and everything that is not Juki at
all. A per-character Python loop would be an order of magnitude slower.

Two scanners give the same answers (``Scanner``): the optional C extension
``_scan`` (built by ``pip install -e .`` from ``_scan.c``) and, when it is not
built, one compiled regex character class per direction (``tables.Tables``).
The extension exists only for speed: the regex costs ~6 ns per character,
seven times the utf-16-be codec itself; the C loop, a table lookup per
character, ~0.4 ns. It also converts in C, so that table-mapped characters
such as 々 cost no Python splicing: encoding, every spelling with a code
(``encode_run``: variation sequences and astral kanji too); decoding, every
valid unit (``decode_run``). At anything else it hands back to the careful
loops here, and every error goes through the same code as with the regex
scanner. ``row_parser`` gives the notice file's reader the
same tables for its common row.
Set ``RENKEI_JUKI_SCANNER=python`` to force the regex (``=c`` to require the
extension); ``using_scanner`` switches for a block (tests, benchmarks).

Errors are never replaced silently: strict is the default everywhere; the
standard handlers ("replace", "ignore", ...) work only when asked for by name.
Positions in encode errors are ``str`` indexes; in decode errors, byte
offsets (``offset`` counts from the start of the stream for incremental
decoding, ``start`` is relative to the chunk as ``UnicodeDecodeError``
requires).
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import functools
import os
import typing
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from types import EllipsisType
from typing import TypeVar

from .tables import (
    VARIATION_SELECTORS,
    Buffer,
    DecodeRun,
    Find,
    Scanner,
    scanner,
    tables,
)

try:
    from . import _scan
except ImportError:  # not built: the regex scanner does the same, slower
    _scan = None

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
SCANNER_ENV = "RENKEI_JUKI_SCANNER"
T = TypeVar("T")
# The codec functions themselves: ``str.encode("utf-16-be")`` first looks the
# codec up by name, which costs more than encoding a short line.
_utf16_encode = codecs.utf_16_be_encode
_utf16_decode = codecs.utf_16_be_decode
_PIECE = 1 << 16  # bytes: see _decode_plain


def _default_scanner() -> str:
    wanted = os.environ.get(SCANNER_ENV, "")
    if wanted not in ("", "c", "python"):
        raise ValueError(f"{SCANNER_ENV}={wanted!r}: expected 'c' or 'python'")
    if wanted == "c" and _scan is None:
        raise ImportError(f"{SCANNER_ENV}=c but common.juki._scan is not built")
    return wanted or ("c" if _scan is not None else "python")


# Read once at import; only ``using_scanner`` changes it, per context.
_DEFAULT_SCANNER = _default_scanner()
_active = contextvars.ContextVar("juki_scanner", default=_DEFAULT_SCANNER)


def scanner_name() -> str:
    """The scanner in use here: "c" unless not built or overridden."""
    return _active.get()


@contextlib.contextmanager
def using_scanner(name: str) -> Iterator[Scanner]:
    """Use scanner ``name`` inside the block (this thread/task only).

    For tests and benchmarks that compare the two. An ``IncrementalEncoder``
    keeps the scanner it was created with.
    """
    chosen = scanner(name)
    token = _active.set(name)
    try:
        yield chosen
    finally:
        _active.reset(token)


def _scanner() -> Scanner:
    return scanner(_active.get())


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
    return _encode(text, errors, _scanner())


def _encode(text: str, errors: str, scan: Scanner) -> bytes:
    if (run := scan.encode_run) is not None:
        out, stop = run(text, 0)
        if stop == len(text):
            return out
        # C stops only at a spelling without a code: the careful path names
        # it (or hands it to ``errors``) exactly as with the regex scanner.
        return _encode_careful(text, errors, scan.encode_find)
    hit = scan.encode_find(text, 0)
    if hit < 0:
        return _utf16_encode(text)[0]
    return _encode_hits(text, hit, scan.encode_find, errors)


def _encode_hits(text: str, hit: int, find: Find, errors: str) -> bytes:
    """From the first scanner hit on: splice in each hit's code.

    A hit that is a whole spelling on its own (a character whose code is
    elsewhere) is spliced; anything else — a selector, a character with no
    code — sends the whole text down the careful path.
    """
    table = tables().encode
    out: list[bytes] = []
    done = 0
    while hit >= 0:
        unit = table.get(text[hit])
        if unit is None:
            return _encode_careful(text, errors, find)
        out += (_utf16_encode(text[done:hit])[0], unit)
        done = hit + 1
        hit = find(text, done)
    out.append(_utf16_encode(text[done:])[0])
    return b"".join(out)


def _encode_careful(text: str, errors: str, find: Find) -> bytes:
    """Spelling by spelling: variation sequences, error reporting and handlers."""
    table = tables().encode
    out: list[bytes] = []
    done = 0
    hit = find(text, 0)
    while hit >= 0:
        start, end = _spelling_bounds(text, hit, done)
        unit = table.get(text[start:end])
        if start > done:
            out.append(_utf16_encode(text[done:start])[0])
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
        hit = find(text, done)
    out.append(_utf16_encode(text[done:])[0])
    return b"".join(out)


def unencodable(text: str) -> list[tuple[int, str]]:
    """Every spelling of ``text`` without a Juki code, as (str index, spelling).

    A spelling is one character, or a base character with its variation
    selector. Lets validation report all problems of a record at once.
    """
    t = tables()
    find = _scanner().encode_find
    hit = find(text, 0)
    while hit >= 0 and text[hit] in t.encode_fast:
        hit = find(text, hit + 1)
    if hit < 0:
        return []  # no selectors and nothing unmapped
    bad: list[tuple[int, str]] = []
    done = 0
    while (hit := find(text, done)) >= 0:
        start, end = _spelling_bounds(text, hit, done)
        if text[start:end] not in t.encode:
            bad.append((start, text[start:end]))
        done = end
    return bad


def has_control(texts: Iterable[str]) -> bool:
    """Whether any of ``texts`` holds a control character (U+0000-001F, U+007F).

    TAB, LF and CR count: they are Juki codes, but no value may hold one.
    With the C scanner, one pass over the strings without joining them (a
    record's values: the validator's fast path asks this of every record).
    """
    return _scanner().has_control(texts)


def is_encodable(text: str) -> bool:
    """True when ``encode(text)`` would succeed."""
    return not unencodable(text)


def decode(data: bytes) -> str:
    """Decode ``data`` strictly; raise ``JukiDecodeError`` on any invalid unit or odd length."""
    text, _ = decode_chunk(data, "strict", final=True)
    return text


def decode_chunk(
    data: Buffer, errors: str, *, final: bool, offset: int | None = 0
) -> tuple[str, int]:
    """Decode a chunk; return (text, bytes consumed).

    Unless ``final``, a trailing odd byte is left unconsumed for the next
    chunk. ``offset`` is the chunk's position in the stream, for messages
    (None: unknown, after a seek past 2 GiB).
    """
    scan = _scanner()
    if (run := scan.decode_run) is not None:
        return _decode_runs(data, errors, final, offset, run, scan.decode_find)
    plain = _decode_plain(data, final, scan.decode_find)
    if plain is not None:
        return plain
    return _decode_careful(data, errors, final, offset, scan.decode_find)


def row_parser(
    columns: tuple[str, ...], record_type: type[T]
) -> Callable[[Buffer], T | None] | None:
    """The C parser of a notice file's common row, or None with the regex scanner.

    The callable takes one line in Juki code without its CR LF and returns
    ``record_type`` with ``record_id``, ``pattern`` and the non-empty
    ``columns`` as ``values`` — what decoding, splitting at commas and
    keeping the non-empty fields gives — or None for any other line (a unit
    that is no code, a quote, CR or LF, the wrong number of fields), which
    the caller's Python parser then reads and explains. The scanner is the
    one in use when this is called.
    """
    parse = _scanner().parse_row
    if parse is None:
        return None
    return typing.cast(
        "Callable[[Buffer], T | None]", functools.partial(parse, columns, record_type)
    )


def _decode_runs(
    data: Buffer, errors: str, final: bool, offset: int | None, run: DecodeRun, find: Find
) -> tuple[str, int]:
    """Decode in C: every valid unit, multi-unit spellings included.

    C stops at a unit that is not a code, or before a last odd byte (kept
    for the next chunk unless ``final``). Anything else sends the whole chunk
    down ``_decode_careful``: errors, offsets and handlers are exactly those
    of the regex scanner.
    """
    text, stop = run(data, 0)
    size = len(data) if type(data) is bytes else memoryview(data).nbytes
    if stop == size or stop == size - 1 and not final:  # an odd byte: for the next chunk
        return text, stop
    return _decode_careful(data, errors, final, offset, find)


def _decode_careful(
    data: Buffer, errors: str, final: bool, offset: int | None, find: Find
) -> tuple[str, int]:
    """Hit by hit: errors and handlers (one frame deeper per handler restart)."""
    # surrogatepass: unpaired surrogate units come out as lone surrogates
    # (a valid pair as one astral character) so the scanner sees them.
    text, consumed = _utf16_decode(data, "surrogatepass", False)
    t = tables()
    out: list[str] = []
    done = 0  # index into text
    astral = 0  # astral characters before `done` (each came from two units)
    i = find(text, 0)
    while i >= 0:
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
                rest, used = _decode_careful(data[newpos:], errors, final, more, find)
                return "".join(out) + rest, newpos + used
            astral += width == 4
        done = i + 1
        i = find(text, done)
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


def _decode_plain(
    data: bytes | bytearray | memoryview, final: bool, find: Find
) -> tuple[str, int] | None:
    """Decode when every unit is a code whose canonical spelling replaces it whole.

    None when there is anything else (an invalid unit, a trailing odd byte at
    the end): the caller then takes the careful path, which reports it.
    """
    if len(data) > _PIECE and (view := memoryview(data)).c_contiguous:
        return _decode_pieces(view.cast("B"), final, find)
    text, consumed = _utf16_decode(data, "surrogatepass", False)
    if final and consumed < len(data):
        return None
    hit = find(text, 0)
    if hit >= 0:
        mapped = _decode_mapped(text, hit, find)
        return None if mapped is None else (mapped, consumed)
    return text, consumed


def _decode_pieces(view: memoryview, final: bool, find: Find) -> tuple[str, int] | None:
    """``_decode_plain`` of long input, ``_PIECE`` bytes at a time.

    Each piece is scanned and mapped while it is in the CPU cache, and only
    the result is large: a large intermediate ``str`` next to it costs (with
    glibc's malloc) a page fault per 4 KiB, more than the decoding itself.
    """
    parts: list[str] = []
    pos = 0
    while len(view) - pos > _PIECE:
        piece = _decode_plain(view[pos : pos + _PIECE], False, find)
        if piece is None:
            return None
        parts.append(piece[0])
        pos += piece[1]  # a held-back high surrogate starts the next piece
    rest = _decode_plain(view[pos:], final, find)
    if rest is None:
        return None
    parts.append(rest[0])
    return "".join(parts), pos + rest[1]


def _decode_mapped(text: str, hit: int, find: Find) -> str | None:
    """``text`` with each hit replaced by its canonical spelling; None at an invalid unit."""
    fast = tables().decode_fast
    parts: list[str] = []
    done = 0
    while hit >= 0:
        canonical = fast.get(text[hit])
        if canonical is None:
            return None
        parts += (text[done:hit], canonical)
        done = hit + 1
        hit = find(text, done)
    parts.append(text[done:])
    return "".join(parts)


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
    (``TextIOWrapper.write`` never splits one ``write`` call). The scanner is
    the one in use when the encoder is created.
    """

    def __init__(self, errors: str = "strict") -> None:
        super().__init__(errors)
        self._scan = _scanner()
        self._run = self._scan.encode_run

    def encode(self, input: str, final: bool = False) -> bytes:
        # One call per write: the C case of ``_encode`` inlined (a frame less).
        if (run := self._run) is not None:
            out, stop = run(input, 0)
            if stop == len(input):
                return out
            return _encode_careful(input, self.errors, self._scan.encode_find)
        return _encode(input, self.errors, self._scan)


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
