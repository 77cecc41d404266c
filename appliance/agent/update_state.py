"""What ``renkei-agent update`` remembers between runs: bad versions, an install under way, history.

One small JSON file (``<update.state_dir>/state.json``), replaced atomically
(``common/atomicwrite.py``), so a power cut leaves the old state or the new
one.  Why each part:

* ``bad`` — versions whose bundle could not be installed or whose self-test
  failed.  They are never installed again (a newer release is), so a broken
  release costs one attempt per terminal, not one a day.
* ``pending`` — the install under way: the version, the release ``current``
  named before (to switch back to), and the phase (``testing``: the new
  release is being tested, ``current`` unchanged; ``switched``: ``current``
  may already name it).  Written *before* each step it describes, so the next
  run knows what a cut run was doing (:mod:`.update` finishes or undoes it).
* ``attempts`` — how many times an install of a version was cut before it
  concluded; at :data:`MAX_ATTEMPTS` the version counts as bad (a release
  that takes the appliance down during its own self-test must not loop).
* ``history`` — the last installs and rollbacks, newest last, for
  ``--json`` and the help desk.

The run lock (:func:`lock`) is an ``flock`` on a file next to it: one update
at a time; the lock goes with the process, so a killed run never leaves it
held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomicwrite import write_bytes

from .errors import AgentError, BusyError

__all__ = ["HISTORY", "MAX_ATTEMPTS", "StateStore", "UpdateState", "lock"]

MAX_ATTEMPTS = 3
HISTORY = 20
STATE_FORMAT = 1


@dataclass
class UpdateState:
    bad: dict[str, dict[str, str]] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def mark_bad(self, version: str, code: str, message: str, at: str) -> None:
        self.bad[version] = {"code": code, "message": message, "at": at}
        self.attempts.pop(version, None)

    def record(self, entry: dict[str, Any]) -> None:
        self.history = [*self.history, entry][-HISTORY:]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "bad": self.bad,
            "pending": self.pending,
            "attempts": self.attempts,
            "history": self.history,
        }


class StateStore:
    """``state.json`` in the update's state folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "state.json"

    def load(self) -> UpdateState:
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return UpdateState()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AgentError(
                f"{self.path}: cannot be read ({exc}); move it aside to start afresh "
                "(versions marked bad would be tried once more)",
                code="update.state",
            ) from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise AgentError(
                f"{self.path}: not an update state of format {STATE_FORMAT}", code="update.state"
            )
        return UpdateState(
            bad=dict(data.get("bad") or {}),
            pending=data.get("pending"),
            attempts={str(k): int(v) for k, v in (data.get("attempts") or {}).items()},
            history=list(data.get("history") or []),
        )

    def save(self, state: UpdateState) -> None:
        text = json.dumps(state.to_json(), ensure_ascii=False, indent=2, sort_keys=True)
        write_bytes(self.path, text.encode("utf-8") + b"\n", mode=0o600)


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold the update lock for the block; :class:`BusyError` when another run holds it."""
    path = Path(folder) / "update.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                "another renkei-agent update is running; try again when it has finished",
                code="update.busy",
                message_ja="別の更新処理が実行中です。終わってから再実行してください。",
            ) from None
        yield
    finally:
        os.close(fd)
