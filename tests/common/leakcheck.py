"""Leak check for the C scanner: call each case 10^5 times in a process of its own.

A test gives the set-up code that defines ``cases`` (a list of callables);
the harness warms them up, then counts Python's allocated blocks and the
resident set around the measured loop.  A leak of one object per call would
show as 100,000 blocks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_HARNESS = r"""

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def loop(n):
    for case in cases:
        for _ in range(n):
            try:
                case()
            except Exception:
                pass

loop(2000)
blocks, before = sys.getallocatedblocks(), rss()
loop(int(sys.argv[1]))
print(sys.getallocatedblocks() - blocks, rss() - before)
"""


def assert_no_leaks(setup: str, calls: int = 100_000) -> None:
    """Run ``setup`` (which must import sys and define ``cases``) plus the harness; assert flat."""
    run = subprocess.run(
        [sys.executable, "-c", setup + _HARNESS, str(calls)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    blocks, rss = map(int, run.stdout.split())
    assert abs(blocks) < 200, blocks
    assert rss < 4 * 1024 * 1024, rss
