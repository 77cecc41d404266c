"""The benchmark report: verdicts against targets, tables, and why each missed target was missed.

:func:`verdicts` finds every figure that has a target in the results (the
keys below, side by side in one section's figures) and says met or MISSED;
:func:`markdown` renders the whole report — a summary of every target first,
then one section per benchmark with its figures, nested figures (latency per
request kind, server CPU and memory) as their own small tables, and the
profiles' top functions.  A missed target is followed by its reason and next
step from :data:`WHY_MISSED`; a miss without an entry there says so, so it
cannot pass unexplained.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CHANGES", "SECTIONS", "WHY_MISSED", "Verdict", "markdown", "verdicts"]

#: Report order, and each section's one-line description.
SECTIONS = {
    "fleet": (
        "Fleet burst: every terminal's evening cycle (connect, list, download, ack, upload, "
        "receipt; each request signed) against one server — gunicorn as shipped ((2 × cores + 1) workers × 4 "
        "threads), TLS, SQLite — from a load generator of 2 processes × 16 threads. `burst`: "
        "each terminal starts at a random instant of the agent timer's 30-minute randomized "
        "window compressed 30× (to 60 s: an arrival rate 30 times the real one); `all_at_once`: "
        "no window at all; `floor`: the same connections and request count to the unsigned "
        "clock endpoint (the stack's own cost). Server CPU and memory are the gunicorn "
        "process group's (PSS shares the pages the workers inherit)."
    ),
    "ha": (
        "Several app servers: the same fleet all at once on PostgreSQL (a throw-away cluster, "
        "fsync on) against one gunicorn, then against two gunicorn instances sharing the data "
        "folder and the database, the load generator's two processes one per server. `ratio` = "
        "one-server seconds / two-server seconds; both servers and the database share this "
        "machine's cores, so the ratio shows the cost of coordinating through the database, "
        "not the capacity a second host adds"
    ),
    "transition": (
        "Transition day: the ministry's notices imported (JSON Lines, files of 100,000), the "
        "day closed, batches encoded; each step in its own process (peak RSS is its own)"
    ),
    "scaling": (
        "Scaling: time against fleet size (all at once) and day size, exponent k of "
        "time ∝ size^k fitted on log–log; chart: `bench/scaling.png`"
    ),
    "server": "Server paths under gunicorn with TLS (signed requests from several clients)",
    "agent": "Agent: one real `renkei-agent sync` against the server",
    "fileformat": "Notice files: parse + validate",
    "codec": "Juki codec against Python's utf-16-be",
}

#: (figure, target key, comparison, unit) — a section's figures hold both keys.
_RULES = (
    ("ratio", "target", ">=", ""),
    ("peak_rss_mb", "target_peak_rss_mb", "<", " MB"),
    ("completion_seconds", "target_seconds", "<", " s"),
    ("exponent", "target_exponent", "<=", ""),
    ("errors", "target_errors", "<=", ""),
)

#: Why a target was missed, and the next step; keyed by (section, name, figure).
WHY_MISSED: dict[tuple[str, str, str], str] = {
    ("transition", "import", "ratio"): (
        "Why: the import is CPython work per record that the raw insert does not do — parse the "
        "JSON line (~9.5 µs), build and pre-check the record against its pattern (~8 µs each), "
        "write its canonical JSON and SHA-256 (~10 µs), look the id up for duplicates (~3 µs) — "
        "on top of the insert itself (~15 µs, which is the whole baseline). The profile below "
        "(import-200000) shows no single function above 16 %; what dominated before (SQLAlchemy's "
        "per-row parameter processing, json.dumps, the per-column checks) is gone. The ratio is "
        "about 0.2 on a quiet machine (0.21 at 200,000 notices) and drops when other work shares "
        "the two cores, because the baseline spends its time in SQLite (I/O wait) and ours on the "
        "CPU. Next step: let the issuance system hand the day over as CSV (csv.reader parses a "
        "row in ~4 µs against json's ~9.5; `--import-format csv` measures it: 0.24), or import "
        "the day's files in two processes (validation in parallel, SQLite serializes only the "
        "insert) — a change to `renkei-server import` (server/cli.py)."
    ),
    ("server", "download_vs_nginx", "ratio"): (
        "Why: a 360 KB batch is carried by the per-request cost, not by moving bytes (the "
        "3.5 MB batch meets the target), and the ratio moves ±0.05 with the machine's load. "
        "This session cut the server's CPU per signed download from ~8.4 to ~4.4 ms (terminal "
        "and failure count in one read, nonce and contact in one non-durable transaction, a "
        "verifier for exactly the agent's signature form, the batch select built once, plain "
        "downloads without Werkzeug's conditional machinery, cheaper log events and metrics); "
        "0.30 needs ~3 ms. What is left, profiled: the nonce write and terminal read (~10 % "
        "together), gunicorn's TLS body writes (9 %), its per-loop heartbeat (5 %) and separate "
        "header send (5 %), gunicorn + Flask's own floor ~1.3 ms. Next step: look the batch up "
        "in authentication's read (one transaction per request), and TLS at the load balancer "
        "with plain HTTP to gunicorn (sendfile) where the ministry's network allows it."
    ),
    ("fileformat", "parse_validate", "ratio"): (
        "Why: the common row is now decoded, split and made into a Record in C (0.33–0.39 in "
        "this session's runs, from 0.18); a miss means a row left the common path (quotes, an "
        "unusual width: read by the Python reader, which names the error) or the csv.reader "
        "baseline had a fast sample (it varies ±30 % between runs on this machine). Next step: "
        "the pattern pre-check (common/precheck.py) per shape in C."
    ),
    ("codec", "decode_variants", "ratio"): (
        "Why: variation sequences and astral kanji are decoded in the C scanner now (1.7–1.9 "
        "in this session's runs, from 0.45); a miss can only be the utf-16-be baseline's noise "
        "(540–1,600 MB/s between runs here). Next step: compare the median of several slices."
    ),
    ("codec", "encode_variants", "ratio"): (
        "Why: every spelling with a code — a base with its variation selector, astral kanji — "
        "is encoded in C now (1.6–1.7 in this session's runs, from 0.39–0.56); a miss can only "
        "be the baseline's noise. Next step: compare the median of several slices."
    ),
    ("ha", "comparison", "ratio"): (
        "Why: both app servers and PostgreSQL share this machine's two cores, so the second "
        "server adds processes that compete for the same CPU (twice the workers, twice the "
        "connections) instead of capacity; the figure measures coordination cost, and errors "
        "stay 0. Next step: measure on two hosts (the database's CPU share in this section says "
        "how much headroom PostgreSQL has)."
    ),
    ("server", "download_vs_nginx_large", "ratio"): (
        "Why: at 3.5 MB the per-request cost is amortized and TLS in gunicorn's Python write "
        "loop decides; the ratio moves around the target with the machine's load. Next step: "
        "TLS at the load balancer and gunicorn's sendfile (already used when it serves plain HTTP)."
    ),
    ("fleet", "burst", "completion_seconds"): (
        "Why: the fleet's requests queue on SQLite's single writer (nonce, contact, download, "
        "acknowledgement and upload: nine fsync'd commits per terminal). Next step: as for "
        "server download_vs_nginx (fewer synchronous commits per request)."
    ),
    ("fleet", "all_at_once", "completion_seconds"): (
        "Why and next step: as for the windowed burst."
    ),
}


#: What was changed for performance in issue 10, with the figures measured before the change
#: (same machine, same benchmark code, earlier the same day), shown above the sections.
CHANGES = """## Performance work (issue 10)

Profiled with py-spy (profiles at the end), then changed where the time went:

* **import** (server/ingest.py): new notices go to the driver's `executemany` in one call
  with the per-file values (date, time, import id) converted once — SQLAlchemy converted
  every parameter of every row, which cost more than SQLite's insert; the canonical JSON of
  a record of plain strings is joined directly (json.dumps only for anything that needs
  escaping; same text, same hashes); only the stored fields of a record are kept until the
  insert. common/noticefile.py: a JSON Lines object whose keys come in column order is taken
  as it is; common/precheck.py: what depends only on which columns are present is decided
  once per pattern and column set.
* **close-day** (server/closeday.py, server/blobs.py): one receiving unit's notices at a
  time instead of the whole day in memory; batch ids set in chunks of 500; the 1,892 batch
  files written as they are made and made durable together at the end (`BlobWriter`, fsyncs
  in parallel) instead of two fsyncs per file in turn; the writer (common/noticefile.py)
  joins and quotes a whole row at once.
* **uploads** (server/uploads.py): the uploaded file's two fsyncs happen before the
  database's write lock is taken (every terminal's requests queue behind that lock); it is
  checked again inside the transaction, so a retention purge still cannot remove it.
  server/batches.py: an acknowledgement reads the batch back in its own transaction.

| figure (same size) | before | after (full run of 2026-11-27 08:46; 200,000 rows: `--records 200000` runs) |
|---|---|---|
| fleet, 1,900 terminals at once | 256.5 s, 7.4 terminals/s, floor ratio 0.18 | 74.9 s, 25.4 terminals/s, floor ratio 0.23 |
| fleet, 1,900 in a 60 s window | 216.6 s | 75.1 s |
| import, 200,000 JSON Lines | 2,521 records/s, ratio 0.09, peak 502 MB | 11,979/s, ratio 0.21, 312 MB |
| import, 2,000,000 JSON Lines | (not run: 15 min at that rate) | 11,921/s, ratio 0.25, 313 MB |
| close-day, 200,000 | 3,609 records/s, ratio 0.49, peak 347 MB | 14,052/s, ratio 0.79, 73 MB |
| close-day, 2,000,000 | every notice's text held at once (est. 3 GB) | 18,275/s, ratio 0.74, 137 MB |
| parse + validate (fileformat) | 27,272 records/s | 42,274 records/s |
| 1,000-record download vs nginx | ratio 0.12 | ratio 0.12 (authentication-bound, see below) |

What limits the fleet now is SQLite's single writer: in the fleet profile below the largest
entry is `BEGIN IMMEDIATE` waiting for the write lock (36 % of the server's samples), most of
it for the nonce every request writes (server/enrollment.py `remember_nonce`, in its own
synchronous=FULL transaction) — nine fsync'd commits per terminal in all. The fleet still
finishes in a quarter of the five minutes and could be 24 times larger within the real
30-minute window. Patched in for a trial (not committed; 1,000 terminals at once, quiet
machine): nonce and contact at synchronous=NORMAL −6 %, plus a file lock that wakes the next
writer instead of SQLite's sleeping busy handler −10 %. The server is then CPU-bound: about
50 ms of CPU per terminal, ~9 ms a request (TLS, the RFC 9421 check, SQLAlchemy, Flask).

Second round (the same day, later):

* **authenticated requests** (server/auth.py, server/enrollment.py, server/storage.py): the
  terminal and its recent failure count in one read; the nonce and the last contact in one
  transaction that does not wait for the disk (`Storage.begin(durable=False)`: SQLite
  `synchronous=NORMAL` for that transaction, PostgreSQL `synchronous_commit` off — losing
  the last few at a power cut only reopens the ±300 s window for requests nobody else could
  have signed); expired nonces deleted with the contact write, not on every request; a
  verifier for exactly the signature form the agent emits (0.2 ms against the library's
  0.55; any other form is refused). Server CPU per signed 1k download ~8.4 → ~5.1 ms.
* **the download view** (server/batches.py, server/api/batches.py, server/eventlog.py,
  server/metrics.py): the batch select built once, plain downloads without Werkzeug's
  conditional machinery, log events without a stack walk, metric children kept: ~5.1 →
  ~4.4 ms.
* **the benchmark itself** (bench/server.py): nginx with as many workers as gunicorn,
  keep-alive and one untimed warm-up per connection on both sides, the two sides
  alternating in five slices so other load hits both alike, requests signed before the
  clock starts (signing is the terminal's work).
* **notice files and the codec** (common/juki/_scan.c, common/records.py): variation
  sequences and astral kanji decoded and encoded in C; the common row decoded, split and made into a
  Record in C, anything unusual read by the Python reader (which names the error);
  differential tests C against Python.

The machine is shared with other work (load average 1–16 during these runs): compare the
ratios, which carry their own baseline, rather than seconds across runs.
"""


@dataclass(frozen=True)
class Verdict:
    section: str
    name: str
    figure: str
    value: float
    target: float
    comparison: str
    unit: str

    @property
    def met(self) -> bool:
        return {
            ">=": self.value >= self.target,
            "<": self.value < self.target,
            "<=": self.value <= self.target,
        }[self.comparison]

    def text(self) -> str:
        word = "met" if self.met else "MISSED"
        return (
            f"**{word}**: {self.figure} {_fmt(self.value)}{self.unit} vs target "
            f"{self.comparison.replace('>=', '≥').replace('<=', '≤')} {_fmt(self.target)}{self.unit}"
        )


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdicts(results: dict) -> Iterator[Verdict]:
    for section in SECTIONS:
        for name, figures in (results.get(section) or {}).items():
            if not isinstance(figures, dict):
                continue
            for figure, target, comparison, unit in _RULES:
                if figure in figures and target in figures:
                    yield Verdict(
                        section, name, figure, figures[figure], figures[target], comparison, unit
                    )


def _table(figures: dict, *, skip: frozenset[str] = frozenset()) -> list[str]:
    rows = ["| figure | value |", "|---|---|"]
    nested: list[tuple[str, dict]] = []
    for key, value in figures.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            nested.append((key, value))
        elif isinstance(value, list):
            if value and all(isinstance(v, (int, float)) for v in value):
                rows.append(f"| {key} | {', '.join(_fmt(v) for v in value[:12])} |")
            elif value:
                rows.append(f"| {key} | {'; '.join(str(v) for v in value[:5])} |")
        else:
            rows.append(f"| {key} | {_fmt(value)} |")
    lines = rows
    for key, value in nested:
        lines += ["", *_nested(key, value)]
    return lines


def _nested(key: str, value: dict) -> list[str]:
    if value and all(isinstance(v, dict) for v in value.values()):
        columns = list(dict.fromkeys(c for v in value.values() for c in v))
        lines = [
            f"*{key}*",
            "",
            f"| {key} | {' | '.join(columns)} |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for row, cells in value.items():
            lines.append(f"| {row} | {' | '.join(_fmt(cells.get(c, '')) for c in columns)} |")
        return lines
    return [f"*{key}*", "", *_table(value)]


def _profile_lines(profiles: dict) -> list[str]:
    lines: list[str] = []
    for name, summary in profiles.items():
        lines += [f"### profile: {name} ({summary['samples']:,} samples)", ""]
        lines += [
            "| on top of the stack (self) | % | ours, anywhere in the stack (total) | % |",
            "|---|---|---|---|",
        ]
        own, total = summary["self"], summary["total"]
        for i in range(max(len(own), len(total))):
            a = own[i] if i < len(own) else ["", ""]
            b = total[i] if i < len(total) else ["", ""]
            lines.append(f"| `{a[0]}` | {a[1]} | `{b[0]}` | {b[1]} |")
        lines.append("")
    return lines


def markdown(results: dict, *, notes: list[str] | None = None, changes: bool = True) -> str:
    machine = results.get("machine", {})
    lines = [
        "# Benchmark report",
        "",
        f"Run {results.get('when', '?')} on {machine.get('platform', '?')}, Python "
        f"{machine.get('python', '?')}, {machine.get('cpus', '?')} CPUs; took "
        f"{_fmt(results.get('seconds', 0.0))} s. Options: `{results.get('options', '')}`.",
        "",
        "Every figure with a target is measured against a baseline or limit in the same run on "
        "the same machine; `make bench` writes this file, `bench/report.json` (the same figures, "
        "complete) and `bench/scaling.png`.",
        "",
    ]
    if results.get("load_average"):
        loads = ", ".join(
            f"{name} {start:.1f}→{end:.1f}"
            for name, (start, end, *_rest) in results["load_average"].items()
        )
        lines += [
            "Load average (1 min) of the machine at the start → end of each benchmark "
            f"(2 CPUs; other work shares them): {loads}.",
            "",
        ]
    lines += [*(notes or []), *results.get("notes", [])]
    found = list(verdicts(results))
    if found:
        lines += [
            "## Targets",
            "",
            "| benchmark | figure | value | target | verdict |",
            "|---|---|---|---|---|",
        ]
        for v in found:
            symbol = v.comparison.replace(">=", "≥").replace("<=", "≤")
            lines.append(
                f"| {v.section}: {v.name} | {v.figure} | {_fmt(v.value)}{v.unit} | "
                f"{symbol} {_fmt(v.target)}{v.unit} | {'met' if v.met else '**MISSED**'} |"
            )
        lines.append("")
    if changes:
        lines += [CHANGES]
    by_place = {(v.section, v.name): [] for v in found}
    for v in found:
        by_place[(v.section, v.name)].append(v)
    for section, title in SECTIONS.items():
        entries = results.get(section)
        if not entries:
            continue
        lines += [f"## {section}", "", title, ""]
        for name, figures in entries.items():
            if not isinstance(figures, dict):
                continue
            lines += [f"### {section}: {name}", ""]
            lines += _table(figures)
            for v in by_place.get((section, name), []):
                lines += ["", v.text()]
                if not v.met:
                    why = WHY_MISSED.get((section, name, v.figure))
                    lines += [
                        "",
                        why or "No analysis of this miss is recorded yet (bench/report.py).",
                    ]
            lines.append("")
    if results.get("profiles"):
        lines += ["## Profiles (py-spy, CPU samples)", ""]
        lines += _profile_lines(results["profiles"])
    return "\n".join(lines).rstrip() + "\n"
