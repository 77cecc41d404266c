"""``renkei-server publish-update``, ``update-keys``, ``update-timestamp``, ``update-status``.

Through click's runner against a real data folder; what the commands wrote
is judged by python-tuf's client reading the files, and the exit codes are
the documented ones (0 done, 1 refused / needs the offline keys, 2 error).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main
from server.config import DEFAULT_DATA_DIR
from server.update_repo import UpdateRepository
from tests.server.update_support import (
    FolderFetcher,
    make_bundle,
    new_repo,
    updater,
    visible,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cli(data_dir: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {"RENKEI_SERVER_DATA_DIR": str(data_dir), "RENKEI_SERVER_CONFIG": ""}

    def invoke(*args: str, code: int = 0):  # type: ignore[no-untyped-def]
        result = runner.invoke(main, [str(a) for a in args], env=env)
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    return invoke


@pytest.fixture
def keys(cli, tmp_path: Path) -> dict:  # type: ignore[no-untyped-def]
    """``update-keys init --json`` into a fresh data folder."""
    return json.loads(
        cli("update-keys", "init", "--offline-dir", tmp_path / "media", "--json").stdout
    )


def _terminal(tmp_path: Path, data_dir: Path, cache: str = "terminal"):  # type: ignore[no-untyped-def]
    repo = UpdateRepository.for_data_dir(data_dir)
    bootstrap = (repo.files.metadata_dir / "1.root.json").read_bytes()
    return updater(tmp_path / cache, FolderFetcher(repo.files.root), bootstrap)


def test_init_prints_the_root_for_the_image_and_where_each_key_went(cli, keys, tmp_path, data_dir):
    root = Path(keys["root"])
    assert root == data_dir / "updates" / "metadata" / "1.root.json"
    assert keys["root_sha256"] == hashlib.sha256(root.read_bytes()).hexdigest()
    for role in ("root", "targets"):
        (path,) = keys["key_files"][role]
        assert Path(path).parent == (tmp_path / "media").resolve()
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    for role in ("snapshot", "timestamp"):
        (path,) = keys["key_files"][role]
        assert Path(path).parent == data_dir / "updates" / "keys"
    again = cli("update-keys", "init", "--offline-dir", tmp_path / "other", code=2)
    assert "has a root already" in again.stderr


def test_init_refuses_an_offline_folder_inside_the_data_folder(cli, data_dir):
    result = cli("update-keys", "init", "--offline-dir", data_dir / "keys", code=2)
    assert str(data_dir) in result.stderr and "offline" in result.stderr
    assert not list(data_dir.rglob("*.pem"))
    assert "--offline-dir" in cli("update-keys", "init", code=2).stderr


def test_publish_then_again_then_a_downgrade(cli, keys, tmp_path, data_dir):
    targets_key = keys["key_files"]["targets"][0]
    bundle = make_bundle(tmp_path / "dist", "0.2.0")
    out = json.loads(cli("publish-update", bundle, "--targets-key", targets_key, "--json").stdout)
    assert (out["version"], out["already_published"]) == ("0.2.0", False)
    assert visible(_terminal(tmp_path, data_dir), "0.2.0") == {"0.2.0"}
    text = cli("publish-update", bundle, "--targets-key", targets_key).stdout
    assert "公開済み" in text
    older = make_bundle(tmp_path / "old", "0.1.0")
    refused = cli("publish-update", older, "--targets-key", targets_key, code=1)
    assert str(older) in refused.stderr
    assert "0.1.0 is not newer than 0.2.0" in refused.stderr
    assert visible(_terminal(tmp_path, data_dir, "t2"), "0.1.0", "0.2.0") == {"0.2.0"}


def test_publish_refuses_a_bad_bundle_with_exit_1_naming_it(cli, keys, tmp_path):
    junk = tmp_path / "renkei-agent-0.3.0.tar.gz"
    junk.write_bytes(b"not a tar")
    result = cli("publish-update", junk, "--targets-key", keys["key_files"]["targets"][0], code=1)
    assert str(junk) in result.stderr and "gzip tar" in result.stderr


@pytest.mark.parametrize("which", ["missing", "snapshot", "garbage"])
def test_publish_with_a_wrong_key_file_is_exit_2_naming_it(cli, keys, tmp_path, which):
    bundle = make_bundle(tmp_path / "dist", "0.2.0")
    if which == "missing":
        key = tmp_path / "media" / "nothing.pem"
        says = "No such file"
    elif which == "snapshot":
        key = Path(keys["key_files"]["snapshot"][0])
        says = "is not a targets key"
    else:
        key = tmp_path / "garbage.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        says = "not an unencrypted PKCS#8 PEM private key"
    result = cli("publish-update", bundle, "--targets-key", key, code=2)
    assert str(key) in result.stderr or which == "snapshot"
    assert says in result.stderr


def test_publish_a_missing_package_is_exit_2(cli, keys, tmp_path):
    missing = tmp_path / "renkei-agent-9.tar.gz"
    result = cli(
        "publish-update", missing, "--targets-key", keys["key_files"]["targets"][0], code=2
    )
    assert str(missing) in result.stderr


def test_commands_before_init_say_to_run_init(cli, tmp_path):
    for args in (("update-timestamp",), ("update-status",)):
        assert "update-keys init" in cli(*args, code=2).stderr


def test_update_timestamp_signs_and_exits_0(cli, keys, tmp_path, data_dir):
    before = int(time.time())
    result = json.loads(cli("update-timestamp", "--json").stdout)
    first = result["roles"]["timestamp"]["version"]
    assert before <= first <= int(time.time())  # the signing time (next_version)
    assert result["problems"] == []
    second = re.search(r"timestamp v([0-9]+)", cli("update-timestamp").stdout)
    assert second is not None and int(second.group(1)) > first
    assert visible(_terminal(tmp_path, data_dir)) == set()


def test_update_timestamp_exits_1_when_the_offline_keys_are_needed(cli, tmp_path, data_dir):
    # a repository whose targets were signed 80 days ago: 10 days left
    new_repo(data_dir, tmp_path / "media", datetime.now(UTC) - timedelta(days=80))
    result = cli("update-timestamp", code=1)
    assert re.search(r"timestamp v[0-9]+ に署名しました", result.stdout)
    assert "[update.expiring] targets" in result.stderr
    assert "renew --role targets" in result.stderr


def test_update_status_text_json_and_a_refusing_client(cli, keys, tmp_path, data_dir):
    bundle = make_bundle(tmp_path / "dist", "0.2.0")
    cli("publish-update", bundle, "--targets-key", keys["key_files"]["targets"][0])
    status = json.loads(cli("update-status", "--json").stdout)
    assert status["latest"] == "0.2.0"
    assert status["client_check"]["ok"] is True
    assert [r["version"] for r in status["releases"]] == ["0.2.0"]
    text = cli("update-status").stdout
    assert "受理" in text and "0.2.0" in text
    version = status["roles"]["snapshot"]["version"]
    snapshot = data_dir / "updates" / "metadata" / f"{version}.snapshot.json"
    document = json.loads(snapshot.read_text())
    document["signed"]["expires"] = "2099-01-01T00:00:00Z"  # changed without signing again
    snapshot.write_text(json.dumps(document))
    broken = cli("update-status", code=1)
    assert "update.client_refuses" in broken.stderr
    snapshot.write_text("{}")
    unreadable = cli("update-status", code=2)
    assert f"{snapshot} is not TUF metadata" in unreadable.stderr


def test_rotate_and_renew_through_the_commands(cli, keys, tmp_path, data_dir):
    root_key = keys["key_files"]["root"][0]
    terminal = _terminal(tmp_path, data_dir)
    assert visible(terminal) == set()
    rotated = json.loads(
        cli("update-keys", "rotate", "--role", "timestamp", "--root-key", root_key, "--json").stdout
    )
    assert rotated["root_version"] == 2 and rotated["warnings"] == []
    renewed = json.loads(
        cli("update-keys", "renew", "--role", "root", "--root-key", root_key, "--json").stdout
    )
    assert renewed["root_version"] == 3
    out = cli(
        "update-keys",
        "renew",
        "--role",
        "targets",
        "--targets-key",
        keys["key_files"]["targets"][0],
    )
    assert re.search(r"targets v[0-9]+ に署名しました", out.stdout)
    assert visible(_terminal(tmp_path, data_dir)) == set()
    # a key that is not the root key, and a missing --root-key
    wrong = cli(
        "update-keys",
        "rotate",
        "--role",
        "snapshot",
        "--root-key",
        keys["key_files"]["targets"][0],
        code=2,
    )
    assert "is not a root key of root version 3" in wrong.stderr
    assert "--root-key" in cli("update-keys", "rotate", "--role", "snapshot", code=2).stderr
    # a new targets key must go to an offline folder
    assert (
        "--offline-dir"
        in cli("update-keys", "rotate", "--role", "targets", "--root-key", root_key, code=2).stderr
    )


# --- the hourly units (docs/units/) ---------------------------------------------------------------

UNITS = Path(__file__).resolve().parents[2] / "docs" / "units"
SERVICE = UNITS / "renkei-update-timestamp.service"
TIMER = UNITS / "renkei-update-timestamp.timer"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    return path


def _settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_service_runs_update_timestamp_on_the_repository_folder():
    settings = _settings(SERVICE)
    (exec_start,) = settings["ExecStart"]
    program, command = exec_start.split()
    assert program == "/opt/renkei-server/bin/renkei-server"
    assert command in main.commands and command == "update-timestamp"
    default = UpdateRepository.for_data_dir(DEFAULT_DATA_DIR).files.root
    assert settings["ReadWritePaths"] == [str(default)]
    assert settings["ConditionPathExists"] == [str(default / "metadata" / "1.root.json")]
    assert _settings(TIMER)["OnCalendar"] == ["hourly"]


def test_the_units_verify_and_the_service_is_sandboxed(tmp_path):
    analyze = _systemd_analyze()
    stock = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if stock is None:
        pytest.skip("systemd's unit folder is missing")
    root = tmp_path / "root"
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (SERVICE, TIMER):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    stub = root / "opt/renkei-server/bin/renkei-server"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    verified = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", SERVICE.name, TIMER.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr
    scored = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(SERVICE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", scored.stdout)
    assert level is not None, scored.stdout + scored.stderr
    assert float(level.group(1)) <= 1.0
