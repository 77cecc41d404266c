"""The municipality master in the database, and which entries are *receiving units*.

A receiving unit is what has a terminal, receives a batch each day and uploads
notices: every municipality without designated-city wards (including Tokyo's
23 special wards), plus each ward of a designated city.  Prefectures and the
designated cities themselves are kept as rows (so codes in records still
resolve to a name) but flagged as not receiving.  The rows come from
``common.lasdec`` (the master shipped with the code); loading again updates
names and flags, and marks rows that left the master instead of deleting
them, because batches and uploads still refer to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from common import lasdec

from .storage import Storage, municipalities, serialize

__all__ = [
    "MasterLoad",
    "MunicipalityRow",
    "get_municipality",
    "is_receiving_unit",
    "load_master",
    "receiving_units",
]


@dataclass(frozen=True)
class MunicipalityRow:
    lasdec: str
    prefecture: str
    name: str
    kana: str
    kind: str
    parent: str | None
    receiving: bool
    in_master: bool

    @property
    def full_name(self) -> str:
        return self.name if self.kind == "都道府県" else self.prefecture + self.name


@dataclass(frozen=True)
class MasterLoad:
    added: int
    updated: int
    unchanged: int
    retired: int
    receiving: int

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def is_receiving_unit(entry: lasdec.Municipality, parents: set[str]) -> bool:
    """True for a municipality without wards or a ward; False for prefectures and ward-holding cities."""
    return entry.kind != "都道府県" and entry.code not in parents


def shipped_master() -> tuple[lasdec.Municipality, ...]:
    """The master shipped in ``common.lasdec``: the 47 prefectures, then every municipality and ward."""
    prefectures = []
    for number in range(1, 48):
        first5 = f"{number:02d}000"
        entry = lasdec.lookup(first5 + lasdec.check_digit(first5))
        if entry is not None:
            prefectures.append(entry)
    return (*prefectures, *lasdec.municipalities())


def _master_rows(entries: Sequence[lasdec.Municipality]) -> list[dict]:
    parents = {m.parent for m in entries if m.parent}
    return [
        {
            "lasdec": m.code,
            "prefecture": m.prefecture,
            "name": m.name,
            "kana": m.kana,
            "kind": m.kind,
            "parent": m.parent,
            "receiving": is_receiving_unit(m, parents),
            "in_master": True,
        }
        for m in entries
    ]


def load_master(
    storage: Storage, entries: Iterable[lasdec.Municipality] | None = None
) -> MasterLoad:
    """Insert or update every master entry (default: ``common.lasdec``'s master), in one transaction."""
    rows = _master_rows(tuple(entries) if entries is not None else shipped_master())
    wanted = {row["lasdec"]: row for row in rows}
    added = updated = unchanged = retired = 0
    with storage.begin() as conn:
        serialize(conn, "schema")  # two hosts running init at once take turns
        existing = {row.lasdec: row._asdict() for row in conn.execute(sa.select(municipalities))}
        new = [row for code, row in wanted.items() if code not in existing]
        if new:
            conn.execute(municipalities.insert(), new)
            added = len(new)
        for code, row in wanted.items():
            old = existing.get(code)
            if old is None:
                continue
            if old == row:
                unchanged += 1
                continue
            conn.execute(municipalities.update().where(municipalities.c.lasdec == code).values(row))
            updated += 1
        for code, old in existing.items():
            if code not in wanted and old["in_master"]:
                conn.execute(
                    municipalities.update()
                    .where(municipalities.c.lasdec == code)
                    .values(in_master=False, receiving=False)
                )
                retired += 1
    receiving = sum(1 for row in rows if row["receiving"])
    return MasterLoad(added, updated, unchanged, retired, receiving)


def _row(row: sa.Row) -> MunicipalityRow:
    return MunicipalityRow(**row._asdict())


def get_municipality(storage_or_conn: Storage | Connection, code: str) -> MunicipalityRow | None:
    query = sa.select(municipalities).where(municipalities.c.lasdec == code)
    if isinstance(storage_or_conn, Storage):
        with storage_or_conn.read() as conn:
            row = conn.execute(query).first()
    else:
        row = storage_or_conn.execute(query).first()
    return _row(row) if row is not None else None


def receiving_units(conn: Connection) -> list[MunicipalityRow]:
    """Every receiving unit, in code order."""
    query = (
        sa.select(municipalities)
        .where(municipalities.c.receiving.is_(True))
        .order_by(municipalities.c.lasdec)
    )
    return [_row(row) for row in conn.execute(query)]


def all_municipalities(conn: Connection) -> list[MunicipalityRow]:
    return [
        _row(row)
        for row in conn.execute(sa.select(municipalities).order_by(municipalities.c.lasdec))
    ]
