"""住基統一文字コード (Juki code) codec, registered with ``codecs`` as ``"juki"``.

Notice files exchanged with municipalities are in Juki code: each character
is one big-endian 16-bit unit ``J+XXXX`` laid out like UCS-2. The ministry
works in Unicode. This package converts between the two, strictly.

What is accepted (details and sources in ``SOURCE.md``):

* Kanji: the 19,563 codes of the 住基ネット統一文字コード column of IPA's
  MJ文字情報一覧表 — including the added kanji at J+AAA1-C18B, which overlap
  Yi, Hangul etc. in Unicode but are kanji here. A plain code point X is
  J+X when that code is X's (the UCS-2 layout; plain 辻 is J+8FBB, plain 樹
  J+6A39); otherwise encoding accepts every spelling the MJ table lists for
  a code: the plain code point it implements (実装したUCS), the Moji_Joho IVS
  sequence (base + U+E0100-E01EF), the SVS, and the corresponding plain code
  point (対応するUCS) when unambiguous. Decoding yields the plain code point
  when it names the code, else the IVS sequence (J+BC2F, the two-dot 辻, is
  辻 + U+E0103). So ``decode(encode(s)) == s`` for canonical ``s`` and
  ``encode(decode(b)) == b`` for every valid ``b``.
* Non-kanji, each its own code: TAB, LF, CR; ASCII U+0020-007E; the 524
  JIS X 0208 non-kanji (rows 1-8) in the JIS mapping (〜 U+301C, − U+2212,
  ‖ U+2016, ＼ U+FF3C, ¢ £ ¬ at U+00A2/00A3/00AC) except 々, which the MJ
  table codes as the kanji J+AD1D (so J+3005 is not a code).
* Everything else is an error: other controls, half-width katakana, Hangul,
  accented Latin, cp932 look-alikes (U+FF5E, U+FF0D, U+2225, U+FFE0-FFE2),
  lone surrogates, the BOM (U+FEFF / J+FEFF), unknown variation sequences.

Nothing is ever replaced silently. ``encode_degenerate`` applies the
MJ縮退マップ on request and reports each substitution.

The codec does not normalize: NFC would turn compatibility ideographs such
as U+F91D (J+F91D) into their unified twins (U+6B04, J+6B04).
"""

from __future__ import annotations

import codecs

from .codec import (
    IncrementalDecoder,
    IncrementalEncoder,
    JukiDecodeError,
    JukiEncodeError,
    StreamReader,
    StreamWriter,
    decode,
    encode,
    has_control,
    is_encodable,
    row_parser,
    search_function,
    unencodable,
)
from .degenerate import Substitution, degeneration_sources, encode_degenerate

__all__ = [
    "IncrementalDecoder",
    "IncrementalEncoder",
    "JukiDecodeError",
    "JukiEncodeError",
    "StreamReader",
    "StreamWriter",
    "Substitution",
    "decode",
    "degeneration_sources",
    "encode",
    "encode_degenerate",
    "has_control",
    "is_encodable",
    "row_parser",
    "unencodable",
]

codecs.register(search_function)
