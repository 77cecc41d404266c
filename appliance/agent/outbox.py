"""Taking files in from the outbox, and filing them in sent/ or rejected/ (spec §5.2).

A settled outbox file is refused unread for a bad name or size; otherwise
it is read (never through a symlink) and checked like the server checks
it — every record validated (``common.validation``), every problem listed —
and then either moved into the spool and queued, or moved to rejected/ with
a Japanese report (``reports.local_rejection_report``) and never sent.
``upload.py`` sends what is queued; :func:`file_receipted` files an
original with its receipt.

A file goes to exactly one of sent/ and rejected/: rejected/ when nothing of
it was registered (refused locally, by the server's file_error, or as too
large for the server), sent/ when the server registered it (some records
may still be listed as refused in its report).

Why each step is safe to repeat after a crash:

* The check runs before the file leaves the outbox; its report carries no
  time stamp, so a repeated check writes the same bytes.
* Filing a file with its "sidecars" (report, receipt) writes the sidecars
  first, then moves the file: a crash between leaves the file where it was,
  and the repeat picks the same name (the sidecars there hold the same
  bytes) and finishes.  A copy of a spooled file across file systems that
  was cut short (the target holds the same bytes, the source is still
  there) is finished, not doubled.
* In the spool a file is named ``<first 16 hex digits of its SHA-256>-NAME``:
  unique per content, so a file there that the queue does not know (the
  crash came between the move and the queue insert) is recognised, checked
  again and queued under its outbox name.
* The queue is unique by SHA-256: the same bytes dropped twice are sent
  once, and the second copy is filed next to the first with the same receipt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.atomicwrite import fsync_dir
from common.errors import NoticeFileError
from common.items import MUNICIPALITY
from common.noticefile import FORMAT_TAGS, NoticeReader, RowError
from common.rejections import file_error_entry, rejected_entry, row_error_entry
from common.reporting import reporting_problem
from common.validation import validate

from .errors import FolderError
from .folders import (
    MAX_NAME_BYTES,
    MAX_NUMBERED,
    REASONS,
    is_temporary_name,
    move_link,
    move_to,
    numbered_names,
    place_atomically,
    safe_name,
)
from .queue import UploadRow
from .reports import (
    local_rejection_report,
    receipt_report,
    refusal_report,
    report_bytes,
)

if TYPE_CHECKING:
    from .sync import Context

__all__ = [
    "Intake",
    "LocalCheck",
    "check_notice_file",
    "file_receipted",
    "file_with_sidecars",
    "original_name",
    "spool_name",
    "spool_orphans",
]

RECEIPT_SUFFIX = ".receipt.json"
REPORT_SUFFIX = ".report.txt"


@dataclass(frozen=True)
class LocalCheck:
    """The result of checking a file before sending: ``ok`` when nothing is wrong."""

    records: int
    rejected: list[dict]
    file_error: dict | None

    @property
    def ok(self) -> bool:
        return not self.rejected and self.file_error is None


def check_notice_file(data: bytes, name: str, *, reporter: str) -> LocalCheck:
    """Read ``data`` as a municipality notice file and validate every record, as the server does.

    Unreadable lines and invalid records become rejected entries (every problem
    of a record); a file that cannot be read as a whole becomes a file error.
    ``reporter`` is this terminal's municipality: a record about another's
    residents is refused here as the server would refuse it
    (``common.reporting``), so staff hear it before anything is sent.
    """
    rejected: list[dict] = []
    records = 0
    try:
        reader = NoticeReader(io.BytesIO(data), name=name)
        if reader.direction != MUNICIPALITY:
            raise NoticeFileError(
                f"this is a {reader.direction} notice file; the outbox takes municipality "
                f"notices ({FORMAT_TAGS[MUNICIPALITY]})",
                message_ja="法務省通知のファイルです。送信できるのは市町村通知のファイルです",
                code="file.direction",
                name=name,
                line=1,
            )
        for row in reader:
            records += 1
            if isinstance(row, RowError):
                rejected.append(row_error_entry(row))
                continue
            problems = validate(row, check_encoding=False)
            refusal = reporting_problem(row, reporter)
            if refusal is not None:
                problems = [*problems, refusal]
            if problems:
                rejected.append(rejected_entry(reader.stats.lines, row.record_id, problems))
    except NoticeFileError as exc:
        return LocalCheck(records, [], file_error_entry(exc))
    return LocalCheck(records, rejected, None)


# --- filing a file with its sidecars -------------------------------------------------------------


def _holds(path: Path, data: bytes) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == len(data) and path.read_bytes() == data


def _same_file_content(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.lstat(), b.lstat()
    except FileNotFoundError:
        return False
    if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)) or sa.st_size != sb.st_size:
        return False
    return _sha256_path(a) == _sha256_path(b)


def _sha256_path(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def file_with_sidecars(
    ctx: Context,
    source: Path,
    folder: Path,
    name: str,
    sidecars: Sequence[tuple[str, bytes]],
    *,
    step: str,
) -> Path:
    """Move ``source`` into ``folder`` as ``name`` (numbered if taken) with ``name + suffix``
    files beside it; sidecars first, so a crash never leaves the file without them.

    ``step`` is the crash checkpoint between the sidecars and the move.  A target that
    already holds the same bytes is taken for an interrupted move only when the source is
    the agent's own spool copy; a staff file is never merged into another (it is numbered).
    """
    base = safe_name(name, max_bytes=MAX_NAME_BYTES)
    link = source.is_symlink()
    own = source.parent == ctx.folders.spool
    for candidate in numbered_names(base):
        target = folder / candidate
        beside = [(folder / (candidate + suffix), data) for suffix, data in sidecars]
        if any(path.exists() and not _holds(path, data) for path, data in beside):
            continue
        if os.path.lexists(target):
            if link or not own or not _same_file_content(source, target):
                continue
            # A copy across file systems was cut short after the copy: finish the move.
            for path, data in beside:
                place_atomically(data, folder, path.name)
            source.unlink()
            fsync_dir(source.parent)
            return target
        for path, data in beside:
            place_atomically(data, folder, path.name)
        ctx.checkpoint(step)
        if link:
            return move_link(source, target)
        return move_to(source, folder, name=candidate)
    raise FolderError(
        f"{folder}: more than {MAX_NUMBERED} files named like {base!r}; tidy the folder",
        code="folder.full",
    )


# --- taking files in ---------------------------------------------------------------------------


class _Unreadable(Exception):
    def __init__(self, code: str, message: str, message_ja: str):
        super().__init__(message)
        self.entry = {"code": code, "line": None, "message": message_ja, "message_en": message}


def _read(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, never following a symlink, never more than ``max_bytes``.

    Raises FileNotFoundError when the file is gone (staff took it back).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _Unreadable(
            "file.unreadable",
            f"the file cannot be opened: {exc.strerror}",
            "ファイルを開けません（読み取りの権限を確認してください）",
        ) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable(
                "file.not_regular", "not a regular file", "通常のファイルではありません"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _Unreadable(
            "file.too_large",
            f"the file is larger than {max_bytes} bytes",
            REASONS["file.too_large"][1],
        )
    return data


class Intake:
    """Moves settled outbox files (and spool orphans) into the queue or to rejected/."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        rows = ctx.queue.uploads()
        self.by_sha: dict[str, UploadRow] = {row.sha256: row for row in rows}
        self.spooled = {row.spool_path for row in rows}
        #: Duplicates of files still waiting to be sent: (path, name, upload_id).
        self.deferred: list[tuple[Path, str, int]] = []

    def reject(self, path: Path, name: str, text: str, code: str, message: str, ja: str) -> None:
        ctx = self.ctx
        final = file_with_sidecars(
            ctx,
            path,
            ctx.folders.rejected,
            name,
            [(REPORT_SUFFIX, report_bytes(text))],
            step="upload.rejected_report",
        )
        ctx.report.file(name, "rejected", code=code, path=str(final))
        ctx.report.problem(code, name, message, ja, failure=False)
        ctx.say(f"upload: {name} REJECTED ({code}), moved to {final}")

    def refuse_unread(self, path: Path, name: str, problem: str, detail: str) -> None:
        """A bad name or a file too large: refused without reading it."""
        text = refusal_report(name, problem, detail=detail)
        english, japanese = REASONS.get(problem, (problem, problem))
        self.reject(
            path, name, text, problem, f"{name!r} was refused unread: {english} {detail}", japanese
        )

    def refuse_symlink(self, path: Path, name: str) -> None:
        entry = {
            "code": "file.symlink",
            "line": None,
            "message": "リンク（シンボリックリンク）は送信できません。ファイルそのものを outbox に置いてください",
            "message_en": "a symbolic link is not sent (its target is never read); drop the file itself",
        }
        self.reject(
            path,
            name,
            local_rejection_report(name, file_error=entry),
            "file.symlink",
            entry["message_en"],
            entry["message"],
        )

    def take(self, path: Path, name: str, *, in_spool: bool = False) -> None:
        """Check one file; queue it (moving it into the spool) or reject it."""
        ctx = self.ctx
        try:
            data = _read(path, ctx.config.max_file_bytes)
        except FileNotFoundError:
            return  # taken back by staff since the scan
        except _Unreadable as exc:
            entry = exc.entry
            self.reject(
                path,
                name,
                local_rejection_report(name, file_error=entry),
                entry["code"],
                f"{name!r}: {entry['message_en']}",
                entry["message"],
            )
            return
        sha256 = hashlib.sha256(data).hexdigest()
        if in_spool:
            name = original_name(name, sha256)
        existing = self.by_sha.get(sha256)
        if existing is not None:
            self.duplicate(path, name, existing)
            return
        checked = check_notice_file(data, name, reporter=self.ctx.config.lasdec)
        if not checked.ok:
            text = local_rejection_report(
                name,
                rejected=checked.rejected,
                file_error=checked.file_error,
                records=checked.records,
            )
            if checked.file_error is not None:
                code = checked.file_error["code"]
                english = checked.file_error["message_en"]
                ja = checked.file_error["message"]
            else:
                code = "file.records"
                english = f"{len(checked.rejected)} of {checked.records} records have errors"
                ja = f"{checked.records} 件中 {len(checked.rejected)} 件のレコードに誤りがあります"
            self.reject(path, name, text, code, f"{name!r} was not sent: {english}", ja)
            return
        if in_spool:
            spooled = path
        else:
            try:
                spooled = move_to(path, ctx.folders.spool, name=spool_name(name, sha256))
            except FileNotFoundError:
                return  # taken back by staff since it was read
            ctx.checkpoint("upload.spooled")
            if _sha256_path(spooled) != sha256:
                # Written to again between the check and the move: check what was moved.
                self.take(spooled, name, in_spool=True)
                return
        row = ctx.queue.add_upload(name, sha256, str(spooled), now=ctx.clock())
        ctx.checkpoint("upload.queued")
        self.by_sha[sha256] = row
        self.spooled.add(str(spooled))
        ctx.report.file(name, "queued", upload_id=row.upload_id, records=checked.records)
        ctx.say(f"upload: {name} accepted ({checked.records} records), queued")

    def duplicate(self, path: Path, name: str, existing: UploadRow) -> None:
        """The same bytes were queued before: file this copy like that one, never send twice."""
        ctx = self.ctx
        if existing.state == "done":
            file_receipted(ctx, existing, path, name, outcome="duplicate")
            return
        if existing.state == "given_up":
            if Path(existing.spool_path).exists():
                ctx.queue.requeue(existing.upload_id, now=ctx.clock())  # dropped again: send now
            elif "request.too_large" in (existing.last_error or ""):
                self.refuse_unread(path, name, "file.too_large", "the server's upload limit")
                return
        self.deferred.append((path, name, existing.upload_id))

    def settle_deferred(self) -> None:
        """After sending: file the waiting duplicates whose first copy now has its receipt."""
        for path, name, upload_id in self.deferred:
            row = self.ctx.queue.upload(upload_id)
            if row is not None and row.state == "done" and os.path.lexists(path):
                file_receipted(self.ctx, row, path, name, outcome="duplicate")
            else:
                self.ctx.report.file(name, "duplicate", upload_id=upload_id, waiting=True)


def spool_name(name: str, sha256: str) -> str:
    """The file's name in the spool: unique per content, so a later file with the same name
    is never taken for one the queue already knows."""
    return f"{sha256[:16]}-{name}"


def original_name(spooled: str, sha256: str) -> str:
    """The outbox name back from :func:`spool_name` (the name itself if it has no prefix)."""
    prefix = f"{sha256[:16]}-"
    return spooled[len(prefix) :] if spooled.startswith(prefix) else spooled


def spool_orphans(ctx: Context, known: set[str]) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in os.scandir(ctx.folders.spool)
        if entry.path not in known
        and not is_temporary_name(entry.name)
        and entry.is_file(follow_symlinks=False)
    )


# --- filing receipted files -------------------------------------------------------------------


def _receipt_sidecars(name: str, receipt: dict) -> tuple[list[tuple[str, bytes]], dict]:
    body = receipt["statement"]
    text = json.dumps(receipt, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    sidecars = [(RECEIPT_SUFFIX, text.encode("utf-8"))]
    if body.get("rejected") or body.get("file_error"):
        sidecars.append((REPORT_SUFFIX, report_bytes(receipt_report(name, receipt))))
    return sidecars, body


def file_receipted(ctx: Context, row: UploadRow, source: Path, name: str, *, outcome: str) -> None:
    """File a receipted original (or a duplicate of it) into sent/ or, when the server refused
    the file as a whole, rejected/ — with the receipt and, when anything was refused, a report."""
    receipt = json.loads(row.receipt_json or "{}")
    sidecars, body = _receipt_sidecars(name, receipt)
    file_error = body.get("file_error")
    folder = ctx.folders.rejected if file_error else ctx.folders.sent
    final = file_with_sidecars(ctx, source, folder, name, sidecars, step="upload.sidecars")
    ctx.checkpoint("upload.filed")
    rejected = body.get("rejected") or []
    info = {
        "upload_id": row.upload_id,
        "receipt": body.get("upload_id"),
        "path": str(final),
        "accepted": len(body.get("accepted") or []),
        "duplicates": len(body.get("duplicates") or []),
        "rejected_records": len(rejected),
    }
    if outcome != "duplicate":
        outcome = "refused" if file_error else "sent"
    ctx.report.file(name, outcome, **info)
    if outcome == "duplicate":
        ctx.say(f"upload: {name} is the same as a file sent before; filed with its receipt")
        return
    if file_error:
        ctx.report.problem(
            str(file_error.get("code") or "upload.file_error"),
            name,
            f"the server refused {name!r} as a whole: {file_error.get('message_en')}; "
            f"moved to {final} with the receipt and a report",
            str(file_error.get("message") or ""),
            failure=False,
        )
    elif rejected:
        ctx.report.problem(
            "upload.records_rejected",
            name,
            f"the server refused {len(rejected)} record(s) of {name!r}; see {final}{REPORT_SUFFIX}",
            f"{len(rejected)} 件のレコードが受け付けられませんでした（報告ファイルを確認してください）",
            failure=False,
        )
    ctx.say(f"upload: {name} receipted, moved to {final}")
