"""``/dashboard/m/<lasdec>``: one receiving unit — terminals, batches, uploads — and two actions.

The page lists the unit's terminals (key fingerprint, agent version, last
contact, clock skew), its latest batches (delivery state and SHA-256), its
latest uploads (receipt, rejected records with their problems) and its
enrollment tokens (never the tokens themselves).  Two actions change state,
each a POST with the session's CSRF token:

* revoking a terminal, after a confirmation page that names it
  (``GET …/terminals/<id>/revoke`` shows it, ``POST`` does it);
* issuing an enrollment token, shown once on the answer page (which is not
  cached) and stored only as a hash, exactly as ``renkei-server terminal
  token`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, request, url_for

from server.app import services
from server.batches import list_batches
from server.enrollment import (
    find_terminal,
    issue_token,
    list_terminals,
    list_tokens,
    revoke_terminal,
)
from server.errors import ServerError
from server.eventlog import event
from server.mailreport import ContactsError, load_contacts
from server.municipalities import MunicipalityRow, get_municipality
from server.status import server_status
from server.storage import uploads

from .chart import volume_svg
from .guard import PREFIX, current_session, install, page
from .states import LABELS, fleet_state
from .volume import DAYS, daily_volume

bp = install(
    Blueprint(
        "dashboard_municipality", __name__, url_prefix=f"{PREFIX}/m", template_folder="templates"
    ),
    login_required=True,
)

#: How many of the latest batches and uploads the page lists.
LATEST = 60
_DONE = {
    "revoked": "端末を失効させました。この端末からの要求は以後すべて拒否されます。",
    "already": "この端末は既に失効しています。",
}


@dataclass(frozen=True)
class UploadView:
    upload_id: str
    terminal_id: str
    file_name: str
    sha256: str
    size: int
    received_at: object
    records: int
    accepted: int
    duplicates: int
    rejected: list[dict]
    file_error: dict | None
    receipt_key: str


def _unit(lasdec: str) -> MunicipalityRow:
    found = get_municipality(services().storage, lasdec) if lasdec.isascii() else None
    if found is None or not found.receiving:
        abort(404)
    return found


def _uploads(lasdec: str) -> list[UploadView]:
    query = (
        sa.select(uploads)
        .where(uploads.c.lasdec == lasdec)
        .order_by(uploads.c.received_at.desc())
        .limit(LATEST)
    )
    found = []
    with services().storage.read() as conn:
        for row in conn.execute(query):
            receipt = json.loads(row.receipt)
            body = receipt.get("statement", {})
            found.append(
                UploadView(
                    upload_id=row.upload_id,
                    terminal_id=row.terminal_id,
                    file_name=row.file_name,
                    sha256=row.sha256,
                    size=row.size,
                    received_at=row.received_at,
                    records=row.records,
                    accepted=row.accepted,
                    duplicates=row.duplicates,
                    rejected=body.get("rejected", []),
                    file_error=body.get("file_error"),
                    receipt_key=receipt.get("signature", {}).get("key_id", ""),
                )
            )
    return found


def _contact(lasdec: str) -> str:
    path = services().config.mail.contacts_file
    if path is None:
        return "（連絡先ファイル未設定）"
    try:
        return load_contacts(path).get(lasdec, "（未登録）")
    except ContactsError:
        return "（連絡先ファイルを読めません）"


@bp.get("/<lasdec>")
def detail(lasdec: str):
    ctx = services()
    unit = _unit(lasdec)
    now = ctx.now()
    status = server_status(ctx.storage, now=now)
    row = next(m for m in status.municipalities if m.lasdec == lasdec)
    batches = list_batches(ctx.storage, lasdec, pending_only=False)[-LATEST:][::-1]
    volume = daily_volume(ctx.storage, today=status.today, lasdec=lasdec)
    return page(
        "municipality.html",
        unit=unit,
        row=row,
        state=fleet_state(row),
        labels=LABELS,
        terminals=list_terminals(ctx.storage, lasdec),
        batches=batches,
        uploads=_uploads(lasdec),
        tokens=list_tokens(ctx.storage, lasdec)[-10:][::-1],
        contact=_contact(lasdec),
        done=_DONE.get(request.args.get("done", "")),
        default_ttl=max(ctx.config.token_ttl // 3600, 1),
        chart=volume_svg(volume, title=f"{unit.full_name}の通知件数（直近 {DAYS} 日）"),
        now=now,
    )


def _terminal_of(lasdec: str, terminal_id: str):  # type: ignore[no-untyped-def]
    terminal = find_terminal(services().storage, terminal_id)
    if terminal is None or terminal.lasdec != lasdec:
        abort(404)
    return terminal


@bp.get("/<lasdec>/terminals/<terminal_id>/revoke")
def revoke_confirm(lasdec: str, terminal_id: str):
    unit = _unit(lasdec)
    terminal = _terminal_of(lasdec, terminal_id)
    return page("revoke.html", unit=unit, terminal=terminal)


@bp.post("/<lasdec>/terminals/<terminal_id>/revoke")
def revoke(lasdec: str, terminal_id: str):
    ctx = services()
    _unit(lasdec)
    terminal = _terminal_of(lasdec, terminal_id)
    revoked = revoke_terminal(ctx.storage, terminal.terminal_id, now=ctx.now())
    session = current_session()
    event(
        "terminal.revoked" if revoked else "terminal.revoke_repeated",
        operator_id=session.operator.operator_id if session else None,
        terminal_id=terminal.terminal_id,
        lasdec=lasdec,
    )
    done = "revoked" if revoked else "already"
    return redirect(url_for(".detail", lasdec=lasdec, done=done), code=303)


@bp.post("/<lasdec>/tokens")
def token(lasdec: str):
    ctx = services()
    unit = _unit(lasdec)
    try:
        hours = int(request.form.get("ttl_hours") or ctx.config.token_ttl // 3600)
    except ValueError:
        abort(400)
    if not 1 <= hours <= 720:
        abort(400)
    now = ctx.now()
    try:
        issued = issue_token(ctx.storage, lasdec, now=now, ttl=hours * 3600)
    except ServerError:
        abort(404)
    session = current_session()
    event(
        "token.issued",
        operator_id=session.operator.operator_id if session else None,
        lasdec=lasdec,
    )
    return page("token.html", unit=unit, token=issued, hours=hours, issued_at=now)
