"""Code tables of the notice items, and the period of stay.

Each coded item of a record (``code_table`` in ``items.csv``) holds a code
from one table in ``codes/<table>.csv``.  The tables are data, not Python, so
that a reviewer can compare them with their sources (``codes/SOURCE.md``) and
a 住基 vendor can load the same files.  Every table has at least the columns
``code,label_ja,label_en``; further columns are kept in :attr:`Code.extra`.

The period of stay (在留期間等) is not a table but a value: an ISO 8601
duration of years, months and days as printed on the card (``P5Y`` 5年,
``P6M`` 6月, ``P15D`` 15日, ``P4Y3M`` 4年3月), or one of the special codes of
table ``period_of_stay`` (``INDEFINITE`` 無期限, ``DESIGNATED``).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "CODES_DIR",
    "Code",
    "CodeTableError",
    "Period",
    "has_card",
    "is_known",
    "lookup",
    "parse_period",
    "period_label_ja",
    "table",
    "table_names",
]

CODES_DIR = Path(__file__).with_name("codes")
REQUIRED_COLUMNS = ("code", "label_ja", "label_en")
_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")


class CodeTableError(ValueError):
    """A table file is malformed (missing column, duplicate code, empty label)."""


@dataclass(frozen=True)
class Code:
    """One code of one table; ``extra`` holds the table's further columns, as text."""

    table: str
    code: str
    label_ja: str
    label_en: str
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


def table_names() -> tuple[str, ...]:
    """The names of the tables present, sorted."""
    return tuple(sorted(p.stem for p in CODES_DIR.glob("*.csv") if _TABLE_NAME.fullmatch(p.stem)))


@functools.cache
def table(name: str) -> Mapping[str, Code]:
    """The table ``name`` as a read-only mapping code → :class:`Code`, in file order.

    Raises KeyError for a table that does not exist, CodeTableError for one
    that is malformed.
    """
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise KeyError(name)
    path = CODES_DIR / f"{name}.csv"
    if not path.is_file():
        raise KeyError(name)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = tuple(reader.fieldnames or ())
        if columns[:3] != REQUIRED_COLUMNS:
            raise CodeTableError(
                f"{path.name}: columns must start with {','.join(REQUIRED_COLUMNS)}"
            )
        codes: dict[str, Code] = {}
        for line, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise CodeTableError(f"{path.name}:{line}: wrong number of fields")
            code = row["code"]
            if not code or not row["label_ja"] or not row["label_en"]:
                raise CodeTableError(f"{path.name}:{line}: empty code or label")
            if code in codes:
                raise CodeTableError(f"{path.name}:{line}: duplicate code {code!r}")
            extra = MappingProxyType({k: row[k] for k in columns[3:]})
            codes[code] = Code(name, code, row["label_ja"], row["label_en"], extra)
    return MappingProxyType(codes)


def lookup(name: str, code: str) -> Code | None:
    """The code ``code`` of table ``name``, or None.  KeyError for an unknown table."""
    return table(name).get(code)


def is_known(name: str, code: str) -> bool:
    """True when ``code`` is in table ``name``.  KeyError for an unknown table."""
    return code in table(name)


def has_card(resident_category: str) -> bool:
    """True when persons of this 中長期在留者である旨等 category hold a card.

    一時庇護許可者, 仮滞在許可者 and 経過滞在者 have no card number (spec
    【別紙】法務省通知 ※3), so their records carry no card items.  An unknown
    category is False; report it through :func:`is_known`.
    """
    code = lookup("resident_category", resident_category)
    return code is not None and code.extra.get("has_card") == "yes"


# --- period of stay ------------------------------------------------------------------------

# Canonical: components in Y, M, D order, each without leading zero, months 1–11
# (a year and a half is P1Y6M, as the card prints 1年6月).  ASCII digits only.
_DURATION = re.compile(r"P(?:([1-9][0-9]*)Y)?(?:([1-9]|1[01])M)?(?:([1-9][0-9]*)D)?")


@dataclass(frozen=True)
class Period:
    """A parsed period of stay: a duration, or a special code with zero duration."""

    years: int = 0
    months: int = 0
    days: int = 0
    special: str | None = None

    @property
    def indefinite(self) -> bool:
        """True for 無期限 (永住者, 高度専門職2号, 特別永住者): there is no expiry date."""
        return self.special == "INDEFINITE"

    def label_ja(self) -> str:
        """The card's wording: "5年", "4年3月", "15日", or the special code's label."""
        if self.special is not None:
            return table("period_of_stay")[self.special].label_ja
        parts = [(self.years, "年"), (self.months, "月"), (self.days, "日")]
        return "".join(f"{n}{unit}" for n, unit in parts if n)


def parse_period(text: str) -> Period | None:
    """Parse a period of stay; None when ``text`` is neither a canonical duration nor a special code."""
    if not isinstance(text, str):
        return None
    if text in table("period_of_stay"):
        return Period(special=text)
    match = _DURATION.fullmatch(text)
    if match is None or text == "P":
        return None
    years, months, days = (int(g) if g else 0 for g in match.groups())
    return Period(years, months, days)


def period_label_ja(text: str) -> str:
    """The Japanese wording of a period of stay, e.g. ``"P4Y3M"`` → ``"4年3月"``.

    Raises ValueError for text that :func:`parse_period` rejects.
    """
    period = parse_period(text)
    if period is None:
        raise ValueError(f"not a period of stay: {text!r}")
    return period.label_ja()
