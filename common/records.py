"""Notice records: the ministry notice (法務省通知) and the municipality notice (市町村通知).

A record keeps its values exactly as written (text per column) so that a file
read and written again is byte-identical; typed views (:class:`Name`,
:class:`Address`, …) are built on demand.  A changed item (● in its pattern)
carries its new value in the item's columns and its old value in the ``old_``
columns; a context item (○) carries only its current value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .items import MINISTRY, MUNICIPALITY, OLD_PREFIX, Item, column_owner, get_item


@dataclass(frozen=True, slots=True)
class Name:
    """氏名 with its name kind (氏名分類コード)."""

    kind: str | None
    alphabet: str | None
    kanji: str | None


@dataclass(frozen=True, slots=True)
class Address:
    """住居地／住所 with its local government code (LASDEC)."""

    code: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class CardRef:
    """在留カード等の番号 with its card kind (在留カード区分)."""

    kind: str | None
    number: str | None


@dataclass(frozen=True, slots=True)
class Householder:
    """世帯主である旨, or the householder's name and the relationship (続柄)."""

    relationship: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class ItemValue:
    """An item's value in one record: ``old`` is set only for changed items."""

    item_id: str
    new: Any
    old: Any


class _NoValues(enum.Enum):
    """The type of ``values``' default: a new empty dict for each record."""

    TOKEN = 0


_NO_VALUES = _NoValues.TOKEN


def _view(item: Item, parts: tuple[str | None, ...]) -> Any:
    if all(part is None for part in parts):
        return None
    shape = item.shape
    if shape == "name":
        return Name(*parts)
    if shape == "address":
        return Address(*parts)
    if shape == "card":
        return CardRef(*parts)
    if shape == "householder":
        return Householder(*parts)
    return parts[0]


@dataclass(frozen=True, slots=True, init=False)
class Record:
    """One notice record.

    ``values`` maps column id -> text for the non-empty columns only; an empty
    field in a file and a missing key here mean the same thing.

    Immutable like any frozen dataclass, but built faster: a file holds up to
    two million records, and the generated ``__init__`` of a frozen
    dataclass sets each field through ``object.__setattr__`` (a global and
    an attribute lookup per field). ``__init__`` here stores through the
    slots' own descriptors instead, and the notice reader's C row parser
    (``common/juki/_scan.c``, ``parse_row``) makes a record the same way
    without a Python frame. Subclasses must keep ``init=False``.
    """

    direction: ClassVar[str] = ""

    record_id: str
    pattern: str
    values: Mapping[str, str] = field(default_factory=dict)

    def __init__(
        self, record_id: str, pattern: str, values: Mapping[str, str] | _NoValues = _NO_VALUES
    ) -> None:
        _set_record_id(self, record_id)
        _set_pattern(self, pattern)
        _set_values(self, {} if values is _NO_VALUES else values)

    def get(self, column: str) -> str | None:
        return self.values.get(column) or None

    def item(self, item_id: str) -> ItemValue:
        item = get_item(item_id)
        new = _view(item, tuple(self.get(c) for c in item.columns))
        old = _view(item, tuple(self.get(c) for c in item.old_columns)) if item.has_old else None
        return ItemValue(item_id, new, old)

    def items(self) -> dict[str, ItemValue]:
        """Every item that has a new or old value in this record."""
        owners = column_owner(self.direction)
        seen: dict[str, ItemValue] = {}
        for column in self.values:
            owner = owners.get(column)
            if owner is not None and owner[0].item_id not in seen:
                seen[owner[0].item_id] = self.item(owner[0].item_id)
        return seen

    def with_values(self, **changes: str | None) -> Record:
        """A copy with some columns set (``None`` or ``""`` clears one)."""
        values = dict(self.values)
        for column, text in changes.items():
            if text:
                values[column] = text
            else:
                values.pop(column, None)
        return type(self)(self.record_id, self.pattern, values)

    def to_json(self) -> dict[str, str]:
        """The record as a flat JSON object; the inverse is :func:`record_from_json`."""
        return {"record_id": self.record_id, "pattern": self.pattern, **self.values}


# The slots' descriptors (made by @dataclass(slots=True), so only after the class).
_set_record_id = Record.__dict__["record_id"].__set__
_set_pattern = Record.__dict__["pattern"].__set__
_set_values = Record.__dict__["values"].__set__


@dataclass(frozen=True, slots=True, init=False)
class MinistryNotice(Record):
    """法務省通知: ministry → municipality (住基法 30条の50; table 4.1.1)."""

    direction: ClassVar[str] = MINISTRY


@dataclass(frozen=True, slots=True, init=False)
class MunicipalityNotice(Record):
    """市町村通知: municipality → ministry (入管法 61条の8の2 等; table 4.2.1)."""

    direction: ClassVar[str] = MUNICIPALITY


RECORD_TYPES: dict[str, type[Record]] = {
    MINISTRY: MinistryNotice,
    MUNICIPALITY: MunicipalityNotice,
}


def record_from_json(direction: str, obj: Mapping[str, Any]) -> Record:
    """Build a record from its JSON object; keys other than columns are kept as values.

    Unknown keys are not dropped here: validation reports them, so nothing a
    sender wrote is silently lost.
    """
    values = {
        key: value
        for key, value in obj.items()
        if key not in ("record_id", "pattern") and value not in (None, "")
    }
    return RECORD_TYPES[direction](
        str(obj.get("record_id") or ""), str(obj.get("pattern") or ""), values
    )


def is_old_column(column: str) -> bool:
    return column.startswith(OLD_PREFIX)
