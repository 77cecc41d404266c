"""Validation: every problem of a record, with stable codes and Japanese messages."""

from __future__ import annotations

import pytest

from common.items import MINISTRY, MUNICIPALITY
from common.patterns import Mark, get_pattern, load_patterns
from common.records import MinistryNotice
from common.synthetic import SampleFactory
from common.validation import check_date, validate


@pytest.fixture(scope="module")
def factory() -> SampleFactory:
    return SampleFactory(seed=7)


def codes_of(record) -> list[str]:
    return sorted(p.code for p in validate(record))


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_a_correct_record_of_every_pattern_is_valid(factory, direction):
    for pattern in load_patterns(direction).values():
        if pattern.pending:
            continue
        record = factory.record(pattern, "131016")
        assert validate(record) == [], (pattern.code, record)


def ministry_a(factory) -> MinistryNotice:
    record = factory.record(get_pattern(MINISTRY, "A"), "011002")
    assert validate(record) == []
    return record  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"birth_date": None}, ["item.missing"]),  # ○ item gone
        (
            {"name_kind": None, "name_alphabet": None, "name_kanji": None},
            ["item.missing"],
        ),  # ● item gone
        (
            {"old_name_kind": None, "old_name_alphabet": None, "old_name_kanji": None},
            ["item.old_missing"],
        ),
        ({"old_birth_date": "19800101"}, ["item.old_not_allowed"]),
        ({"expiry_date": "20300101"}, ["item.not_allowed"]),
        ({"event_date": "20100230"}, ["date.invalid"]),
        ({"birth_date": "1985-01-01"}, ["date.invalid"]),
        ({"address_code": "011001"}, ["lasdec.check_digit"]),
        ({"address_code": "01100"}, ["lasdec.format"]),
        ({"card_number": "ab12345678cd"}, ["card_number.format"]),
        ({"nationality": "XYZ"}, ["code.unknown"]),
        ({"sex": "9"}, ["code.unknown"]),
        ({"change_fact": "1"}, ["change_fact.not_in_pattern"]),
        ({"change_reason": "C-B"}, ["change_reason.not_in_pattern"]),
        ({"name_alphabet": "KIM\x07"}, ["text.control"]),
        ({"address": "서울特別市"}, ["text.unencodable", "text.unencodable"]),
        ({"name_kind": "2"}, ["name.kind_mismatch"]),
        ({"address": None}, ["address.incomplete"]),
        ({"bogus": "1"}, ["column.unknown"]),
    ],
)
def test_each_fault_is_named(factory, changes, expected):
    record = ministry_a(factory).with_values(**changes)
    assert codes_of(record) == sorted(expected)


def test_all_problems_are_reported_at_once(factory):
    record = ministry_a(factory).with_values(
        birth_date=None, nationality="XYZ", event_date="20100230", address_code="131017"
    )
    problems = validate(record)
    assert sorted(p.code for p in problems) == [
        "code.unknown",
        "date.invalid",
        "item.missing",
        "lasdec.check_digit",
    ]
    by_code = {p.code: p for p in problems}
    assert by_code["item.missing"].item == "birth_date"
    assert by_code["code.unknown"].column == "nationality"
    for problem in problems:
        assert problem.message and problem.message_en
        assert any("\u3040" <= ch <= "\u9fff" for ch in problem.message)  # Japanese for staff


def test_unknown_pattern_still_checks_values(factory):
    record = MinistryNotice("M-1", "ZZ", {"change_fact": "3", "sex": "9"})
    assert codes_of(record) == ["code.unknown", "pattern.unknown"]


def test_record_id_is_required_and_well_formed(factory):
    record = ministry_a(factory)
    assert codes_of(MinistryNotice("", "A", record.values)) == ["record_id.missing"]
    assert codes_of(MinistryNotice("M 1/..", "A", record.values)) == ["record_id.format"]


def test_dates_in_order(factory):
    pattern = get_pattern(MUNICIPALITY, "W")
    assert pattern.marks["processing_date"] is Mark.CHANGED
    record = factory.record(pattern, "131016")
    later = record.with_values(event_date="20261128", processing_date="20261127")
    assert "date.order" in codes_of(later)
    born_after = record.with_values(birth_date="20261130", event_date="20261127")
    assert "date.order" in codes_of(born_after)


def test_planned_move_out_may_be_dated_after_the_report(factory):
    pattern = get_pattern(MUNICIPALITY, "E")
    assert "予定" in pattern.event_date_meaning
    record = factory.record(pattern, "131016").with_values(
        report_date="20261120", event_date="20261201"
    )
    assert validate(record) == []


def test_no_card_number_for_persons_without_a_card(factory):
    """【別紙】 ※3: 一時庇護許可者, 仮滞在許可者 and 経過滞在者 have no card number."""
    pattern = get_pattern(MINISTRY, "AN")
    assert pattern.marks["card_number"] is Mark.CONTEXT
    assert pattern.marks["resident_category"] is Mark.CONTEXT
    record = factory.record(pattern, "131016")
    without_card = record.with_values(resident_category="3", card_kind=None, card_number=None)
    assert validate(without_card) == []
    mid_long_term = record.with_values(resident_category="1", card_kind=None, card_number=None)
    assert codes_of(mid_long_term) == ["item.missing"]


def test_card_optional_where_the_pattern_does_not_say_who(factory):
    """AI (出国) carries no resident category; its ※3 card number is optional."""
    pattern = get_pattern(MINISTRY, "AI")
    assert "resident_category" not in pattern.marks
    record = factory.record(pattern, "131016")
    assert validate(record.with_values(card_kind=None, card_number=None)) == []


def test_a_new_card_needs_no_old_number_when_the_person_had_none(factory):
    """W: 一時庇護許可者 granted a status of residence gets their first residence card."""
    pattern = get_pattern(MINISTRY, "W")
    assert pattern.marks["card_number"] is Mark.CHANGED
    record = factory.record(pattern, "131016")
    assert "old_card_number" not in record.values
    assert validate(record) == []
    assert "item.old_missing" in codes_of(
        factory.record(get_pattern(MINISTRY, "A"), "131016").with_values(
            old_card_kind=None, old_card_number=None
        )
    )


@pytest.mark.parametrize(
    ("text", "partial", "ok"),
    [
        ("20240229", False, True),
        ("20230229", False, False),
        ("20100230", False, False),
        ("19850000", True, True),  # birth date with unknown month and day (不詳)
        ("19850700", True, True),
        ("19850000", False, False),
        ("19851300", True, False),
        ("17991231", False, False),
        ("2024022", False, False),
        ("２０２４０２２９", False, False),
    ],
)
def test_check_date(text, partial, ok):
    assert (check_date(text, partial=partial) is None) is ok
