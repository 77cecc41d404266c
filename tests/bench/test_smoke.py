"""Every benchmark runs at a tiny size, so `make test` catches a broken benchmark.

No timing is asserted (a test machine's speed is not a fact about the code);
what is asserted is that each benchmark does the work it claims — every
terminal's cycle ends without an error, every notice is imported and put into
a batch, the baselines see the same rows — and reports the figures the report
needs.  Each benchmark writes only under pytest's ``tmp_path`` and its own
temporary folders, and starts its servers on ports the kernel picks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import agent, codec, fileformat, fleet, ha, scaling, server, transition
from bench.report import markdown, verdicts
from bench.workload import receiving_units

#: A small world: five receiving units (the first in code order).
UNITS = receiving_units()[:5]
#: Compress the 30-minute window to one second.
REAL_WINDOW_TO_ONE_SECOND = fleet.REAL_WINDOW / 1.0


def _cycle_was_whole(figures: dict, terminals: int) -> None:
    assert figures["errors"] == 0, figures.get("first_errors")
    assert figures["terminals"] == terminals
    latency = figures["latency"]
    for kind in ("tls_connect", "list", "download", "ack", "upload", "receipt"):
        assert latency[kind]["count"] == terminals, kind
    assert figures["server"]["cpu_seconds"] >= 0
    assert figures["server"]["peak_rss_mb"] > 0


def test_fleet_runs_every_terminals_cycle() -> None:
    figures = fleet.run(
        7,  # more terminals than units: two share a municipality and both fetch its batch
        compression=REAL_WINDOW_TO_ONE_SECOND,
        notices_per_unit=2,
        upload_records=2,
        units=UNITS,
        processes=1,
        threads=2,
    )
    _cycle_was_whole(figures["burst"], 7)
    _cycle_was_whole(figures["all_at_once"], 7)
    assert figures["burst"]["window_seconds"] == pytest.approx(1.0)
    assert figures["floor"]["errors"] == 0
    assert figures["floor"]["requests"] == 7 * 5
    assert 0 < figures["floor"]["ratio"]


def test_ha_runs_the_fleet_on_postgresql_against_one_then_two_servers() -> None:
    figures = ha.run(8, notices_per_unit=2, upload_records=2, units=UNITS, threads=2)
    for name, servers in (("one_server", 1), ("two_servers", 2)):
        run = figures[name]
        assert run["servers"] == servers
        assert run["errors"] == 0, run.get("first_errors")
        for kind in ("tls_connect", "list", "download", "ack", "upload", "receipt"):
            assert run["latency"][kind]["count"] == 8, (name, kind)
        assert run["database_cpu_seconds"] > 0  # the requests really went to PostgreSQL
    comparison = figures["comparison"]
    assert comparison["errors"] == 0
    assert comparison["ratio"] == pytest.approx(
        comparison["one_server_seconds"] / comparison["two_servers_seconds"]
    )


def test_transition_imports_closes_and_compares_the_same_rows() -> None:
    figures = transition.run(150, per_file=100, units=5)
    imported, closed = figures["import"], figures["close_day"]
    assert imported["loaded"] == imported["records"] == 150
    assert imported["files"] == 2
    assert closed["records"] == 150 and closed["waiting"] == 0
    assert closed["batches"] == len(receiving_units())  # every unit gets its batch
    for key in ("ratio", "baseline_raw_executemany_records_per_s", "peak_rss_mb"):
        assert imported[key] > 0, key
    assert closed["ratio"] > 0 and figures["encode"]["ratio"] > 0


def test_scaling_fits_measures_and_draws(tmp_path: Path) -> None:
    # The fleet points are given (a burst is what the fleet test runs); one day is measured.
    chart = tmp_path / "scaling.png"
    curves = scaling.run(
        (2, 3),
        (60, 120),
        chart=chart,
        reuse_fleet={2: 1.0, 3: 1.4},
        reuse_import={60: (0.5, 0.6)},
        import_options={"units": 5},
    )
    assert set(curves) == {"fleet", "import", "close_day"}
    assert curves["fleet"]["points"] == [[2, 1.0], [3, 1.4]]
    assert curves["import"]["points"][0] == [60, 0.5]
    assert curves["import"]["points"][1][0] == 120 and curves["import"]["points"][1][1] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("sizes", "seconds", "exponent"),
    [
        ((10, 100, 1000), (1.0, 10.0, 100.0), 1.0),
        ((10, 100, 1000), (2.0, 200.0, 20000.0), 2.0),
        ((1, 4), (3.0, 6.0), 0.5),
    ],
)
def test_fit_exponent_recovers_a_power_law(sizes, seconds, exponent) -> None:  # type: ignore[no-untyped-def]
    k, r2 = scaling.fit_exponent(sizes, seconds)
    assert k == pytest.approx(exponent)
    assert r2 == pytest.approx(1.0)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx (Debian package) not installed")
def test_server_paths_and_nginx_baseline() -> None:
    figures = server.run(records=20, large_records=40, clients=2, rounds=0.05)
    assert figures["list_download_ack"]["requests"] == 2 * 3  # two clients, one cycle each
    assert figures["upload"]["uploads"] == 2
    for name in ("download_vs_nginx", "download_vs_nginx_large"):
        assert figures[name]["ratio"] > 0, figures[name]


def test_agent_syncs_once() -> None:
    figures = agent.run(records=20)
    assert figures["sync_vs_bare_transfers"]["file_records"] == 20
    assert 0 < figures["agent_memory"]["peak_rss_mb"]


def test_fileformat_and_codec() -> None:
    parsed = fileformat.run(300, small_records=200)
    assert parsed["parse_validate"]["records"] == 200
    assert parsed["million"]["records"] == 300
    coded = codec.run(200)
    assert coded["encode"]["ratio"] > 0


def test_main_writes_the_report(tmp_path: Path) -> None:
    status = bench_main.main(["--only", "codec", "--quick", "--out", str(tmp_path)])
    assert status == 0
    results = json.loads((tmp_path / "report.json").read_text())
    assert "encode" in results["codec"]
    text = (tmp_path / "report.md").read_text()
    assert "## codec" in text and "## Targets" in text


def test_main_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench_main.main(["--only", "fleet,warp"])
    assert stopped.value.code == 2
    assert "warp" in capsys.readouterr().err


def test_a_missed_target_says_why_or_that_nobody_has() -> None:
    results = {
        "codec": {
            "encode": {"ratio": 0.2, "target": 0.5},
            "decode": {"ratio": 0.9, "target": 0.5},
        }
    }
    found = {(v.name, v.met) for v in verdicts(results)}
    assert found == {("encode", False), ("decode", True)}
    text = markdown(results)
    assert "| codec: encode | ratio | 0.20 | ≥ 0.50 | **MISSED** |" in text
    assert "No analysis of this miss is recorded yet" in text
