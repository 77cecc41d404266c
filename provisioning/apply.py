"""Writing the rendered files into a root: atomically, with the previous set kept for rollback.

Why this shape: the appliance must never be left half-configured (a
firewall from the new settings with a network from the old locks the
technician out of the server).  So:

1. the previous content of every file about to change (or the fact that it
   did not exist) is saved under :data:`STATE_DIR` ``/previous`` first — a
   new snapshot is written beside the old one and swapped in with one rename;
2. each file is then replaced atomically (``common.atomicwrite``);
3. if any write fails, the files already written are put back from the
   snapshot before the error is raised.

``rollback`` restores the snapshot the same way and removes it (one level:
rollback twice is refused, it would have nothing to go back to).  ``root``
is ``/`` on the appliance and any folder in tests and the image build.
"""

from __future__ import annotations

import difflib
import grp
import json
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.atomicwrite import fsync_dir, write_bytes

from .render import AGENT_TOML, Enrollment, FileContent

__all__ = [
    "STATE_DIR",
    "ApplyError",
    "Change",
    "apply",
    "diff_text",
    "has_snapshot",
    "plan",
    "read_enrollment",
    "rollback",
    "under",
]

STATE_DIR = "/var/lib/renkei-provision"


class ApplyError(ValueError):
    """Files could not be written or restored; the message names the file."""


@dataclass(frozen=True)
class Change:
    path: str
    old: str | None
    new: FileContent


def under(root: Path, path: str) -> Path:
    """``path`` (absolute on the appliance) inside ``root``."""
    return Path(root) / path.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def plan(root: Path, files: Mapping[str, FileContent]) -> list[Change]:
    """The files whose content differs from what is in ``root`` now."""
    changes = []
    for path, content in files.items():
        old = _read(under(root, path))
        if old != content.text:
            changes.append(Change(path, old, content))
    return changes


def diff_text(changes: list[Change]) -> str:
    """A unified diff of ``changes`` (``/dev/null`` for a new file)."""
    out: list[str] = []
    for change in changes:
        out += difflib.unified_diff(
            (change.old or "").splitlines(keepends=True),
            change.new.text.splitlines(keepends=True),
            fromfile=change.path if change.old is not None else "/dev/null",
            tofile=change.path,
        )
    return "".join(out)


def _snapshot_dir(root: Path) -> Path:
    return under(root, STATE_DIR) / "previous"


def has_snapshot(root: Path) -> bool:
    return (_snapshot_dir(root) / "manifest.json").exists()


def _save_snapshot(root: Path, paths: list[str]) -> None:
    state = under(root, STATE_DIR)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = state / "previous.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    manifest = {}
    for index, path in enumerate(paths):
        source = under(root, path)
        if source.exists():
            stat = source.stat()
            write_bytes(fresh / f"{index}", source.read_bytes(), mode=0o600)
            manifest[path] = {"file": str(index), "mode": stat.st_mode & 0o7777, "gid": stat.st_gid}
        else:
            manifest[path] = None
    write_bytes(fresh / "manifest.json", json.dumps(manifest, indent=1).encode(), mode=0o600)
    old = state / "previous"
    if old.exists():
        retired = state / "previous.old"
        shutil.rmtree(retired, ignore_errors=True)
        old.rename(retired)
        fresh.rename(old)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        fresh.rename(old)
    fsync_dir(state)


def _group_id(root: Path, group: str | None) -> int | None:
    """The gid to give a file: only on the real root, and only when the group exists."""
    if group is None or Path(root).resolve() != Path("/"):
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _write(root: Path, path: str, data: bytes, mode: int, gid: int | None) -> None:
    target = under(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, data, mode=mode)
    if gid is not None:
        os.chown(target, 0, gid)


def _restore(root: Path, snapshot: Path, manifest: Mapping[str, dict | None]) -> list[str]:
    problems = []
    for path, saved in manifest.items():
        target = under(root, path)
        try:
            if saved is None:
                target.unlink(missing_ok=True)
            else:
                data = (snapshot / saved["file"]).read_bytes()
                gid = saved["gid"] if os.geteuid() == 0 else None
                _write(root, path, data, saved["mode"], gid)
        except OSError as exc:
            problems.append(f"{target}: {exc.strerror or exc}")
    return problems


def apply(root: Path, files: Mapping[str, FileContent]) -> list[Change]:
    """Write the files that changed; return the changes (empty: nothing to do)."""
    changes = plan(root, files)
    if not changes:
        return []
    try:
        _save_snapshot(root, [change.path for change in changes])
    except OSError as exc:
        raise ApplyError(f"cannot save the previous configuration: {exc}") from None
    done = []
    for change in changes:
        try:
            _write(
                root,
                change.path,
                change.new.text.encode("utf-8"),
                change.new.mode,
                _group_id(root, change.new.group),
            )
        except OSError as exc:
            snapshot = _snapshot_dir(root)
            manifest = json.loads((snapshot / "manifest.json").read_text())
            _restore(root, snapshot, {p: manifest[p] for p in done})
            raise ApplyError(
                f"cannot write {under(root, change.path)} ({exc.strerror or exc}); the files "
                "written before it were put back, nothing changed"
            ) from None
        done.append(change.path)
    return changes


def rollback(root: Path) -> list[str]:
    """Put back the files of the last ``configure``; return their paths."""
    snapshot = _snapshot_dir(root)
    try:
        manifest = json.loads((snapshot / "manifest.json").read_text())
    except FileNotFoundError:
        raise ApplyError(
            "there is no previous configuration to go back to (rollback undoes the last "
            "configure or enroll once)"
        ) from None
    problems = _restore(root, snapshot, manifest)
    if problems:
        raise ApplyError("rollback incomplete: " + "; ".join(problems))
    shutil.rmtree(snapshot)
    return list(manifest)


def read_enrollment(root: Path) -> Enrollment | None:
    """The enrollment keys of the agent configuration in ``root``, if it has them."""
    text = _read(under(root, AGENT_TOML))
    if text is None:
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    if not isinstance(data.get("terminal_id"), str) or not isinstance(data.get("server_key"), str):
        return None
    return Enrollment(
        terminal_id=data["terminal_id"],
        server_key=data["server_key"],
        key_path=str(data.get("key_path") or Enrollment("", "").key_path),
        ca_file=data.get("ca_file") if isinstance(data.get("ca_file"), str) else None,
    )
