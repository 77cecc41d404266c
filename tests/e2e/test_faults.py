"""Scenario 3: faults, each at several points, each followed by the invariants.

Every fault runs on a fresh business day with work in flight on all three
terminals: a batch for each (large enough — 900 notices, about 330 KB — for
a download to be cut in the middle of its body) and, in each outbox, a good
municipality notice file and a bad one.  The *points* are exact, not timed
guesses: the server's fault middleware (``faultwsgi.py``) holds a request
before the app, after the app committed, or in the middle of the body, and
the fault is applied while it is held; the agent's own crash hook
(``RENKEI_AGENT_CRASH_AT``) kills it at a named step.  Different terminals
take different points in the same round, in parallel.

After each fault the invariants are checked as they must hold at any moment
(``final=False``: nothing doubled, nothing partial visible, nothing lost);
then the fault is removed, every terminal's "send now" runs
(``sync --retry-failed``, standing in for the evening's second timer run,
which comes after the upload backoff) and the invariants must hold in full
(``final=True``: everything delivered exactly once).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest

from . import invariants
from .report import emit
from .terminal import AgentRun
from .world import World

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIG = 1000  # notices: a batch of about 345 KB, more than HOLD_AT
BLOCK = 256 * 1024
#: Where a held download stops: a whole block (the agent writes whole blocks to partial/) and
#: the up to 16 KiB the front (nginx) keeps in its TLS buffer while the app sends nothing.
HOLD_AT = BLOCK + 32 * 1024
FILE_PATH = r"^/api/v1/batches/[^/]+$"

Row = tuple[str, str, str, str]


def _day(world: World, sizes: dict[str, int] | None = None) -> None:
    """New work everywhere: a good and a bad file in each outbox, a batch for each terminal."""
    for terminal in world.terminals.values():
        world.drop_day(terminal, 3)
    world.publish(sizes or dict.fromkeys(world.terminals, BIG))


def _completed(run: AgentRun) -> bool:
    """Did everything it could: only the day's bad file was refused (``file.records``)."""
    return run.outcome == "partial" and set(run.codes()) == {"file.records"}


def _said(run: AgentRun) -> str:
    """The run in a few words; the day's bad file (always rejected, ``file.records``) left out."""
    if run.status is None:
        return "killed"
    if _completed(run):
        return "completed (exit 1: the bad file rejected)"
    codes = sorted(set(run.codes()) - {"file.records"})
    shown = ", ".join(codes[:3]) + (" …" if len(codes) > 3 else "")
    return f"exit {run.status} {run.outcome}" + (f": {shown}" if codes else "")


def _after(world: World) -> str:
    invariants.check(world, final=False)
    return "ok"


def _recover(world: World) -> str:
    counts = world.catch_up()
    records = sum(c["records"] for c in counts.values())
    return f"ok ({records} records)"


def _terminal_id(world: World, lasdec: str) -> str:
    return world.terminals[lasdec].enrollment["terminal_id"]


def _wait_partial(world: World, lasdec: str, size: int = BLOCK, timeout: float = 30.0) -> None:
    """Wait until the agent has written ``size`` bytes of a download to partial/ (the app holding
    the rest after :data:`HOLD_AT`): the cut then lands after them, so the next run must resume.
    """
    folder = world.terminals[lasdec].folder_view("partial")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.stat().st_size >= size for p in folder.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{lasdec}: no {size} bytes in partial/ within {timeout} s")


def _partial(world: World, lasdec: str) -> dict[str, int]:
    """The downloads a cut left in partial/: batch id → bytes."""
    folder = world.terminals[lasdec].folder_view("partial")
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _resumed(world: World, batch_ids) -> bool:  # type: ignore[no-untyped-def]
    """The server's access log shows a 206 answer (a resumed download) for each batch."""
    log = world.server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return bool(batch_ids) and all(
        any(f"/api/v1/batches/{batch_id} " in line and '" 206 ' in line for line in log)
        for batch_id in batch_ids
    )


# --- the faults ----------------------------------------------------------------------------------


def agent_sigkill(world: World) -> list[Row]:
    a, b, c = world.lasdecs
    rows: list[Row] = []
    faults = world.server.faults
    for points in (
        {a: "download.placed_file", b: "upload.sent", c: "external: mid-download body"},
        {a: "upload.sidecars", b: "download.acked", c: "external: upload committed, no answer"},
    ):
        _day(world)
        envs: dict[str, dict[str, str] | None] = {}
        rule = None
        for lasdec, point in points.items():
            if point.startswith("external"):
                envs[lasdec] = None
                if "mid-download" in point:
                    rule = faults.add(
                        "hold",
                        "GET",
                        FILE_PATH,
                        when="body",
                        bytes=HOLD_AT,
                        terminal=_terminal_id(world, lasdec),
                    )
                else:
                    rule = faults.add(
                        "hold",
                        "POST",
                        r"^/api/v1/uploads$",
                        when="after",
                        terminal=_terminal_id(world, lasdec),
                    )
            else:
                envs[lasdec] = {"RENKEI_AGENT_CRASH_AT": point}
        processes = world.start_agents(envs)
        try:
            assert rule is not None
            faults.wait(rule)
            if "mid-download" in points[c]:
                _wait_partial(world, c)
            world.terminals[c].kill_agent(processes[c])
        finally:
            runs = world.finish_agents(processes)
            faults.clear()
        cut = _partial(world, c)
        kept = sum(cut.values())
        after = _after(world)
        recovered = _recover(world)
        if "mid-download" in points[c]:
            assert _resumed(world, cut), f"not resumed with Range: {cut}"
        for lasdec, point in points.items():
            assert runs[lasdec].status is None, (lasdec, runs[lasdec].stderr)
            rows.append(
                (
                    point,
                    lasdec,
                    "killed",
                    after if lasdec != c or not kept else f"{after}; partial/ kept {kept} bytes",
                )
            )
        rows[-1] = (*rows[-1][:3], rows[-1][3] + f"; recovery {recovered}")
    rows.append(("resume", c, "next run: GET with Range → 206 for that batch", "ok"))
    return rows


def server_kill(world: World) -> list[Row]:
    a, b, c = world.lasdecs
    faults = world.server.faults
    rows: list[Row] = []
    _day(world)
    holds = {
        a: faults.add(
            "hold", "POST", r"^/api/v1/uploads$", when="after", terminal=_terminal_id(world, a)
        ),
        b: faults.add(
            "hold", "GET", FILE_PATH, when="body", bytes=HOLD_AT, terminal=_terminal_id(world, b)
        ),
        c: faults.add(
            "hold", "GET", r"^/api/v1/batches$", when="before", terminal=_terminal_id(world, c)
        ),
    }
    names = {a: "upload committed, answer held", b: "mid-download body", c: "listing held"}
    processes = world.start_agents(dict.fromkeys(world.lasdecs))
    try:
        for rule in holds.values():
            faults.wait(rule)
        world.server.kill()
        runs = world.finish_agents(processes)
    finally:
        faults.clear()
        if world.server.process is None:
            world.server.start()
    after = _after(world)
    for lasdec in world.lasdecs:
        rows.append((f"killed: {names[lasdec]}", lasdec, _said(runs[lasdec]), after))
    rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")

    _day(world, dict.fromkeys(world.lasdecs, 20))
    world.server.kill()
    try:
        runs = world.run_agents()
    finally:
        world.server.start()
    after = _after(world)
    for lasdec, run in runs.items():
        assert run.status == 1 and "net.refused" in run.codes(), run.summary
        rows.append(("down for the whole run", lasdec, _said(run), after))
    rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    return rows


def link_cut(world: World) -> list[Row]:
    a, b, c = world.lasdecs
    faults = world.server.faults
    net = world.net
    links = {code: world.terminals[code].link for code in world.lasdecs}
    _day(world)
    holds = {
        a: faults.add(
            "hold", "GET", FILE_PATH, when="body", bytes=HOLD_AT, terminal=_terminal_id(world, a)
        ),
        b: faults.add(
            "hold", "POST", r"^/api/v1/uploads$", when="before", terminal=_terminal_id(world, b)
        ),
        c: faults.add(
            "hold", "GET", FILE_PATH, when="body", bytes=HOLD_AT, terminal=_terminal_id(world, c)
        ),
    }
    processes = world.start_agents(dict.fromkeys(world.lasdecs))
    try:
        for lasdec, rule in holds.items():
            faults.wait(rule)
            if lasdec in (a, c):
                _wait_partial(world, lasdec)
            net.link_down(links[lasdec])
        for rule in holds.values():
            faults.release(rule)  # the server sends into a dead wire
        time.sleep(3)
        world.terminals[c].kill_agent(processes[c])  # c stays down past its patience
        net.link_up(links[a])
        net.link_up(links[b])
        runs = world.finish_agents(processes)
    finally:
        faults.clear()
        for link in links.values():
            net.link_up(link)
    cut = _partial(world, c)
    after = _after(world)
    rows: list[Row] = [
        ("down 3 s mid-download body", a, _said(runs[a]), after),
        ("down 3 s, upload sent, no answer yet", b, _said(runs[b]), after),
        ("down mid-download, agent killed", c, _said(runs[c]), after),
    ]
    for lasdec in (a, b):
        assert _completed(runs[lasdec]), (lasdec, runs[lasdec].summary)
    rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    assert _resumed(world, cut), f"not resumed with Range: {cut}"
    rows.append(("resume", c, "next run: GET with Range → 206 for that batch", "ok"))
    return rows


def netem(world: World) -> list[Row]:
    """a: the whole run on a bad line (towards the terminal); b: the line turns bad in the
    middle of a download body; c: bad both ways for the whole run, cut off after 60 s (as the
    unit's TimeoutStartSec would, later) if it has not finished."""
    a, b, c = world.lasdecs
    faults = world.server.faults
    for terminal in world.terminals.values():
        world.drop_day(terminal, 2, bad=False)
    world.publish({a: 10, b: BIG, c: 10})
    rule = faults.add(
        "hold", "GET", FILE_PATH, when="body", bytes=HOLD_AT, terminal=_terminal_id(world, b)
    )
    links = {code: world.terminals[code].link for code in world.lasdecs}
    with contextlib.ExitStack() as stack:
        how = stack.enter_context(world.net.impair(links[a], loss=0.3, delay=0.5))
        stack.enter_context(
            world.net.impair(links[c], loss=0.3, delay=0.5, seed=11, both_ways=True)
        )
        processes = world.start_agents(dict.fromkeys(world.lasdecs))
        try:
            faults.wait(rule)
            stack.enter_context(world.net.impair(links[b], loss=0.3, delay=0.5, seed=2))
            faults.release(rule)
        finally:
            runs = world.finish_agents({a: processes[a], b: processes[b]}, timeout=150)
            runs.update(world.finish_agents({c: processes[c]}, timeout=60))
            faults.clear()
    after = _after(world)

    def took(lasdec: str) -> str:
        return f"{_said(runs[lasdec])} in {runs[lasdec].seconds:.0f} s"

    rows: list[Row] = [
        ("whole run, preflight too (towards the terminal)", a, took(a), after),
        ("from the middle of a download body (towards it)", b, took(b), after),
        ("whole run, both ways", c, took(c), after),
        ("(how)", "", how, ""),
    ]
    rows[2] = (*rows[2][:3], f"{after}; recovery {_recover(world)}")
    return rows


def dns_down(world: World) -> list[Row]:
    rows: list[Row] = []
    dns = world.dns
    assert dns is not None
    for point, records in (("server down", None), ("answers NXDOMAIN for the name", {})):
        _day(world, dict.fromkeys(world.lasdecs, 20))
        dns.stop()
        try:
            if records is not None:
                dns.records = {"other.test": ["10.20.0.99"]}
                dns.start()
            runs = world.run_agents()
        finally:
            dns.stop()
            dns.records = {"renkei.test": ["10.20.0.10"]}
            dns.start()
        after = _after(world)
        for lasdec, run in runs.items():
            assert run.status == 1 and "preflight.dns" in run.codes(), run.summary
            assert "net.dns" in run.codes(), run.summary
            assert "rejected" in run.outcomes("files"), run.summary  # the outbox is still checked
            rows.append((point, lasdec, _said(run), after))
        rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    return rows


def ntp_off(world: World) -> list[Row]:
    ntp = world.ntp
    assert ntp is not None
    rows: list[Row] = []
    for point in ("10 min ahead", "server down"):
        _day(world, dict.fromkeys(world.lasdecs, 20))
        try:
            if point == "server down":
                ntp.stop()
            else:
                ntp.set_ahead(600)
            runs = world.run_agents()
        finally:
            ntp.stop()  # a fresh chronyd serves the right time again (settime back is refused)
            ntp.start()
        after = _after(world)
        for lasdec, run in runs.items():
            assert run.status == 3 and run.codes()[0] == "preflight.clock", run.summary
            assert run.summary["batches"] == [] and run.summary["files"] == []
            rows.append((point, lasdec, _said(run) + " — nothing touched", after))
        rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    return rows


def disk_full(world: World) -> list[Row]:
    a, b, c = world.lasdecs
    _day(world)
    points = {
        a: ("/srv", 0, "staff folders full"),
        b: ("/var/lib/renkei", 200 * 1024, "state: 200 KiB left, the download takes it"),
        c: ("/var/lib/renkei", 0, "state full: not even the queue"),
    }
    for terminal in world.terminals.values():
        terminal.settle()
    # The last run recorded before, read while the queue can still be read.
    priors = {lasdec: world.terminals[lasdec].last_run().get("run_id") for lasdec in points}
    try:
        for lasdec, (mount, leave, _what) in points.items():
            world.terminals[lasdec].fill(mount, leave=leave)
        runs = world.finish_agents(world.start_agents(dict.fromkeys(points)), summary=False)
    finally:
        for lasdec, (mount, _leave, _what) in points.items():
            world.terminals[lasdec].unfill(mount)
    for lasdec, run in runs.items():
        run.prior_run = priors[lasdec]
        world.terminals[lasdec].read_summary(run)
    after = _after(world)
    rows: list[Row] = []
    for lasdec, (_mount, _leave, what) in points.items():
        run = runs[lasdec]
        assert "Traceback" not in run.stderr, run.stderr
        assert run.status == 1, (lasdec, run.stderr, run.summary)
        if run.summary.get("status") in (None, "cut short"):
            # The queue itself could not take the run's record (its start, or its end).
            assert "disk is full" in run.stderr and "ディスク" in run.stderr, run.stderr
            recorded = "not recorded" if not run.summary else "recorded as cut short"
            said = f"exit 1, {recorded}; stderr: 'the disk is full' (en/ja)"
        else:
            assert {"disk.full", "queue.disk_full"} & set(run.codes()), run.summary
            said = _said(run)
        rows.append((what, lasdec, said, after))
    rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    return rows


def server_5xx(world: World) -> list[Row]:
    a, b, c = world.lasdecs
    faults = world.server.faults
    _day(world, dict.fromkeys(world.lasdecs, 20))
    faults.add("fail", None, r"^/api/v1/", status=503, terminal=_terminal_id(world, a))
    faults.add(
        "fail",
        "POST",
        r"^/api/v1/uploads$",
        when="after",
        status=500,
        count=1,
        terminal=_terminal_id(world, b),
    )
    faults.add(
        "fail", "POST", r"/ack$", when="after", status=500, count=1, terminal=_terminal_id(world, b)
    )
    faults.add("fail", "GET", FILE_PATH, status=502, terminal=_terminal_id(world, c))
    try:
        runs = world.run_agents()
    finally:
        faults.clear()
    after = _after(world)
    for lasdec in world.lasdecs:
        assert runs[lasdec].status == 1, (lasdec, runs[lasdec].summary)
    rows: list[Row] = [
        ("503 on every request", a, _said(runs[a]), after),
        ("500 after upload and ack were committed", b, _said(runs[b]), after),
        ("502 on the batch file", c, _said(runs[c]), after),
    ]
    rows[-1] = (*rows[-1][:3], f"{after}; recovery {_recover(world)}")
    return rows


FAULTS: dict[str, Callable[[World], list[Row]]] = {
    "agent SIGKILL": agent_sigkill,
    "server killed and restarted": server_kill,
    "link cut (veth down) mid-transfer": link_cut,
    "30% loss + 500 ms delay": netem,
    "DNS server down": dns_down,
    "NTP server 10 min off": ntp_off,
    "disk full on the terminal": disk_full,
    "server 5xx for a while": server_5xx,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(world: World, request, fault: str):  # type: ignore[no-untyped-def]
    mails = len(world.mail.messages())
    rows = FAULTS[fault](world)
    assert len(world.mail.messages()) == mails  # every incident here is shorter than 12 h
    emit(
        request,
        f"Scenario 3 — {fault}",
        ("point", "terminal", "that run", "invariants after; after recovery"),
        rows,
    )
