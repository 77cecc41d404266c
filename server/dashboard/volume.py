"""Notices per day in both directions, for the volume chart: the last 90 days, gaps as zero.

* ministry → municipality: the records of the batches cut for each business day;
* municipality → ministry: the records accepted from uploads, by the Japanese
  calendar day they were received on.

Counted in the database (two ``GROUP BY`` queries over indexed columns), so
the page does not read ~millions of rows for a picture of 90 bars.  Grouping
an instant by its day in Japan is the one thing SQLite and PostgreSQL spell
differently; Japan has no daylight saving time, so "+9 hours" is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from server.storage import TOKYO, Storage, batches, received_notices

__all__ = ["DAYS", "DayVolume", "daily_volume"]

DAYS = 90


@dataclass(frozen=True)
class DayVolume:
    day: date
    ministry: int  # notices delivered in that day's batches
    municipality: int  # notices received from municipalities that day


def _japan_day(conn: Connection, column: sa.ColumnElement) -> sa.ColumnElement:
    if conn.dialect.name == "sqlite":
        return sa.func.date(column, "+9 hours")
    return sa.cast(sa.func.timezone("Asia/Tokyo", column), sa.Date)


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def daily_volume(
    storage: Storage, *, today: date, lasdec: str | None = None, days: int = DAYS
) -> list[DayVolume]:
    """One entry per day from ``today - days + 1`` to ``today`` (all municipalities, or one)."""
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(0), tzinfo=TOKYO)
    ministry: dict[date, int] = {}
    municipality: dict[date, int] = {}
    with storage.read() as conn:
        query = (
            sa.select(batches.c.business_date, sa.func.sum(batches.c.records))
            .where(batches.c.business_date >= first)
            .group_by(batches.c.business_date)
        )
        if lasdec is not None:
            query = query.where(batches.c.lasdec == lasdec)
        for day, count in conn.execute(query):
            ministry[_as_date(day)] = int(count or 0)
        day_column = _japan_day(conn, received_notices.c.received_at).label("day")
        query = (
            sa.select(day_column, sa.func.count())
            .where(received_notices.c.received_at >= since)
            .group_by(day_column)
        )
        if lasdec is not None:
            query = query.where(received_notices.c.lasdec == lasdec)
        for day, count in conn.execute(query):
            municipality[_as_date(day)] = int(count)
    return [
        DayVolume(day, ministry.get(day, 0), municipality.get(day, 0))
        for day in (first + timedelta(days=n) for n in range(days))
    ]
