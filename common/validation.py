"""Record validation: every problem of a record, each with a stable code.

``validate(record)`` never stops at the first problem: staff fix a rejected
record once, so they must see all that is wrong with it.  Each problem names
the item (and column) and carries a Japanese message for municipal staff and
an English one for logs.  The rules come from the pattern tables (which items
a pattern carries and how), the code tables and the identifiers; nothing here
reads a file or the clock.

Rules, in words (docs/format.md lists every code):

* the pattern must exist for the record's direction, the change fact and the
  change reason must be ones that pattern allows;
* a ● (changed) or ○ (context) item must have a value; a blank item must not;
  an item marked (調整中)/(整理中) may be present or not;
* a ● item whose record corrects (修正) the 住民票 carries its old value; a ○
  item never carries one;
* exemptions the spec states: no card number for persons without a card
  (【別紙】 ※3), no expiry date when the period of stay is indefinite (永住者);
* values are well-formed: real calendar dates (birth dates may leave month or
  day as 00 when unknown, as the 住民票 does), known codes, valid local
  government codes (check digit) and card numbers, characters that exist in
  住基統一文字コード, no control characters;
* dates are in order (event date not after processing date, …).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from . import cardnumber, codes, juki, lasdec
from .dates import check_date
from .items import EVENT_ITEMS, Item, get_item, items_for
from .patterns import Mark, Pattern, UnknownPatternError, get_pattern, persons_category
from .precheck import precheck
from .records import Record

CORRECTION = "3"  # 修正

_RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_DATE = re.compile(r"[0-9]{8}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a record."""

    code: str  # stable, e.g. "item.missing"
    item: str | None  # item id, e.g. "name"
    column: str | None  # file column, e.g. "old_name_kanji"
    message: str  # Japanese, for municipal staff
    message_en: str  # English, for logs and engineers

    def to_json(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "item": self.item,
            "column": self.column,
            "message": self.message,
            "message_en": self.message_en,
        }


# --- value checks (cached: the same dates and codes repeat across a file) --------------------


def _problem(code: str, item: Item | None, column: str | None, ja: str, en: str) -> Problem:
    return Problem(code, item.item_id if item else None, column, ja, en)


def _label(item: Item) -> str:
    return f"{item.name_ja}（{item.item_id}）"


def _check_value(item: Item, column: str, value: str, out: list[Problem]) -> None:
    """Shape checks of one non-empty column value."""
    shape = item.shape
    if shape in ("date", "birth_date"):
        reason = check_date(value, partial=shape == "birth_date")
        if reason is not None:
            out.append(
                _problem(
                    "date.invalid",
                    item,
                    column,
                    f"{_label(item)}の日付「{value}」が正しくありません（西暦8桁の実在する日付 YYYYMMDD）",
                    f"{column}: {value!r} is not a valid date ({reason})",
                )
            )
    elif item.item_id == "change_reason":
        return  # checked against the record's pattern
    elif shape == "code" or column.endswith(("name_kind", "card_kind")):
        table = (
            item.code_table
            if shape == "code"
            else ("name_kind" if "name_kind" in column else "card_kind")
        )
        if table and not codes.is_known(table, value):
            out.append(
                _problem(
                    "code.unknown",
                    item,
                    column,
                    f"{_label(item)}のコード「{value}」は定義されていません",
                    f"{column}: unknown {table} code {value!r}",
                )
            )
    elif shape == "address" and column.endswith("_code"):
        for code in lasdec.validate(value):
            reason = {
                "lasdec.format": "6桁の数字ではありません",
                "lasdec.check_digit": "検査数字が一致しません",
                "lasdec.unknown": "該当する市区町村がありません",
            }.get(code, code)
            out.append(
                _problem(
                    code,
                    item,
                    column,
                    f"{_label(item)}の全国地方公共団体コード「{value}」が正しくありません（{reason}）",
                    f"{column}: local government code {value!r}: {code}",
                )
            )
    elif shape == "period":
        if codes.parse_period(value) is None:
            out.append(
                _problem(
                    "period.invalid",
                    item,
                    column,
                    f"{_label(item)}「{value}」が正しくありません（例: P5Y, P6M, P4Y3M, INDEFINITE）",
                    f"{column}: {value!r} is not a period of stay",
                )
            )


def _check_shape(item: Item, values: dict[str, str], old: bool, out: list[Problem]) -> None:
    """Checks across the columns of one item (name kind vs parts, card kind vs number, …)."""
    cols = item.old_columns if old else item.columns
    parts = [values.get(c) for c in cols]
    if not any(parts):
        return
    shape = item.shape
    if shape == "name":
        kind, alphabet, kanji = parts
        needs = {"1": (True, False), "2": (False, True), "3": (True, True)}.get(kind or "")
        if kind is None:
            out.append(
                _problem(
                    "name.kind_missing",
                    item,
                    cols[0],
                    f"{_label(item)}の氏名分類コードがありません",
                    f"{cols[0]}: name kind missing",
                )
            )
        elif needs is not None and (bool(alphabet), bool(kanji)) != needs:
            out.append(
                _problem(
                    "name.kind_mismatch",
                    item,
                    cols[0],
                    f"{_label(item)}の氏名分類コード「{kind}」と、アルファベット氏名・漢字氏名の有無が一致しません",
                    f"{cols[0]}: name kind {kind} does not match the name parts given",
                )
            )
    elif shape == "address":
        code, text = parts
        if not code or not text:
            missing = cols[0] if not code else cols[1]
            out.append(
                _problem(
                    "address.incomplete",
                    item,
                    missing,
                    f"{_label(item)}は全国地方公共団体コードと住所の両方が必要です",
                    f"{missing}: an address needs both its code and its text",
                )
            )
    elif shape == "card":
        kind, number = parts
        if not kind or not number:
            missing = cols[0] if not kind else cols[1]
            out.append(
                _problem(
                    "card.incomplete",
                    item,
                    missing,
                    f"{_label(item)}は在留カード区分と番号の両方が必要です",
                    f"{missing}: a card reference needs both its kind and its number",
                )
            )
        elif codes.is_known("card_kind", kind):
            for code in cardnumber.validate(number, kind):
                out.append(
                    _problem(
                        code,
                        item,
                        cols[1],
                        f"{_label(item)}「{number}」の形式が正しくありません（在留カード区分 {kind} の番号の形式ではありません）",
                        f"{cols[1]}: {number!r} is not a valid number for card kind {kind}: {code}",
                    )
                )
    elif shape == "householder":
        relationship, name = parts
        if not relationship:
            out.append(
                _problem(
                    "householder.incomplete",
                    item,
                    cols[0],
                    f"{_label(item)}の続柄がありません",
                    f"{cols[0]}: relationship missing",
                )
            )


# --- pattern rules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one pattern asks of a record, precomputed once per pattern."""

    pattern: Pattern
    required: tuple[tuple[Item, Mark], ...]  # ● and ○ data items
    forbidden: frozenset[str]  # columns of items blank in the pattern
    old_forbidden: frozenset[str]  # old columns of ○ items
    changed_with_old: tuple[Item, ...]  # ● items that carry an old value


@cache
def _plan(direction: str, code: str) -> _Plan:
    pattern = get_pattern(direction, code)
    required: list[tuple[Item, Mark]] = []
    forbidden: set[str] = set()
    old_forbidden: set[str] = set()
    changed_with_old: list[Item] = []
    for item in items_for(direction):
        mark = pattern.marks.get(item.item_id, Mark.NONE)
        if item.item_id in EVENT_ITEMS:
            if item.item_id in ("change_fact", "change_reason"):
                continue
            if mark in (Mark.CHANGED, Mark.CONTEXT):
                required.append((item, mark))
            elif mark is Mark.NONE and item.item_id != "event_date":
                forbidden.update(item.columns)
            continue
        if mark is Mark.NONE:
            forbidden.update(item.columns)
            forbidden.update(item.old_columns)
        elif mark is Mark.CONTEXT:
            required.append((item, mark))
            old_forbidden.update(item.old_columns)
        elif mark is Mark.CHANGED:
            required.append((item, mark))
            if item.has_old:
                changed_with_old.append(item)
    return _Plan(
        pattern,
        tuple(required),
        frozenset(forbidden),
        frozenset(old_forbidden),
        tuple(changed_with_old),
    )


@cache
def _owners(direction: str) -> dict[str, tuple[Item, bool]]:
    owner: dict[str, tuple[Item, bool]] = {}
    for item in items_for(direction):
        for column in item.columns:
            owner[column] = (item, False)
        for column in item.old_columns:
            owner[column] = (item, True)
    return owner


def _no_card(values: dict[str, str], old: bool) -> bool:
    category = values.get("old_resident_category" if old else "resident_category")
    return bool(category) and not codes.has_card(category)


def _indefinite(values: dict[str, str], old: bool) -> bool:
    period = values.get("old_period_of_stay" if old else "period_of_stay")
    parsed = codes.parse_period(period) if period else None
    return parsed is not None and parsed.indefinite


_EXEMPT: dict[str, Callable[[dict[str, str], bool], bool]] = {
    "card_number": _no_card,
    "card_issue_date": _no_card,
    "card_expiry_date": _no_card,
    "expiry_date": _indefinite,
}


def validate(record: Record, *, check_encoding: bool = True) -> list[Problem]:
    """Every problem of ``record``; an empty list means it may be delivered.

    ``check_encoding=False`` skips the Juki-encodability scan for records that
    were just decoded from Juki code (they cannot fail it).
    """
    if precheck(record, check_encoding=check_encoding):
        return []
    return explain(record, check_encoding=check_encoding)


def explain(record: Record, *, check_encoding: bool = True) -> list[Problem]:
    """The full validator: every problem, with messages (``validate`` without the fast path)."""
    problems: list[Problem] = []
    direction = record.direction
    values = dict(record.values)
    owners = _owners(direction)

    if not record.record_id:
        problems.append(
            Problem(
                "record_id.missing",
                None,
                "record_id",
                "レコード番号がありません",
                "record id missing",
            )
        )
    elif not _RECORD_ID.fullmatch(record.record_id):
        problems.append(
            Problem(
                "record_id.format",
                None,
                "record_id",
                f"レコード番号「{record.record_id}」の形式が正しくありません（半角英数字と . _ : - で64文字以内）",
                f"record id {record.record_id!r}: use 1-64 ASCII letters, digits, . _ : -",
            )
        )

    unknown = [c for c in values if c not in owners]
    for column in unknown:
        problems.append(
            Problem(
                "column.unknown",
                None,
                column,
                f"項目「{column}」はこの通知にはありません",
                f"unknown column {column!r} for a {direction} notice",
            )
        )
        del values[column]

    _check_text(values, problems, check_encoding)

    for column, value in values.items():
        item, _is_old = owners[column]
        _check_value(item, column, value, problems)
    for item in {owners[c][0] for c in values}:
        _check_shape(item, values, False, problems)
        if item.has_old:
            _check_shape(item, values, True, problems)

    try:
        plan = _plan(direction, record.pattern)
    except UnknownPatternError:
        problems.append(
            Problem(
                "pattern.unknown",
                None,
                "pattern",
                f"連携パターン「{record.pattern}」はありません",
                f"unknown {direction} pattern {record.pattern!r}",
            )
        )
        return problems
    _check_pattern(plan, values, problems)
    _check_order(plan.pattern, values, problems)
    return problems


def _check_text(values: dict[str, str], out: list[Problem], check_encoding: bool) -> None:
    joined = " ".join(values.values())
    if _CONTROL.search(joined) is not None:
        for column, value in values.items():
            match = _CONTROL.search(value)
            if match is not None:
                out.append(
                    Problem(
                        "text.control",
                        None,
                        column,
                        f"項目「{column}」の {match.start() + 1} 文字目に制御文字があります",
                        f"{column}: control character U+{ord(match.group()):04X} at {match.start() + 1}",
                    )
                )
    if check_encoding and not juki.is_encodable(joined):
        for column, value in values.items():
            for position, char in juki.unencodable(value):
                if _CONTROL.fullmatch(char):
                    continue
                out.append(
                    Problem(
                        "text.unencodable",
                        None,
                        column,
                        f"項目「{column}」の {position + 1} 文字目「{char}」は住基統一文字コードにありません",
                        f"{column}: character {position + 1} {char!r} (U+{ord(char[0]):04X}) has no Juki code",
                    )
                )


def _check_pattern(plan: _Plan, values: dict[str, str], out: list[Problem]) -> None:
    pattern = plan.pattern
    label = f"パターン{pattern.code}（{pattern.title}）"
    fact = values.get("change_fact")
    fact_item = get_item("change_fact")
    if pattern.pending:
        out.append(
            _problem(
                "pattern.pending",
                None,
                "pattern",
                f"{label}は仕様が調整中（異動事実が未定）のため、まだ連携できません",
                f"pattern {pattern.code} is not settled in the spec (no change fact); it cannot be sent yet",
            )
        )
    elif fact is None:
        out.append(
            _problem(
                "item.missing",
                fact_item,
                "change_fact",
                f"異動事実がありません（{label}）",
                "change_fact missing",
            )
        )
    elif codes.is_known("change_fact", fact) and fact not in pattern.change_facts:
        allowed = "・".join(sorted(pattern.change_facts))
        out.append(
            _problem(
                "change_fact.not_in_pattern",
                fact_item,
                "change_fact",
                f"異動事実「{fact}」は{label}では使えません（使えるコード: {allowed}）",
                f"change fact {fact} not allowed in pattern {pattern.code} (allowed: {allowed})",
            )
        )
    reason = values.get("change_reason")
    reason_item = get_item("change_reason")
    if reason is None:
        out.append(
            _problem(
                "item.missing",
                reason_item,
                "change_reason",
                f"異動事由がありません（{label}）",
                "change_reason missing",
            )
        )
    elif reason not in pattern.change_reasons:
        out.append(
            _problem(
                "change_reason.not_in_pattern",
                reason_item,
                "change_reason",
                f"異動事由「{reason}」は{label}の事由ではありません",
                f"change reason {reason!r} does not belong to pattern {pattern.code}",
            )
        )

    for column in plan.forbidden.intersection(values):
        item = _owners(pattern.direction)[column][0]
        out.append(
            _problem(
                "item.not_allowed",
                item,
                column,
                f"{_label(item)}は{label}では連携しない項目です",
                f"{column}: item {item.item_id} is not carried by pattern {pattern.code}",
            )
        )
    for column in plan.old_forbidden.intersection(values):
        item = _owners(pattern.direction)[column][0]
        out.append(
            _problem(
                "item.old_not_allowed",
                item,
                column,
                f"{_label(item)}は{label}では変更対象ではないため、変更前の値は不要です",
                f"{column}: item {item.item_id} is a context item (○) in pattern {pattern.code}; no old value",
            )
        )
    for item, mark in plan.required:
        if item.item_id == "event_date":
            continue  # required by what the pattern says the date means, below
        if item.columns[0] in values or any(c in values for c in item.columns[1:]):
            continue
        exempt = _EXEMPT.get(item.item_id)
        if exempt is not None and exempt(values, False):
            continue
        if (
            exempt is _no_card
            and "resident_category" not in values
            and "※3" in pattern.notes.get(item.item_id, "")
        ):
            continue  # ※3: no card for some of the persons, and the record does not say which
        kind = "変更対象の項目（●）" if mark is Mark.CHANGED else "連携が必要な項目（○）"
        out.append(
            _problem(
                "item.missing",
                item,
                item.columns[0],
                f"{_label(item)}がありません（{label}の{kind}です）",
                f"{item.columns[0]}: item {item.item_id} ({mark.value}) missing in pattern {pattern.code}",
            )
        )
    if fact == CORRECTION:
        for item in plan.changed_with_old:
            if any(c in values for c in item.old_columns):
                continue
            exempt = _EXEMPT.get(item.item_id)
            if exempt is not None and exempt(values, True):
                continue
            if exempt is _no_card and not codes.has_card(persons_category(pattern) or "1"):
                continue  # the card is new: the persons had none before (一時庇護 → 中長期 …)
            out.append(
                _problem(
                    "item.old_missing",
                    item,
                    item.old_columns[0],
                    f"{_label(item)}の変更前の値がありません（修正では●の項目に新旧両方が必要です）",
                    f"{item.old_columns[0]}: changed item {item.item_id} needs its old value in a correction",
                )
            )
    if pattern.event_date_meaning and "event_date" not in values and _requires_event_date(pattern):
        item = get_item("event_date")
        out.append(
            _problem(
                "item.missing",
                item,
                "event_date",
                f"事由発生年月日（{pattern.event_date_meaning}）がありません（{label}）",
                f"event_date missing ({pattern.event_date_meaning})",
            )
        )


def _requires_event_date(pattern: Pattern) -> bool:
    meaning = pattern.event_date_meaning
    return "調整中" not in meaning and "整理中" not in meaning


def _check_order(pattern: Pattern, values: dict[str, str], out: list[Problem]) -> None:
    def ok(column: str) -> str | None:
        value = values.get(column)
        if value is None or check_date(value, partial=column == "birth_date") is not None:
            return None
        return value

    event = ok("event_date")
    processing = ok("processing_date")
    report = ok("report_date")
    birth = ok("birth_date")
    planned = "予定" in pattern.event_date_meaning
    pairs: Iterable[tuple[str | None, str | None, str, str, str]] = (
        (
            event,
            processing,
            "event_date",
            "事由発生年月日が処理年月日より後です",
            "event date after processing date",
        ),
        (
            report,
            processing,
            "report_date",
            "届出年月日が処理年月日より後です",
            "report date after processing date",
        ),
        (
            None if planned else event,
            report,
            "event_date",
            "事由発生年月日が届出年月日より後です",
            "event date after report date",
        ),
        (
            birth,
            event,
            "birth_date",
            "出生の年月日が事由発生年月日より後です",
            "birth date after event date",
        ),
    )
    for earlier, later, column, ja, en in pairs:
        if earlier is not None and later is not None and earlier > later:
            out.append(Problem("date.order", column, column, ja, f"{en} ({earlier} > {later})"))
