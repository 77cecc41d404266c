"""Dates as the spec writes them: Gregorian ``YYYYMMDD`` (西暦), eight digits.

A birth date may leave month and day as ``00`` when they are unknown (不詳),
as the 住民票 does for some foreign residents; every other date is a real
calendar date.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

_DATE = re.compile(r"[0-9]{8}")


@lru_cache(maxsize=65536)
def check_date(text: str, *, partial: bool = False) -> str | None:
    """None if ``text`` is a real date YYYYMMDD; otherwise a short English reason."""
    if not _DATE.fullmatch(text):
        return "not 8 digits YYYYMMDD"
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:])
    if year < 1800:
        return "year before 1800"
    if partial and month == 0 and day == 0:
        return None
    if partial and day == 0 and 1 <= month <= 12:
        return None
    try:
        date(year, month, day)
    except ValueError:
        return "no such date"
    return None
