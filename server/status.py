"""What the operator needs to see each morning: per municipality, is the link alive?

For every receiving unit: its terminals (enrolled, last contact, agent
version, clock skew), its batches (pending, acknowledged, the oldest still
pending), today's uploads and rejected records.  A handful of aggregate
queries (one per table) rather than one query per municipality keeps this
fast for ~1,900 rows.  "Today" is the business day of ``now`` in Japan.

A row *needs attention* when something happened or is wrong: an upload or a
rejection today; or, for an enrolled municipality, a batch older than the
latest closed day still not acknowledged (a missed delivery), no request for
more than a day and a half, or a clock off by more than a minute; or its only
terminal was revoked.  Municipalities without a terminal are counted in the
summary, not listed: before roll-out ends that is most of them.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import sqlalchemy as sa

from .municipalities import receiving_units
from .storage import TOKYO, Storage, batches, imports, iso_utc, terminals, uploads

__all__ = ["SILENCE", "SKEW_LIMIT", "MunicipalityStatus", "ServerStatus", "server_status"]

#: An enrolled terminal that has not called for this long is reported (the agent runs daily).
SILENCE = timedelta(hours=36)
#: Clock skew (seconds) beyond which a terminal is reported; signed requests fail at 300.
SKEW_LIMIT = 60.0


@dataclass
class MunicipalityStatus:
    lasdec: str
    name: str
    terminals: int = 0  # enrolled and not revoked
    revoked: int = 0
    last_contact: datetime | None = None
    agent_versions: tuple[str, ...] = ()
    clock_skew: float | None = None  # the largest (by magnitude) skew an active terminal reported
    pending: int = 0
    acknowledged: int = 0
    last_sequence: int | None = None
    oldest_pending: date | None = None
    uploads_today: int = 0
    rejected_today: int = 0  # rejected records in today's uploads
    file_errors_today: int = 0

    def overdue(self, latest_closed: date | None) -> bool:
        """A batch of a day before the latest closed one is still not acknowledged."""
        return (
            self.oldest_pending is not None
            and latest_closed is not None
            and self.oldest_pending < latest_closed
        )

    def silent(self, now: datetime) -> bool:
        """Enrolled, but no terminal has made a request for longer than :data:`SILENCE`."""
        return self.terminals > 0 and (
            self.last_contact is None or now - self.last_contact > SILENCE
        )

    def skewed(self) -> bool:
        return self.clock_skew is not None and abs(self.clock_skew) > SKEW_LIMIT

    def needs_attention(self, latest_closed: date | None, now: datetime) -> bool:
        """Something to report today; a municipality not yet enrolled is only counted."""
        live_problem = self.terminals > 0 and (
            self.overdue(latest_closed) or self.silent(now) or self.skewed()
        )
        return bool(
            live_problem
            or (self.revoked and not self.terminals)
            or self.uploads_today
            or self.rejected_today
            or self.file_errors_today
        )

    def to_json(self, latest_closed: date | None = None, now: datetime | None = None) -> dict:
        return {
            "lasdec": self.lasdec,
            "name": self.name,
            "terminals": self.terminals,
            "revoked_terminals": self.revoked,
            "last_contact": iso_utc(self.last_contact) if self.last_contact else None,
            "agent_versions": list(self.agent_versions),
            "clock_skew": self.clock_skew,
            "batches_pending": self.pending,
            "batches_acknowledged": self.acknowledged,
            "last_sequence": self.last_sequence,
            "oldest_pending": self.oldest_pending.isoformat() if self.oldest_pending else None,
            "overdue": self.overdue(latest_closed),
            "silent": self.silent(now) if now is not None else None,
            "uploads_today": self.uploads_today,
            "rejected_today": self.rejected_today,
            "file_errors_today": self.file_errors_today,
        }


@dataclass
class ServerStatus:
    now: datetime
    today: date
    latest_closed: date | None
    last_import: datetime | None
    municipalities: list[MunicipalityStatus]

    def attention(self) -> list[MunicipalityStatus]:
        return [m for m in self.municipalities if m.needs_attention(self.latest_closed, self.now)]

    def to_json(self, *, all_rows: bool = True) -> dict:
        rows = self.municipalities if all_rows else self.attention()
        return {
            "today": self.today.isoformat(),
            "latest_closed": self.latest_closed.isoformat() if self.latest_closed else None,
            "last_import": iso_utc(self.last_import) if self.last_import else None,
            "receiving_units": len(self.municipalities),
            "with_terminals": sum(1 for m in self.municipalities if m.terminals),
            "overdue": sum(
                1 for m in self.municipalities if m.terminals and m.overdue(self.latest_closed)
            ),
            "attention": len(self.attention()),
            "municipalities": [m.to_json(self.latest_closed, self.now) for m in rows],
        }

    def text_lines(self, *, all_rows: bool = False) -> list[str]:
        """The compact table ``renkei-server status`` prints (a ``!`` marks what needs action)."""
        summary = self.to_json(all_rows=False)
        lines = [
            f"本日 {self.today.isoformat()}・最終締め {summary['latest_closed'] or '-'}・"
            f"受信単位 {summary['receiving_units']}・端末あり {summary['with_terminals']}・"
            f"未受領 {summary['overdue']}・要確認 {summary['attention']}"
        ]
        rows = self.municipalities if all_rows else self.attention()
        if not rows:
            return [*lines, "注意が必要な団体はありません（--all で全団体）"]
        table = [
            ("code", "団体", "端末", "最終接続", "未受領", "受領済", "送信", "不備", "時刻差", "版")
        ]
        for row in rows:
            skew = f"{row.clock_skew:+.1f}s" if row.clock_skew is not None else "-"
            table.append(
                (
                    row.lasdec,
                    row.name,
                    str(row.terminals) + ("!" if row.revoked and not row.terminals else ""),
                    _ago(row.last_contact, self.now) + ("!" if row.silent(self.now) else ""),
                    str(row.pending) + ("!" if row.overdue(self.latest_closed) else ""),
                    str(row.acknowledged),
                    str(row.uploads_today),
                    str(row.rejected_today + row.file_errors_today),
                    skew + ("!" if row.skewed() else ""),
                    ",".join(row.agent_versions) or "-",
                )
            )
        return lines + _aligned(table)


def _ago(instant: datetime | None, now: datetime) -> str:
    if instant is None:
        return "-"
    minutes = int((now - instant).total_seconds() // 60)
    if minutes < 60:
        return f"{minutes}分前"
    if minutes < 48 * 60:
        return f"{minutes // 60}時間前"
    return f"{minutes // 1440}日前"


def _width(text: str) -> int:
    """Display width in a terminal: East Asian wide and full-width characters take two cells."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(_width(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True)
        ).rstrip()
        for row in table
    ]


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=TOKYO)
    return start, start + timedelta(days=1)


def server_status(storage: Storage, *, now: datetime) -> ServerStatus:
    """The status of every receiving unit at ``now``."""
    today = now.astimezone(TOKYO).date()
    start, end = _day_bounds(today)
    with storage.read() as conn:
        rows = {m.lasdec: MunicipalityStatus(m.lasdec, m.full_name) for m in receiving_units(conn)}
        for t in conn.execute(sa.select(terminals)):
            row = rows.get(t.lasdec)
            if row is None:
                continue
            if t.revoked_at is not None:
                row.revoked += 1
                continue
            row.terminals += 1
            if t.last_seen_at and (row.last_contact is None or t.last_seen_at > row.last_contact):
                row.last_contact = t.last_seen_at
            if t.agent_version and t.agent_version not in row.agent_versions:
                row.agent_versions = tuple(sorted((*row.agent_versions, t.agent_version)))
            if t.clock_skew is not None and (
                row.clock_skew is None or abs(t.clock_skew) > abs(row.clock_skew)
            ):
                row.clock_skew = t.clock_skew
        pending = sa.case((batches.c.acknowledged_at.is_(None), 1), else_=0)
        query = sa.select(
            batches.c.lasdec,
            sa.func.sum(pending),
            sa.func.count(),
            sa.func.max(batches.c.sequence),
            sa.func.min(sa.case((batches.c.acknowledged_at.is_(None), batches.c.business_date))),
        ).group_by(batches.c.lasdec)
        for lasdec, pending_count, total, last_sequence, oldest in conn.execute(query):
            row = rows.get(lasdec)
            if row is None:
                continue
            row.pending = int(pending_count or 0)
            row.acknowledged = int(total) - row.pending
            row.last_sequence = last_sequence
            row.oldest_pending = oldest
        query = (
            sa.select(
                uploads.c.lasdec,
                sa.func.count(),
                sa.func.sum(uploads.c.rejected),
                sa.func.sum(sa.case((uploads.c.file_error.is_not(None), 1), else_=0)),
            )
            .where(uploads.c.received_at >= start, uploads.c.received_at < end)
            .group_by(uploads.c.lasdec)
        )
        for lasdec, count, rejected, file_errors in conn.execute(query):
            row = rows.get(lasdec)
            if row is None:
                continue
            row.uploads_today = int(count)
            row.rejected_today = int(rejected or 0)
            row.file_errors_today = int(file_errors or 0)
        latest_closed = conn.execute(sa.select(sa.func.max(batches.c.business_date))).scalar()
        last_import = conn.execute(sa.select(sa.func.max(imports.c.imported_at))).scalar()
    return ServerStatus(now, today, latest_closed, last_import, list(rows.values()))
