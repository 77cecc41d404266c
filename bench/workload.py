"""Synthetic workloads for the fleet and transition-day benchmarks, made fast and the same every run.

``common.synthetic.SampleFactory`` makes one valid record in about 80 µs;
two million of them would take the benchmark longer to *make* than the
server takes to *import*.  So a pool of records is made once (every
non-pending pattern, several people each) and *stamped*: each notice is a
pool record with its own record id and the address of its receiving unit
(``address_code`` and ``address``, the only values that depend on where the
person lives; ``previous_address`` names another municipality anyway).  A
stamped record is as valid as the pool record it came from; the import
benchmark asserts that every record loads.

Notices are spread over the receiving units (municipalities without wards,
and wards) Zipf-like: weight ``1 / (rank + 10)`` in a seeded shuffle, so the
largest unit gets about 1.9 % of the day — as 新宿区 did of the two million
foreign residents moved on 9 July 2012 — and the smallest a few dozen.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from common.items import MINISTRY, MUNICIPALITY, columns_for
from common.noticefile import FORMAT_TAGS, encode_notice_file, format_row, header
from common.records import RECORD_TYPES
from common.synthetic import SampleFactory
from server.municipalities import is_receiving_unit, shipped_master

__all__ = [
    "Unit",
    "encode_municipality_file",
    "ministry_lines",
    "receiving_units",
    "write_ministry_files",
    "zipf_counts",
]

#: Pool size: every pattern many times over, so values vary across the day.
POOL = 3_000
_POOL_SOURCES = ("131016", "011011", "271004", "401307", "221384")


@dataclass(frozen=True)
class Unit:
    """A receiving unit: its code and the address prefix its residents' addresses start with."""

    code: str
    place: str  # e.g. 東京都千代田区


def receiving_units() -> list[Unit]:
    """Every receiving unit of the shipped master (1,892), in code order."""
    master = shipped_master()
    parents = {m.parent for m in master if m.parent}
    return [
        Unit(m.code, f"{m.prefecture}{m.name}")
        for m in sorted(master, key=lambda m: m.code)
        if is_receiving_unit(m, parents)
    ]


def zipf_counts(total: int, units: int, *, seed: int = 9) -> list[int]:
    """``total`` notices over ``units`` units, weight 1/(rank+10) in a seeded order; sums to total."""
    ranks = list(range(units))
    random.Random(seed).shuffle(ranks)
    weights = [1.0 / (rank + 10) for rank in ranks]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    short = total - sum(counts)
    by_remainder = sorted(range(units), key=lambda i: weights[i] * scale - counts[i], reverse=True)
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


@functools.cache
def _pool(direction: str, day: date, seed: int) -> tuple[dict[str, str], ...]:
    """Made once per process for each (direction, day, seed); callers copy what they stamp."""
    factory = SampleFactory(seed=seed, day=day)
    per_source = POOL // len(_POOL_SOURCES)
    return tuple(
        record.to_json()
        for code in _POOL_SOURCES
        for record in factory.day_of(direction, code, per_source)
    )


_STREETS = ("一丁目1番1号", "二丁目3番4号", "三丁目5番6-201号", "四丁目7番8号")


def _stamped(
    direction: str, units: Sequence[Unit], counts: Sequence[int], day: date, seed: int, tag: str
) -> Iterator[dict[str, str]]:
    """The notices, unit by unit: pool records with their own ids and the unit's address."""
    pool = _pool(direction, day, seed)
    prefix = "M" if direction == MINISTRY else "C"
    serial = 0
    for unit, count in zip(units, counts, strict=True):
        for n in range(count):
            record = dict(pool[serial % len(pool)])
            serial += 1
            record["record_id"] = f"{prefix}{day:%Y%m%d}{tag}-{unit.code}-{n + 1:07d}"
            record["address_code"] = unit.code
            record["address"] = unit.place + _STREETS[serial % len(_STREETS)]
            yield record


def ministry_lines(
    units: Sequence[Unit],
    counts: Sequence[int],
    *,
    day: date,
    fmt: str = "jsonl",
    seed: int = 3,
    tag: str = "",
) -> Iterator[str]:
    """Ministry notices as the issuance system hands them over: UTF-8 JSON Lines or CSV lines.

    The first line is the format header.  ``tag`` goes into every record id
    (so two workloads of the same day do not collide).
    """
    if fmt == "jsonl":
        yield json.dumps({"format": FORMAT_TAGS[MINISTRY]}) + "\n"
        for record in _stamped(MINISTRY, units, counts, day, seed, tag):
            yield json.dumps(record, ensure_ascii=False) + "\n"
    elif fmt == "csv":
        columns = columns_for(MINISTRY)
        yield format_row(header(MINISTRY))
        for record in _stamped(MINISTRY, units, counts, day, seed, tag):
            fields = [record["record_id"], record["pattern"]]
            fields.extend(record.get(c, "") for c in columns)
            yield format_row(fields)
    else:
        raise ValueError(f"unknown import format {fmt!r} (jsonl or csv)")


def write_ministry_files(
    folder: Path,
    units: Sequence[Unit],
    counts: Sequence[int],
    *,
    day: date,
    per_file: int,
    fmt: str = "jsonl",
    seed: int = 3,
) -> list[Path]:
    """The day's notices as import files of at most ``per_file`` records each (header in each)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ministry_lines(units, counts, day=day, fmt=fmt, seed=seed)
    head = next(lines)
    paths: list[Path] = []
    chunk: list[str] = []

    def flush() -> None:
        path = folder / f"notices-{len(paths) + 1:04d}.{fmt}"
        path.write_text(head + "".join(chunk), encoding="utf-8")
        paths.append(path)
        chunk.clear()

    for line in lines:
        chunk.append(line)
        if len(chunk) >= per_file:
            flush()
    if chunk or not paths:
        flush()
    return paths


def encode_municipality_file(unit: Unit, count: int, *, day: date, seed: int, tag: str) -> bytes:
    """One municipality notice file (Juki code) of ``count`` records from ``unit``."""
    make = RECORD_TYPES[MUNICIPALITY]
    records = (
        make(r["record_id"], r["pattern"], {k: v for k, v in r.items() if k not in _ID_KEYS})
        for r in _stamped(MUNICIPALITY, [unit], [count], day, seed, tag)
    )
    return encode_notice_file(MUNICIPALITY, records)


_ID_KEYS = frozenset({"record_id", "pattern"})
