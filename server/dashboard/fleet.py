"""``/dashboard/``: every receiving unit at a glance — counts, a grid by prefecture, a table.

Built from :func:`server.status.server_status` (what ``renkei-server status``
prints), so the page and the command never disagree, plus the prefectures'
names from the municipality master.  Filters are plain GET parameters
(``state``, ``pref``, ``q``) applied on the server: the page works without
JavaScript and a filtered view is a link an operator can send a colleague.
The counts at the top always describe the whole fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import Blueprint, request

from server.app import services
from server.status import MunicipalityStatus, server_status
from server.storage import municipalities

from .chart import volume_svg
from .guard import PREFIX, install, page
from .states import LABELS, STATES, fleet_state
from .volume import DAYS, daily_volume

bp = install(
    Blueprint("dashboard_fleet", __name__, url_prefix=PREFIX, template_folder="templates"),
    login_required=True,
)


@dataclass(frozen=True)
class FleetRow:
    status: MunicipalityStatus
    prefecture: str
    state: str

    @property
    def lasdec(self) -> str:
        return self.status.lasdec

    @property
    def label(self) -> str:
        return LABELS[self.state]


def _prefectures() -> dict[str, str]:
    """First two digits of a code -> the prefecture's name."""
    query = sa.select(municipalities.c.lasdec, municipalities.c.name).where(
        municipalities.c.kind == "都道府県"
    )
    with services().storage.read() as conn:
        return {code[:2]: name for code, name in conn.execute(query)}


def _matches(row: FleetRow, state: str, pref: str, text: str) -> bool:
    if state and row.state != state:
        return False
    if pref and row.lasdec[:2] != pref:
        return False
    return not text or text in row.lasdec or text in row.status.name


def fleet_rows(now: datetime) -> tuple[object, list[FleetRow], dict[str, str]]:
    status = server_status(services().storage, now=now)
    names = _prefectures()
    rows = [
        FleetRow(m, names.get(m.lasdec[:2], m.lasdec[:2]), fleet_state(m))
        for m in status.municipalities
    ]
    return status, rows, names


@bp.get("/")
def fleet():
    ctx = services()
    now = ctx.now()
    status, rows, prefectures = fleet_rows(now)
    state = request.args.get("state", "")
    state = state if state in STATES else ""
    pref = request.args.get("pref", "")
    pref = pref if pref in prefectures else ""
    text = request.args.get("q", "").strip()[:40]
    counts = dict.fromkeys(STATES, 0)
    for row in rows:
        counts[row.state] += 1
    shown = [row for row in rows if _matches(row, state, pref, text)]
    grid: dict[str, list[FleetRow]] = {}
    for row in shown:
        grid.setdefault(row.prefecture, []).append(row)
    volume = daily_volume(ctx.storage, today=status.today)
    return page(
        "fleet.html",
        status=status,
        now=now,
        counts=counts,
        total=len(rows),
        states=STATES,
        labels=LABELS,
        prefectures=sorted(prefectures.items()),
        grid=grid,
        rows=shown,
        filters={"state": state, "pref": pref, "q": text},
        chart=volume_svg(volume, title=f"全国の通知件数（直近 {DAYS} 日）"),
    )
