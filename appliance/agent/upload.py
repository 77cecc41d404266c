"""The upload phase (spec §5.2): municipality notice files from the outbox to the server.

::

    outbox/NAME ─ settled, good name, not too large, reads as a municipality notice file,
                  every record valid? ─ no ─► rejected/NAME + NAME.report.txt (nothing sent)
        │ yes
        ▼
    spool/<sha>-NAME ─► queue: queued ─► sending ─► POST /uploads ─► verified signed receipt
        ─► queue: done ─► sent/NAME + NAME.receipt.json (+ NAME.report.txt if records
                          were refused)
                      or rejected/NAME + NAME.receipt.json + NAME.report.txt when the
                          server refused the file as a whole (its receipt has a file_error)

Taking files in and filing them is ``outbox.py``; this module sends.  A row
left ``sending`` by a crash is sent again: the server answers the same bytes
with the same receipt and stores nothing twice (exactly-once effect through
its idempotency, at-least-once delivery from the queue).  A ``done`` row
whose original is still in the spool is filed first thing.

A failed attempt is retried after :func:`queue.backoff` (or the server's
``Retry-After``, if longer); past ``retry.give_up_after`` since the file was
queued it is given up, and every later run reports it until staff send it
again (``renkei-agent sync --retry-failed``, or by dropping the same file
again).  A 413 is final: the file goes to rejected/.  An error that no other
file can avoid either (network, signature, revoked terminal) ends the
sending for this run; the rest wait, untouched, for the next.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import statement

from .errors import FolderError
from .folders import REASONS
from .outbox import REPORT_SUFFIX, Intake, file_receipted, file_with_sidecars, spool_orphans
from .queue import UploadRow, backoff
from .reports import refusal_report, report_bytes
from .transport import TransportError

if TYPE_CHECKING:
    from .sync import Context

__all__ = ["ReceiptRefused", "run_uploads", "verify_receipt"]

_log = logging.getLogger("renkei.agent")

RECEIPT_TYPE = "municipality-receipt"
#: Error codes after which no other file can get through either: stop sending for this run.
_STOP_PREFIXES = ("net.", "sig.", "auth.")


class ReceiptRefused(Exception):
    """The server's answer is not a receipt this terminal can keep as proof."""


def verify_receipt(receipt: Any, *, server_key: Any, lasdec: str, sha256: str) -> dict:
    """The receipt's body, once it is signed by the pinned key and names this municipality and
    these bytes.  Raises :class:`ReceiptRefused`."""
    try:
        body = statement.verify(receipt, server_key)
    except statement.StatementError as exc:
        raise ReceiptRefused(f"the receipt's signature does not verify ({exc.code})") from None
    if body.get("type") != RECEIPT_TYPE:
        raise ReceiptRefused(f"the answer is a {body.get('type')!r}, not a receipt")
    if body.get("lasdec") != lasdec:
        raise ReceiptRefused(f"the receipt is for municipality {body.get('lasdec')!r}")
    if body.get("sha256") != sha256:
        raise ReceiptRefused("the receipt is for other file content (SHA-256 differs)")
    return body


# --- sending -----------------------------------------------------------------------------------


def _failed(
    ctx: Context, row: UploadRow, code: str, message: str, exc: TransportError | None
) -> bool:
    """Record a failed attempt; returns True when sending should stop for this run."""
    now = ctx.clock()
    name = row.file_name
    error = f"{code}: {message}"
    if code == "request.too_large" or (exc is not None and exc.status == 413):
        ctx.queue.mark_given_up(row.upload_id, error, now=now)
        text = refusal_report(name, "file.too_large", detail="the server's upload limit")
        final = file_with_sidecars(
            ctx,
            Path(row.spool_path),
            ctx.folders.rejected,
            name,
            [(REPORT_SUFFIX, report_bytes(text))],
            step="upload.sidecars",
        )
        ctx.report.file(name, "refused", upload_id=row.upload_id, code=code, path=str(final))
        ctx.report.problem(
            code,
            name,
            f"the server refused {name!r} as too large; moved to {final}: split the file",
            REASONS["file.too_large"][1] + "。ファイルを分けて置き直してください",
            failure=False,
        )
        return False
    policy = ctx.config.retry
    started = row.queued_at or row.created_at or now
    attempts = row.attempts + 1
    if now - started >= policy.give_up_after:
        ctx.queue.mark_given_up(row.upload_id, error, now=now)
        ctx.report.file(name, "given_up", upload_id=row.upload_id, code=code, attempts=attempts)
        ctx.report.problem(
            code,
            name,
            f"gave up sending {name!r} after {attempts} attempt(s) over "
            f"{(now - started) / 3600:.1f} h: {message}. Fix the cause, then run "
            "`renkei-agent sync --retry-failed`",
            "送信をあきらめました。原因を取り除いてから、もう一度送信してください"
            "（renkei-agent sync --retry-failed）。",
        )
    else:
        delay = backoff(attempts, policy, rand=random.random)
        if exc is not None and exc.retry_after:
            delay = max(delay, exc.retry_after)
        ctx.queue.mark_failed(row.upload_id, error, now=now, next_try=now + delay)
        ctx.report.file(
            name,
            "failed",
            upload_id=row.upload_id,
            code=code,
            attempts=attempts,
            next_try=now + delay,
        )
        ctx.report.problem(
            code,
            name,
            f"sending {name!r} failed: {message}; next try in {delay:.0f} s",
            "送信できませんでした。時間をおいて自動で送り直します。",
        )
    ctx.say(f"upload: {name} FAILED ({code})")
    return code.startswith(_STOP_PREFIXES)


def _send(ctx: Context, row: UploadRow) -> bool:
    """One attempt; returns True when sending should stop for this run."""
    spool = Path(row.spool_path)
    try:
        data = spool.read_bytes()
    except FileNotFoundError:
        ctx.queue.mark_sending(row.upload_id, now=ctx.clock())
        ctx.queue.mark_given_up(row.upload_id, "the spooled file is missing", now=ctx.clock())
        ctx.report.file(row.file_name, "given_up", upload_id=row.upload_id, code="spool.missing")
        ctx.report.problem(
            "spool.missing",
            row.file_name,
            f"the spooled copy {spool} is gone; the file was not sent",
            "送信待ちのファイルが見つかりません。もう一度 outbox に置いてください。",
        )
        return False
    if hashlib.sha256(data).hexdigest() != row.sha256:
        ctx.report.problem(
            "spool.changed",
            row.file_name,
            f"the spooled copy {spool} changed after it was checked; not sent",
            "送信待ちのファイルが変更されています。ヘルプデスクへ連絡してください。",
        )
        return False
    ctx.queue.mark_sending(row.upload_id, now=ctx.clock())
    ctx.checkpoint("upload.sending")
    try:
        _status, receipt = ctx.transport.upload(data, file_name=row.file_name)
        verify_receipt(
            receipt, server_key=ctx.server_key, lasdec=ctx.config.lasdec, sha256=row.sha256
        )
    except TransportError as exc:
        return _failed(ctx, row, exc.code, exc.message, exc)
    except ReceiptRefused as exc:
        return _failed(ctx, row, "receipt.invalid", str(exc), None)
    ctx.checkpoint("upload.sent")
    ctx.queue.mark_done(row.upload_id, json.dumps(receipt, ensure_ascii=False), now=ctx.clock())
    ctx.checkpoint("upload.done")
    done = ctx.queue.upload(row.upload_id)
    assert done is not None
    file_receipted(ctx, done, spool, row.file_name, outcome="sent")
    return False


def run_uploads(ctx: Context, *, retry_failed: bool = False) -> None:
    """The upload phase; problems go into ``ctx.report``."""
    folders = ctx.folders
    # 1. Originals a crash left in the spool after their receipt was recorded.
    for row in ctx.queue.uploads(["done"]):
        if os.path.lexists(row.spool_path):
            file_receipted(ctx, row, Path(row.spool_path), row.file_name, outcome="sent")
    intake = Intake(ctx)
    # 2. Files a crash left in the spool before they were queued.
    for path in spool_orphans(ctx, intake.spooled):
        intake.take(path, path.name, in_spool=True)
    # 3. The outbox.
    scan = folders.scan_outbox(
        now=ctx.clock(), settle=ctx.config.settle_seconds, max_bytes=ctx.config.max_file_bytes
    )
    for name, why in scan.ignored:
        if why == "symlink":
            _one_file(
                ctx, name, lambda name=name: intake.refuse_symlink(folders.outbox / name, name)
            )
    for file in scan.complete:
        if file.problem is not None:
            _one_file(
                ctx,
                file.name,
                lambda f=file: intake.refuse_unread(f.path, f.name, f.problem, f.detail),
            )
        else:
            _one_file(ctx, file.name, lambda f=file: intake.take(f.path, f.name))
    if scan.waiting:
        ctx.say(f"upload: {len(scan.waiting)} file(s) still being written; next run")
    # 4. Send what is due.
    if retry_failed:
        for row in ctx.queue.uploads(["failed", "given_up"]):
            if os.path.exists(row.spool_path):
                ctx.queue.requeue(row.upload_id, now=ctx.clock())
    due = ctx.queue.due_uploads(now=ctx.clock())
    if due:
        ctx.say(f"upload: {len(due)} file(s) to send")
    for index, row in enumerate(due):
        if _send(ctx, row):
            for rest in due[index + 1 :]:
                ctx.report.file(rest.file_name, "deferred", upload_id=rest.upload_id)
            break
    # 5. Second copies of files that now have their receipt.
    intake.settle_deferred()
    # 6. Files given up in earlier runs keep the run failed until someone acts.
    _standing_given_up(ctx)


def _one_file(ctx: Context, name: str, step: Callable[[], None]) -> None:
    """Take one outbox entry; an error of this entry alone is reported for it, and the others
    go on (it stays in the outbox and is tried again next run).

    Without this, one entry the agent cannot move (e.g. a staff-owned link on a kernel that
    refuses to hard-link it) stopped the whole phase in every run: nothing was sent at all.
    A full disk still ends the phase, as it stops every file alike.
    """
    try:
        step()
    except (OSError, FolderError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        _log.exception("outbox file %r could not be taken in", name)
        ctx.report.file(name, "failed", code="io.error")
        ctx.report.problem(
            "io.error",
            name,
            f"{name!r} could not be taken from the outbox ({exc}); it stays there and is "
            "tried again next run; the other files went on",
            "このファイルを送信フォルダから取り込めませんでした（ファイルはそのまま残り、"
            "次回もう一度処理します）。ほかのファイルの処理は続けました。",
        )


def _standing_given_up(ctx: Context) -> None:
    now_given_up = {
        event.get("upload_id") for event in ctx.report.files if event["outcome"] == "given_up"
    }
    waiting = [
        row
        for row in ctx.queue.uploads(["given_up"])
        if row.upload_id not in now_given_up and os.path.exists(row.spool_path)
    ]
    if waiting:
        names = ", ".join(repr(row.file_name) for row in waiting)
        ctx.report.problem(
            "upload.given_up",
            "",
            f"{len(waiting)} file(s) were given up earlier and are still not sent ({names}); "
            "fix the cause, then run `renkei-agent sync --retry-failed`",
            f"送信をあきらめたファイルが {len(waiting)} 件あります。原因を取り除いてから、"
            "もう一度送信してください（renkei-agent sync --retry-failed）。",
        )
