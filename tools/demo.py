"""`make demo`: the daily job on an embedded sample day, told step by step.

Stage of the project: the foundation (common/).  The demo generates one day
of ministry notices for three municipalities, refuses a bad record with its
Japanese report, cuts one batch file per municipality in 住基統一文字コード
(an empty one where nothing happened), decodes each back to prove the round
trip, and reads a municipality's notice file the way the terminal will before
sending it.  Outputs go to ``demo-output/`` (or the folder given).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import lasdec  # noqa: E402
from common.atomicwrite import atomic_write  # noqa: E402
from common.items import MINISTRY, MUNICIPALITY  # noqa: E402
from common.noticefile import NoticeReader, NoticeWriter, RowError  # noqa: E402
from common.synthetic import SampleFactory  # noqa: E402
from common.validation import validate  # noqa: E402

DAY = date(2026, 11, 27)
MUNICIPALITIES = {"131016": 40, "011011": 25, "221384": 0}  # 千代田区, 札幌市中央区, 浜松市中央区


def say(text: str = "") -> None:
    print(text, flush=True)


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    factory = SampleFactory(seed=20261127, day=DAY)
    say(f"== renkei demo: the ministry's notices of {DAY:%Y-%m-%d} ==")

    say(
        "\n1. The issuance system's notices (Unicode), validated against the 【別紙】 pattern tables"
    )
    batches: dict[str, list] = {}
    for code, count in MUNICIPALITIES.items():
        municipality = lasdec.lookup(code)
        label = f"{municipality.prefecture}{municipality.name}" if municipality else code
        records = list(factory.day_of(MINISTRY, code, count))
        batches[code] = records
        say(f"   {code} {label}: {count} notices")
    bad = batches["131016"][0].with_values(birth_date="20100230", nationality="XYZ")
    bad = type(bad)("M-BAD-0001", bad.pattern, bad.values)
    problems = validate(bad)
    say(
        f"   a bad notice {bad.record_id} (pattern {bad.pattern}) is refused — {len(problems)} problems:"
    )
    for problem in problems:
        say(f"     [{problem.code}] {problem.message}")
    total = sum(len(r) for r in batches.values())
    invalid = sum(1 for records in batches.values() for r in records if validate(r))
    say(f"   {total} notices valid: {total - invalid}, refused: {invalid} (+1 bad example)")

    say("\n2. Close the day: one batch file per municipality, in 住基統一文字コード")
    for code, records in batches.items():
        path = out / f"ministry-{code}-{DAY:%Y%m%d}.csv"
        with atomic_write(path) as sink:
            writer = NoticeWriter(sink, MINISTRY)
            for record in records:
                writer.write(record)
            writer.close()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        empty = "  (empty batch: nothing happened)" if not records else ""
        say(
            f"   {path.name}: {len(records)} records, {path.stat().st_size:,} bytes, sha256 {digest[:16]}…{empty}"
        )

    say("\n3. Decode each batch back to Unicode: the round trip is lossless")
    for code, records in batches.items():
        path = out / f"ministry-{code}-{DAY:%Y%m%d}.csv"
        data = path.read_bytes()
        reader = NoticeReader(io.BytesIO(data), name=path.name)
        back = [r for r in reader if not isinstance(r, RowError)]
        again = io.BytesIO()
        writer = NoticeWriter(again, MINISTRY)
        for record in back:
            writer.write(record)
        writer.close()
        same = "identical" if again.getvalue() == data and back == records else "DIFFERENT"
        say(f"   {path.name}: {len(back)} records read, re-encoded bytes {same}")
    sample = batches["131016"][0]
    say("   first notice for 千代田区 as JSON:")
    say("   " + json.dumps(sample.to_json(), ensure_ascii=False))

    say("\n4. A municipality's notice file, checked as the terminal will before sending it")
    records = list(factory.day_of(MUNICIPALITY, "131016", 12))
    records[3] = records[3].with_values(address_code="131017")
    path = out / f"municipality-131016-{DAY:%Y%m%d}.csv"
    with atomic_write(path) as sink:
        writer = NoticeWriter(sink, MUNICIPALITY)
        for record in records:
            writer.write(record)
        writer.close()
    accepted = rejected = 0
    with path.open("rb") as handle:
        for row in NoticeReader(handle, name=path.name):
            problems = [] if isinstance(row, RowError) else validate(row, check_encoding=False)
            if isinstance(row, RowError) or problems:
                rejected += 1
                say(f"   rejected {row.record_id}: " + "; ".join(p.message for p in problems))
            else:
                accepted += 1
    say(f"   {path.name}: {accepted} accepted, {rejected} rejected")
    say(f"\nOutputs are in {out}/ — try: .venv/bin/renkei-format validate {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo-output"))
