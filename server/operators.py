"""Ministry operators: accounts, password checks with a lockout, and dashboard sessions.

The dashboard (``server.dashboard``) is the only thing an operator account
opens; terminal keys open nothing here and operator sessions open nothing in
the terminal API.  Three decisions, and why:

* **Passwords** are hashed with scrypt (``hashlib.scrypt``, OpenSSL's
  implementation in the standard library: a maintained, memory-hard KDF with
  no extra dependency).  The parameters are OWASP's minimum for scrypt —
  N = 2**17, r = 8, p = 1 (128 MiB, about a second here) — and travel inside
  the stored string (``scrypt$17$8$1$<salt>$<hash>``), so stronger ones can be
  introduced later without invalidating existing accounts.  Because every
  check takes 128 MiB, a process runs one at a time (:data:`_KDF_SLOTS`):
  a flood of logins queues instead of exhausting memory.
* **Lockout**: every failed login is recorded under the SHA-256 of the account
  name as typed (never the text: people type passwords into the name field);
  with ``lockout_failures`` failures within ``lockout_window`` seconds the
  name is locked — even the right password is refused — until the oldest of
  them ages out.  An unknown name is checked against a dummy hash, so the
  answer takes as long as for a real one and does not tell which names exist.
* **Sessions** live in the database, not in a signed cookie: the cookie holds
  256 random bits, the database their SHA-256, so logging out, disabling an
  account or its session expiring ends it at once on every gunicorn worker,
  and no server-wide secret has to be configured and rotated.  Each session
  has its own CSRF token (synchronizer-token pattern) that every form posts
  back.  Sessions end after ``session_idle`` seconds without a request and
  ``session_lifetime`` seconds after login whatever happens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .errors import ServerError
from .storage import Storage, login_failures, operator_sessions, operators

__all__ = [
    "DEFAULT_KDF",
    "MIN_PASSWORD",
    "Kdf",
    "LoginError",
    "Operator",
    "OperatorError",
    "Session",
    "add_operator",
    "authenticate",
    "end_session",
    "find_operator",
    "hash_password",
    "list_operators",
    "load_session",
    "set_disabled",
    "set_password",
    "start_session",
    "verify_password",
]

#: Shortest password accepted (NIST SP 800-63B asks for at least 8; operators get 12).
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
_NAME = re.compile(r"[a-z][a-z0-9._-]{1,63}")
#: "Last seen" of a session is written at most this often.
SEEN_RESOLUTION = timedelta(seconds=60)
#: Failed-login rows older than this are deleted (the window must be shorter).
FAILURE_KEEP = timedelta(days=1)


class OperatorError(ServerError):
    """An operator account could not be created or changed (``operator.*``)."""

    code = "operator.error"


class LoginError(ServerError):
    """A login was refused: ``login.invalid`` (name or password wrong, or account disabled)
    or ``login.locked`` (too many failures lately)."""

    code = "login.invalid"


@dataclass(frozen=True)
class Kdf:
    """scrypt's cost parameters: N = 2**log2_n, block size r, parallelism p."""

    log2_n: int = 17
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        # scrypt needs 128 * r * N bytes (plus a little); give it twice that.
        return 256 * self.r * (1 << self.log2_n) + 1024 * 1024


DEFAULT_KDF = Kdf()
#: One KDF computation at a time per process (see the module docstring).
_KDF_SLOTS = threading.BoundedSemaphore(1)


def _derive(password: str, salt: bytes, kdf: Kdf) -> bytes:
    with _KDF_SLOTS:
        return hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=1 << kdf.log2_n,
            r=kdf.r,
            p=kdf.p,
            maxmem=kdf.maxmem,
            dklen=32,
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, kdf: Kdf = DEFAULT_KDF) -> str:
    """The stored form of a password: ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (base64url)."""
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, kdf)
    return f"scrypt${kdf.log2_n}${kdf.r}${kdf.p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time comparison).

    A malformed stored value is False, never an exception: it locks that
    account out rather than the whole dashboard.
    """
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        kdf = Kdf(int(log2_n), int(r), int(p))
        if scheme != "scrypt" or not (10 <= kdf.log2_n <= 22 and 1 <= kdf.r <= 32):
            return False
        if not 1 <= kdf.p <= 16:
            return False
        expected = _unb64(digest)
        actual = _derive(password, _unb64(salt), kdf)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


#: Checked when the name is unknown, so the answer takes the same time.
_DUMMY = "scrypt$17$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@dataclass(frozen=True)
class Operator:
    operator_id: str
    name: str
    created_at: datetime
    password_changed_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def to_json(self) -> dict:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "operator_id": self.operator_id,
            "name": self.name,
            "created_at": when(self.created_at),
            "password_changed_at": when(self.password_changed_at),
            "disabled_at": when(self.disabled_at),
            "last_login_at": when(self.last_login_at),
        }


_PUBLIC = [
    operators.c.operator_id,
    operators.c.name,
    operators.c.created_at,
    operators.c.password_changed_at,
    operators.c.disabled_at,
    operators.c.last_login_at,
]


def _operator(row: sa.Row) -> Operator:
    return Operator(**{k: v for k, v in row._asdict().items() if k != "password_hash"})


def normalize_name(name: str) -> str:
    """Account names compare in NFKC lower case, so "Tanaka" and "ｔａｎａｋａ" are one name."""
    return unicodedata.normalize("NFKC", name).strip().lower()


def _name_key(name: str) -> str:
    return hashlib.sha256(normalize_name(name).encode("utf-8", "replace")).hexdigest()


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise OperatorError(
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            code="operator.weak_password",
        )
    if len(set(password)) < 4:
        raise OperatorError(
            "the password repeats too few characters; choose a passphrase",
            code="operator.weak_password",
        )


def add_operator(
    storage: Storage, name: str, password: str, *, now: datetime, kdf: Kdf = DEFAULT_KDF
) -> Operator:
    """Create an account.  Raises OperatorError ``operator.name``, ``operator.exists`` or
    ``operator.weak_password``."""
    name = normalize_name(name)
    if not _NAME.fullmatch(name):
        raise OperatorError(
            f"{name!r} is not an account name: 2-64 characters, a-z first, then a-z 0-9 . _ -",
            code="operator.name",
        )
    _check_password(password)
    operator_id = "op_" + secrets.token_hex(6)
    try:
        with storage.begin() as conn:
            conn.execute(
                operators.insert().values(
                    operator_id=operator_id,
                    name=name,
                    password_hash=hash_password(password, kdf),
                    created_at=now,
                    password_changed_at=now,
                )
            )
    except IntegrityError:
        raise OperatorError(f"an operator named {name!r} exists", code="operator.exists") from None
    found = find_operator(storage, name)
    assert found is not None
    return found


def find_operator(storage: Storage, name_or_id: str) -> Operator | None:
    """The account with this name (any case) or operator id."""
    key = normalize_name(name_or_id)
    query = sa.select(*_PUBLIC).where(
        sa.or_(operators.c.name == key, operators.c.operator_id == name_or_id)
    )
    with storage.read() as conn:
        row = conn.execute(query).first()
    return _operator(row) if row is not None else None


def list_operators(storage: Storage) -> list[Operator]:
    with storage.read() as conn:
        return [_operator(r) for r in conn.execute(sa.select(*_PUBLIC).order_by(operators.c.name))]


def _require(storage: Storage, name_or_id: str) -> Operator:
    found = find_operator(storage, name_or_id)
    if found is None:
        raise OperatorError(
            f"no operator {name_or_id!r}; see `renkei-server operator list`",
            code="operator.unknown",
        )
    return found


def set_disabled(storage: Storage, name_or_id: str, disabled: bool, *, now: datetime) -> bool:
    """Disable (ending every session of it) or enable an account; False when already so.

    Enabling also forgets the name's failed logins, which is how an operator
    unlocks an account that was locked out.
    """
    operator = _require(storage, name_or_id)
    with storage.begin() as conn:
        if disabled:
            conn.execute(
                operator_sessions.delete().where(
                    operator_sessions.c.operator_id == operator.operator_id
                )
            )
            changed = conn.execute(
                operators.update()
                .where(
                    operators.c.operator_id == operator.operator_id,
                    operators.c.disabled_at.is_(None),
                )
                .values(disabled_at=now)
            ).rowcount
        else:
            conn.execute(
                login_failures.delete().where(login_failures.c.name_key == _name_key(operator.name))
            )
            changed = conn.execute(
                operators.update()
                .where(
                    operators.c.operator_id == operator.operator_id,
                    operators.c.disabled_at.is_not(None),
                )
                .values(disabled_at=None)
            ).rowcount
    return changed == 1


def set_password(
    storage: Storage, name_or_id: str, password: str, *, now: datetime, kdf: Kdf = DEFAULT_KDF
) -> Operator:
    """Replace an account's password and end its sessions (a password change logs out)."""
    operator = _require(storage, name_or_id)
    _check_password(password)
    encoded = hash_password(password, kdf)
    with storage.begin() as conn:
        conn.execute(
            operators.update()
            .where(operators.c.operator_id == operator.operator_id)
            .values(password_hash=encoded, password_changed_at=now)
        )
        conn.execute(
            operator_sessions.delete().where(
                operator_sessions.c.operator_id == operator.operator_id
            )
        )
    return _require(storage, operator.operator_id)


def recent_failures(storage: Storage, name: str, *, now: datetime, window: int) -> int:
    with storage.read() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(login_failures)
            .where(
                login_failures.c.name_key == _name_key(name),
                login_failures.c.failed_at >= now - timedelta(seconds=window),
            )
        ).scalar_one()


def authenticate(
    storage: Storage,
    name: str,
    password: str,
    *,
    now: datetime,
    max_failures: int,
    window: int,
) -> Operator:
    """The operator whose name and password these are; raises :class:`LoginError` otherwise.

    ``login.locked`` when the name had ``max_failures`` failures within
    ``window`` seconds (checked first: then the password is not even
    looked at); ``login.invalid`` for a wrong name, wrong password or a
    disabled account — one answer for all three, so the page does not tell
    which names exist.  Every refusal counts as a failure for the name.
    """
    if recent_failures(storage, name, now=now, window=window) >= max_failures:
        raise LoginError(
            "too many failed logins for this name; wait and try again, or ask another operator "
            "to run `renkei-server operator enable`",
            code="login.locked",
        )
    key = normalize_name(name)
    with storage.read() as conn:
        row = conn.execute(sa.select(operators).where(operators.c.name == key)).first()
    password = password[:MAX_PASSWORD]
    good = verify_password(password, row.password_hash if row is not None else _DUMMY)
    if row is None or not good or row.disabled_at is not None:
        with storage.begin() as conn:
            conn.execute(
                login_failures.delete().where(login_failures.c.failed_at < now - FAILURE_KEEP)
            )
            conn.execute(login_failures.insert().values(name_key=_name_key(name), failed_at=now))
        raise LoginError("the name or the password is wrong", code="login.invalid")
    with storage.begin() as conn:
        conn.execute(
            operators.update()
            .where(operators.c.operator_id == row.operator_id)
            .values(last_login_at=now)
        )
        conn.execute(login_failures.delete().where(login_failures.c.name_key == _name_key(name)))
    found = _require(storage, row.operator_id)
    return found


# --- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A logged-in operator; ``csrf_token`` must come back with every form the dashboard posts."""

    operator: Operator
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def _session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def start_session(
    storage: Storage, operator: Operator, *, now: datetime, lifetime: int
) -> tuple[str, Session]:
    """A new session: (the cookie value, returned once and stored only hashed, the session)."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=lifetime)
    with storage.begin() as conn:
        conn.execute(operator_sessions.delete().where(operator_sessions.c.expires_at < now))
        conn.execute(
            operator_sessions.insert().values(
                session_hash=_session_hash(token),
                operator_id=operator.operator_id,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=expires,
            )
        )
    return token, Session(operator, csrf, now, expires)


def load_session(storage: Storage, token: str, *, now: datetime, idle: int) -> Session | None:
    """The live session of this cookie value, or None (unknown, expired, idle, account disabled).

    A live session's "last seen" moves forward (to the minute), which is what
    keeps an operator who is working logged in.
    """
    if not token or len(token) > 200:
        return None
    digest = _session_hash(token)
    query = sa.select(
        operator_sessions.c.operator_id,
        operator_sessions.c.csrf_token,
        operator_sessions.c.created_at.label("session_created_at"),
        operator_sessions.c.last_seen_at,
        operator_sessions.c.expires_at,
    ).where(operator_sessions.c.session_hash == digest)
    with storage.read() as conn:
        row = conn.execute(query).first()
        operator_row = (
            conn.execute(
                sa.select(*_PUBLIC).where(operators.c.operator_id == row.operator_id)
            ).first()
            if row is not None
            else None
        )
    if row is None or operator_row is None:
        return None
    stale = row.expires_at <= now or now - row.last_seen_at > timedelta(seconds=idle)
    if stale or operator_row.disabled_at is not None:
        end_session(storage, token)
        return None
    if now - row.last_seen_at >= SEEN_RESOLUTION:
        with storage.begin() as conn:
            conn.execute(
                operator_sessions.update()
                .where(operator_sessions.c.session_hash == digest)
                .values(last_seen_at=now)
            )
    return Session(_operator(operator_row), row.csrf_token, row.session_created_at, row.expires_at)


def end_session(storage: Storage, token: str) -> None:
    with storage.begin() as conn:
        conn.execute(
            operator_sessions.delete().where(
                operator_sessions.c.session_hash == _session_hash(token)
            )
        )
