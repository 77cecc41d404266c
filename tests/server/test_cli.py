"""``renkei-server`` through click's runner, and once as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.items import MINISTRY
from common.synthetic import SampleFactory
from server.cli import main
from server.config import load_config
from server.enrollment import enroll
from server.keys import load_signing_key
from server.storage import Storage
from tests.server.conftest import CHIYODA, SAPPORO, ministry_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"RENKEI_SERVER_DATA_DIR": str(tmp_path / "data"), "RENKEI_SERVER_CONFIG": ""}


@pytest.fixture
def cli(env):
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, input: bytes | None = None):
        result = runner.invoke(main, list(args), env=env, input=input)
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
        return result

    return invoke


@pytest.fixture
def ready(cli, env):
    """An initialised data folder."""
    return json.loads(cli("init", "--json").stdout)


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in commands(main)], ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "renkei-server " + path[0] in result.output


def test_init_is_safe_to_repeat(cli, env, ready):
    data = Path(env["RENKEI_SERVER_DATA_DIR"])
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    key_path = data / "signing-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_signing_key(key_path)
    assert ready["key_id"] == statement.key_id(key.public_key())
    assert ready["signing_key_created"] and ready["migrations_applied"] == [
        "001_initial",
        "002_retention",
        "003_operations",
        "004_auth_failure_source",
    ]
    assert ready["municipalities"]["added"] > 1900
    again = cli("init")
    assert ready["key_id"] in again.stdout and "既存の鍵" in again.stdout
    assert "PRIVATE" not in again.stdout + again.stderr
    second = json.loads(cli("init", "--json").stdout)
    assert second["migrations_applied"] == [] and second["municipalities"]["added"] == 0
    assert second["key_id"] == ready["key_id"] and not second["signing_key_created"]


def test_init_dev_tls_is_picked_up_by_the_config(cli, env):
    out = json.loads(cli("init", "--dev-tls", "--hostname", "renkei.test", "--json").stdout)
    assert Path(out["tls_cert"]).is_file() and Path(out["ca_cert"]).is_file()
    config = load_config(env={"RENKEI_SERVER_DATA_DIR": env["RENKEI_SERVER_DATA_DIR"]})
    assert str(config.tls_cert) == out["tls_cert"] and str(config.tls_key) == out["tls_key"]
    assert stat.S_IMODE(Path(out["tls_key"]).stat().st_mode) == 0o600


def test_init_reports_an_unwritable_place(cli, env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env["RENKEI_SERVER_DATA_DIR"] = str(blocker / "data")
    assert "cannot create" in cli("init", code=2).stderr


def test_commands_refuse_an_uninitialised_database(cli):
    result = cli("status", code=2)
    assert "renkei-server init" in result.stderr


def test_bad_config_is_a_usage_error(cli, tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text("colour = 1\n")
    assert "colour" in cli("status", "--config", str(file), code=2).stderr


def test_import_close_day_status_export(cli, env, ready, tmp_path):
    samples = SampleFactory(seed=3)
    good = list(samples.day_of(MINISTRY, CHIYODA, 3))
    bad = list(samples.day_of(MINISTRY, CHIYODA, 1))[0].with_values(address_code=SAPPORO)
    notices = tmp_path / "notices.jsonl"
    notices.write_bytes(ministry_jsonl([*good, bad]))

    result = cli("import", str(notices), "--date", "2026-11-27", code=1)
    assert "routing.not_receiving" in result.stdout and "取込 3 件" in result.stdout
    again = json.loads(cli("import", str(notices), "--date", "2026-11-27", "--json", code=1).stdout)
    assert again["loaded"] == 0 and len(again["duplicates"]) == 3 and len(again["rejected"]) == 1
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(ministry_jsonl(good))
    assert json.loads(cli("import", str(clean), "--json").stdout)["ok"] is True
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(ministry_jsonl(good)[:-5])
    assert "file.truncated" in cli("import", str(cut), code=1).stdout
    assert "missing.jsonl" in cli("import", str(tmp_path / "missing.jsonl"), code=2).stderr
    piped = cli("import", "-", "--json", input=ministry_jsonl(good))
    assert json.loads(piped.stdout)["file"] == "-"

    closed = json.loads(cli("close-day", "--date", "2026-11-27", "--json").stdout)
    assert closed["created"] > 1800 and closed["records"] == 3
    assert "変更はありません" in cli("close-day", "--date", "2026-11-27").stdout
    assert "closed" in cli("close-day", "--date", "2026-11-26", code=2).stderr

    status = json.loads(cli("status", "--json", "--all").stdout)
    assert status["latest_closed"] == "2026-11-27"
    [row] = [m for m in status["municipalities"] if m["lasdec"] == CHIYODA]
    assert row["batches_pending"] == 1 and row["last_sequence"] == 1
    assert "注意が必要な団体はありません" in cli("status").stdout
    table = cli("status", "--all").stdout.splitlines()
    assert len(table) == 2 + status["receiving_units"]

    out = tmp_path / "export.jsonl"
    result = cli("export", "--since", "2026-11-01", "-o", str(out))
    assert out.read_text() == "" and "0 件" in result.stderr
    assert "--since" in cli("export", "--since", "yesterday", code=2).stderr


def test_terminal_commands(cli, env, ready):
    token_out = json.loads(
        cli("terminal", "token", "--lasdec", CHIYODA, "--ttl", "2", "--json").stdout
    )
    assert token_out["lasdec"] == CHIYODA and token_out["name"] == "東京都千代田区"
    text = cli("terminal", "token", "--lasdec", CHIYODA).stdout
    assert "千代田区" in text and "1回のみ" in text
    assert (
        "not in the municipality master"
        in cli("terminal", "token", "--lasdec", "999999", code=2).stderr
    )

    storage = Storage(f"sqlite:///{env['RENKEI_SERVER_DATA_DIR']}/renkei.sqlite3")
    public = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
    terminal = enroll(storage, token_out["token"], public, now=datetime.now(UTC))
    storage.dispose()

    listed = json.loads(cli("terminal", "list", "--json").stdout)
    assert [t["terminal_id"] for t in listed] == [terminal.terminal_id]
    assert terminal.terminal_id in cli("terminal", "list", "--lasdec", CHIYODA).stdout
    assert "端末はありません" in cli("terminal", "list", "--lasdec", SAPPORO).stdout
    assert json.loads(cli("terminal", "revoke", terminal.terminal_id, "--json").stdout)["revoked"]
    assert "既に失効" in cli("terminal", "revoke", terminal.terminal_id).stdout
    assert "no terminal" in cli("terminal", "revoke", "t_nobody", code=2).stderr
    assert json.loads(cli("terminal", "list", "--json").stdout)[0]["revoked_at"] is not None


def test_public_key_and_serve(cli, env, ready):
    out = json.loads(cli("public-key", "--json").stdout)
    assert out["key_id"] == ready["key_id"]
    assert statement.key_id(statement.public_key_from_text(out["public_key"])) == ready["key_id"]
    result = cli("serve", "--dry-run")
    assert "-m gunicorn --config" in result.stdout and "server.wsgi:app" in result.stdout


def test_installed_console_script(env, tmp_path):
    script = Path(sys.executable).with_name("renkei-server")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]
    process_env = {**os.environ, **env}
    done = subprocess.run(
        [*argv, "init", "--json"],
        env=process_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["municipalities"]["receiving"] > 1800
    usage = subprocess.run(
        [*argv, "import"],
        env=process_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2 and "FILE" in usage.stderr


# --- issue #18: stored strings are shown escaped, never raw --------------------------------------

#: What reached `terminal list` before the fix: a raw 0x9B (a terminal's CSI), ESC, and a
#: right-to-left override, stored as an agent version before versions were checked.
HOSTILE_VERSION = "1.0\x9b2J\x1b]0;pwned\x07\u202e\u2066"


def _raw_unsafe(text: str) -> list[str]:
    import unicodedata

    return [
        hex(ord(c))
        for c in text
        if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} and c not in "\n\t"
    ]


def test_stored_hostile_strings_are_shown_escaped(cli, env, ready, tmp_path):
    from server.storage import terminals

    token = json.loads(cli("terminal", "token", "--lasdec", CHIYODA, "--json").stdout)["token"]
    storage = Storage(f"sqlite:///{env['RENKEI_SERVER_DATA_DIR']}/renkei.sqlite3")
    public = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
    terminal = enroll(storage, token, public, now=datetime.now(UTC))
    with storage.begin() as conn:  # as stored before versions were checked
        conn.execute(
            terminals.update()
            .where(terminals.c.terminal_id == terminal.terminal_id)
            .values(agent_version=HOSTILE_VERSION)
        )
    storage.dispose()

    listed = cli("terminal", "list").stdout
    assert _raw_unsafe(listed) == []
    assert "1.0\\x9b2J\\x1b]0;pwned\\x07\\u202e\\u2066" in listed
    status = cli("status", "--all").stdout
    assert _raw_unsafe(status) == [] and "\\x9b" in status
    for args in (("terminal", "list", "--json"), ("status", "--all", "--json")):
        text = cli(*args).stdout
        assert _raw_unsafe(text) == [], args  # JSON: escaped as \uXXXX …
        assert "\\u009b2J" in text, args
    [entry] = json.loads(cli("terminal", "list", "--json").stdout)
    assert entry["agent_version"] == HOSTILE_VERSION  # … and read back unchanged


def test_imported_hostile_record_ids_are_shown_escaped(cli, ready, tmp_path):
    bad = tmp_path / "bad\u202etxt.jsonl"
    lines = [
        json.dumps({"format": "renkei-ministry-notice-v1"}),
        json.dumps({"record_id": "M-1\x1b[2J\x9b\u202e", "pattern": "A"}),
    ]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("import", str(bad), "--date", "2026-11-27", code=1)
    assert _raw_unsafe(result.stdout) == []
    assert "M-1\\x1b[2J\\x9b\\u202e" in result.stdout and "bad\\u202etxt" in result.stdout
