"""What the build tells its operator: stage lines on the terminal, everything in a log file.

An image build runs for minutes and calls mmdebstrap, pip, tar and
mksquashfs.  The operator needs to see which stage is running and, when it
fails, the few lines that say why; a CI log needs the same without progress
bars.  So every command's output goes to one log file, and the terminal gets
numbered stage lines plus (when it is a TTY, or with ``--verbose``) the
``I:``/``W:`` lines of mmdebstrap and our own steps as they happen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["BuildLog", "CommandFailed"]


class CommandFailed(Exception):
    """A command exited non-zero; ``output`` is everything it printed (stdout and stderr)."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str):
        super().__init__(f"{argv[0]} exited with status {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


class BuildLog:
    """Stage lines to ``stream``; command output to ``path`` (appended, line by line)."""

    def __init__(
        self,
        path: Path,
        *,
        stream: TextIO | None = None,
        verbose: bool | None = None,
        stages: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.verbose = isatty if verbose is None else verbose
        self.stages = stages
        self.clock = clock
        self.started = clock()
        self._stage = 0
        self._stage_started = self.started
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8", errors="replace")

    def close(self) -> None:
        self._file.close()

    def write(self, text: str) -> None:
        """Append to the log, each line stamped with the seconds since the build started."""
        stamp = f"[{self.clock() - self.started:7.1f}] "
        self._file.write("".join(stamp + line + "\n" for line in text.rstrip("\n").split("\n")))
        self._file.flush()

    def _say(self, text: str) -> None:
        self.write(text)
        print(text, file=self.stream, flush=True)

    def stage(self, text: str) -> None:
        """Start the next numbered stage: ``[3/8] rootfs: mmdebstrap bookworm (1m12s so far)``."""
        now = self.clock()
        self._stage += 1
        self._stage_started = now
        self._say(f"[{self._stage}/{self.stages}] {text}  ({_span(now - self.started)} so far)")

    def detail(self, text: str) -> None:
        """A line within a stage: on the terminal only when verbose, always in the log."""
        if self.verbose:
            self._say(f"      {text}")
        else:
            self.write(f"      {text}")

    def warn(self, text: str) -> None:
        self._say(f"W: {text}")

    def elapsed(self) -> float:
        return self.clock() - self.started

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        show: Callable[[str], bool] | None = None,
    ) -> str:
        """Run ``argv``; its output goes to the log (``show(line)`` picks lines for :meth:`detail`).

        Returns the output (stdout and stderr, merged); raises
        :class:`CommandFailed` with it on a non-zero exit.
        """
        args = [os.fspath(a) for a in argv]
        self.write(f"$ {' '.join(args)}")
        collected: list[str] = []
        with subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            errors="replace",
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                collected.append(line)
                if show is not None and show(line):
                    self.detail(line)
                else:
                    self.write(line)
        output = "\n".join(collected)
        if process.returncode != 0:
            raise CommandFailed(args, process.returncode, output)
        return output


def _span(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
