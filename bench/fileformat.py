"""Benchmark: reading and validating notice files.

Ratios against baselines measured in the same run on the same bytes:

* parse + validate records/s vs a bare ``csv.reader`` pass over the same file
  decoded with Python's own ``utf-16-be`` codec (target ≥ 0.25);
* a 1,000,000-record file read and validated in a child process: records/s and
  peak RSS (target: flat memory, under 200 MB).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procwatch import own_peak_rss_mb
from common.items import MINISTRY
from common.noticefile import NoticeReader, NoticeWriter, RowError
from common.synthetic import SampleFactory
from common.validation import validate


def make_file(path: Path, records: int, *, distinct: int = 5_000) -> int:
    """A ministry-notice file of ``records`` valid records (``distinct`` generated, then reused)."""
    factory = SampleFactory(seed=99)
    codes = ("131016", "011011", "271004", "401307", "221384")
    base = [r for i in range(distinct) for r in factory.day_of(MINISTRY, codes[i % len(codes)], 1)]
    with path.open("wb") as sink:
        writer = NoticeWriter(sink, MINISTRY, block=2048)
        for i in range(records):
            template = base[i % distinct]
            writer.write(type(template)(f"B{i:09d}", template.pattern, template.values))
        writer.close()
    return path.stat().st_size


def parse_and_validate(path: Path) -> tuple[int, int]:
    ok = bad = 0
    with path.open("rb") as handle:
        for row in NoticeReader(handle, name=path.name):
            if isinstance(row, RowError) or validate(row, check_encoding=False):
                bad += 1
            else:
                ok += 1
    return ok, bad


def bare_csv(path: Path) -> int:
    with path.open("rb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-16-be", newline="")
        return sum(1 for _ in csv.reader(text)) - 1


def _best(fn, *args, repeat: int = 3) -> tuple[float, object]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def child_million(path: str) -> None:
    """Run in a child process: read + validate, print JSON with time and peak RSS."""
    start = time.perf_counter()
    ok, bad = parse_and_validate(Path(path))
    elapsed = time.perf_counter() - start
    print(json.dumps({"ok": ok, "bad": bad, "seconds": elapsed, "peak_rss_mb": own_peak_rss_mb()}))


def run(million: int = 1_000_000, small_records: int = 100_000) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="renkei-bench-") as tmp:
        small = Path(tmp) / "100k.csv"
        size = make_file(small, small_records, distinct=min(5_000, small_records))
        ours, (ok, bad) = _best(parse_and_validate, small)
        assert bad == 0, f"benchmark file has {bad} invalid records"
        base, rows = _best(bare_csv, small)
        assert rows == ok
        results["parse_validate"] = {
            "records": ok,
            "bytes": size,
            "ours_records_per_s": ok / ours,
            "baseline_csv_reader_records_per_s": rows / base,
            "ratio": base / ours,
            "target": 0.25,
        }
        big = Path(tmp) / "1m.csv"
        size = make_file(big, million, distinct=min(5_000, million))
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from bench.fileformat import child_million; child_million({str(big)!r})",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        child = json.loads(out.stdout)
        results["million"] = {
            "records": child["ok"],
            "bytes": size,
            "records_per_s": child["ok"] / child["seconds"],
            "peak_rss_mb": child["peak_rss_mb"],
            "target_peak_rss_mb": 200,
        }
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
