"""CPU time and memory of a group of processes, read from /proc while a benchmark runs.

The server under test is two process groups: gunicorn (a master and its
forked workers) and its front, nginx (a master and its workers); ``ServerProcess``
starts each in its own session.  A
sampler thread reads, every ``interval`` seconds, each member's CPU time
(``/proc/PID/stat`` utime + stime) and memory (``/proc/PID/smaps_rollup``:
RSS, and PSS — proportional set size, which shares the pages the workers
inherited from the preloaded master among them instead of counting them once
per worker).  The figures are the group's CPU seconds over the watch (also as
a share of the machine's cores), and the peak of the summed RSS and PSS.

Linux only, no dependencies; a process that exits mid-watch keeps the CPU
time it had when last seen.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GroupWatch", "WatchResult", "group_members", "own_peak_rss_mb", "tree_members"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WatchResult:
    seconds: float  # wall time watched
    cpu_seconds: float  # user + system of every member
    cpu_share: float  # cpu_seconds / (seconds * cores): 1.0 = every core busy
    peak_rss_mb: float
    peak_pss_mb: float
    processes: int

    def to_json(self) -> dict:
        return {
            "cpu_seconds": self.cpu_seconds,
            "cpu_share_of_machine": self.cpu_share,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_pss_mb": self.peak_pss_mb,
            "processes": self.processes,
        }


def own_peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``), in MB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the high-water
    mark across exec, so a child that ``subprocess`` started (vfork + exec)
    from a large benchmark process would report its parent's peak.  VmHWM
    belongs to the current address space only.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _stat(pid: int, *, field: int = 2) -> tuple[int, float] | None:
    """(process group — or the parent with ``field=1`` —, CPU seconds) of one process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After the command: state(0) ppid(1) pgrp(2) … utime(11) stime(12).
    return int(fields[field]), (int(fields[11]) + int(fields[12])) / _TICKS


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from smaps_rollup; (0, 0) when the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def group_members(pgid: int) -> dict[int, float]:
    """PID -> CPU seconds for every process in group ``pgid``."""
    members: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None and found[0] == pgid:
                members[int(entry.name)] = found[1]
    return members


def tree_members(root: int) -> dict[int, float]:
    """PID -> CPU seconds for ``root`` and its children.

    For servers whose children leave the parent's process group, as
    PostgreSQL's backends do (each calls setsid()).
    """
    members: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            found = _stat(pid, field=1)
            if found is not None and (pid == root or found[0] == root):
                members[pid] = found[1]
    return members


class GroupWatch:
    """``with GroupWatch(pgid) as watch: …`` then ``watch.result``.

    ``pgid`` may be several process groups, added up (the server is nginx's
    group and gunicorn's).  ``tree=True``: each is a parent process, watched
    with its children.
    """

    def __init__(self, pgid: int | Sequence[int], *, interval: float = 0.25, tree: bool = False):
        self.pgids = (pgid,) if isinstance(pgid, int) else tuple(pgid)
        self._members_of = tree_members if tree else group_members
        self.interval = interval
        self.result: WatchResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procwatch", daemon=True)
        self._start_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._peak_rss = 0
        self._peak_pss = 0
        self._started = 0.0

    def _sample(self) -> None:
        members = {pid: cpu for pgid in self.pgids for pid, cpu in self._members_of(pgid).items()}
        for pid, cpu in members.items():
            self._start_cpu.setdefault(pid, 0.0 if self._started_sampling else cpu)
            self._last_cpu[pid] = cpu
        rss = pss = 0
        for pid in members:
            r, p = _memory(pid)
            rss += r
            pss += p
        self._peak_rss = max(self._peak_rss, rss)
        self._peak_pss = max(self._peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> GroupWatch:
        self._started_sampling = False
        self._sample()  # the baseline: CPU already spent before the watch does not count
        self._started_sampling = True  # a process that appears later counts from zero
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        seconds = time.perf_counter() - self._started
        cpu = sum(self._last_cpu[pid] - self._start_cpu[pid] for pid in self._last_cpu)
        self.result = WatchResult(
            seconds=seconds,
            cpu_seconds=cpu,
            cpu_share=cpu / (seconds * (os.cpu_count() or 1)) if seconds > 0 else 0.0,
            peak_rss_mb=self._peak_rss / 1024,
            peak_pss_mb=self._peak_pss / 1024,
            processes=len(self._last_cpu),
        )
