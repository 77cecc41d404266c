"""The item catalogue (連携項目): every item a notice can carry, in spec order.

The catalogue is data (``items.csv`` beside this module), transcribed from
table 4.1.1, table 4.2.1 and the row headings of the 【別紙】 sheets.  Each
item names the spec row it comes from on the ministry sheets (rows 1-40) and
on the municipality sheets (rows 1-38), its *shape* (how its value is written)
and the file columns that hold it.  The column ids are part of the notice file
contract (docs/format.md): they change only with a format version bump.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

MINISTRY = "ministry"
MUNICIPALITY = "municipality"
DIRECTIONS = (MINISTRY, MUNICIPALITY)

#: Shapes: how an item's value is spelled in a notice file.
SHAPES = frozenset(
    {"code", "date", "birth_date", "name", "address", "card", "period", "householder", "text"}
)

#: Rows 1-5 describe the event itself (異動事実, 異動事由 and its dates); they
#: never carry an old value and are not "data" items of the 住民票.
EVENT_ITEMS = ("change_fact", "change_reason", "report_date", "processing_date", "event_date")

OLD_PREFIX = "old_"


class UnknownItemError(KeyError):
    """An item id that the catalogue does not have."""


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    ministry_no: int | None  # row on the 法務省通知 【別紙】 sheets
    municipality_no: int | None  # row on the 市町村通知 【別紙】 sheets
    shape: str
    code_table: str | None
    columns: tuple[str, ...]  # new (current) value columns
    has_old: bool  # a ● item that carries its old value in ``old_`` columns
    name_ja: str
    name_en: str

    @property
    def old_columns(self) -> tuple[str, ...]:
        return tuple(OLD_PREFIX + c for c in self.columns) if self.has_old else ()

    def spec_row(self, direction: str) -> int | None:
        return self.ministry_no if direction == MINISTRY else self.municipality_no

    @property
    def is_event(self) -> bool:
        return self.item_id in EVENT_ITEMS


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


@cache
def catalogue() -> tuple[Item, ...]:
    """Every item, in spec order."""
    source = resources.files(__package__).joinpath("items.csv")
    with source.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    items = []
    for row in rows:
        item = Item(
            item_id=row["item_id"],
            ministry_no=_int_or_none(row["ministry_no"]),
            municipality_no=_int_or_none(row["municipality_no"]),
            shape=row["shape"],
            code_table=row["code_table"] or None,
            columns=tuple(row["columns"].split()),
            has_old=row["old"] == "yes",
            name_ja=row["name_ja"],
            name_en=row["name_en"],
        )
        if item.shape not in SHAPES:
            raise ValueError(f"items.csv: item {item.item_id}: unknown shape {item.shape!r}")
        items.append(item)
    return tuple(items)


@cache
def _by_id() -> dict[str, Item]:
    return {item.item_id: item for item in catalogue()}


def get_item(item_id: str) -> Item:
    try:
        return _by_id()[item_id]
    except KeyError:
        raise UnknownItemError(item_id) from None


@cache
def items_for(direction: str) -> tuple[Item, ...]:
    """The items a notice of this direction can carry, in spec order."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    return tuple(item for item in catalogue() if item.spec_row(direction) is not None)


@cache
def item_by_row(direction: str) -> dict[int, Item]:
    """Spec row number on the 【別紙】 sheets of this direction -> item."""
    return {item.spec_row(direction): item for item in items_for(direction)}  # type: ignore[misc]


@cache
def columns_for(direction: str) -> tuple[str, ...]:
    """The item columns of a notice file of this direction, in file order.

    Each item's current-value columns are followed by its ``old_`` columns.
    """
    columns: list[str] = []
    for item in items_for(direction):
        columns.extend(item.columns)
        columns.extend(item.old_columns)
    return tuple(columns)


@cache
def column_owner(direction: str) -> dict[str, tuple[Item, bool]]:
    """Column id -> (item, is_old) for this direction."""
    owner: dict[str, tuple[Item, bool]] = {}
    for item in items_for(direction):
        for column in item.columns:
            owner[column] = (item, False)
        for column in item.old_columns:
            owner[column] = (item, True)
    return owner
