"""Deterministic sample notices: valid records for every pattern, for demos, tests and benchmarks.

Nothing here is a real person.  Given a seed the output is always the same,
so a benchmark file or a demo day can be rebuilt exactly.  The generator reads
the same pattern and code tables as validation, so what it makes is what a
correct sender would send; a test checks that every record it makes is valid.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import date, timedelta

from . import codes, lasdec
from .items import EVENT_ITEMS, MINISTRY, Item, items_for
from .patterns import Mark, Pattern, load_patterns, persons_category
from .records import RECORD_TYPES, Record

CORRECTION = "3"

# (alphabet, kanji or "", nationality).  Kanji names only for 漢字圏 nationalities.
_PEOPLE: Sequence[tuple[str, str, str]] = (
    ("NGUYEN VAN AN", "", "VNM"),
    ("TRAN THI BINH", "", "VNM"),
    ("WANG XIAOMING", "王小明", "CHN"),
    ("LI NA", "李娜", "CHN"),
    ("ZHANG WEI", "張偉", "TWN"),
    ("KIM MINJUN", "金旼俊", "KOR"),
    ("PARK JIYEON", "朴智妍", "KOR"),
    ("SANTOS MARIA CLARA", "", "PHL"),
    ("DA SILVA JOAO", "", "BRA"),
    ("SHRESTHA RAM BAHADUR", "", "NPL"),
    ("SMITH JOHN", "", "USA"),
    ("GURUNG SITA", "", "NPL"),
    ("WIJAYA BUDI", "", "IDN"),
    ("CHEN JIANGUO", "陳建國", "CHN"),
    ("TSUJI HANA", "辻󠄃花", "CHN"),
)
_STREETS = ("一丁目1番1号", "二丁目3番4号", "三丁目5番6-201号", "四丁目7番8号　コーポ髙橋101")
_STATUSES = ("ENGINEER_HUMANITIES", "STUDENT", "DEPENDENT", "SSW_1", "SPOUSE_OF_JAPANESE")


class SampleFactory:
    """Builds valid records; one instance per seed."""

    def __init__(self, seed: int = 20261127, day: date = date(2026, 11, 27)):
        self.random = random.Random(seed)
        self.day = day
        self._serial = 0
        self._municipalities = [m for m in lasdec.municipalities() if m.kind != "都道府県"]

    # -- values ---------------------------------------------------------------------------------

    def _date(self, days_back: int) -> str:
        return (self.day - timedelta(days=self.random.randint(0, days_back))).strftime("%Y%m%d")

    def _card(self) -> str:
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        r = self.random
        return (
            "".join(r.choice(letters) for _ in range(2))
            + f"{r.randint(0, 99_999_999):08d}"
            + "".join(r.choice(letters) for _ in range(2))
        )

    def _address(self, code: str) -> str:
        municipality = lasdec.lookup(code)
        place = (
            f"{municipality.prefecture}{municipality.name}" if municipality else "東京都千代田区"
        )
        return place + self.random.choice(_STREETS)

    def _status(self) -> str:
        table = codes.table("status_of_residence")
        choices = [c for c in _STATUSES if c in table] or sorted(table)
        return self.random.choice(choices)

    # -- records --------------------------------------------------------------------------------

    def record(
        self, pattern: Pattern, municipality_code: str, *, record_id: str | None = None
    ) -> Record:
        """A valid record of ``pattern`` for a person living in ``municipality_code``."""
        self._serial += 1
        r = self.random
        prefix = "M" if pattern.direction == MINISTRY else "C"
        rid = record_id or f"{prefix}{self.day:%Y%m%d}-{municipality_code}-{self._serial:07d}"
        fact = CORRECTION if CORRECTION in pattern.change_facts else min(pattern.change_facts)
        values: dict[str, str] = {
            "change_fact": fact,
            "change_reason": min(pattern.change_reasons),
        }
        alphabet, kanji, nationality = r.choice(_PEOPLE)
        category = _category_for(pattern)
        event = self.day.strftime("%Y%m%d")
        for item in items_for(pattern.direction):
            mark = pattern.marks.get(item.item_id, Mark.NONE)
            if item.item_id in ("change_fact", "change_reason"):
                continue
            if item.item_id == "event_date":
                if pattern.event_date_meaning or mark in (Mark.CHANGED, Mark.CONTEXT):
                    values["event_date"] = event
                continue
            if mark not in (Mark.CHANGED, Mark.CONTEXT):
                continue
            if item.item_id in EVENT_ITEMS:
                values[item.columns[0]] = event
                continue
            new = self._value(item, municipality_code, alphabet, kanji, nationality, category)
            values.update(new or {})
            if mark is Mark.CHANGED and item.has_old and fact == CORRECTION:
                before = persons_category(pattern) or category
                old = self._value(
                    item, municipality_code, alphabet, kanji, nationality, before, old=True
                )
                if old:
                    values.update({"old_" + k: v for k, v in old.items()})
        return RECORD_TYPES[pattern.direction](rid, pattern.code, values)

    def _value(
        self,
        item: Item,
        municipality_code: str,
        alphabet: str,
        kanji: str,
        nationality: str,
        category: str,
        *,
        old: bool = False,
    ) -> dict[str, str] | None:
        r = self.random
        cols = item.columns
        shape = item.shape
        if shape == "name":
            if old:
                alphabet = alphabet.split(" ")[0] + " " + r.choice(("ANH", "MEI", "JUN", "ROSA"))
            kind = "3" if kanji else "1"
            return {cols[0]: kind, cols[1]: alphabet, **({cols[2]: kanji} if kanji else {})}
        if shape == "birth_date":
            born = date(r.randint(1950, 2005), r.randint(1, 12), r.randint(1, 28))
            return {cols[0]: born.strftime("%Y%m%d")}
        if shape == "date":
            if item.item_id == "expiry_date":
                if category == "2":
                    return None  # indefinite period: no expiry date
                return {
                    cols[0]: (self.day + timedelta(days=r.randint(200, 1800))).strftime("%Y%m%d")
                }
            if item.item_id in ("card_issue_date", "card_expiry_date") and not codes.has_card(
                category
            ):
                return None
            return {cols[0]: self._date(3000)}
        if shape == "address":
            if item.item_id == "previous_address" or old:
                other = r.choice(self._municipalities).code
                return {cols[0]: other, cols[1]: self._address(other)}
            return {cols[0]: municipality_code, cols[1]: self._address(municipality_code)}
        if shape == "card":
            if not codes.has_card(category):
                return None
            return {cols[0]: "2" if category == "2" else "1", cols[1]: self._card()}
        if shape == "householder":
            return {cols[0]: "世帯主"}
        if shape == "period":
            if category == "2":
                return {cols[0]: "INDEFINITE"}
            return {cols[0]: r.choice(("P5Y", "P3Y", "P1Y", "P6M"))}
        if shape == "code":
            table = item.code_table
            if table == "nationality":
                return {cols[0]: nationality if not old else r.choice(("CHN", "VNM", "PHL"))}
            if table == "resident_category":
                return {cols[0]: category}
            if table == "status_of_residence":
                if category == "2":
                    return {cols[0]: _special_permanent_code()}
                return {cols[0]: self._status()}
            if table == "sex":
                return {cols[0]: "1" if not old else "2"}
            return {cols[0]: min(codes.table(table))}
        return {cols[0]: "なし"}

    def day_of(self, direction: str, municipality_code: str, count: int) -> Iterator[Record]:
        """``count`` records of the patterns of ``direction``, cycling through them all."""
        patterns = [p for p in load_patterns(direction).values() if not p.pending]
        for i in range(count):
            yield self.record(patterns[i % len(patterns)], municipality_code)


def _category_for(pattern: Pattern) -> str:
    """The resident category (中長期在留者 …) of the person after the event, as a code.

    The 【別紙】 footnotes on item 34 name it where the event changes it
    (※1 特別永住者である旨, ※2 中長期在留者である旨); otherwise the persons keep
    the category the pattern is for.
    """
    note = pattern.notes.get("resident_category", "")
    if "※1" in note:
        return "2"
    if "※2" in note:
        return "1"
    return persons_category(pattern) or "1"


def _special_permanent_code() -> str:
    return "SPECIAL_PERMANENT_RESIDENT"
