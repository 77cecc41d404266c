"""The download phase (spec §5.1): ministry notice batches from the server into the inbox.

For each pending batch, in sequence order::

    manifest ─ verify signature, lasdec, batch id ─► queue: downloading
      ─► partial/<batch_id> (resumed with Range) ─► fsync ─► size + SHA-256 = manifest?
      ─► inbox/ministry-<lasdec>-<YYYYMMDD>-<seq>.csv (atomic) ─► queue: placed
      ─► POST …/ack ─► queue: acknowledged

A batch that fails any check is copied to quarantine/ with a report and
recorded ``quarantined``: never placed, never acknowledged, so the server
offers it again and the next run fetches it afresh.  The other batches go on.

Why each step is safe to repeat after a crash:

* ``partial/<batch_id>`` is only a cache: its size is compared with the signed
  manifest before resuming (longer: start again), and the SHA-256 of the
  whole file decides.  A resumed file that fails the hash is fetched once
  more from byte 0 before it is quarantined, so a partial file damaged by a
  power failure heals itself.
* The inbox file is placed with :func:`folders.place_atomically`, which finds
  the same bytes already under the name and writes nothing: a crash between
  placing and recording ``placed`` cannot make a second copy.
* Acknowledging is idempotent at the server.  A batch recorded ``placed``
  that the server no longer lists (the acknowledgement arrived, the answer
  or its recording did not) is acknowledged again.
* The partial file is removed once the batch is recorded placed (or
  quarantined): it is the agent's working copy, not a delivered file.

A transport error ends the phase (later batches wait for the next run, so
batches are still placed in sequence order); the batch stays
``downloading`` and its partial file is resumed next time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common import statement
from common.atomicwrite import fsync_dir
from common.errors import NoticeFileError
from common.items import MINISTRY
from common.noticefile import NoticeReader

from .folders import place_atomically
from .queue import DownloadRow
from .reports import QUARANTINE_REASONS, quarantine_report, report_bytes
from .transport import TransportError

if TYPE_CHECKING:
    from .sync import Context

__all__ = ["inbox_name", "run_downloads", "verify_manifest"]

MANIFEST_TYPE = "ministry-batch"
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_SHA = "0" * 64
_CHUNK = 1 << 20
#: Resumes of one batch within a run after the line dropped mid-file.
_RESUMES = 3


class BatchRefused(Exception):
    """A batch failed verification; ``code`` is a key of ``reports.QUARANTINE_REASONS``."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Stop(Exception):
    """End the download phase (the problem is already reported)."""


def inbox_name(lasdec: str, business_date: str, sequence: int) -> str:
    """``ministry-<lasdec>-<YYYYMMDD>-<sequence, 6 digits>.csv`` (the folder contract)."""
    return f"ministry-{lasdec}-{business_date.replace('-', '')}-{sequence:06d}.csv"


def verify_manifest(
    signed: Any, *, server_key: Ed25519PublicKey, lasdec: str, batch_id: str
) -> dict:
    """The manifest's body, once its signature is the pinned server key's and it names this
    terminal's municipality and this batch.  Raises :class:`BatchRefused`."""
    try:
        body = statement.verify(signed, server_key)
    except statement.StatementError as exc:
        raise BatchRefused("batch.signature", f"{exc.code}: {exc.message}") from None
    wrong: list[str] = []
    if body.get("type") != MANIFEST_TYPE:
        wrong.append(f"type {body.get('type')!r} is not {MANIFEST_TYPE!r}")
    if body.get("lasdec") != lasdec:
        wrong.append(f"it is for municipality {body.get('lasdec')!r}, this terminal is {lasdec}")
    if body.get("batch_id") != batch_id:
        wrong.append(f"it describes batch {body.get('batch_id')!r}, not {batch_id!r}")
    sequence, size, sha256 = body.get("sequence"), body.get("size"), body.get("sha256")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        wrong.append(f"sequence {sequence!r} is not a number from 1")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        wrong.append(f"size {size!r} is not a byte count")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        wrong.append("sha256 is not a SHA-256 in lowercase hex")
    try:
        date.fromisoformat(str(body.get("business_date")))
    except ValueError:
        wrong.append(f"business_date {body.get('business_date')!r} is not a date")
    if wrong:
        raise BatchRefused("batch.manifest", "; ".join(wrong))
    return body


def _sha256_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


class _Sink:
    """The partial file as the transport's destination: every write reaches the kernel at once
    (unbuffered), and a crash checkpoint sits in the middle of each block."""

    def __init__(self, raw: BinaryIO, checkpoint):  # type: ignore[no-untyped-def]
        self.raw = raw
        self.checkpoint = checkpoint

    def _write_all(self, data: memoryview) -> None:
        while data:
            written = self.raw.write(data)
            data = data[written:]

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        half = len(view) // 2
        self._write_all(view[:half])
        self.checkpoint("download.write")
        self._write_all(view[half:])
        return len(view)


def _fetch(ctx: Context, batch_id: str, partial: Path, size: int, *, fresh: bool = False) -> None:
    """Make ``partial`` hold ``size`` bytes from the server, resuming what is there."""
    have = 0 if fresh or not partial.exists() else partial.stat().st_size
    if have > size:
        have = 0  # longer than the signed size: not this file; start again
    with open(partial, "r+b" if partial.exists() else "w+b", buffering=0) as raw:
        raw.truncate(have)
        raw.seek(have)
        if have < size:
            if have:
                ctx.say(f"download: {batch_id}: resuming at byte {have} of {size}")
            sink = _Sink(raw, ctx.checkpoint)
            resumes = 0
            while True:
                offset = raw.tell()
                try:
                    ctx.transport.download(batch_id, sink, offset=offset)  # type: ignore[arg-type]
                    break
                except TransportError as exc:
                    if exc.restart and resumes < _RESUMES:
                        raw.truncate(0)
                        raw.seek(0)
                    elif exc.retryable and exc.written > 0 and resumes < _RESUMES:
                        ctx.say(f"download: {batch_id}: line dropped, resuming at {raw.tell()}")
                    else:
                        raise
                    resumes += 1
        os.fsync(raw.fileno())


def _check_format(path: Path) -> None:
    """The file must read as a ministry notice file of a version this agent knows."""
    try:
        with path.open("rb") as handle:
            reader = NoticeReader(handle, name=path.name)
    except NoticeFileError as exc:
        raise BatchRefused("batch.format", f"{exc.code}: {exc.message}") from None
    if reader.direction != MINISTRY:
        raise BatchRefused("batch.format", f"it is a {reader.direction} notice file")


def _record(ctx: Context, row: DownloadRow, state: str, path: Path | str) -> DownloadRow:
    row.state = state
    row.path = str(path)
    row.updated_at = ctx.clock()
    ctx.queue.record_download(row)
    return row


def _remove_partial(ctx: Context, partial: Path) -> None:
    try:
        partial.unlink()
    except FileNotFoundError:
        return
    fsync_dir(ctx.folders.partial)


def _sweep_partials(ctx: Context) -> None:
    """Remove partial files of batches already placed (a crash came before their removal)."""
    for entry in os.scandir(ctx.folders.partial):
        row = ctx.queue.download_state(entry.name)
        if row is not None and row.state in ("placed", "acknowledged"):
            _remove_partial(ctx, Path(entry.path))


def _quarantine(
    ctx: Context,
    refused: BatchRefused,
    row: DownloadRow,
    partial: Path | None,
    *,
    actual: tuple[str, int] | None = None,
) -> None:
    """Keep the bad file (if any) and a report in quarantine/; never in the inbox, never acked."""
    folder = ctx.folders.quarantine
    kept: Path | None = None
    if partial is not None and partial.exists():
        kept = place_atomically(partial, folder, f"{row.batch_id}.csv", mode=0o600)
    text = quarantine_report(
        row.batch_id,
        reason=refused.code,
        detail=refused.detail,
        sequence=row.sequence or None,
        business_date=row.business_date or None,
        expected_sha256=row.sha256 if row.sha256 != _NO_SHA else None,
        actual_sha256=actual[0] if actual else None,
        size=actual[1] if actual else None,
        path=str(kept) if kept else None,
    )
    report_name = (kept.name if kept else f"{row.batch_id}.csv") + ".report.txt"
    report_path = place_atomically(report_bytes(text), folder, report_name, mode=0o600)
    ctx.checkpoint("download.quarantined")
    _record(ctx, row, "quarantined", kept or report_path)
    if partial is not None:
        _remove_partial(ctx, partial)
    english, japanese = QUARANTINE_REASONS.get(refused.code, (refused.code, refused.code))
    ctx.report.batch(row.batch_id, "quarantined", sequence=row.sequence, reason=refused.code)
    ctx.report.problem(
        refused.code,
        row.batch_id,
        f"batch {row.batch_id} was quarantined, not placed and not acknowledged: {english} "
        f"({refused.detail}); report: {report_path}",
        f"法務省通知 {row.batch_id} を隔離しました（inbox には置いていません）：{japanese}",
        failure=False,
    )
    ctx.say(f"download: {row.batch_id} QUARANTINED ({refused.code})")


def _acknowledge(ctx: Context, row: DownloadRow) -> None:
    """Tell the server the batch is in the inbox, then record it (both idempotent)."""
    ctx.transport.acknowledge(row.batch_id, row.sha256)
    ctx.checkpoint("download.acked")
    _record(ctx, row, "acknowledged", row.path)
    ctx.checkpoint("download.done")
    ctx.report.batch(row.batch_id, "acknowledged", sequence=row.sequence)


def _placeholder_row(ctx: Context, entry: dict, partial: Path) -> DownloadRow:
    """A row for a batch whose manifest cannot be trusted: the listing's values, if sane."""
    sequence = entry.get("sequence")
    sha256 = entry.get("sha256")
    size = entry.get("size")
    return DownloadRow(
        batch_id=entry["batch_id"],
        sequence=sequence if isinstance(sequence, int) and sequence > 0 else 0,
        business_date=str(entry.get("business_date") or ""),
        sha256=sha256 if isinstance(sha256, str) and _SHA256.fullmatch(sha256) else _NO_SHA,
        size=size if isinstance(size, int) and size >= 0 else 0,
        state="downloading",
        path=str(partial),
        updated_at=ctx.clock(),
    )


def _one_batch(ctx: Context, entry: dict) -> DownloadRow | None:
    """Bring one listed batch to acknowledged (or quarantined); returns its row if it was placed
    by this call."""
    batch_id = entry["batch_id"]
    known = ctx.queue.download_state(batch_id)
    if known is not None and known.state in ("placed", "acknowledged"):
        # Placed before; only the acknowledgement is missing at the server.
        _acknowledge(ctx, known)
        return None
    partial = ctx.folders.partial / batch_id
    try:
        manifest = verify_manifest(
            ctx.transport.manifest(batch_id),
            server_key=ctx.server_key,
            lasdec=ctx.config.lasdec,
            batch_id=batch_id,
        )
    except BatchRefused as refused:
        _quarantine(ctx, refused, _placeholder_row(ctx, entry, partial), None)
        return None
    row = DownloadRow(
        batch_id=batch_id,
        sequence=manifest["sequence"],
        business_date=manifest["business_date"],
        sha256=manifest["sha256"],
        size=manifest["size"],
        state="downloading",
        path=str(partial),
        updated_at=ctx.clock(),
    )
    ctx.queue.record_download(row)
    ctx.checkpoint("download.recorded")
    resumed = partial.exists() and partial.stat().st_size > 0
    _fetch(ctx, batch_id, partial, row.size)
    ctx.checkpoint("download.fetched")
    actual = _sha256_file(partial)
    if actual != (row.sha256, row.size) and resumed:
        ctx.say(f"download: {batch_id}: the resumed file does not match; fetching it again")
        _fetch(ctx, batch_id, partial, row.size, fresh=True)
        actual = _sha256_file(partial)
    try:
        if actual[1] != row.size:
            raise BatchRefused(
                "batch.size_mismatch", f"{actual[1]} bytes, the manifest says {row.size}"
            )
        if actual[0] != row.sha256:
            raise BatchRefused("batch.hash_mismatch", f"SHA-256 {actual[0]}")
        _check_format(partial)
    except BatchRefused as refused:
        _quarantine(ctx, refused, row, partial, actual=actual)
        return None
    name = inbox_name(ctx.config.lasdec, row.business_date, row.sequence)
    placed = place_atomically(partial, ctx.folders.inbox, name, mode=0o640)
    ctx.checkpoint("download.placed_file")
    _record(ctx, row, "placed", placed)
    ctx.checkpoint("download.placed")
    _remove_partial(ctx, partial)
    ctx.report.batch(batch_id, "placed", sequence=row.sequence, path=str(placed), size=row.size)
    ctx.say(f"download: {batch_id} (sequence {row.sequence}) placed as {placed.name}")
    _acknowledge(ctx, row)
    return row


def _note_gap(ctx: Context, placed: set[int], sequence: int) -> None:
    """Report the sequence numbers missing between the last batch placed before and this one."""
    earlier = [number for number in placed if number < sequence]
    if earlier and sequence > max(earlier) + 1:
        missing = list(range(max(earlier) + 1, sequence))
        ctx.report.gaps.extend(missing)
        shown = ", ".join(str(number) for number in missing)
        ctx.report.problem(
            "batch.gap",
            "",
            f"sequence number(s) {shown} are missing between batch {max(earlier)} and batch "
            f"{sequence} (quarantined, or not delivered by the server: ask the help desk if "
            "they do not arrive with the next run)",
            f"法務省通知の連番 {shown} が抜けています（{max(earlier)} の次に {sequence} を受信しました）。"
            "次回の連携でも届かないときは、ヘルプデスクへ連絡してください。",
            failure=False,
        )


def _transport_problem(ctx: Context, exc: TransportError, batch_id: str, doing: str) -> None:
    ctx.report.problem(
        exc.code,
        batch_id,
        f"{doing}: {exc.message}; the next run continues from here",
        "サーバとの通信に失敗しました。次回の連携で続きから受信します。",
    )
    ctx.say(f"download: stopped ({exc.code}): {exc.message}")


def run_downloads(ctx: Context) -> None:
    """The download phase; problems go into ``ctx.report``."""
    _sweep_partials(ctx)
    try:
        listed = ctx.transport.list_batches()
    except TransportError as exc:
        _transport_problem(ctx, exc, "", "cannot list the waiting batches")
        return
    entries: list[dict] = []
    for entry in listed:
        batch_id = entry.get("batch_id") if isinstance(entry, dict) else None
        if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
            ctx.report.problem(
                "batch.listing",
                str(batch_id or ""),
                f"the server listed a batch with an unusable id {batch_id!r}; skipped",
                "サーバの一覧に読み取れない法務省通知がありました",
            )
            continue
        entries.append(entry)
    entries.sort(key=lambda entry: (_sequence(entry), entry["batch_id"]))
    ctx.say(f"download: {len(entries)} batch(es) waiting")
    placed = set(ctx.queue.placed_sequences())
    try:
        listed_ids = {entry["batch_id"] for entry in entries}
        for row in ctx.queue.downloads(["placed"]):
            if row.batch_id not in listed_ids:
                _guard(ctx, row.batch_id, "acknowledging", lambda row=row: _acknowledge(ctx, row))
        for entry in entries:
            result = _guard(
                ctx, entry["batch_id"], "downloading", lambda entry=entry: _one_batch(ctx, entry)
            )
            if result is not None:
                _note_gap(ctx, placed, result.sequence)
                placed.add(result.sequence)
    except _Stop:
        return


def _sequence(entry: dict) -> int:
    value = entry.get("sequence")
    return value if isinstance(value, int) else 0


def _guard(ctx: Context, batch_id: str, doing: str, step):  # type: ignore[no-untyped-def]
    """Run one batch's step; a transport or disk error is reported and ends the phase."""
    try:
        return step()
    except TransportError as exc:
        ctx.report.batch(batch_id, "failed", code=exc.code)
        _transport_problem(ctx, exc, batch_id, f"{doing} batch {batch_id}")
        raise _Stop from None
    except OSError as exc:
        full = exc.errno == errno.ENOSPC
        ctx.report.batch(batch_id, "failed", code="disk.full" if full else "io.error")
        ctx.report.problem(
            "disk.full" if full else "io.error",
            batch_id,
            f"{doing} batch {batch_id}: {exc}; nothing was placed, the next run continues",
            "ディスクの空きが足りません。空きを作ってください。"
            if full
            else "ファイルの読み書きに失敗しました。",
        )
        raise _Stop from None
