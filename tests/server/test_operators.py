"""Operator accounts: the password KDF, the lockout, server-side sessions, the migration, the CLI.

Against a real SQLite database (the core fixtures).  Most tests hash with a cheap scrypt
(``TEST_KDF``) to stay fast; the default cost is checked once, on a hash the CLI made.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from server.cli import main
from server.operators import (
    DEFAULT_KDF,
    Kdf,
    LoginError,
    OperatorError,
    add_operator,
    authenticate,
    end_session,
    find_operator,
    hash_password,
    list_operators,
    load_session,
    set_disabled,
    set_password,
    start_session,
    verify_password,
)
from server.storage import (
    Storage,
    login_failures,
    mail_outbox,
    operator_sessions,
    operators,
    schema_migrations,
)

TEST_KDF = Kdf(12, 8, 1)
PASSWORD = "correct horse battery staple"
LOCK = {"max_failures": 5, "window": 900}


@pytest.fixture
def tanaka(core_storage, core_now):  # type: ignore[no-untyped-def]
    return add_operator(core_storage, "Tanaka", PASSWORD, now=core_now, kdf=TEST_KDF)


def test_hash_carries_its_parameters_and_verifies():
    stored = hash_password("pässwörd 日本語 long", TEST_KDF)
    scheme, log2_n, r, p, salt, digest = stored.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "12", "8", "1")
    assert len(salt) == 22 and len(digest) == 43  # 16 and 32 bytes, base64url
    assert verify_password("pässwörd 日本語 long", stored)
    assert not verify_password("pässwörd 日本語 lonG", stored)
    assert hash_password("same", TEST_KDF) != hash_password("same", TEST_KDF), "salted"


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "bcrypt$12$x$y$z$w",
        "scrypt$30$8$1$AAAA$AAAA",
        "scrypt$12$8$1$!!$!!",
        "scrypt$12$8",
    ],
)
def test_a_malformed_hash_never_verifies(stored):  # type: ignore[no-untyped-def]
    assert verify_password("anything at all", stored) is False


def test_default_cost_is_owasp_minimum():
    """OWASP's scrypt minimum: N=2^17, r=8, p=1."""
    assert (DEFAULT_KDF.log2_n, DEFAULT_KDF.r, DEFAULT_KDF.p) == (17, 8, 1)


def test_accounts_are_checked_and_normalised(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    assert tanaka.name == "tanaka" and tanaka.operator_id.startswith("op_")
    assert find_operator(core_storage, "ＴＡＮＡＫＡ") == tanaka
    assert find_operator(core_storage, tanaka.operator_id) == tanaka
    with pytest.raises(OperatorError) as exc:
        add_operator(core_storage, "tanaka", PASSWORD, now=core_now, kdf=TEST_KDF)
    assert exc.value.code == "operator.exists"
    for name, password, code in [
        ("x", PASSWORD, "operator.name"),
        ("田中", PASSWORD, "operator.name"),
        ("suzuki", "short", "operator.weak_password"),
        ("suzuki", "aaaaaaaaaaaaaaaa", "operator.weak_password"),
    ]:
        with pytest.raises(OperatorError) as exc:
            add_operator(core_storage, name, password, now=core_now, kdf=TEST_KDF)
        assert exc.value.code == code
    with core_storage.read() as conn:
        stored = conn.execute(sa.select(operators.c.password_hash)).scalar_one()
    assert PASSWORD not in stored


def test_login_and_lockout(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    assert authenticate(core_storage, "tanaka", PASSWORD, now=core_now, **LOCK) == find_operator(
        core_storage, "tanaka"
    )
    for _ in range(5):
        with pytest.raises(LoginError) as exc:
            authenticate(core_storage, "tanaka", "not the password", now=core_now, **LOCK)
        assert exc.value.code == "login.invalid"
    with pytest.raises(LoginError) as exc:
        authenticate(core_storage, "Tanaka", PASSWORD, now=core_now, **LOCK)
    assert exc.value.code == "login.locked", "locked even with the right password"
    # Failures are kept under a hash of the name, never the text people typed.
    with core_storage.read() as conn:
        keys = {row.name_key for row in conn.execute(sa.select(login_failures))}
    assert len(keys) == 1 and "tanaka" not in next(iter(keys))
    # After the window the name works again, and a success clears the count.
    later = core_now + timedelta(seconds=901)
    assert authenticate(core_storage, "tanaka", PASSWORD, now=later, **LOCK).last_login_at == later


def test_enable_lifts_a_lockout(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    for _ in range(5):
        with pytest.raises(LoginError):
            authenticate(core_storage, "tanaka", "not the password", now=core_now, **LOCK)
    assert set_disabled(core_storage, "tanaka", False, now=core_now) is False  # was not disabled
    assert authenticate(core_storage, "tanaka", PASSWORD, now=core_now, **LOCK).name == "tanaka"


def test_unknown_and_disabled_names_fail_like_wrong_passwords(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    with pytest.raises(LoginError) as exc:
        authenticate(core_storage, "nobody", PASSWORD, now=core_now, **LOCK)
    assert exc.value.code == "login.invalid"
    assert set_disabled(core_storage, "tanaka", True, now=core_now) is True
    assert set_disabled(core_storage, "tanaka", True, now=core_now) is False
    with pytest.raises(LoginError) as exc:
        authenticate(core_storage, "tanaka", PASSWORD, now=core_now, **LOCK)
    assert exc.value.code == "login.invalid"


def test_sessions_live_in_the_database(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    token, session = start_session(core_storage, tanaka, now=core_now, lifetime=3600)
    with core_storage.read() as conn:
        row = conn.execute(sa.select(operator_sessions)).one()
    assert token not in repr(row), "only the cookie's hash is stored"
    loaded = load_session(core_storage, token, now=core_now + timedelta(seconds=30), idle=600)
    assert loaded is not None and loaded.operator == tanaka
    assert loaded.csrf_token == session.csrf_token and len(session.csrf_token) >= 40
    assert load_session(core_storage, token + "x", now=core_now, idle=600) is None
    # Idle: 600 s after the last request it is gone for good.
    assert (
        load_session(core_storage, token, now=core_now + timedelta(seconds=631), idle=600) is None
    )
    assert load_session(core_storage, token, now=core_now + timedelta(seconds=40), idle=600) is None


def test_sessions_end_at_their_lifetime_even_when_used(core_storage, core_now, tanaka):  # type: ignore[no-untyped-def]
    token, _ = start_session(core_storage, tanaka, now=core_now, lifetime=300)
    for minutes in (2, 4):
        assert load_session(
            core_storage, token, now=core_now + timedelta(minutes=minutes), idle=600
        )
    assert load_session(core_storage, token, now=core_now + timedelta(minutes=5), idle=600) is None


@pytest.mark.parametrize("how", ["disable", "password", "logout"])
def test_sessions_end_on_disable_password_change_and_logout(core_storage, core_now, tanaka, how):  # type: ignore[no-untyped-def]
    token, _ = start_session(core_storage, tanaka, now=core_now, lifetime=3600)
    if how == "disable":
        set_disabled(core_storage, "tanaka", True, now=core_now)
    elif how == "password":
        set_password(core_storage, "tanaka", "another good passphrase", now=core_now, kdf=TEST_KDF)
        assert authenticate(core_storage, "tanaka", "another good passphrase", now=core_now, **LOCK)
    else:
        end_session(core_storage, token)
    assert load_session(core_storage, token, now=core_now, idle=600) is None


def test_migration_3_upgrades_a_version_2_database(tmp_path):  # type: ignore[no-untyped-def]
    storage = Storage(f"sqlite:///{tmp_path}/db.sqlite3")
    storage.migrate()
    # Make it look like a database from before this migration.
    with storage.begin() as conn:
        for table in (operator_sessions, login_failures, mail_outbox, operators):
            table.drop(conn)
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version >= 3))
    assert storage.schema_version() == 2
    assert storage.migrate() == ["003_operations", "004_auth_failure_source"]
    assert storage.migrate() == []
    assert storage.schema_version() == 4
    with storage.read() as conn:
        names = set(sa.inspect(conn).get_table_names())
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("login_failures")}
    assert {"operators", "login_failures", "operator_sessions", "mail_outbox"} <= names
    assert "ix_login_failures_key" in indexes
    storage.dispose()


# --- renkei-server operator ----------------------------------------------------------------------


@pytest.fixture
def cli(core_config):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {"RENKEI_SERVER_DATA_DIR": str(core_config.data_dir)}

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)

    return run


def test_cli_add_list_disable_enable(cli, core_storage):  # type: ignore[no-untyped-def]
    added = cli("operator", "add", "suzuki", "--password-stdin", "--json", stdin=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    made = json.loads(added.output)
    assert made["name"] == "suzuki" and made["disabled_at"] is None
    with core_storage.read() as conn:
        stored = conn.execute(sa.select(operators.c.password_hash)).scalar_one()
    assert stored.startswith("scrypt$17$8$1$"), "the CLI hashes with the default (OWASP) cost"

    twice = cli("operator", "add", "suzuki", "--password-stdin", stdin=PASSWORD + "\n")
    assert twice.exit_code == 2 and "exists" in twice.output
    weak = cli("operator", "add", "sato", "--password-stdin", stdin="short\n")
    assert weak.exit_code == 2 and "12" in weak.output

    listed = json.loads(cli("operator", "list", "--json").output)
    assert [o["name"] for o in listed] == ["suzuki"]
    assert "password_hash" not in listed[0] and "scrypt" not in json.dumps(listed)

    assert "無効にしました" in cli("operator", "disable", "suzuki").output
    assert list_operators(core_storage)[0].disabled_at is not None
    assert "既に" in cli("operator", "disable", "suzuki").output
    assert cli("operator", "enable", "suzuki").exit_code == 0
    assert list_operators(core_storage)[0].disabled_at is None
    unknown = cli("operator", "disable", "nobody")
    assert unknown.exit_code == 2 and "operator list" in unknown.output


def test_cli_password_prompt_asks_twice(cli, core_storage, core_now):  # type: ignore[no-untyped-def]
    add_operator(core_storage, "kato", PASSWORD, now=core_now, kdf=TEST_KDF)
    mismatch = cli("operator", "password", "kato", stdin="first passphrase!\nsecond passphrase\n")
    assert mismatch.exit_code != 0
    new = "a brand new passphrase"
    done = cli("operator", "password", "kato", stdin=f"{new}\n{new}\n")
    assert done.exit_code == 0, done.output
    assert authenticate(core_storage, "kato", new, now=core_now, **LOCK).name == "kato"
