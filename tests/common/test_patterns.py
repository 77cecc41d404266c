"""The 【別紙】 pattern tables: counts, transcription against the spec text, API behaviour."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from common import patterns
from common.items import get_item
from common.patterns import (
    Mark,
    PatternDataError,
    UnknownPatternError,
    change_reasons,
    get_pattern,
    load_patterns,
)

MINISTRY = "ministry"
MUNICIPALITY = "municipality"

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = Path(
    os.environ.get("RENKEI_SPEC", REPO_ROOT.parent / "shared/seeds/000_4ac838900a702b35.txt")
)

MINISTRY_CODES = (
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z "
    "AA AB AC AD AE AF AG AH AI AJ AK AL AM AN AO AP AQ AR AS AT AU AV AW AX AY AZ "
    "BA BB BC BD BE BF BG"
).split()
MUNICIPALITY_CODES = (
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z AA AB AC AD AE a b c d e f"
).split()

#: Cells where the data deliberately differ from the seed's extraction, each explained in
#: common/patterns/SOURCE.md: (direction, pattern, spec row) -> (seed mark, data mark).
CORRECTIONS = {
    (MUNICIPALITY, "F", 15): (Mark.CHANGED, Mark.NONE),
    (MUNICIPALITY, "H", 15): (Mark.NONE, Mark.CHANGED),
}


# --- an independent reading of the seed -------------------------------------------------------

_CODE = re.compile(r"^(?:[A-Z]{1,2}|[a-f])$")


def _seed_text() -> str:
    if not SEED.is_file():
        pytest.skip(f"spec text not found at {SEED} (set RENKEI_SPEC to its path)")
    return SEED.read_text(encoding="utf-8")


def _seed_cell_mark(row: int, text: str) -> Mark:
    text = text.strip()
    if not text:
        return Mark.NONE
    if "調整中" in text or "整理中" in text:
        return Mark.PENDING
    if text.startswith("●"):
        return Mark.CHANGED
    if text.startswith("○"):
        return Mark.CONTEXT
    assert row == 5, f"unexpected text {text!r} in spec row {row}"
    return Mark.CHANGED  # row 5 gives the event date's meaning instead of a ●


def _seed_sheets(text: str) -> dict[str, list[tuple[list[str], list[list[str]]]]]:
    """Per direction, each 【別紙】 sheet as (pattern codes, the cells of its rows 1..N).

    The code row is the line holding six or more pattern codes; the spec rows are the
    lines from "1<TAB>異動事実" on.  Mark cells sit at column 2 + k * stride, where
    stride is the spacing of the codes in the code row (2 on the sheet whose patterns
    span two cells).
    """
    lines = text.split("\n")
    # The first sheet heading of the municipality annex (a heading line, not the
    # sentence in section 4 that mentions it).
    municipal_from = next(
        i
        for i, line in enumerate(lines)
        if line.strip().endswith("連携パターン別連携項目（市町村通知）")
    )
    sheets: dict[str, list] = {MINISTRY: [], MUNICIPALITY: []}
    for i, line in enumerate(lines):
        cells = line.split("\t")
        at = [j for j, cell in enumerate(cells) if _CODE.match(cell)]
        if len(at) < 6:
            continue
        stride = at[1] - at[0]
        assert all(b - a == stride for a, b in zip(at, at[1:], strict=False)), line
        codes = [cells[j] for j in at]
        first = next(k for k in range(i, len(lines)) if lines[k].startswith("1\t異動事実"))
        direction = MINISTRY if i < municipal_from else MUNICIPALITY
        count = 40 if direction == MINISTRY else 38
        rows = [lines[first + r].split("\t") for r in range(count)]
        for number, cells_of_row in enumerate(rows, start=1):
            assert cells_of_row[0].replace("●", "").strip() == str(number)
        columns = []
        for k in range(len(codes)):
            column = 2 + k * stride
            columns.append([r[column] if column < len(r) else "" for r in rows])
        sheets[direction].append((codes, columns))
    return sheets


@pytest.fixture(scope="module")
def seed_sheets():
    return _seed_sheets(_seed_text())


# --- counts and order --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "codes"), [(MINISTRY, MINISTRY_CODES), (MUNICIPALITY, MUNICIPALITY_CODES)]
)
def test_every_pattern_of_the_spec_in_spec_order(direction, codes):
    assert list(load_patterns(direction)) == codes
    assert all(
        p.direction == direction and p.code == c for c, p in load_patterns(direction).items()
    )


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_the_seed_lists_the_same_pattern_codes(seed_sheets, direction):
    codes = [code for sheet_codes, _ in seed_sheets[direction] for code in sheet_codes]
    assert codes == list(load_patterns(direction))


# --- transcription ----------------------------------------------------------------------------


def _seed_marks(seed_sheets, direction: str, code: str) -> dict[int, Mark]:
    for codes, columns in seed_sheets[direction]:
        if code in codes:
            cells = columns[codes.index(code)]
            return {row: _seed_cell_mark(row, cell) for row, cell in enumerate(cells, start=1)}
    raise AssertionError(f"{direction} {code} not in the seed")


@pytest.mark.parametrize(
    ("direction", "code"),
    [(MINISTRY, c) for c in MINISTRY_CODES] + [(MUNICIPALITY, c) for c in MUNICIPALITY_CODES],
)
def test_marks_match_the_seed_row_by_row(seed_sheets, direction, code):
    seed = _seed_marks(seed_sheets, direction, code)
    data = dict(get_pattern(direction, code).row_marks)
    for (where, pattern, row), (seed_mark, data_mark) in CORRECTIONS.items():
        if (where, pattern) == (direction, code):
            assert (seed[row], data[row]) == (seed_mark, data_mark)
            seed[row] = data[row]
    assert data == seed


@pytest.mark.parametrize(("direction", "code", "row"), sorted(CORRECTIONS))
def test_every_correction_is_documented(direction, code, row):
    source = (REPO_ROOT / "common/patterns/SOURCE.md").read_text(encoding="utf-8")
    assert re.search(rf"{direction}.*\b{code}\b.*row {row}\b", source), (direction, code, row)


# Facts checked by hand against the seed (each string also appears there, checked below).
FACTS = [
    (MINISTRY, "A", "title", "氏名の変更・訂正"),
    (MINISTRY, "A", "legal_basis", "入管法 第19条の10①"),
    (MINISTRY, "A", "residence_record_effect", "修正"),
    (MINISTRY, "A", "card_effect", "登録・発行"),
    (MINISTRY, "A", "change_fact_text", "●修正"),
    (MINISTRY, "A", "event_date_meaning", "新在留カード交付年月日"),
    (MINISTRY, "A", "persons", "中長期在留者"),
    (MINISTRY, "L", "persons", "特別永住者"),
    (MINISTRY, "K", "title", "特別永住許可（中長→特永）"),
    (MINISTRY, "Y", "legal_basis", "入管法 第18条の2①"),
    (MINISTRY, "AK", "change_fact_text", "●住民票の回復・記載"),
    (MINISTRY, "AN", "event_date_meaning", "退去強制令書発付年月日"),
    (MINISTRY, "BB", "title", "予定中長期在留者への在留カードの切替交付"),
    (MINISTRY, "BG", "legal_basis", "入管特別法附則第29条③"),
    (MUNICIPALITY, "B", "title", "転入届 (別市町村からの転入)"),
    (MUNICIPALITY, "E", "event_date_meaning", "転出予定年月日"),
    (MUNICIPALITY, "E", "card_effect", "-"),
    (MUNICIPALITY, "W", "change_fact_text", "●記載・修正・削除"),
    (MUNICIPALITY, "W", "event_date_meaning", "A~W参照"),
    (MUNICIPALITY, "a", "title", "出生届 （その後の住民票作成）"),
    (MUNICIPALITY, "a", "change_fact_text", "●記載"),
    (MUNICIPALITY, "f", "card_effect", "登録・発行 （対象者のみ）"),
]


@pytest.mark.parametrize(("direction", "code", "attribute", "expected"), FACTS)
def test_pattern_text_as_in_the_spec(direction, code, attribute, expected):
    assert getattr(get_pattern(direction, code), attribute) == expected


def test_the_expected_texts_are_the_seeds_own():
    text = _seed_text()
    missing = [expected for *_, expected in FACTS if expected not in text]
    assert missing == []


@pytest.mark.parametrize(
    ("direction", "code", "item_id", "mark"),
    [
        (MINISTRY, "A", "name", Mark.CHANGED),
        (MINISTRY, "A", "birth_date", Mark.CONTEXT),
        (MINISTRY, "A", "card_number", Mark.CHANGED),
        (MINISTRY, "A", "event_date", Mark.CHANGED),
        (MINISTRY, "A", "report_date", Mark.NONE),
        (MINISTRY, "G", "status_of_residence", Mark.CHANGED),
        (MINISTRY, "H", "status_of_residence", Mark.NONE),
        (MINISTRY, "L", "event_date", Mark.PENDING),
        (MINISTRY, "AI", "event_date", Mark.PENDING),
        (MINISTRY, "AJ", "last_departure_date", Mark.PENDING),
        (MINISTRY, "AK", "resident_category", Mark.CHANGED),
        (MINISTRY, "BE", "event_date", Mark.PENDING),
        (MUNICIPALITY, "B", "previous_address", Mark.CHANGED),
        (MUNICIPALITY, "A", "previous_address", Mark.NONE),
        (MUNICIPALITY, "B", "report_date", Mark.CHANGED),
        (MUNICIPALITY, "W", "processing_date", Mark.CHANGED),
        (MUNICIPALITY, "W", "householder", Mark.CONTEXT),
        (MUNICIPALITY, "a", "name", Mark.CHANGED),
        (MUNICIPALITY, "d", "card_number", Mark.CHANGED),
    ],
)
def test_item_marks(direction, code, item_id, mark):
    assert get_pattern(direction, code).marks.get(item_id, Mark.NONE) is mark


@pytest.mark.parametrize(
    ("direction", "code", "facts"),
    [
        (MINISTRY, "A", {"3"}),
        (MINISTRY, "AI", {"2"}),
        (MINISTRY, "AK", {"4"}),
        (MUNICIPALITY, "a", {"1"}),
        (MUNICIPALITY, "E", {"2"}),
        (MUNICIPALITY, "W", {"1", "2", "3"}),
        (MUNICIPALITY, "Y", {"1", "3"}),
        (MUNICIPALITY, "AC", {"4"}),
    ],
)
def test_change_facts(direction, code, facts):
    assert get_pattern(direction, code).change_facts == facts


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_pending_exactly_when_row_1_gives_no_change_fact(direction):
    for pattern in load_patterns(direction).values():
        assert pattern.pending == (pattern.row_marks[1] is not Mark.CHANGED), pattern.code
        assert bool(pattern.change_facts) != pattern.pending, pattern.code


def test_the_unsettled_ministry_patterns_are_pending():
    assert [p.code for p in load_patterns(MINISTRY).values() if p.pending] == ["AH", "BG"]
    assert not any(p.pending for p in load_patterns(MUNICIPALITY).values())


@pytest.mark.parametrize(
    ("direction", "code", "item_id", "note"),
    [
        (MINISTRY, "K", "resident_category", "※1 特別永住者である旨"),
        (MINISTRY, "R", "resident_category", "※2 中長期在留者である旨"),
        (MINISTRY, "AI", "card_number", "※3 一時庇護許可者、仮滞在許可者、経過滞在者については"),
        (MUNICIPALITY, "A", "card_number", "※2 中長期在留者：在留カード番号"),
    ],
)
def test_footnotes_become_notes(direction, code, item_id, note):
    assert get_pattern(direction, code).notes[item_id].startswith(note)


def test_a_cell_without_footnote_has_no_note():
    assert "card_number" not in get_pattern(MINISTRY, "AO").notes
    assert "card_number" not in get_pattern(MUNICIPALITY, "a").notes  # a blank row keeps no note


# --- items --------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_every_marked_row_is_an_item_of_the_catalogue(direction):
    for pattern in load_patterns(direction).values():
        marked = {row for row, mark in pattern.row_marks.items() if mark is not Mark.NONE}
        assert {get_item(i).spec_row(direction) for i in pattern.marks} == marked, pattern.code
        assert set(pattern.notes) <= set(pattern.marks), pattern.code
        assert Mark.NONE not in pattern.marks.values()


# --- change reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [MINISTRY, MUNICIPALITY])
def test_each_pattern_owns_its_change_reasons(direction):
    labels = change_reasons(direction)
    owners: dict[str, str] = {}
    for pattern in load_patterns(direction).values():
        assert pattern.change_reasons, pattern.code
        for reason in pattern.change_reasons:
            assert labels[reason]
            assert owners.setdefault(reason, pattern.code) == pattern.code
    assert set(owners) == set(labels)


@pytest.mark.parametrize(
    ("direction", "code", "reason", "label"),
    [
        (MINISTRY, "A", "M-A", "氏名の変更・訂正"),
        (MUNICIPALITY, "B", "C-B", "転入（別市町村からの転入）"),
        (MUNICIPALITY, "a", "C-a", "出生"),
        (MUNICIPALITY, "A", "C-A", "転入（住民票がない状態での新規入国又は再入国）"),
    ],
)
def test_change_reason_labels(direction, code, reason, label):
    assert reason in get_pattern(direction, code).change_reasons
    assert change_reasons(direction)[reason] == label


def test_change_reasons_do_not_cross_directions():
    assert not set(change_reasons(MINISTRY)) & set(change_reasons(MUNICIPALITY))
    assert "C-B" not in get_pattern(MINISTRY, "B").change_reasons


# --- API behaviour ------------------------------------------------------------------------------


def test_unknown_pattern():
    with pytest.raises(UnknownPatternError, match="ZZ") as caught:
        get_pattern(MINISTRY, "ZZ")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(UnknownPatternError):
        get_pattern(MINISTRY, "a")  # lower-case codes are municipality-only


def test_codes_are_case_sensitive():
    assert get_pattern(MUNICIPALITY, "A").title != get_pattern(MUNICIPALITY, "a").title


@pytest.mark.parametrize("call", [load_patterns, change_reasons, lambda d: get_pattern(d, "A")])
def test_unknown_direction(call):
    with pytest.raises(ValueError, match="direction"):
        call("prefecture")


def test_tables_are_cached_and_read_only():
    table = load_patterns(MINISTRY)
    assert load_patterns(MINISTRY) is table
    with pytest.raises(TypeError):
        table["ZZ"] = table["A"]  # type: ignore[index]
    with pytest.raises(TypeError):
        table["A"].marks["name"] = Mark.NONE  # type: ignore[index]
    with pytest.raises(AttributeError):
        table["A"].title = "x"  # type: ignore[misc]
    assert hash(table["A"]) == hash(get_pattern(MINISTRY, "A"))


# --- the loader rejects bad data ----------------------------------------------------------------


@pytest.fixture
def broken(monkeypatch):
    """Load the tables from edited copies of the data files; restores the cache after."""
    original = patterns._read_csv

    def edit(name: str, change):
        def read(which: str):
            rows = [list(r) for r in original(which)]
            return change(rows) if which == name else rows

        monkeypatch.setattr(patterns, "_read_csv", read)
        patterns._tables.cache_clear()

    yield edit
    monkeypatch.undo()
    patterns._tables.cache_clear()


def _set(direction_rows, key: str, code: str, value: str):
    index = direction_rows[0].index(code)
    for row in direction_rows:
        if row[0] == key:
            row[index] = value
    return direction_rows


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("ministry.csv", lambda r: _set(r, "10", "A", "●"), "no item for it"),
        ("ministry.csv", lambda r: _set(r, "6", "A", "◎"), "not ●, ○"),
        ("ministry.csv", lambda r: _set(r, "1", "A", "●訂正"), "known change fact"),
        ("ministry.csv", lambda r: _set(r, "35", "K", "● ※9"), "※9"),
        ("ministry.csv", lambda r: [r[0][:-1] + ["BH"], *r[1:]], "not the spec's"),
        ("ministry.csv", lambda r: [x for x in r if x[0] != "12"], "rows"),
        (
            "change_reasons.csv",
            lambda r: [x for x in r if x[0] != "M-B"],
            "pattern B has no change reason",
        ),
        ("change_reasons.csv", lambda r: [*r, ["X-1", "ministry", "A", "x"]], "lacks 'M-'"),
        (
            "change_reasons.csv",
            lambda r: [*r, ["M-ZZ", "ministry", "ZZ", "x"]],
            "no ministry pattern",
        ),
    ],
)
def test_bad_data_is_rejected(broken, name, change, message):
    broken(name, change)
    with pytest.raises(PatternDataError, match=re.escape(message)):
        load_patterns(MINISTRY)
