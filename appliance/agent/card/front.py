"""Front-side (券面) text fields of a second-generation card: DF1/EF02 printed entries.

Only generation 2 stores the printed entries as text (BER-TLV, UTF-8,
characters in the JIS X 0201 range). Generation 1 offers the front as an
image (DF1/EF01 D0) only, and neither generation stores the name or the
address as text: generation 2 holds them as images (DF1/EF03 D0 name image,
DF1/EF04 DFD1 address image). So ``front`` has no name or address.

Field map (tag, maximum value length, format) as given by the open reader
eringoio/zairyu-card-reader (docs/specs/moj/tlv_tag_reference.md, citing
001460711 §3.3.4); see docs/card.md for what was checked. A residence card
carries all ten (73-byte file); a special permanent resident certificate
carries fewer (46-byte file) and never the residence-only fields CA, CB, CC, CD.
Values are kept as read (``raw``) and offered under English names; dates in
``YYYYMMDD`` become ISO ``YYYY-MM-DD`` when they are real dates.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from appliance.agent.card import apdu

__all__ = ["FIELDS", "SEX", "parse_printed_entries"]

# tag -> (field name, is a YYYYMMDD date). Order is the order in the file.
FIELDS: dict[int, tuple[str, bool]] = {
    0xC5: ("card_expiry_date", True),  # 有効期限 (of the card)
    0xC6: ("date_of_birth", True),  # 生年月日
    0xC7: ("sex_code", False),  # 性別: 1 male, 2 female, 3 unspecified
    0xC8: ("nationality_code", False),  # 国籍・地域 (3-character code)
    0xC9: ("status_of_residence_code", False),  # 在留資格 (code, up to 10 characters)
    0xCE: ("period_of_stay_code", False),  # 在留期間: YYMM, DDD days, 0000 indefinite
    0xCA: ("permission_type_code", False),  # 許可の種類 (residence card only)
    0xCB: ("permission_date", True),  # 許可年月日 (residence card only)
    0xCC: ("work_restriction_code", False),  # 就労制限の有無 (residence card only)
    0xCD: ("period_of_stay_expiry_date", True),  # 在留期間の満了日 (residence card only)
}

SEX = {"1": "male", "2": "female", "3": "unspecified"}

# 就労制限の有無 codes from the same source, with the wording staff know.
WORK_RESTRICTION_JA = {
    "1": "就労制限なし",
    "2": "在留資格に基づく就労活動のみ可",
    "4": "指定書により指定された就労活動のみ可",
    "9": "就労不可",
}


def _text(tag: int, value: bytes) -> str:
    try:
        return value.rstrip(b"\x00").decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise apdu.TlvError(f"printed entry {tag:X} is not UTF-8 text") from exc


def _iso_date(text: str) -> str:
    """YYYYMMDD -> YYYY-MM-DD when it is a calendar date; anything else stays as read."""
    if len(text) != 8 or not text.isdigit():
        return text
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError:
        return text


def parse_printed_entries(data: bytes) -> dict[str, Any]:
    """Decode DF1/EF02 into the ``front`` dict (keys documented in docs/card.md).

    Every known field is present (None when the card does not carry it, as on
    a special permanent resident certificate). ``raw`` maps each tag found,
    known or not, to its text as read, so nothing on the chip is lost.
    Raises ``apdu.TlvError`` for malformed TLV, non-UTF-8 text or a repeated tag.
    """
    found = apdu.tlv_dict(data)
    front: dict[str, Any] = {name: None for name, _ in FIELDS.values()}
    raw: dict[str, str] = {}
    for tag, value in found.items():
        text = _text(tag, value)
        raw[f"{tag:X}"] = text
        if tag in FIELDS:
            name, is_date = FIELDS[tag]
            front[name] = (_iso_date(text) if is_date else text) or None
    front["sex"] = SEX.get(front["sex_code"] or "")
    front["period_of_stay_indefinite"] = (
        None if front["period_of_stay_code"] is None else front["period_of_stay_code"] == "0000"
    )
    front["work_restriction_ja"] = WORK_RESTRICTION_JA.get(front["work_restriction_code"] or "")
    front["raw"] = raw
    return front
