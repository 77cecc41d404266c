#!/usr/bin/env python3
"""Build common/codes/nationality.csv (国籍等) from pycountry.

Why generated: ISO 3166-1 and its Japanese names come from pycountry (pinned
in setup.cfg), which ships the iso-codes project's gettext catalogue for ``ja``.
Only where a residence card prints something else, or pycountry's Japanese
name is wrong or outdated, is a name overridden here — each override with its
reason, so a reviewer can check the list against the ministry's 国籍・地域
names and nothing is silently different from the package.

Usage (from the repository root)::

    python tools/build_nationality_table.py [--out common/codes/nationality.csv]

The CSV columns are ``code,label_ja,label_en,source,note``; ``source`` is
``iso`` (ISO 3166-1 alpha-3 via pycountry), ``icao`` (ICAO Doc 9303 part 3
special code) or ``renkei`` (a code of this project's own, in the
user-assigned range of ISO 3166-1).
"""

from __future__ import annotations

import argparse
import csv
import gettext
import sys
from pathlib import Path

import pycountry

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "common" / "codes" / "nationality.csv"
COLUMNS = ("code", "label_ja", "label_en", "source", "note")

# ISO codes left out, and why.
EXCLUDED = {
    # A foreign resident (外国人住民) is by definition not a Japanese national
    # (住基法30条の45: 日本の国籍を有しない者); a dual national with Japanese
    # nationality is recorded as a Japanese resident, never in these notices.
    "JPN": "not a foreign nationality",
    # Japan does not recognise the DPRK; residence cards print 朝鮮 for
    # everyone of that designation, which is coded XKR below.  Keeping PRK as
    # well would give one printed name two codes.
    "PRK": "recorded as 朝鮮 (XKR)",
}

# Japanese names that differ from pycountry's ja catalogue.  Reason codes:
#   card   – the short name the residence card and the ministry's statistics use
#            (外務省's short country names, as in 在留外国人統計)
#   fix    – pycountry's translation is misspelt
#   rename – Japan's official name changed and pycountry has the old one
OVERRIDES_JA = {
    "TWN": ("台湾", "card: pycountry has 中国領・台湾"),
    "KOR": ("韓国", "card: pycountry has 大韓民国 (韓国)"),
    "AUS": ("オーストラリア", "card: pycountry has オーストラリア連邦"),
    "BOL": ("ボリビア", "card: pycountry has ボリビア多民族国"),
    "BRN": ("ブルネイ", "card: pycountry has ブルネイ・ダルサラーム国"),
    "CAF": ("中央アフリカ", "card: pycountry has 中央アフリカ共和国"),
    "COG": ("コンゴ共和国", "card: pycountry has コンゴ, ambiguous with COD"),
    "CPV": ("カーボベルデ", "card: pycountry has カーボヴェルデ"),
    "DMA": ("ドミニカ国", "card: pycountry has ドミニカ, ambiguous with DOM"),
    "ERI": ("エリトリア", "card: pycountry has エリトリア国"),
    "FSM": ("ミクロネシア", "card: pycountry has ミクロネシア連邦"),
    "GEO": ("ジョージア", "rename: Japan uses ジョージア since 2015; pycountry has グルジア"),
    "IRN": ("イラン", "card: pycountry has イラン・イスラム共和国"),
    "KGZ": ("キルギス", "card: pycountry has キルギスタン"),
    "KNA": ("セントクリストファー・ネービス", "card: pycountry has …ネーヴィス"),
    "LAO": ("ラオス", "card: pycountry has ラオス人民民主共和国"),
    "MDA": ("モルドバ", "card: pycountry has モルドバ共和国"),
    "MNG": ("モンゴル", "card: pycountry has モンゴル国"),
    "RUS": ("ロシア", "card: pycountry has ロシア連邦"),
    "SYR": ("シリア", "card: pycountry has シリア・アラブ共和国"),
    "TZA": ("タンザニア", "fix: pycountry has タニザニア連合共和国"),
    "VAT": ("バチカン", "card: pycountry has 聖庁 (バチカン市国)"),
    "VEN": ("ベネズエラ", "card: pycountry has ベネズエラ・ボリバル共和国"),
}

# English names where pycountry's ISO short name reads oddly on a notice.
OVERRIDES_EN = {
    "TWN": "Taiwan",
    # Japan does not recognise a State of Palestine; the card prints the region パレスチナ.
    "PSE": "Palestine",
}

# Codes that are not ISO 3166-1 country codes.
SPECIAL = (
    (
        "XXA",
        "無国籍",
        "Stateless person",
        "icao",
        "ICAO 9303-3: stateless person (1954 Convention)",
    ),
    (
        "XXB",
        "難民（条約難民）",
        "Refugee (1951 Convention)",
        "icao",
        "ICAO 9303-3: refugee, 1951 Convention / 1967 Protocol",
    ),
    ("XXC", "難民（その他）", "Refugee (other)", "icao", "ICAO 9303-3: refugee other than XXB"),
    (
        "XXX",
        "国籍不明",
        "Unspecified nationality",
        "icao",
        "ICAO 9303-3: person of unspecified nationality",
    ),
    (
        "XKR",
        "朝鮮",
        "Korea (Chosen)",
        "renkei",
        "the card's 朝鮮, a designation of origin on the Korean peninsula, not a state; "
        "no ISO code exists; XKR is in the ISO user-assigned range XAA–XZZ and unused by ICAO",
    ),
    (
        "XKX",
        "コソボ",
        "Kosovo",
        "renkei",
        "recognised by Japan; not in ISO 3166-1; XKX as used by the EU",
    ),
)


def build() -> list[dict[str, str]]:
    ja = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["ja"])
    rows = []
    for country in pycountry.countries:
        code = country.alpha_3
        if code in EXCLUDED:
            continue
        label_ja, note = ja.gettext(country.name), ""
        if code in OVERRIDES_JA:
            label_ja, note = OVERRIDES_JA[code]
        elif label_ja == country.name:
            raise SystemExit(f"{code}: no Japanese name in pycountry; add an override")
        label_en = OVERRIDES_EN.get(code) or getattr(country, "common_name", None) or country.name
        rows.append(dict(zip(COLUMNS, (code, label_ja, label_en, "iso", note), strict=True)))
    for special in SPECIAL:
        rows.append(dict(zip(COLUMNS, special, strict=True)))
    unused = (set(OVERRIDES_JA) | set(EXCLUDED)) - {c.alpha_3 for c in pycountry.countries}
    if unused:
        raise SystemExit(f"codes no longer in pycountry: {sorted(unused)}")
    rows.sort(key=lambda r: r["code"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = build()
    with args.out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows, pycountry {_pycountry_version()}")
    return 0


def _pycountry_version() -> str:
    from importlib.metadata import version

    return version("pycountry")


if __name__ == "__main__":
    sys.exit(main())
