"""Scenario 2: a terminal offline for three business days, then back.

札幌市中央区's wire is cut (the router's end of its veth goes down).  For
three days staff keep dropping their municipality notice file, the ministry
closes a day with notices for it, and the evening timer fires: the agent
cannot reach the LGWAN NTP server, refuses the run before doing anything
(exit 3) and leaves the outbox alone.  Then the wire is back: the next timer
run fetches the three batches in sequence order and sends the three files,
each once; the run after it has nothing to do.  No failure mail is sent for
an outage shorter than ``retry.give_up_after``.
"""

from __future__ import annotations

import pytest

from . import invariants
from .report import emit
from .world import World

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAYS = 3


def test_offline_for_three_days_then_back(world: World, request):  # type: ignore[no-untyped-def]
    world.catch_up()
    terminal = world.terminals["011011"]
    mails_before = len(world.mail.messages())
    rows: list[tuple] = []
    days = []
    world.net.link_down(terminal.link)
    try:
        for number in range(DAYS):
            world.drop_day(terminal, 3, bad=False)
            day, _ = world.publish({terminal.lasdec: 4 + number})
            days.append(day)
            run = terminal.agent()
            assert run.status == 3 and run.outcome == "refused", (run.stderr, run.summary)
            assert run.codes() == ["preflight.clock", "preflight.dns"], run.summary
            checks = {c["name"]: c["status"] for c in run.summary["checks"]}
            assert checks == {"clock": "fail", "dns": "fail"}, checks
            invariants.check(world, final=False, terminals=[terminal])
            assert len(terminal.files("outbox")) == number + 1
            rows.append(
                (
                    f"day {number + 1} ({day})",
                    "link down",
                    "refused (exit 3): NTP unreachable",
                    f"outbox {number + 1} waiting; invariants ok",
                )
            )
    finally:
        world.net.link_up(terminal.link)

    run = terminal.agent()
    assert run.status == 0 and run.outcome == "ok", (run.stderr, run.summary)
    placed = [e for e in run.summary["batches"] if e["outcome"] == "placed"]
    sequences = [e["sequence"] for e in placed]
    assert len(sequences) == DAYS and sequences == list(range(sequences[0], sequences[0] + DAYS))
    stamps = [e["path"].rsplit("-", 2)[1] for e in placed]
    assert stamps == [day.strftime("%Y%m%d") for day in days], stamps
    assert run.outcomes("files").count("sent") == DAYS, run.summary["files"]
    assert not run.summary["gaps"]
    counts = invariants.check(world, final=True, terminals=[terminal])
    rows.append(
        (
            "back online",
            "link up, timer run",
            f"{DAYS} batches placed in order {sequences}",
            f"{DAYS} files sent once",
        )
    )

    again = terminal.agent()
    assert again.status == 0 and again.summary["batches"] == [] and again.summary["files"] == []
    invariants.check(world, final=True, terminals=[terminal])
    rows.append(("next run", "timer run", "nothing to do", "nothing doubled"))
    assert len(world.mail.messages()) == mails_before
    rows.append(("mail", "aiosmtpd", "none (outage < retry.give_up_after)", "ok"))
    c = counts[terminal.lasdec]
    rows.append(("invariants", "final", f"{c['batches']} batches, {c['records']} records", "ok"))
    emit(
        request,
        f"Scenario 2 — {terminal.lasdec} offline for {DAYS} days, then back",
        ("when", "what", "agent", "checked"),
        rows,
    )
