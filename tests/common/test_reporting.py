"""Who may report a municipality notice (common.reporting): the municipality of its 住居地."""

from __future__ import annotations

import pytest

from common.items import MUNICIPALITY
from common.patterns import Mark, load_patterns
from common.reporting import OTHER_MUNICIPALITY, reporting_problem
from common.synthetic import SampleFactory
from common.validation import validate

CHIYODA, CHUO = "131016", "131024"
SAPPORO, SAPPORO_CHUO, SAPPORO_KITA = "011002", "011011", "011029"


def _records(code: str, count: int = 40):
    return list(SampleFactory(seed=3).day_of(MUNICIPALITY, code, count))


def test_every_pattern_carries_the_address_the_rule_reads():
    """【別紙】 row 12 (住居地／住所) is ● or ○ in every municipality-notice pattern (転出 too)."""
    patterns = load_patterns(MUNICIPALITY)
    assert len(patterns) == 37  # A…AE, a…f
    for code, pattern in patterns.items():
        assert pattern.marks["address"] in {Mark.CHANGED, Mark.CONTEXT}, code


def test_own_records_pass():
    for record in _records(CHIYODA):
        assert validate(record) == []
        assert reporting_problem(record, CHIYODA) is None


def test_another_municipalitys_records_are_refused_with_a_japanese_message():
    for record in _records(CHIYODA, 10):
        problem = reporting_problem(record, CHUO)
        assert problem is not None
        assert (problem.code, problem.item, problem.column) == (
            OTHER_MUNICIPALITY,
            "address",
            "address_code",
        )
        assert "131016（東京都千代田区）" in problem.message
        assert "131024（東京都中央区）" in problem.message
        assert "131016" in problem.message_en and "131024" in problem.message_en


def test_a_previous_address_elsewhere_is_fine():
    """A 転入 from another municipality names it as the previous address: still ours to report."""
    [record] = [r for r in _records(CHIYODA) if r.get("previous_address_code")][:1]
    assert record.get("previous_address_code") != CHIYODA
    assert reporting_problem(record, CHIYODA) is None


def test_designated_city_wards():
    [own] = _records(SAPPORO_CHUO, 1)
    assert reporting_problem(own, SAPPORO_CHUO) is None
    city = own.with_values(address_code=SAPPORO)
    problem = reporting_problem(city, SAPPORO_CHUO)
    assert problem is not None and problem.code == OTHER_MUNICIPALITY
    assert "政令指定都市" in problem.message and "区のコード「011011」" in problem.message
    other_ward = own.with_values(address_code=SAPPORO_KITA)
    problem = reporting_problem(other_ward, SAPPORO_CHUO)
    assert problem is not None and "011029（北海道札幌市北区）" in problem.message
    # the ward of another terminal is not "the city" of this one
    assert reporting_problem(own, SAPPORO_KITA) is not None


@pytest.mark.parametrize("code", ["", "13101", "131017", "999991"])
def test_a_missing_or_bad_code_is_left_to_the_validator(code: str):
    [record] = _records(CHIYODA, 1)
    assert reporting_problem(record.with_values(address_code=code), CHUO) is None
