"""A fast yes/no answer to "is this record valid?", so the full validator runs only to explain.

Almost every record of a real day is valid, and a batch of the transition day
holds two million of them.  The full validator (``validation.py``) builds a
list of problems with messages; this module answers the question with set
operations over column names and cached checks of values that repeat (dates,
codes, local government codes), compiled once per pattern.

The contract, checked by a property test: ``precheck(r)`` True implies
``validation.validate(r) == []``.  It may say False for a valid record (then
the full validator decides), never True for an invalid one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

from . import cardnumber, codes, juki, lasdec
from .dates import check_date
from .items import EVENT_ITEMS, Item, items_for
from .patterns import Mark, UnknownPatternError, get_pattern, persons_category
from .records import Record

_RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
CORRECTION = "3"
_CACHE_LIMIT = 200_000


class _Good:
    """The values seen to pass one check: a set lookup (C speed) answers most records."""

    __slots__ = ("check", "seen")

    def __init__(self, check: Callable[[str], bool]):
        self.check = check
        self.seen: set[str] = set()

    def learn(self, value: str) -> bool:
        if not self.check(value):
            return False
        if len(self.seen) >= _CACHE_LIMIT:
            self.seen.clear()
        self.seen.add(value)
        return True


@cache
def _checker(item: Item, column: str) -> tuple[frozenset[str] | set[str], _Good | None] | None:
    """(good values, learner) for one column, or None when any text will do.

    Code tables are closed sets (no learner); dates, local government codes
    and periods are learned as they pass their check.
    """
    shape = item.shape
    if item.item_id == "change_reason":
        return None  # checked against the pattern
    if shape in ("date", "birth_date"):
        partial = shape == "birth_date"
        good = _Good(lambda v: check_date(v, partial=partial) is None)
        return good.seen, good
    if column.endswith("name_kind"):
        return frozenset(codes.table("name_kind")), None
    if column.endswith("card_kind"):
        return frozenset(codes.table("card_kind")), None
    if shape == "code" and item.code_table:
        return frozenset(codes.table(item.code_table)), None
    if shape == "address" and column.endswith("_code"):
        good = _Good(lambda v: not lasdec.validate(v))
        return good.seen, good
    if shape == "period":
        good = _Good(lambda v: codes.parse_period(v) is not None)
        return good.seen, good
    return None


@cache
def _checkers(direction: str) -> Mapping[str, tuple[frozenset[str] | set[str], _Good | None]]:
    """Column -> (good values, learner), for the columns whose values have a shape to check."""
    table: dict[str, tuple[frozenset[str] | set[str], _Good | None]] = {}
    for item in items_for(direction):
        for column in (*item.columns, *item.old_columns):
            check = _checker(item, column)
            if check is not None:
                table[column] = check
    return table


@dataclass(frozen=True, slots=True)
class _Plan:
    allowed: frozenset[str]
    required: frozenset[str]  # one column per required item (its first)
    old_required: frozenset[str]  # first old column of ● items, for corrections
    facts: frozenset[str]
    reasons: frozenset[str]
    exempt_required: frozenset[str]  # items the spec may exempt (no card, indefinite stay)
    exempt_old: frozenset[str]
    needs_event_date: bool
    planned_event: bool  # the event date is a planned one (転出予定年月日)
    card_note3: bool  # ※3 on the card number: persons without a card may be among them
    persons_had_card: bool


_EXEMPTABLE = frozenset({"card_number", "card_issue_date", "card_expiry_date", "expiry_date"})


@cache
def _plan(direction: str, code: str) -> _Plan | None:
    try:
        pattern = get_pattern(direction, code)
    except UnknownPatternError:
        return None
    if pattern.pending:
        return None
    allowed = {"change_fact", "change_reason", "event_date"}
    required: set[str] = set()
    old_required: set[str] = set()
    exempt_required: set[str] = set()
    exempt_old: set[str] = set()
    for item in items_for(direction):
        mark = pattern.marks.get(item.item_id, Mark.NONE)
        if mark is Mark.NONE:
            continue
        allowed.update(item.columns)
        if item.item_id in EVENT_ITEMS:
            if mark in (Mark.CHANGED, Mark.CONTEXT) and item.item_id != "event_date":
                required.add(item.columns[0])
            continue
        if mark is not Mark.CONTEXT:
            allowed.update(item.old_columns)
        # Items with exemptions may be absent: the full validator decides then.
        exempt = item.item_id in _EXEMPTABLE
        if mark in (Mark.CHANGED, Mark.CONTEXT):
            (exempt_required if exempt else required).add(item.columns[0])
        if mark is Mark.CHANGED and item.has_old:
            (exempt_old if exempt else old_required).add(item.old_columns[0])
    meaning = pattern.event_date_meaning
    return _Plan(
        frozenset(allowed),
        frozenset(required),
        frozenset(old_required),
        pattern.change_facts,
        pattern.change_reasons,
        frozenset(exempt_required),
        frozenset(exempt_old),
        bool(meaning) and "調整中" not in meaning and "整理中" not in meaning,
        "予定" in meaning,
        "※3" in pattern.notes.get("card_number", ""),
        codes.has_card(persons_category(pattern) or "1"),
    )


_NO_CARD = frozenset(c for c in codes.table("resident_category") if not codes.has_card(c))


def _exempt(values: Mapping[str, str], plan: _Plan, missing: frozenset[str], prefix: str) -> bool:
    """Whether each missing exemptable column is excused, exactly as the full validator rules."""
    for column in missing:
        if column.endswith("expiry_date") and not column.endswith("card_expiry_date"):
            period = values.get(prefix + "period_of_stay")
            parsed = codes.parse_period(period) if period else None
            if parsed is None or not parsed.indefinite:
                return False
            continue
        category = values.get(prefix + "resident_category")
        if category is not None and category in _NO_CARD:
            continue
        if prefix and not plan.persons_had_card:
            continue
        if not prefix and category is None and plan.card_note3:
            continue
        return False
    return True


#: Name kind (氏名分類コード) by which of alphabet and kanji are present.
_NAME_KIND = {(True, False): "1", (False, True): "2", (True, True): "3"}
_NAMES = (
    ("name_kind", "name_alphabet", "name_kanji"),
    ("old_name_kind", "old_name_alphabet", "old_name_kanji"),
)
_ADDRESSES = (
    ("address_code", "address"),
    ("old_address_code", "old_address"),
    ("previous_address_code", "previous_address"),
)
_CARDS = (("card_kind", "card_number"), ("old_card_kind", "old_card_number"))


def _dates_ok(values: Mapping[str, str], planned: bool) -> bool:
    event = values.get("event_date")
    processing = values.get("processing_date")
    report = values.get("report_date")
    birth = values.get("birth_date")
    if event and processing and event > processing:
        return False
    if report and processing and report > processing:
        return False
    if event and report and not planned and event > report:
        return False
    return not (birth and event and birth > event)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What one (direction, pattern, columns present) decides before any value is read.

    Records of one pattern from one sender nearly always have the same
    columns, so the checks that depend only on which columns are present are
    made once per shape (:func:`_shape`), and a record pays only for the
    checks of its values.
    """

    plan: _Plan
    exempt_missing: frozenset[str]  # exemptable required columns absent: _exempt decides
    old_present: bool  # every old column a correction needs is present
    exempt_old_missing: frozenset[str]
    checks: tuple[tuple[str, frozenset[str] | set[str], _Good | None], ...]
    names: tuple[tuple[str, str], ...]  # (kind column, the kind the present parts call for)
    cards: tuple[tuple[str, str], ...]  # (kind column, number column), both present


_SHAPES: dict[tuple[str, str, tuple[str, ...]], _Shape | None] = {}
_SHAPE_LIMIT = 10_000


def _shape(direction: str, code: str, keys: tuple[str, ...]) -> _Shape | None:
    """The shape's precomputed checks, or None when its columns alone already fail one."""
    plan = _plan(direction, code)
    if plan is None:
        return None
    present = frozenset(keys)
    if not (present <= plan.allowed and plan.required <= present):
        return None
    if plan.needs_event_date and "event_date" not in present:
        return None
    for code_column, text_column in _ADDRESSES:
        if (code_column in present) != (text_column in present):
            return None
    if "householder_name" in present and "householder_relationship" not in present:
        return None
    checkers = _checkers(direction)
    names = []
    for kind, alphabet, kanji in _NAMES:
        if kind in present or alphabet in present or kanji in present:
            wanted = _NAME_KIND.get((alphabet in present, kanji in present))
            if wanted is None or kind not in present:
                return None
            names.append((kind, wanted))
    cards = []
    for kind, number in _CARDS:
        if kind in present or number in present:
            if kind not in present or number not in present:
                return None
            cards.append((kind, number))
    return _Shape(
        plan=plan,
        exempt_missing=plan.exempt_required - present,
        old_present=plan.old_required <= present,
        exempt_old_missing=plan.exempt_old - present,
        checks=tuple((column, *checkers[column]) for column in sorted(checkers.keys() & present)),
        names=tuple(names),
        cards=tuple(cards),
    )


def precheck(record: Record, *, check_encoding: bool = True) -> bool:
    """True only if ``record`` is certainly valid (see the module docstring)."""
    values = record.values
    key = (record.direction, record.pattern, tuple(values))
    try:
        shape = _SHAPES[key]
    except KeyError:
        if len(_SHAPES) >= _SHAPE_LIMIT:
            _SHAPES.clear()
        shape = _SHAPES[key] = _shape(*key)
    if shape is None or not _RECORD_ID.fullmatch(record.record_id):
        return False
    plan = shape.plan
    fact = values.get("change_fact")
    if fact not in plan.facts or values.get("change_reason") not in plan.reasons:
        return False
    if shape.exempt_missing and not _exempt(values, plan, shape.exempt_missing, ""):
        return False
    if fact == CORRECTION and not (
        shape.old_present
        and (
            not shape.exempt_old_missing or _exempt(values, plan, shape.exempt_old_missing, "old_")
        )
    ):
        return False
    for column, good, learner in shape.checks:
        value = values[column]
        if value not in good and (learner is None or not learner.learn(value)):
            return False
    if juki.has_control(values.values()):  # one C pass when built, no joined copy
        return False
    if check_encoding and not juki.is_encodable(" ".join(values.values())):
        return False
    for kind_column, wanted in shape.names:
        if values[kind_column] != wanted:
            return False
    for kind_column, number_column in shape.cards:
        pattern = cardnumber.NUMBER_FORMATS.get(values[kind_column])
        if pattern is None or pattern.fullmatch(values[number_column]) is None:
            return False
    return _dates_ok(values, plan.planned_event)
