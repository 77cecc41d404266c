"""Benchmark: how time grows with the fleet and with the day — fitted exponents and a chart.

* Fleet: the all-at-once burst (:func:`bench.fleet.burst` with no window)
  at 100, 500, 1,900 and 5,000 terminals, each on a fresh server: time to
  the last terminal's end.
* Day: import (and close-day) of 10^4 … 2·10^6 ministry notices
  (:func:`bench.transition.run_import`), each into a fresh database.

For each curve the exponent *k* of ``seconds ≈ c · size^k`` is fitted by
least squares on log(size), log(seconds); *k* = 1 is linear, and the
target is *k* ≤ 1.1 (a cost per terminal or per record that does not grow
with the size).  Fixed costs (a server's first requests, 1,892 batch files
however small the day) make small sizes relatively slow, so *k* below 1 is
expected and fine.  A point already measured by the fleet or transition
benchmark in the same run, at the same settings, is reused, not run again.

The chart is ``bench/scaling.png`` (matplotlib, Agg backend; ~50 KB).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import fleet, transition

__all__ = ["FLEET_POINTS", "IMPORT_POINTS", "fit_exponent", "plot", "run"]

FLEET_POINTS = (100, 500, 1_900, 5_000)
IMPORT_POINTS = (10_000, 30_000, 100_000, 300_000, 1_000_000, 2_000_000)
TARGET_EXPONENT = 1.1


def fit_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """(k, r²) of the least-squares line through (log size, log seconds)."""
    if len(sizes) < 2:
        raise ValueError("an exponent needs at least two points")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    k = sxy / sxx
    residual = sum((y - (my + k * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True))
    total = sum((y - my) ** 2 for y in ys)
    return k, 1.0 - residual / total if total else 1.0


def _curve(name: str, sizes: list[int], seconds: list[float], unit: str) -> dict:
    k, r2 = fit_exponent(sizes, seconds)
    return {
        "points": [[size, s] for size, s in zip(sizes, seconds, strict=True)],
        "unit": unit,
        "exponent": k,
        "r_squared": r2,
        "target_exponent": TARGET_EXPONENT,
        "name": name,
    }


def plot(curves: dict[str, dict], path: Path) -> None:
    """One log-log panel per kind of size, points and fitted power laws."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = {"terminals": [], "records": []}
    for key, curve in curves.items():
        panels[curve["unit"]].append((key, curve))
    shown = [(unit, items) for unit, items in panels.items() if items]
    figure, axes = pyplot.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for axis, (unit, items) in zip(axes[0], shown, strict=True):
        for _key, curve in items:
            sizes = [p[0] for p in curve["points"]]
            seconds = [p[1] for p in curve["points"]]
            k = curve["exponent"]
            (line,) = axis.plot(sizes, seconds, "o", label=f"{curve['name']} (k = {k:.2f})")
            mx = sum(math.log(s) for s in sizes) / len(sizes)
            my = sum(math.log(t) for t in seconds) / len(seconds)
            fitted = [math.exp(my + k * (math.log(s) - mx)) for s in sizes]
            axis.plot(sizes, fitted, "-", color=line.get_color(), alpha=0.6)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(unit)
        axis.set_ylabel("seconds")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_title("fleet burst, all at once" if shown[0][0] == "terminals" else "the day")
    if len(shown) > 1:
        axes[0][1].set_title("the day: import, close-day")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def run(
    fleet_points: Sequence[int] = FLEET_POINTS,
    import_points: Sequence[int] = IMPORT_POINTS,
    *,
    chart: Path | None = None,
    reuse_fleet: dict[int, float] | None = None,
    reuse_import: dict[int, tuple[float, float]] | None = None,
    fleet_options: dict | None = None,
    import_options: dict | None = None,
) -> dict:
    """Measure every point not in ``reuse_*``; fit; draw ``chart`` when given.

    ``reuse_fleet``: terminals → seconds; ``reuse_import``: records →
    (import seconds, close-day seconds); ``fleet_options`` and
    ``import_options`` go to :func:`bench.fleet.burst` and
    :func:`bench.transition.run_import`.
    """
    fleet_seconds: dict[int, float] = dict(reuse_fleet or {})
    missing = [count for count in fleet_points if count not in fleet_seconds]
    if missing:
        options = dict(fleet_options or {})
        with tempfile.TemporaryDirectory(prefix="renkei-bench-day-") as temp:
            prepared = Path(temp) / "day"
            notices = fleet.prepare_day(
                prepared,
                notices_per_unit=options.pop("notices_per_unit", fleet.NOTICES_PER_UNIT),
                units=options.get("units"),
            )
            for count in missing:
                figures = fleet.burst(count, window=0.0, day=(prepared, notices), **options)
                if figures["errors"]:
                    raise RuntimeError(f"fleet of {count}: {figures['first_errors']}")
                fleet_seconds[count] = figures["completion_seconds"]
    day: dict[int, tuple[float, float]] = dict(reuse_import or {})
    for records in import_points:
        if records not in day:
            with tempfile.TemporaryDirectory(prefix="renkei-bench-scaling-") as temp:
                imported, facts = transition.run_import(
                    Path(temp), records, **(import_options or {})
                )
                closed = transition.run_close_day(facts["data_dir"])
            day[records] = (imported["seconds"], closed["seconds"])
    curves: dict[str, dict] = {}
    if len(fleet_points) >= 2:
        sizes = sorted(fleet_points)
        curves["fleet"] = _curve(
            "fleet burst", sizes, [fleet_seconds[n] for n in sizes], "terminals"
        )
    if len(import_points) >= 2:
        sizes = sorted(import_points)
        curves["import"] = _curve("import", sizes, [day[n][0] for n in sizes], "records")
        curves["close_day"] = _curve("close-day", sizes, [day[n][1] for n in sizes], "records")
    if chart is not None and curves:
        plot(curves, chart)
    return curves
