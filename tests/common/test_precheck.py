"""The fast pre-check never calls an invalid record valid, and passes the common case."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.items import MINISTRY, MUNICIPALITY, columns_for
from common.patterns import load_patterns
from common.precheck import precheck
from common.synthetic import SampleFactory
from common.validation import explain, validate

FACTORY = SampleFactory(seed=11)
SAMPLES = [
    FACTORY.record(pattern, code)
    for direction in (MINISTRY, MUNICIPALITY)
    for pattern in load_patterns(direction).values()
    if not pattern.pending
    for code in ("131016", "011011")
]
VALUES = [
    "",
    "1",
    "2",
    "3",
    "4",
    "9",
    "X",
    "20261127",
    "20261128",
    "20100230",
    "19850000",
    "19851300",
    "131016",
    "131017",
    "011011",
    "AB12345678CD",
    "ab12345678cd",
    "P5Y",
    "P12M",
    "INDEFINITE",
    "VNM",
    "XYZ",
    "M-A",
    "C-B",
    "世帯主",
    "東京都千代田区",
    "김",
    "a\x07b",
    "KIM MINJUN",
    # controls: TAB, CR and LF are Juki codes, the others are not; with a selector after
    "a\tb",
    "a\rb",
    "a\nb",
    "\x00",
    "\x7f",
    "a\x1f\ufe00",
    "\x01\U000e0100",
    # not Juki, but no control: passes when the encoding is not checked
    "café",
    "\ud800",
    "辻\U000e0103",
    "𠮷",
]


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_the_common_case_takes_the_fast_path(direction):
    samples = [s for s in SAMPLES if s.direction == direction]
    fast = [s for s in samples if precheck(s)]
    assert all(explain(s) == [] for s in samples)
    assert len(fast) >= 0.9 * len(samples)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=len(SAMPLES) - 1),
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=200), st.sampled_from(VALUES)), max_size=4
    ),
)
def test_precheck_never_accepts_what_the_validator_rejects(index, edits):
    record = SAMPLES[index]
    columns = ("change_fact", "change_reason", *columns_for(record.direction))
    changes = {columns[i % len(columns)]: value for i, value in edits}
    mutated = record.with_values(**changes)
    for check_encoding in (True, False):
        problems = explain(mutated, check_encoding=check_encoding)
        if precheck(mutated, check_encoding=check_encoding):
            assert problems == [], (changes, check_encoding, problems)
        assert validate(mutated, check_encoding=check_encoding) == problems
