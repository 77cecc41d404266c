"""Terminals: enrollment tokens, enrollment, revocation, and the traces of their requests.

A field technician enrolls an appliance with a one-time token the operator
issued for one municipality; the appliance sends the token and its own
Ed25519 public key (made on the appliance, never leaving it) and becomes a
terminal of that municipality.  Tokens are stored only as SHA-256 hashes, so
a copy of the database cannot enroll anything; a token is used up by a single
conditional UPDATE whose row count says whether this request won.

The HTTP layer reads the calling terminal and its recent failures in one go
(:func:`find_caller`), records each verified request's nonce (replay
protection by a primary key) with its contact in one transaction
(:func:`record_request`), and each failed signature under a known
terminal's key id (:func:`note_auth_failure`, for rate limiting; an unknown
id costs no write).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from common import statement

from .errors import EnrollmentError, NotFoundError
from .municipalities import get_municipality
from .storage import Storage, auth_failures, enrollment_tokens, iso_utc, nonces, terminals

__all__ = [
    "Terminal",
    "enroll",
    "find_caller",
    "find_terminal",
    "find_terminal_by_key_id",
    "issue_token",
    "list_terminals",
    "list_tokens",
    "note_auth_failure",
    "note_contact",
    "recent_auth_failures",
    "record_request",
    "remember_nonce",
    "revoke_terminal",
]

#: Token alphabet: Crockford's base32 (no I, L, O, U), easy to read aloud and type.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TOKEN_CHARS = 20  # 100 bits
#: Failed-auth rows older than this are deleted (the rate-limit period must be shorter).
AUTH_FAILURE_KEEP = timedelta(days=1)
#: Longer nonces are stored as their SHA-256 (the column is 128 characters).
MAX_NONCE = 128


# The statements every signed request runs, built once: building a SQLAlchemy statement
# (and its cache key) costs more than SQLite takes to run it.
_RECENT_FAILURES = (
    sa.select(sa.func.count())
    .select_from(auth_failures)
    .where(
        auth_failures.c.key_id == sa.bindparam("key_id"),
        auth_failures.c.source == sa.bindparam("source"),
        auth_failures.c.failed_at >= sa.bindparam("since"),
    )
)
_CALLER = sa.select(_RECENT_FAILURES.scalar_subquery().label("recent_failures"), terminals).where(
    terminals.c.terminal_id == sa.bindparam("terminal_id")
)
_KNOWN_TERMINAL = sa.select(terminals.c.terminal_id).where(
    terminals.c.terminal_id == sa.bindparam("terminal_id")
)
_FORGET_NONCES = nonces.delete().where(
    nonces.c.terminal_id == sa.bindparam("terminal_id"), nonces.c.seen_at < sa.bindparam("before")
)
_REMEMBER_NONCE = nonces.insert()


@dataclass(frozen=True)
class Terminal:
    terminal_id: str
    lasdec: str
    public_key: str  # base64 of the raw Ed25519 key (common.statement.public_key_to_text)
    key_id: str  # common.statement.key_id(public key)
    enrolled_at: datetime
    revoked_at: datetime | None
    last_seen_at: datetime | None
    agent_version: str | None
    clock_skew: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict:
        return {
            "terminal_id": self.terminal_id,
            "lasdec": self.lasdec,
            "public_key": self.public_key,
            "key_id": self.key_id,
            "enrolled_at": iso_utc(self.enrolled_at),
            "revoked_at": iso_utc(self.revoked_at) if self.revoked_at else None,
            "last_seen_at": iso_utc(self.last_seen_at) if self.last_seen_at else None,
            "agent_version": self.agent_version,
            "clock_skew": self.clock_skew,
        }


def _terminal(row: sa.Row) -> Terminal:
    return Terminal(**row._asdict())


def normalize_token(token: str) -> str:
    """Upper case without separators, with the look-alikes Crockford's base32 folds (O→0, I/L→1)."""
    text = "".join(ch for ch in token.upper() if ch not in "- \t")
    return text.translate(str.maketrans("OIL", "011"))


def _token_hash(token: str) -> str:
    return hashlib.sha256(normalize_token(token).encode("ascii", "replace")).hexdigest()


def issue_token(storage: Storage, lasdec: str, *, now: datetime, ttl: int) -> str:
    """A new one-time enrollment token for ``lasdec``, valid ``ttl`` seconds; returned once, stored hashed.

    Raises NotFoundError when the code is not a receiving unit of the master.
    """
    municipality = get_municipality(storage, lasdec)
    if municipality is None:
        raise NotFoundError(
            f"{lasdec} is not in the municipality master; check the code (renkei-format lasdec)",
            code="municipality.unknown",
        )
    if not municipality.receiving:
        raise NotFoundError(
            f"{lasdec} ({municipality.full_name}, {municipality.kind}) does not receive batches: "
            "terminals belong to municipalities without wards and to each ward",
            code="municipality.not_receiving",
        )
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_TOKEN_CHARS))
    token = "-".join(raw[i : i + 5] for i in range(0, _TOKEN_CHARS, 5))
    with storage.begin() as conn:
        conn.execute(
            enrollment_tokens.insert().values(
                token_id="tok_" + secrets.token_hex(6),
                token_hash=_token_hash(token),
                lasdec=lasdec,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
        )
    return token


def enroll(
    storage: Storage,
    token: str,
    public_key: str,
    *,
    now: datetime,
    agent_version: str | None = None,
) -> Terminal:
    """Register a terminal for the token's municipality, using the token up.

    Raises EnrollmentError ``key.invalid``, ``token.invalid``, ``token.used``,
    ``token.expired`` or ``key.duplicate``; on any error nothing is changed
    (a refused enrollment does not use the token up).
    """
    try:
        key = statement.public_key_from_text(public_key)
    except statement.StatementError as error:
        raise EnrollmentError(
            f"the public key is refused ({error.message}): it must be the base64 of a raw "
            "32-byte Ed25519 public key made on the appliance",
            code="key.invalid",
        ) from None
    # public_key_from_text takes one text per key and one encoding per point (a point of small
    # or mixed order, the only kind with a second encoding, is no key), so the unique columns
    # below compare keys, not spellings.
    key_text = statement.public_key_to_text(key)
    key_id = statement.key_id(key)
    token_hash = _token_hash(token)
    terminal_id = "t_" + secrets.token_hex(8)
    try:
        with storage.begin() as conn:
            won = conn.execute(
                enrollment_tokens.update()
                .where(
                    enrollment_tokens.c.token_hash == token_hash,
                    enrollment_tokens.c.used_at.is_(None),
                    enrollment_tokens.c.expires_at > now,
                )
                .values(used_at=now, terminal_id=terminal_id)
            ).rowcount
            row = conn.execute(
                sa.select(enrollment_tokens).where(enrollment_tokens.c.token_hash == token_hash)
            ).first()
            if won != 1:
                if row is None:
                    raise EnrollmentError("the enrollment token is not valid", code="token.invalid")
                if row.used_at is not None:
                    raise EnrollmentError(
                        "the enrollment token has already been used; ask the operator for a new one",
                        code="token.used",
                    )
                raise EnrollmentError(
                    "the enrollment token has expired; ask the operator for a new one",
                    code="token.expired",
                )
            conn.execute(
                terminals.insert().values(
                    terminal_id=terminal_id,
                    lasdec=row.lasdec,
                    public_key=key_text,
                    key_id=key_id,
                    enrolled_at=now,
                    last_seen_at=now,
                    agent_version=agent_version,
                )
            )
    except IntegrityError:
        raise EnrollmentError(
            "this public key is already enrolled; make a new key on the appliance",
            code="key.duplicate",
        ) from None
    found = find_terminal(storage, terminal_id)
    assert found is not None
    return found


def find_terminal(storage: Storage, terminal_id: str) -> Terminal | None:
    with storage.read() as conn:
        row = conn.execute(
            sa.select(terminals).where(terminals.c.terminal_id == terminal_id)
        ).first()
    return _terminal(row) if row is not None else None


def find_caller(
    storage: Storage, terminal_id: str, *, source: str, now: datetime, period: int
) -> tuple[Terminal | None, int]:
    """The terminal a signed request names, and its recent failures from ``source``, in one read.

    Both are needed for every signed request before any cryptography (the
    lockout is checked first); one statement in one read transaction instead
    of two transactions halves the database work of the check.  The count is
    :func:`recent_auth_failures`'s.  An id that names no terminal has no
    failures: :func:`note_auth_failure` counts none for it.
    """
    params = _failure_params(terminal_id, source=source, now=now, period=period)
    with storage.read() as conn:
        row = conn.execute(_CALLER, {"terminal_id": terminal_id, **params}).first()
    if row is None:
        return None, 0
    fields = row._asdict()
    count = fields.pop("recent_failures")
    return Terminal(**fields), count


def find_terminal_by_key_id(storage: Storage, key_id: str) -> Terminal | None:
    """The terminal whose public key has this key id (revoked ones too: the caller decides)."""
    with storage.read() as conn:
        row = conn.execute(sa.select(terminals).where(terminals.c.key_id == key_id)).first()
    return _terminal(row) if row is not None else None


def list_terminals(storage: Storage, lasdec: str | None = None) -> list[Terminal]:
    query = sa.select(terminals).order_by(terminals.c.lasdec, terminals.c.enrolled_at)
    if lasdec is not None:
        query = query.where(terminals.c.lasdec == lasdec)
    with storage.read() as conn:
        return [_terminal(row) for row in conn.execute(query)]


def revoke_terminal(storage: Storage, terminal_id: str, *, now: datetime) -> bool:
    """Revoke a terminal; False when there is no such terminal or it was revoked already."""
    with storage.begin() as conn:
        return (
            conn.execute(
                terminals.update()
                .where(terminals.c.terminal_id == terminal_id, terminals.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            == 1
        )


def note_contact(
    storage: Storage,
    terminal_id: str,
    *,
    now: datetime,
    agent_version: str | None,
    clock_skew: float | None,
) -> None:
    """Record a verified request: last contact, and the agent version and clock skew it reported."""
    with storage.begin() as conn:
        _note_contact(conn, terminal_id, now, agent_version, clock_skew)


def _note_contact(
    conn: sa.Connection,
    terminal_id: str,
    now: datetime,
    agent_version: str | None,
    clock_skew: float | None,
) -> None:
    values: dict = {"last_seen_at": now}
    if agent_version is not None:
        values["agent_version"] = agent_version[:64]
    if clock_skew is not None:
        values["clock_skew"] = float(clock_skew)
    conn.execute(terminals.update().where(terminals.c.terminal_id == terminal_id).values(values))


def remember_nonce(
    storage: Storage, terminal_id: str, nonce: str, *, now: datetime, keep: int
) -> bool:
    """Record a request nonce; False if this terminal used it before (a replay).

    Nonces older than ``keep`` seconds are forgotten: ``keep`` must be at
    least twice the clock window, so a forgotten nonce is also a stale request.
    The request path uses :func:`record_request`, which forgets them less often;
    both commit without waiting for the disk (see there why that is safe).
    """
    return _record(storage, terminal_id, nonce, now=now, keep=keep, forget=True, contact=None)


def record_request(
    storage: Storage,
    terminal_id: str,
    nonce: str,
    *,
    now: datetime,
    keep: int,
    contact: bool = False,
    agent_version: str | None = None,
    clock_skew: float | None = None,
) -> bool:
    """Record a verified request: its nonce and, when ``contact``, its contact; False for a replay.

    A replay writes nothing (the contact goes with the nonce).  The terminal's
    nonces older than ``keep`` seconds are forgotten with the contact, not on
    every request: that delete reads every nonce the terminal still has (the
    key is (terminal, nonce)), which made it the largest part of the
    transaction, and the contact is written at least once a minute while the
    terminal is active (``server.auth.contact_changed``).  Keeping an expired
    nonce a little longer refuses nothing a fresh request could carry (a
    replay of it is stale anyway).

    One short transaction that does not wait for the disk
    (``Storage.begin(durable=False)``): every signed request makes one, and
    with a forced write per commit the requests of all workers queued behind
    each other's fsync.  Why losing the last few at a power cut is safe:

    * uniqueness does not depend on it: the nonce is a primary key checked by
      the database at insert, on every app server sharing it; only whether a
      committed row survives a crash of the database host is relaxed;
    * the loss is only the tail: the database writes its log in order, so the
      next durable commit (an upload, an acknowledgement, an enrollment) makes
      every earlier nonce durable with it;
    * a lost nonce lets that one request be accepted once more only while its
      signed ``created`` is inside the clock window (± 300 s by default), only by someone
      holding the request in clear (it travelled inside TLS), and only as the
      terminal that signed it — and every signed request is harmless to repeat:
      listing and downloads read, acknowledging the same hash again keeps the
      first acknowledgement, the same upload gives the same receipt;
    * a lost contact (last seen, agent version, clock skew) is written again by
      the terminal's next request.
    """
    return _record(
        storage,
        terminal_id,
        nonce,
        now=now,
        keep=keep,
        forget=contact,
        contact=(agent_version, clock_skew) if contact else None,
    )


def _record(
    storage: Storage,
    terminal_id: str,
    nonce: str,
    *,
    now: datetime,
    keep: int,
    forget: bool,
    contact: tuple[str | None, float | None] | None,
) -> bool:
    if len(nonce) > MAX_NONCE:  # keep the key short on every database; equal nonces stay equal
        nonce = "sha256:" + hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        with storage.begin(durable=False) as conn:
            if forget:
                before = now - timedelta(seconds=keep)
                conn.execute(_FORGET_NONCES, {"terminal_id": terminal_id, "before": before})
            conn.execute(
                _REMEMBER_NONCE, {"terminal_id": terminal_id, "nonce": nonce, "seen_at": now}
            )
            if contact is not None:
                _note_contact(conn, terminal_id, now, *contact)
    except IntegrityError:
        return False
    return True


def note_auth_failure(storage: Storage, key_id: str, *, source: str, now: datetime) -> bool:
    """Count a failed signed request for ``key_id`` from ``source``; whether it was counted.

    Only a key id that names a terminal (revoked ones too) is counted: anyone
    can make up key ids, and a row per made-up id would let an outsider grow
    the database and queue every worker behind the write lock, one request at
    a time, while a lockout could never slow a flood of ids that are each new.
    For such an id nothing is written (a read, no write transaction).  Rows
    older than a day are dropped when one is written.

    The write does not wait for the disk (``durable=False``): whoever sends a
    bad signature has proved nothing, so what it costs must not be an fsync;
    a count lost to a power cut only lets a guesser start over, which the
    lockout's window does anyway.
    """
    with storage.read() as conn:
        known = conn.execute(_KNOWN_TERMINAL, {"terminal_id": key_id}).first() is not None
    if not known:
        return False
    with storage.begin(durable=False) as conn:
        conn.execute(
            auth_failures.delete().where(auth_failures.c.failed_at < now - AUTH_FAILURE_KEEP)
        )
        conn.execute(
            auth_failures.insert().values(key_id=key_id[:128], source=source[:64], failed_at=now)
        )
    return True


def recent_auth_failures(
    storage: Storage, key_id: str, *, source: str, now: datetime, period: int
) -> int:
    """How many failed requests under ``key_id`` came from ``source`` in the last ``period`` seconds.

    Counted per address, not per key id alone: anyone can send garbage under a
    terminal's (public) key id, and that must not lock the terminal itself out.
    """
    params = _failure_params(key_id, source=source, now=now, period=period)
    with storage.read() as conn:
        return conn.execute(_RECENT_FAILURES, params).scalar_one()


def _failure_params(key_id: str, *, source: str, now: datetime, period: int) -> dict:
    return {
        "key_id": key_id[:128],
        "source": source[:64],
        "since": now - timedelta(seconds=period),
    }


def list_tokens(storage: Storage, lasdec: str | None = None) -> list[dict]:
    """Issued tokens (never the tokens themselves): id, municipality, times, and who used them."""
    query = sa.select(
        enrollment_tokens.c.token_id,
        enrollment_tokens.c.lasdec,
        enrollment_tokens.c.created_at,
        enrollment_tokens.c.expires_at,
        enrollment_tokens.c.used_at,
        enrollment_tokens.c.terminal_id,
    ).order_by(enrollment_tokens.c.created_at)
    if lasdec is not None:
        query = query.where(enrollment_tokens.c.lasdec == lasdec)
    with storage.read() as conn:
        return [row._asdict() for row in conn.execute(query)]
