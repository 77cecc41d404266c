"""Code tables and the period of stay."""

from __future__ import annotations

import csv
import gettext
from pathlib import Path

import pycountry
import pytest

from common import codes

ROOT = Path(__file__).resolve().parents[2]
CODES_DIR = ROOT / "common" / "codes"
# Tables this piece provides; change_reason is built by the pattern tables' owner.
PROVIDED = (
    "card_kind",
    "change_fact",
    "extra_activity_permission",
    "name_kind",
    "nationality",
    "period_of_stay",
    "permission_kind",
    "resident_category",
    "sex",
    "status_of_residence",
    "work_restriction",
)


def _raw(name: str) -> list[dict[str, str]]:
    with (CODES_DIR / f"{name}.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", PROVIDED)
def test_table_file_is_well_formed(name):
    """Checked on the raw file, independently of the loader."""
    rows = _raw(name)
    assert rows, name
    assert list(rows[0])[:3] == ["code", "label_ja", "label_en"]
    keys = [r["code"] for r in rows]
    assert len(keys) == len(set(keys)), "duplicate codes"
    for r in rows:
        assert None not in r and None not in r.values(), r  # field count matches the header
        assert r["code"] and r["code"] == r["code"].strip() and r["code"].isascii()
        assert r["label_ja"].strip() and r["label_en"].strip()


@pytest.mark.parametrize("name", PROVIDED)
def test_table_loads(name):
    rows = _raw(name)
    loaded = codes.table(name)
    assert list(loaded) == [r["code"] for r in rows]
    first = loaded[rows[0]["code"]]
    assert (first.table, first.label_ja, first.label_en) == (
        name,
        rows[0]["label_ja"],
        rows[0]["label_en"],
    )
    assert dict(first.extra) == {
        k: v for k, v in rows[0].items() if k not in ("code", "label_ja", "label_en")
    }
    assert name in codes.table_names()


def test_every_code_table_of_the_item_catalogue_exists():
    with (ROOT / "common" / "items.csv").open(encoding="utf-8", newline="") as f:
        named = {r["code_table"] for r in csv.DictReader(f) if r["code_table"]}
    # period_of_stay is read by the period parser, not named by an item.
    assert named - {"change_reason"} == set(PROVIDED) - {"period_of_stay"}


@pytest.mark.parametrize("name", ["nope", "", "../items", "Sex", "sex.csv", None])
def test_unknown_table(name):
    with pytest.raises(KeyError):
        codes.table(name)
    with pytest.raises(KeyError):
        codes.is_known(name, "1")


def test_tables_are_read_only_and_codes_hashable():
    sex = codes.table("sex")
    with pytest.raises(TypeError):
        sex["3"] = sex["1"]
    assert {sex["1"], sex["1"]} == {sex["1"]}
    with pytest.raises(TypeError):
        codes.lookup("change_fact", "2").extra["label_ja_municipality"] = "x"


@pytest.mark.parametrize(
    ("name", "code", "label_ja"),
    [
        ("change_fact", "1", "記載"),
        ("change_fact", "2", "消除"),
        ("change_fact", "3", "修正"),
        ("change_fact", "4", "住民票の回復・記載"),
        ("sex", "1", "男"),
        ("sex", "2", "女"),
        ("resident_category", "1", "中長期在留者"),
        ("resident_category", "2", "特別永住者"),
        ("resident_category", "5", "出生による経過滞在者"),
        ("status_of_residence", "ENGINEER_HUMANITIES", "技術・人文知識・国際業務"),
        ("status_of_residence", "HSP_1B", "高度専門職1号ロ"),
        ("status_of_residence", "TITP_3B", "技能実習3号ロ"),
        ("status_of_residence", "SSW_2", "特定技能2号"),
        ("status_of_residence", "SPECIAL_PERMANENT_RESIDENT", "特別永住者"),
        ("permission_kind", "PERMANENT_RESIDENCE", "永住許可"),
        ("permission_kind", "EXTENSION_OF_PROVISIONAL_STAY", "仮滞在期間の更新許可"),
        ("nationality", "CHN", "中国"),
        ("nationality", "KOR", "韓国"),
        ("nationality", "TWN", "台湾"),
        ("nationality", "PSE", "パレスチナ"),
        ("nationality", "XKR", "朝鮮"),
        ("nationality", "XXA", "無国籍"),
        ("nationality", "VNM", "ベトナム"),
        ("period_of_stay", "INDEFINITE", "無期限"),
    ],
)
def test_lookup(name, code, label_ja):
    assert codes.lookup(name, code).label_ja == label_ja
    assert codes.is_known(name, code)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("sex", "0"),
        ("sex", "3"),
        ("sex", " 1"),
        ("sex", "１"),
        ("change_fact", ""),
        ("nationality", "chn"),
    ],
)
def test_unknown_codes(name, code):
    assert codes.lookup(name, code) is None
    assert not codes.is_known(name, code)


def test_change_fact_municipality_wording():
    assert codes.lookup("change_fact", "2").extra["label_ja_municipality"] == "削除"


# --- resident category and status of residence -----------------------------------------


@pytest.mark.parametrize(
    ("category", "has_card"),
    [
        ("1", True),
        ("2", True),
        ("3", False),
        ("4", False),
        ("5", False),
        ("6", False),
        ("9", False),
        ("", False),
    ],
)
def test_has_card(category, has_card):
    assert codes.has_card(category) is has_card


def test_card_kinds_of_categories_exist():
    for code in codes.table("resident_category").values():
        for kind in code.extra["card_kind"].split():
            assert codes.is_known("card_kind", kind)
        assert (code.extra["card_kind"] != "") == (code.extra["has_card"] == "yes")


EXPECTED_STATUSES = {
    "外交", "公用", "教授", "芸術", "宗教", "報道",
    "高度専門職1号イ", "高度専門職1号ロ", "高度専門職1号ハ", "高度専門職2号",
    "経営・管理", "法律・会計業務", "医療", "研究", "教育", "技術・人文知識・国際業務",
    "企業内転勤", "介護", "興行", "技能", "特定技能1号", "特定技能2号",
    "技能実習1号イ", "技能実習1号ロ", "技能実習2号イ", "技能実習2号ロ", "技能実習3号イ", "技能実習3号ロ",
    "文化活動", "短期滞在", "留学", "研修", "家族滞在", "特定活動",
    "永住者", "日本人の配偶者等", "永住者の配偶者等", "定住者", "特別永住者",
}  # fmt: skip


def test_every_status_of_residence_is_listed():
    labels = {c.label_ja for c in codes.table("status_of_residence").values()}
    assert EXPECTED_STATUSES <= labels
    # Anything beyond the list must say from when it applies.
    for code in codes.table("status_of_residence").values():
        if code.label_ja not in EXPECTED_STATUSES:
            assert code.extra["valid_from"], code


def test_indefinite_statuses():
    indefinite = {
        c.label_ja
        for c in codes.table("status_of_residence").values()
        if c.extra["indefinite"] == "yes"
    }
    assert indefinite == {"永住者", "特別永住者", "高度専門職2号"}


def test_status_flags_are_yes_or_no():
    for code in codes.table("status_of_residence").values():
        assert code.extra["indefinite"] in ("yes", "no")
        assert code.extra["mid_long_term"] in ("yes", "no")


# --- nationality ------------------------------------------------------------------------


def test_nationality_excludes_japan_and_prk():
    assert not codes.is_known("nationality", "JPN")
    assert not codes.is_known("nationality", "PRK")


def test_nationality_covers_iso_3166():
    iso = {c.alpha_3 for c in pycountry.countries}
    table = codes.table("nationality")
    assert iso - {"JPN", "PRK"} <= set(table)
    assert all(table[c].extra["source"] == "iso" for c in iso - {"JPN", "PRK"})


def test_nationality_special_codes():
    table = codes.table("nationality")
    for code in ("XXA", "XXB", "XXC", "XXX"):
        assert table[code].extra["source"] == "icao"
    assert table["XKR"].extra["source"] == "renkei"
    assert all(len(c) == 3 and c.isupper() and c.isascii() for c in table)


def test_nationality_names_follow_pycountry_unless_noted():
    """Every Japanese name is pycountry's, or the row's note says why not."""
    ja = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["ja"])
    for country in pycountry.countries:
        code = codes.lookup("nationality", country.alpha_3)
        if code is None:
            continue
        if code.label_ja != ja.gettext(country.name):
            assert code.extra["note"], country.alpha_3


def test_nationality_japanese_names_unique():
    labels = [c.label_ja for c in codes.table("nationality").values()]
    assert len(labels) == len(set(labels))


# --- period of stay ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "years", "months", "days", "special", "label"),
    [
        ("P5Y", 5, 0, 0, None, "5年"),
        ("P1Y", 1, 0, 0, None, "1年"),
        ("P6M", 0, 6, 0, None, "6月"),
        ("P15D", 0, 0, 15, None, "15日"),
        ("P90D", 0, 0, 90, None, "90日"),
        ("P4Y3M", 4, 3, 0, None, "4年3月"),
        ("P1Y11M", 1, 11, 0, None, "1年11月"),
        ("P2Y3M10D", 2, 3, 10, None, "2年3月10日"),
        ("P3M15D", 0, 3, 15, None, "3月15日"),
        ("INDEFINITE", 0, 0, 0, "INDEFINITE", "無期限"),
        ("DESIGNATED", 0, 0, 0, "DESIGNATED", "法務大臣が個々に指定する期間"),
    ],
)
def test_parse_period(text, years, months, days, special, label):
    period = codes.parse_period(text)
    assert (period.years, period.months, period.days, period.special) == (
        years,
        months,
        days,
        special,
    )
    assert period.indefinite is (special == "INDEFINITE")
    assert codes.period_label_ja(text) == label


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "5Y",
        "p5y",
        "P5y",
        "P0Y",
        "P05Y",
        "P0M",
        "P12M",  # canonical form is P1Y
        "P18M",
        "P3M4Y",  # wrong order
        "P1W",
        "PT5H",
        "P1Y2M3DT4H",
        "P-1Y",
        "P1.5Y",
        "P５Y",  # full-width digit
        " P5Y",
        "P5Y\n",
        "5年",
        "indefinite",
        "無期限",
        None,
        5,
    ],
)
def test_parse_period_rejects(text):
    assert codes.parse_period(text) is None
    with pytest.raises(ValueError):
        codes.period_label_ja(text)


# --- malformed tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("code,label_en,label_ja\n1,a,b\n", "columns"),
        ("code,label_ja,label_en\n1,男,male\n1,女,female\n", "duplicate"),
        ("code,label_ja,label_en\n1,,male\n", "empty"),
        ("code,label_ja,label_en\n1,男\n", "fields"),
        ("code,label_ja,label_en\n1,男,male,extra\n", "fields"),
    ],
)
def test_malformed_table_is_an_error(tmp_path, monkeypatch, content, message):
    name = f"broken_{abs(hash(content))}"
    (tmp_path / f"{name}.csv").write_text(content, encoding="utf-8")
    monkeypatch.setattr(codes, "CODES_DIR", tmp_path)
    try:
        with pytest.raises(codes.CodeTableError, match=message):
            codes.table(name)
    finally:
        codes.table.cache_clear()
