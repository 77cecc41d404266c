"""`make bench`: run the benchmarks, write bench/report.md, bench/report.json and bench/scaling.png.

Every figure that has a target is a ratio against a baseline measured in the
same run on the same machine (or a limit such as "the fleet in five
minutes"), so the report means the same on any machine.  Missed targets are
stated with their reason and next step (bench/report.py).

Examples::

    python -m bench                                  # everything, full sizes (make bench)
    python -m bench --only fleet --quick             # iterate on one benchmark, small
    python -m bench --only ha --quick                # 1 vs 2 app servers on PostgreSQL
    python -m bench --only transition --records 200000
    python -m bench --only fleet,scaling --profile   # py-spy profiles into bench/out/profiles/
    python -m bench --render                         # report.md again from report.json

Exit status: 0 when every benchmark ran (a missed target is a finding, not a
failure), 1 when one failed (the report still has the others and the error),
2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("fleet", "ha", "transition", "scaling", "server", "agent", "fileformat", "codec")


def _sizes(args: argparse.Namespace) -> dict:
    """What each benchmark runs at: the full run, or --quick; explicit flags win."""
    quick = args.quick
    sizes = {
        "terminals": 200 if quick else 1_900,
        "compression": 180.0 if quick else 30.0,
        "records": 20_000 if quick else 2_000_000,
        "fleet_points": (50, 100, 200) if quick else (100, 500, 1_900, 5_000),
        "import_points": (5_000, 10_000, 20_000)
        if quick
        else (10_000, 30_000, 100_000, 300_000, 1_000_000, 2_000_000),
        "server_rounds": 0.25 if quick else 1.0,
        "agent_records": 1_000 if quick else 10_000,
        "file_records": (20_000, 100_000) if quick else (100_000, 1_000_000),
        "codec_lines": 5_000 if quick else 20_000,
    }
    if args.terminals is not None:
        sizes["terminals"] = args.terminals
    if args.compression is not None:
        sizes["compression"] = args.compression
    if args.records is not None:
        sizes["records"] = args.records
    return sizes


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks and write the report (bench/report.md).",
        epilog="Example: python -m bench --only fleet --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run, of: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to iterate (minutes)")
    parser.add_argument("--terminals", type=int, help="fleet size (default 1,900)")
    parser.add_argument(
        "--compression",
        type=float,
        help="how much the 30-minute randomized window is compressed (default 30: 60 s)",
    )
    parser.add_argument(
        "--records", type=int, help="transition-day notices (default 2,000,000, the full run)"
    )
    parser.add_argument(
        "--import-format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="how the issuance system hands the transition day over (default jsonl)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of the hot paths")
    parser.add_argument(
        "--out", type=Path, default=HERE, help="where report.md/.json and scaling.png go"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: write report.md again from the report.json in --out",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    args.only = [name for name in BENCHMARKS if name in chosen]
    return args


def run(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Run the chosen benchmarks; (results, names of those that failed)."""
    from bench import agent, codec, fileformat, fleet, ha, scaling, server, transition

    sizes = _sizes(args)
    args.out.mkdir(parents=True, exist_ok=True)
    profiler = None
    if args.profile:
        from bench.profiling import Profiler

        profiler = Profiler(args.out / "out" / "profiles")
    results: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "options": " ".join(args.argv) or "(defaults: the full run)",
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
    }
    failed: list[str] = []

    def attempt(name: str, call: Callable[[], dict]) -> None:
        if name not in args.only:
            return
        started = time.perf_counter()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        load = results.setdefault("load_average", {})  # other work on the machine, 1 minute
        load[name] = [round(os.getloadavg()[0], 2)]
        try:
            results[name] = call()
        except Exception:
            failed.append(name)
            results[name] = {"failed": {"error": traceback.format_exc(limit=3)[-1500:]}}
            print(traceback.format_exc(), file=sys.stderr)
        load[name].append(round(os.getloadavg()[0], 2))
        print(f"bench: {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    attempt("fleet", lambda: fleet.run(sizes["terminals"], compression=sizes["compression"]))
    attempt("ha", lambda: ha.run(sizes["terminals"]))
    attempt("transition", lambda: transition.run(sizes["records"], fmt=args.import_format))

    def scaling_run() -> dict:
        reuse_fleet = {}
        if isinstance(results.get("fleet"), dict) and "all_at_once" in results["fleet"]:
            at_once = results["fleet"]["all_at_once"]
            reuse_fleet[at_once["terminals"]] = at_once["completion_seconds"]
        reuse_import = {}
        if isinstance(results.get("transition"), dict) and "import" in results["transition"]:
            done = results["transition"]
            reuse_import[done["size"]["records"]] = (
                done["import"]["seconds"],
                done["close_day"]["seconds"],
            )
        return scaling.run(
            sizes["fleet_points"],
            sizes["import_points"],
            chart=args.out / "scaling.png",
            reuse_fleet=reuse_fleet,
            reuse_import=reuse_import,
        )

    attempt("scaling", scaling_run)
    attempt("server", lambda: server.run(rounds=sizes["server_rounds"]))
    attempt("agent", lambda: agent.run(sizes["agent_records"]))
    small, million = sizes["file_records"]
    attempt("fileformat", lambda: fileformat.run(million, small_records=small))
    attempt("codec", lambda: codec.run(sizes["codec_lines"]))
    if profiler is not None:
        _profile_pass(args, sizes, profiler, failed)
        results["profiles"] = profiler.summaries()
    return results, failed


def _profile_pass(args: argparse.Namespace, sizes: dict, profiler, failed: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Profile the hot paths in runs of their own, after the measured ones.

    py-spy costs the machine some CPU while it samples, so the figures above
    come from unprofiled runs; these runs exist only for their profiles:
    the all-at-once burst (server processes) and the day's import and
    close-day (the child processes), at up to 500 terminals and 200,000
    notices.
    """
    import tempfile

    from bench import fleet, transition

    print("bench: profiles …", file=sys.stderr, flush=True)
    try:
        if "fleet" in args.only or "scaling" in args.only:
            fleet.burst(min(sizes["terminals"], 500), window=0.0, profiler=profiler)
        if "transition" in args.only or "scaling" in args.only:
            records = min(sizes["records"], 200_000)
            with tempfile.TemporaryDirectory(prefix="renkei-bench-profile-") as temp:
                _imported, facts = transition.run_import(Path(temp), records, profiler=profiler)
                transition.run_close_day(
                    facts["data_dir"], profiler=profiler, name=f"close-day-{records}"
                )
    except Exception:
        failed.append("profiles")
        print(traceback.format_exc(), file=sys.stderr)


def write(results: dict, out: Path) -> None:
    from bench.report import markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        source = args.out / "report.json"
        if not source.exists():
            print(f"bench: no {source} to render; run the benchmarks first", file=sys.stderr)
            return 1
        write(json.loads(source.read_text()), args.out)
        print((args.out / "report.md").read_text())
        return 0
    started = time.time()
    results, failed = run(args)
    results["seconds"] = time.time() - started
    write(results, args.out)
    print((args.out / "report.md").read_text())
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
