"""py-spy profiles of the benchmarks' hot paths, and what dominates them, for the report.

``python -m bench --profile`` samples, with py-spy (PyPI ``py-spy``; it
reads the target's memory, so it needs ptrace rights — root, or
``kernel.yama.ptrace_scope=0``):

* the gunicorn master and all its workers during the all-at-once fleet
  burst (:meth:`Profiler.attach`, ``--subprocesses``);
* the import and close-day child processes of the transition day
  (:meth:`Profiler.wrap` runs them under ``py-spy record``).

Each profile is written as collapsed stacks (``bench/out/profiles/NAME.txt``,
one ``frame;frame;… count`` line per stack — open it in speedscope.app or
feed it to ``flamegraph.pl``), and :func:`summarize` reduces it to the
functions with the most samples on top of the stack (self) and anywhere in
it (total), which the report lists.  Samples of threads that are idle
(waiting on a socket or a lock) are left out, so a profile shows where CPU
goes; waiting shows up in the latencies instead.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "summarize"]

RATE = 100  # samples per second


class _Attached:
    def __init__(self, process: subprocess.Popen, path: Path):
        self.process = process
        self.path = path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Profiler:
    """Writes profiles under ``out_dir``; :attr:`written` lists (name, path) in order."""

    def __init__(self, out_dir: Path):
        binary = shutil.which("py-spy")
        if binary is None:
            venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
            binary = str(venv) if venv.exists() else None
        if binary is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.binary = binary
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.written: list[tuple[str, Path]] = []

    def _record(self, name: str) -> tuple[list[str], Path]:
        path = self.out_dir / f"{name}.txt"
        self.written.append((name, path))
        return [
            self.binary,
            "record",
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "-o",
            str(path),
        ], path

    def attach(self, pid: int, name: str) -> _Attached:
        """Sample ``pid`` and its children until :meth:`_Attached.stop`."""
        argv, path = self._record(name)
        process = subprocess.Popen(
            [*argv, "--pid", str(pid), "--subprocesses"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(1.0)  # py-spy attaches to every process before the measured work starts
        if process.poll() is not None:
            raise RuntimeError(f"py-spy could not attach to {pid} (ptrace rights?)")
        return _Attached(process, path)

    def wrap(self, argv: list[str], name: str) -> list[str]:
        """``argv`` run under py-spy (the child's output still reaches the caller)."""
        record, _path = self._record(name)
        return [*record, "--", *argv]

    def summaries(self, top: int = 12) -> dict[str, dict]:
        return {name: summarize(path, top=top) for name, path in self.written if path.exists()}


#: "Total" counts only this project's frames: where in our code the time goes.
_OURS = ("server/", "common/", "appliance/")


def _short(frame: str) -> str:
    """``function (path/to/module.py:123)`` → ``function (module.py:123)`` for the report."""
    name, _, where = frame.partition(" (")
    file, _, line = where.rstrip(")").rpartition(":")
    return f"{name} ({'/'.join(file.split('/')[-2:])}:{line})" if where else frame


def summarize(path: Path, *, top: int = 12) -> dict:
    """The functions with the most samples: ``self`` (on top of the stack, any code) and
    ``total`` (anywhere in the stack, this project's functions only)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        samples += n
        own[_short(frames[-1])] += n
        for frame in set(frames):
            if frame.partition(" (")[2].startswith(_OURS):
                total[_short(frame)] += n
    if not samples:
        return {"samples": 0, "self": [], "total": []}
    return {
        "samples": samples,
        "self": [[frame, round(100 * n / samples, 1)] for frame, n in own.most_common(top)],
        "total": [[frame, round(100 * n / samples, 1)] for frame, n in total.most_common(top)],
    }
