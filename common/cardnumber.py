"""Numbers of residence cards and special permanent resident certificates.

Item 在留カード等の番号 carries a card kind (在留カード区分, table ``card_kind``)
and a number.  Both current kinds use the same twelve characters, two ASCII
capital letters, eight ASCII digits, two capital letters (e.g. ``AB12345678CD``):

* 在留カード — the number printed on the card and stored on its chip;
* 特別永住者証明書 — the same shape: the ministry's 在留カード等仕様書 uses one
  12-character "在留カード等番号" for both card types in card-number
  authentication (the key is derived from it), and card readers built on
  that spec apply one pattern to both (verified only at that level: see
  codes/SOURCE.md).

The third kind is an old 外国人登録証明書 that the 2012 reform deems to be a
residence card or certificate (みなし, spec 【別紙】市町村通知 ※2: "同カードと
みなされる外国人登録番号").  Its 外国人登録番号 has no published format that we
could verify; we accept up to two capital letters followed by eight or nine
digits — an ASSUMPTION, recorded in codes/SOURCE.md.

Nothing is normalised here: lower case, spaces and full-width characters are
errors, because the number is a key the ministry matches byte for byte (and the
chip's authentication key is derived from its exact ASCII bytes).
"""

from __future__ import annotations

import re

from . import codes

__all__ = ["NUMBER_FORMATS", "validate"]

RESIDENCE_CARD = "1"
SPECIAL_PERMANENT_RESIDENT_CERTIFICATE = "2"
DEEMED_REGISTRATION_CERTIFICATE = "3"

#: Card kind code → the full-match pattern of its number (ASCII only).
NUMBER_FORMATS: dict[str, re.Pattern[str]] = {
    RESIDENCE_CARD: re.compile(r"[A-Z]{2}[0-9]{8}[A-Z]{2}"),
    SPECIAL_PERMANENT_RESIDENT_CERTIFICATE: re.compile(r"[A-Z]{2}[0-9]{8}[A-Z]{2}"),
    # Assumption, see the module docstring.
    DEEMED_REGISTRATION_CERTIFICATE: re.compile(r"[A-Z]{0,2}[0-9]{8,9}"),
}


def validate(number: str, kind: str) -> list[str]:
    """Problem codes for a card ``number`` of card ``kind``; empty when it is well formed.

    ``card_kind.unknown``: ``kind`` is not in the ``card_kind`` table (the
    number is then not checked, having no known format);
    ``card_number.format``: the number does not have its kind's shape.
    """
    if not codes.is_known("card_kind", kind) or kind not in NUMBER_FORMATS:
        return ["card_kind.unknown"]
    if not isinstance(number, str) or not NUMBER_FORMATS[kind].fullmatch(number):
        return ["card_number.format"]
    return []
