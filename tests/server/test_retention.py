"""Retention (server/retention.py, ``renkei-server purge``) on real SQLite and real blob files.

Two business days are published for three receiving units: one 400 days
before "now" (past a 365-day retention) and one 10 days before.  API_A gets
notices both days; API_B and API_C get empty batches, which are all the same
file — the shared blob.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from common import statement
from server.batches import acknowledge, get_batch, list_batches
from server.blobs import BlobStore
from server.cli import main
from server.keys import load_signing_key
from server.retention import RemovedFile, mark_expired, purge
from server.storage import Storage, batches, uploads
from server.uploads import get_receipt, receive_upload
from tests.server.conftest import (
    API_A,
    API_B,
    API_C,
    CORE_NOW,
    api_enroll,
    api_init_data,
    api_municipality_file,
    api_publish,
)

RETENTION = 365
OLD = CORE_NOW - timedelta(days=400)
YOUNG = CORE_NOW - timedelta(days=10)


@pytest.fixture
def services(api):
    return api.services


@pytest.fixture
def two_days(services):
    """Batches of OLD and YOUNG; returns {(lasdec, "old"|"young"): batch}."""
    api_publish(services.storage, services.blobs, services.signing_key, OLD, {API_A: 3}, seed=1)
    api_publish(services.storage, services.blobs, services.signing_key, YOUNG, {API_A: 2}, seed=2)
    found = {}
    for lasdec in (API_A, API_B, API_C):
        old, young = list_batches(services.storage, lasdec, pending_only=False)
        found[lasdec, "old"], found[lasdec, "young"] = old, young
    return found


def ack(services, batch, now=None):
    return acknowledge(
        services.storage,
        batch.lasdec,
        batch.batch_id,
        batch.sha256,
        "t_test",
        now=now or batch.created_at + timedelta(hours=1),
    )


def run(services, now=CORE_NOW, **kwargs):
    return purge(services.storage, services.blobs, now=now, retention_days=RETENTION, **kwargs)


def on_disk(services, sha256: str) -> bool:
    return services.blobs.path(sha256).is_file()


def purged_at(services, batch) -> datetime | None:
    return get_batch(services.storage, batch.lasdec, batch.batch_id).purged_at


def snapshot(storage: Storage, blob_dir: Path):
    with storage.read() as conn:
        rows = (
            conn.execute(sa.select(batches).order_by(batches.c.batch_id)).all(),
            conn.execute(sa.select(uploads).order_by(uploads.c.upload_id)).all(),
        )
    files = sorted((p.name, p.stat().st_size) for p in blob_dir.rglob("*") if p.is_file())
    return rows, files


def test_an_old_acknowledged_batch_loses_its_file_and_keeps_its_row(services, two_days):
    old, young = two_days[API_A, "old"], two_days[API_A, "young"]
    ack(services, old)
    ack(services, young)
    size = services.blobs.path(old.sha256).stat().st_size
    result = run(services)
    assert [(r.kind, r.row_id, r.sha256) for r in result.rows] == [
        ("batch", old.batch_id, old.sha256)
    ]
    assert result.files == [RemovedFile(old.sha256, size, earlier_run=False)]
    assert result.ok and result.bytes_removed == size
    assert not on_disk(services, old.sha256)
    stored = get_batch(services.storage, API_A, old.batch_id)
    assert stored.purged_at == CORE_NOW
    assert (stored.sha256, stored.size, stored.manifest) == (old.sha256, old.size, old.manifest)
    body = statement.verify(stored.manifest, services.signing_key.public_key())
    assert body["sha256"] == old.sha256  # the proof of what was delivered survives
    assert purged_at(services, young) is None and on_disk(services, young.sha256)


def test_an_unacknowledged_batch_is_kept_however_old(services, two_days):
    old = two_days[API_A, "old"]
    result = run(services, now=CORE_NOW + timedelta(days=3650))
    assert old.batch_id in [b.batch_id for b in result.unacknowledged]
    assert old.batch_id not in [r.row_id for r in result.rows]
    assert purged_at(services, old) is None and on_disk(services, old.sha256)
    assert any("受領確認のないバッチ" in line for line in result.text_lines())


def test_a_shared_blob_stays_while_one_referencing_row_is_young(services, two_days):
    empties = [two_days[code, day] for code in (API_B, API_C) for day in ("old", "young")]
    empty_sha = empties[0].sha256
    assert {b.sha256 for b in empties} == {empty_sha}  # precondition: one file, four rows
    for batch in empties:
        ack(services, batch)
    result = run(services)
    assert [(s.sha256, s.expired_rows, s.holding_rows) for s in result.shared] == [
        (empty_sha, 2, 2)
    ]
    assert empty_sha not in [r.sha256 for r in result.rows] + [f.sha256 for f in result.files]
    assert on_disk(services, empty_sha)
    assert all(purged_at(services, b) is None for b in empties)  # still downloadable

    later = run(services, now=YOUNG + timedelta(days=RETENTION + 1))
    assert sorted(r.row_id for r in later.rows if r.sha256 == empty_sha) == sorted(
        b.batch_id for b in empties
    )
    assert empty_sha in [f.sha256 for f in later.files]
    assert not on_disk(services, empty_sha)
    assert all(purged_at(services, b) is not None for b in empties)

    # A new empty batch stores the same file again: its row is unpurged, so it stays.
    next_day = YOUNG + timedelta(days=RETENTION + 2)
    api_publish(services.storage, services.blobs, services.signing_key, next_day, {API_A: 1})
    assert on_disk(services, empty_sha)
    for dry_run in (True, False):
        result = run(services, now=next_day, dry_run=dry_run)
        assert empty_sha not in [f.sha256 for f in result.files]
    assert on_disk(services, empty_sha)


def test_an_unacknowledged_row_holds_a_shared_blob(services, two_days):
    old_b, old_c = two_days[API_B, "old"], two_days[API_C, "old"]
    ack(services, old_b)  # API_C's identical empty batch is never acknowledged
    result = run(services, now=CORE_NOW + timedelta(days=3650))
    assert old_b.sha256 in [s.sha256 for s in result.shared]
    assert purged_at(services, old_b) is None and on_disk(services, old_b.sha256)
    assert old_c.batch_id in [b.batch_id for b in result.unacknowledged]


@pytest.fixture
def upload(services):
    terminals = {
        code: api_enroll(services.storage, code, OLD - timedelta(days=1))[0]
        for code in (API_A, API_B)
    }

    def send(lasdec: str, data: bytes, now: datetime) -> dict:
        receipt, _ = receive_upload(
            services.storage,
            services.blobs,
            services.signing_key,
            terminals[lasdec],
            data,
            file_name="C.csv",
            now=now,
            max_records=1000,
        )
        return statement.verify(receipt, services.signing_key.public_key())

    return send


def upload_purged_at(storage: Storage, upload_id: str) -> datetime | None:
    with storage.read() as conn:
        return conn.execute(
            sa.select(uploads.c.purged_at).where(uploads.c.upload_id == upload_id)
        ).scalar_one()


def test_uploaded_originals_are_purged_unless_a_young_upload_shares_them(services, upload):
    alone = upload(API_A, api_municipality_file(API_A, 3, seed=1), OLD)
    shared_old = upload(API_A, api_municipality_file(API_A, 2, seed=2), OLD)
    shared_young = upload(API_B, api_municipality_file(API_A, 2, seed=2), YOUNG)
    assert shared_old["sha256"] == shared_young["sha256"]
    result = run(services)
    assert [(r.kind, r.row_id) for r in result.rows] == [("upload", alone["upload_id"])]
    assert [f.sha256 for f in result.files] == [alone["sha256"]]
    assert not on_disk(services, alone["sha256"])
    assert upload_purged_at(services.storage, alone["upload_id"]) == CORE_NOW
    assert get_receipt(services.storage, API_A, alone["upload_id"])["statement"] == alone
    assert [s.sha256 for s in result.shared] == [shared_old["sha256"]]
    assert on_disk(services, shared_old["sha256"])
    assert upload_purged_at(services.storage, shared_old["upload_id"]) is None


def test_dry_run_changes_nothing_and_lists_what_the_real_run_removes(
    services, two_days, upload, api_config
):
    ack(services, two_days[API_A, "old"])
    upload(API_A, api_municipality_file(API_A, 3), OLD)
    before = snapshot(services.storage, api_config.blob_dir)
    dry = run(services, dry_run=True)
    assert snapshot(services.storage, api_config.blob_dir) == before
    assert dry.dry_run and len(dry.rows) == 2 and len(dry.files) == 2
    assert "試行" in "\n".join(dry.text_lines())
    real = run(services)
    assert [r.to_json() for r in real.rows] == [r.to_json() for r in dry.rows]
    assert real.files == dry.files
    assert snapshot(services.storage, api_config.blob_dir) != before


def test_a_rerun_finishes_a_run_that_stopped_between_marking_and_deleting(services, two_days):
    old = two_days[API_A, "old"]
    ack(services, old)
    marked = mark_expired(services.storage, now=CORE_NOW, retention_days=RETENTION)
    assert [r.row_id for r in marked.rows] == [old.batch_id]
    assert purged_at(services, old) == CORE_NOW and on_disk(services, old.sha256)  # the crash
    dry = run(services, now=CORE_NOW + timedelta(hours=1), dry_run=True)
    assert [(f.sha256, f.earlier_run) for f in dry.files] == [(old.sha256, True)]
    rerun = run(services, now=CORE_NOW + timedelta(hours=1))
    assert rerun.rows == []
    assert [(f.sha256, f.earlier_run) for f in rerun.files] == [(old.sha256, True)]
    assert not on_disk(services, old.sha256)
    assert purged_at(services, old) == CORE_NOW  # the first mark is kept
    again = run(services, now=CORE_NOW + timedelta(hours=2))
    assert (again.rows, again.files) == ([], [])


def test_a_marked_blob_stored_again_for_a_new_row_is_never_deleted(services, upload):
    data = api_municipality_file(API_A, 2)
    first = upload(API_A, data, OLD)
    assert [f.sha256 for f in run(services).files] == [first["sha256"]]
    upload(API_B, data, CORE_NOW)  # the same bytes again: the blob store writes the file anew
    assert on_disk(services, first["sha256"])
    for dry_run in (True, False):
        result = run(services, now=CORE_NOW + timedelta(days=1), dry_run=dry_run)
        assert (result.rows, result.files) == ([], [])
    assert on_disk(services, first["sha256"])


def test_a_row_added_between_the_check_and_the_deletion_keeps_the_file(
    services, upload, monkeypatch
):
    import server.retention as retention

    data = api_municipality_file(API_A, 2)
    first = upload(API_A, data, OLD)
    find = retention._marked_unreferenced

    def find_then_race(conn):
        found = find(conn)
        upload(API_B, data, CORE_NOW)  # another writer commits a new reference meanwhile
        return found

    monkeypatch.setattr(retention, "_marked_unreferenced", find_then_race)
    result = run(services)
    assert [r.row_id for r in result.rows] == [first["upload_id"]]
    assert result.files == [] and result.ok
    assert on_disk(services, first["sha256"])


def test_a_file_that_cannot_be_deleted_is_retried_by_the_next_run(services, two_days, monkeypatch):
    old = two_days[API_A, "old"]
    ack(services, old)
    unlink = Path.unlink

    def refuse(path, *args, **kwargs):
        if path.name == old.sha256:
            raise PermissionError(13, "Permission denied")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    result = run(services)
    assert not result.ok
    assert result.failed == [{"sha256": old.sha256, "error": "Permission denied"}]
    assert purged_at(services, old) == CORE_NOW and on_disk(services, old.sha256)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert [f.sha256 for f in run(services).files] == [old.sha256]


def test_download_of_a_purged_batch_is_410_and_its_manifest_stays(api, api_terminal):
    services = api.services
    api_publish(services.storage, services.blobs, services.signing_key, api.clock(), {API_A: 4})
    _, client = api_terminal(API_A)
    (batch,) = client.get("/api/v1/batches").get_json()["batches"]
    path = f"/api/v1/batches/{batch['batch_id']}"
    assert client.post_json(path + "/ack", {"sha256": batch["sha256"]}).status_code == 200
    now = api.clock() + timedelta(days=RETENTION + 1)
    assert len(run(services, now=now).files) == 1
    reply = client.get(path)
    assert reply.status_code == 410
    assert reply.get_json()["error"]["code"] == "batch.purged"
    manifest = client.get(path + "/manifest")
    assert manifest.status_code == 200
    body = statement.verify(manifest.get_json(), services.signing_key.public_key())
    assert body["sha256"] == batch["sha256"]
    (listed,) = client.get("/api/v1/batches?all=1").get_json()["batches"]
    assert listed["purged_at"] is not None


def test_an_existing_database_gets_the_retention_columns(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path}/db.sqlite3")
    storage.migrate()
    with storage.begin() as conn:  # back to the schema of migration 1
        for index in ("ix_batches_sha256", "ix_batches_created_at", "ix_uploads_sha256"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        conn.exec_driver_sql("ALTER TABLE batches DROP COLUMN purged_at")
        conn.exec_driver_sql("ALTER TABLE uploads DROP COLUMN purged_at")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 2")
    assert storage.migrate() == ["002_retention"]
    assert storage.migrate() == []
    with storage.read() as conn:
        inspector = sa.inspect(conn)
        for table in ("batches", "uploads"):
            assert "purged_at" in {c["name"] for c in inspector.get_columns(table)}
        assert {"ix_batches_sha256", "ix_batches_created_at"} <= {
            i["name"] for i in inspector.get_indexes("batches")
        }
    storage.dispose()


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli_data(tmp_path):
    """A data folder whose API_A batch of 400 days ago (real clock) is acknowledged."""
    config = api_init_data(tmp_path / "data")
    storage = Storage(config.database_url)
    blobs, key = BlobStore(config.blob_dir), load_signing_key(config.signing_key_path)
    api_publish(storage, blobs, key, datetime.now(UTC) - timedelta(days=400), {API_A: 2})
    (old,) = list_batches(storage, API_A, pending_only=False)
    acknowledge(storage, API_A, old.batch_id, old.sha256, "t_test", now=old.created_at)
    storage.dispose()
    env = {
        "RENKEI_SERVER_CONFIG": "",
        "RENKEI_SERVER_DATA_DIR": str(config.data_dir),
        "RENKEI_SERVER_RETENTION_DAYS": str(RETENTION),
    }
    return env, old, blobs


def test_purge_command_dry_run_then_for_real(cli_data):
    env, old, blobs = cli_data
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "削除予定" in dry.stdout and old.batch_id in dry.stdout
    assert "受領確認のないバッチ 2 件" in dry.stdout  # API_B's and API_C's empty batches
    assert blobs.exists(old.sha256)
    real = runner.invoke(main, ["purge", "--json"], env=env)
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert report["dry_run"] is False and report["ok"] is True
    assert [(r["kind"], r["id"]) for r in report["rows"]] == [("batch", old.batch_id)]
    assert [f["sha256"] for f in report["files"]] == [old.sha256]
    assert sorted(b["lasdec"] for b in report["unacknowledged"]) == [API_B, API_C]
    assert not blobs.exists(old.sha256)
    again = runner.invoke(main, ["purge"], env=env)
    assert again.exit_code == 0 and "削除するものはありません" in again.stdout


def test_purge_command_exits_1_when_a_file_cannot_be_deleted(cli_data, monkeypatch):
    env, old, blobs = cli_data

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    result = CliRunner().invoke(main, ["purge"], env=env)
    assert result.exit_code == 1, result.output
    assert "削除できませんでした" in result.stdout and blobs.exists(old.sha256)


def test_purge_command_without_a_database_is_exit_2(tmp_path):
    env = {"RENKEI_SERVER_CONFIG": "", "RENKEI_SERVER_DATA_DIR": str(tmp_path / "none")}
    result = CliRunner().invoke(main, ["purge"], env=env)
    assert result.exit_code == 2 and "renkei-server init" in result.stderr
