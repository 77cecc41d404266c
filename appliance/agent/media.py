"""Registered removable media: ministry notices out to the 住基 side, municipality notices in.

On the medium (any registered USB stick, FAT/exFAT/ext4)::

    MINISTRY/       法務省通知: written here by ``export``, with MANIFEST-<time>.tsv
    MUNICIPALITY/   市町村通知: staff put files here; ``import`` takes them
      imported/     files taken into the outbox (moved here on the medium)
      refused/      files refused, each with <name>.report.txt in Japanese

Why a pulled medium never leaves a part that looks whole:

* Every file is written under a temporary name (``.NAME.tmp-XXXX``, the
  project's convention, which every reader here ignores), fsynced, its page
  cache dropped and read back from the device and compared by SHA-256, and
  only then renamed to its name.
* The manifest (name, size, SHA-256) is written the same way, and last: a
  file on the medium is complete when the manifest lists it with its hash.
* On the appliance side ``import`` places files into the outbox with
  ``folders.place_atomically``; the medium's copy moves to ``imported/`` only
  afterwards.
* Every transfer is journaled, after it, as one JSON line appended and fsynced
  to ``<state_dir>/media-journal.jsonl`` (device, files, hashes, time, outcome).
  An export counts a file as exported only from a journal entry with status
  ``ok`` (the manifest was written), so a cut-short export is done again.

The journal is a file rather than a queue table so that it can be read and
copied without the agent, and so the queue's schema stays the sync's own.

Pure parts (manifest, journal entries, which files to export, mount options,
the report) are functions over values; :class:`Mounter` runs ``mount``,
``umount`` and ``udevadm`` (``mount.py``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.atomicwrite import TEMP_MARK, TEMP_PREFIX, fsync_dir

from .errors import AgentError
from .folders import REASONS, check_name, is_temporary_name, numbered_names, place_atomically
from .outbox import REPORT_SUFFIX, check_notice_file
from .reports import local_rejection_report, refusal_report, report_bytes

__all__ = [
    "DEVICE_LINK",
    "JOURNAL_NAME",
    "MOUNT_OPTIONS",
    "MOUNT_POINT",
    "MOUNT_TYPES",
    "DeviceId",
    "ExportResult",
    "ImportResult",
    "MediaError",
    "exported_keys",
    "export_to_media",
    "import_from_media",
    "journal_entry",
    "manifest_text",
    "media_report",
    "missing_options",
    "parse_manifest",
    "read_journal",
    "select_exports",
]

MOUNT_POINT = Path("/media/renkei")
DEVICE_LINK = Path("/dev/renkei-media")  # made by udev/rules.d/99-renkei-media.rules
#: As in appliance/rootfs/etc/systemd/system/media-renkei.mount (a test keeps them equal).
MOUNT_OPTIONS = ("nosuid", "nodev", "noexec", "noatime")
MOUNT_TYPES = ("vfat", "exfat", "ext4")
REQUIRED_OPTIONS = ("nosuid", "nodev", "noexec")
MINISTRY_DIR = "MINISTRY"
MUNICIPALITY_DIR = "MUNICIPALITY"
JOURNAL_NAME = "media-journal.jsonl"
_CHUNK = 1 << 20
_INBOX_NAME = re.compile(r"ministry-[0-9]{6}-([0-9]{8})-[0-9]+\.csv")


class MediaError(AgentError):
    """A medium cannot be used; ``message_ja`` is for staff.

    Codes: ``media.absent``, ``media.mount`` (cannot be mounted: broken or
    unsupported file system), ``media.options`` (mounted without
    nosuid,nodev,noexec), ``media.io`` (a read or write failed: pulled, full,
    broken), ``media.verify`` (read back differs), ``media.root``.
    """

    code = "media.error"


# --- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceId:
    """Who the medium is, for the journal (USB ids and serial from udev)."""

    vendor: str = ""
    product: str = ""
    serial: str = ""
    device: str = ""

    def to_json(self) -> dict:
        return {
            "vendor": self.vendor,
            "product": self.product,
            "serial": self.serial,
            "device": self.device,
        }


@dataclass(frozen=True)
class FileEntry:
    """One file of a transfer: its name where it was put, size, SHA-256 and what became of it."""

    name: str
    size: int
    sha256: str
    outcome: str = "copied"
    code: str = ""

    def to_json(self) -> dict:
        data = {"name": self.name, "size": self.size, "sha256": self.sha256}
        data["outcome"] = self.outcome
        if self.code:
            data["code"] = self.code
        return data


def manifest_text(files: Sequence[FileEntry]) -> str:
    """The manifest: a header line, then ``name<TAB>size<TAB>sha256`` per file (UTF-8, LF)."""
    lines = ["name\tsize\tsha256"]
    for entry in files:
        if "\t" in entry.name or "\n" in entry.name:
            raise ValueError(f"{entry.name!r}: a name with a tab or line break")
        lines.append(f"{entry.name}\t{entry.size}\t{entry.sha256}")
    return "\n".join(lines) + "\n"


def parse_manifest(text: str) -> list[FileEntry]:
    """The files a manifest lists; ValueError for anything else."""
    lines = text.splitlines()
    if not lines or lines[0] != "name\tsize\tsha256":
        raise ValueError("not a renkei media manifest (header missing)")
    out = []
    for number, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].isdigit() or not re.fullmatch(r"[0-9a-f]{64}", parts[2]):
            raise ValueError(f"manifest line {number} is malformed: {line!r}")
        out.append(FileEntry(parts[0], int(parts[1]), parts[2]))
    return out


def journal_entry(
    direction: str,
    device: DeviceId,
    files: Sequence[FileEntry],
    *,
    at: dt.datetime,
    status: str,
    manifest: str | None = None,
    error: str | None = None,
) -> dict:
    """One journal line's data: direction (export/import), device, files, time, status."""
    entry = {
        "time": at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "direction": direction,
        "status": status,
        "device": device.to_json(),
        "files": [f.to_json() for f in files],
    }
    if manifest:
        entry["manifest"] = manifest
    if error:
        entry["error"] = error
    return entry


def exported_keys(entries: Iterable[dict]) -> set[tuple[str, str]]:
    """(inbox name, sha256) of files exported by a completed export (manifest written)."""
    keys = set()
    for entry in entries:
        if entry.get("direction") != "export" or entry.get("status") != "ok":
            continue
        for item in entry.get("files", ()):
            keys.add((item.get("source", item.get("name")), item.get("sha256")))
    return keys


def select_exports(
    inbox: Sequence[tuple[str, str]],
    done: set[tuple[str, str]],
    *,
    date: str | None = None,
    everything: bool = False,
) -> list[tuple[str, str]]:
    """Which (name, sha256) of the inbox to export.

    Default: those not exported yet.  ``date`` (YYYY-MM-DD or YYYYMMDD): the
    files of that business date, exported before or not.  ``everything``: all.
    """
    if date is not None:
        day = date.replace("-", "")
        if not re.fullmatch(r"[0-9]{8}", day):
            raise ValueError(f"{date!r} is not a date as YYYY-MM-DD")
        return [f for f in inbox if (m := _INBOX_NAME.fullmatch(f[0])) and m[1] == day]
    if everything:
        return list(inbox)
    return [f for f in inbox if f not in done]


def missing_options(options: Iterable[str]) -> list[str]:
    """Which of nosuid, nodev, noexec a mount lacks."""
    have = set(options)
    return [o for o in REQUIRED_OPTIONS if o not in have]


_MEDIA_NEXT = [
    "■ 次にすること",
    "1. 住民記録システムでファイルを出力し直し、媒体の MUNICIPALITY フォルダに入れて、"
    "もう一度「媒体から取り込み」をしてください。",
    "   このファイルは媒体の MUNICIPALITY/refused フォルダに移してあります（削除はしていません）。",
    "   outbox には入れていません（送信していません）。",
    "2. 分からないときは、この報告ファイルを添えてヘルプデスクへ連絡してください。",
]


def media_report(name: str, *, problem: str | None = None, check=None, detail: str = "") -> str:
    """The Japanese report written next to a refused file on the medium.

    The body is the outbox's report (same checks, same words); "what to do
    next" is rewritten for the medium, since the file never reached outbox/.
    """
    if problem is not None:
        text = refusal_report(name, problem, detail=detail)
    else:
        text = local_rejection_report(
            name, rejected=check.rejected, file_error=check.file_error, records=check.records
        )
    head, _sep, _tail = text.partition("■ 次にすること")
    head = head.replace("送信前チェックの結果", "媒体からの取り込みチェックの結果")
    return head + "\n".join(_MEDIA_NEXT) + "\n"


# --- files ------------------------------------------------------------------------------------


def _sha256(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _read_back(path: Path) -> str:
    """SHA-256 of ``path`` as the device holds it: the page cache is dropped first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        sha = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            sha.update(chunk)
        return sha.hexdigest()
    finally:
        os.close(fd)


def _io_error(exc: OSError, what: str) -> MediaError:
    full = exc.errno == errno.ENOSPC
    return MediaError(
        f"{what}: {exc.strerror or exc} — "
        + ("the medium is full; use an empty one" if full else "was the medium pulled out?"),
        code="media.io",
        message_ja=(
            "媒体の空き容量が足りません。空の媒体を使ってください。"
            if full
            else "媒体の読み書きに失敗しました。媒体が抜かれていないか確認し、"
            "もう一度差し込んでやり直してください。"
        ),
    )


def write_verified(
    data_from: Path | bytes,
    folder: Path,
    name: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> FileEntry:
    """Copy onto the medium under a temporary name, fsync, read back, rename; the entry.

    A file already there under ``name`` (or a numbered name) with the same
    bytes is kept and reported, not doubled.  ``progress`` is called with the
    bytes written after each chunk (tests use it to pull the medium).  On any
    error the temporary file is removed when the medium still allows it.
    """
    fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}{TEMP_MARK}", dir=folder)
    temp = Path(temp_name)
    sha = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data_from, bytes):
                out.write(data_from)
                sha.update(data_from)
                size = len(data_from)
            else:
                with open(data_from, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                        out.flush()
                        sha.update(chunk)
                        size += len(chunk)
                        if progress is not None:
                            progress(size)
            out.flush()
            os.fsync(out.fileno())
        digest = sha.hexdigest()
        if _read_back(temp) != digest:
            raise MediaError(
                f"{folder / name}: the copy read back from the medium differs",
                code="media.verify",
                message_ja="媒体に書いた内容を読み返すと一致しません。別の媒体を使ってください。",
            )
        for candidate in numbered_names(name):
            target = folder / candidate
            if target.exists():
                if target.stat().st_size == size and _read_back(target) == digest:
                    temp.unlink()
                    return FileEntry(candidate, size, digest, "already")
                continue
            os.rename(temp, target)  # we checked it is free; the agent is the medium's one writer
            fsync_dir(folder)
            return FileEntry(candidate, size, digest)
        raise MediaError(f"{folder}: too many files named like {name!r}", code="media.io")
    except BaseException as exc:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass  # the medium is gone; the temporary name marks the part as a part
        if isinstance(exc, OSError):
            raise _io_error(exc, f"writing {name} to the medium") from None
        raise


def read_journal(path: Path) -> list[dict]:
    """Every complete line of the journal (a line cut by a crash is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def append_journal(path: Path, entry: dict) -> None:
    """Append one line and fsync (O_APPEND: one writer's line is never interleaved)."""
    line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


# --- export and import ------------------------------------------------------------------------


@dataclass
class ExportResult:
    files: list[FileEntry] = field(default_factory=list)
    manifest: str | None = None

    def to_json(self) -> dict:
        return {"files": [f.to_json() for f in self.files], "manifest": self.manifest}


def _inbox_files(inbox: Path) -> list[tuple[str, str]]:
    out = []
    for entry in sorted(os.scandir(inbox), key=lambda e: e.name):
        if is_temporary_name(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        out.append((entry.name, _sha256(Path(entry.path))[1]))
    return out


def export_to_media(
    inbox: Path,
    media_root: Path,
    journal: Path,
    device: DeviceId,
    *,
    now: Callable[[], dt.datetime],
    date: str | None = None,
    everything: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Copy the ministry notices to ``media_root/MINISTRY`` with a manifest written last.

    Raises MediaError (``media.io``, ``media.verify``); the journal records the
    attempt either way, as ``ok`` only when the manifest is on the medium.
    """
    chosen = select_exports(
        _inbox_files(inbox), exported_keys(read_journal(journal)), date=date, everything=everything
    )
    result = ExportResult()
    if not chosen:
        return result
    started = now()
    folder = media_root / MINISTRY_DIR
    try:
        folder.mkdir(exist_ok=True)
        for name, _sha in chosen:
            entry = write_verified(inbox / name, folder, name, progress=progress)
            result.files.append(entry)
        manifest_name = f"MANIFEST-{started.strftime('%Y%m%d-%H%M%S')}.tsv"
        text = manifest_text(result.files).encode("utf-8")
        result.manifest = write_verified(text, folder, manifest_name).name
        os.sync()
    except (MediaError, OSError) as exc:
        error = exc if isinstance(exc, MediaError) else _io_error(exc, "export")
        _journal_files(journal, "export", device, result.files, chosen, now(), "failed", error)
        raise error from None
    _journal_files(journal, "export", device, result.files, chosen, now(), "ok", None, result)
    return result


def _journal_files(journal, direction, device, files, chosen, at, status, error, result=None):
    sources = dict(zip((f.name for f in files), (c[0] for c in chosen), strict=False))
    entry = journal_entry(
        direction,
        device,
        files,
        at=at,
        status=status,
        manifest=result.manifest if result else None,
        error=error.message if error else None,
    )
    for item in entry["files"]:
        item["source"] = sources.get(item["name"], item["name"])
    append_journal(journal, entry)


@dataclass
class ImportResult:
    files: list[FileEntry] = field(default_factory=list)

    @property
    def refused(self) -> list[FileEntry]:
        return [f for f in self.files if f.outcome == "refused"]

    def to_json(self) -> dict:
        return {"files": [f.to_json() for f in self.files]}


def _read_limited(path: Path, max_bytes: int) -> bytes | None:
    """The bytes, or None when larger than ``max_bytes``; never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def _move_on_media(path: Path, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    for candidate in numbered_names(path.name):
        if not (folder / candidate).exists():
            os.rename(path, folder / candidate)
            fsync_dir(folder)
            fsync_dir(path.parent)
            return candidate
    raise MediaError(f"{folder}: too many files named like {path.name!r}", code="media.io")


def import_from_media(
    media_root: Path,
    outbox: Path,
    journal: Path,
    device: DeviceId,
    *,
    now: Callable[[], dt.datetime],
    reporter: str,
    max_bytes: int = 64 * 1024 * 1024,
) -> ImportResult:
    """Take the municipality notices in ``media_root/MUNICIPALITY`` into ``outbox``.

    Each file is checked as the outbox checks it (name, size,
    ``outbox.check_notice_file`` for the municipality ``reporter``).  A good one is placed whole in the outbox,
    then moved to ``imported/`` on the medium; a bad one gets a Japanese report
    and both go to ``refused/`` on the medium.  Raises MediaError ``media.io``.
    """
    folder = media_root / MUNICIPALITY_DIR
    result = ImportResult()
    try:
        if not folder.is_dir():
            return result
        for dirent in sorted(os.scandir(folder), key=lambda e: e.name):
            name = dirent.name
            if is_temporary_name(name) or name.endswith(REPORT_SUFFIX):
                continue
            if not stat.S_ISREG(dirent.stat(follow_symlinks=False).st_mode):
                continue
            result.files.append(_import_one(Path(dirent.path), outbox, folder, max_bytes, reporter))
        if result.files:
            os.sync()
    except OSError as exc:
        error = _io_error(exc, "import")
        append_journal(
            journal,
            journal_entry(
                "import", device, result.files, at=now(), status="failed", error=error.message
            ),
        )
        raise error from None
    if result.files:
        append_journal(
            journal, journal_entry("import", device, result.files, at=now(), status="ok")
        )
    return result


def _import_one(path: Path, outbox: Path, folder: Path, max_bytes: int, reporter: str) -> FileEntry:
    name = path.name
    problem = check_name(name)
    data = None if problem else _read_limited(path, max_bytes)
    if problem is None and data is None:
        problem = "file.too_large"
    if problem is not None:
        text = media_report(name, problem=problem, detail=REASONS[problem][0])
        size = path.stat().st_size
        digest = "" if data is None else hashlib.sha256(data).hexdigest()
        _refuse(path, folder, text)
        return FileEntry(name, size, digest, "refused", problem)
    digest = hashlib.sha256(data).hexdigest()
    checked = check_notice_file(data, name, reporter=reporter)
    if not checked.ok:
        code = checked.file_error["code"] if checked.file_error else "file.records"
        _refuse(path, folder, media_report(name, check=checked))
        return FileEntry(name, len(data), digest, "refused", code)
    placed = place_atomically(data, outbox, name, mode=0o660)
    _move_on_media(path, folder / "imported")
    return FileEntry(placed.name, len(data), digest, "imported")


def _refuse(path: Path, folder: Path, text: str) -> None:
    """Report first (beside where the file will be), then move the file: never one without it."""
    refused = folder / "refused"
    refused.mkdir(exist_ok=True)
    for candidate in numbered_names(path.name):
        if (refused / candidate).exists():
            continue
        entry = write_verified(report_bytes(text), refused, candidate + REPORT_SUFFIX)
        if entry.name != candidate + REPORT_SUFFIX:
            continue
        os.rename(path, refused / candidate)
        fsync_dir(refused)
        fsync_dir(folder)
        return
    raise MediaError(f"{refused}: too many refused files named like {path.name!r}", code="media.io")
