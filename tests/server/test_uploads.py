"""Uploads of municipality notice files: signed receipts, idempotence, duplicates, conflicts."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from common import juki, statement
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file
from server.errors import UploadError
from server.storage import Storage, received_notices, uploads
from server.uploads import get_receipt, receive_upload
from tests.server.conftest import CHIYODA, SAPPORO, SAPPORO_CHUO

CHUO = "131024"  # 東京都中央区: another special ward
SAPPORO_KITA = "011029"  # 札幌市北区: another ward of the same designated city


@pytest.fixture
def terminal(core_enroll):
    return core_enroll(CHIYODA)[0]


@pytest.fixture
def upload(core_storage, core_blobs, core_key, core_now):
    def send(terminal, data: bytes, *, name="C20261127.csv", now=core_now, max_records=1000):
        return receive_upload(
            core_storage,
            core_blobs,
            core_key,
            terminal,
            data,
            file_name=name,
            now=now,
            max_records=max_records,
        )

    return send


def stored(storage: Storage) -> list[sa.Row]:
    with storage.read() as conn:
        return conn.execute(
            sa.select(received_notices).order_by(received_notices.c.received_id)
        ).all()


def upload_count(storage: Storage) -> int:
    with storage.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(uploads)).scalar()


def test_receipt_lists_accepted_and_rejected(
    core_storage, core_blobs, core_key, core_samples, core_juki, core_now, terminal, upload
):
    records = list(core_samples.day_of(MUNICIPALITY, CHIYODA, 4))
    bad = records[2].with_values(event_date="20270101", birth_date="2026")  # two problems
    data = core_juki([records[0], records[1], bad, records[3]])
    receipt, created = upload(terminal, data)
    assert created
    body = statement.verify(receipt, core_key.public_key())
    assert body["type"] == "municipality-receipt" and body["upload_id"].startswith("up_")
    assert body["lasdec"] == CHIYODA and body["terminal_id"] == terminal.terminal_id
    assert body["file_name"] == "C20261127.csv" and body["received_at"] == "2026-11-27T09:00:00Z"
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size"] == len(data)
    assert body["records"] == 4 and body["file_error"] is None and body["duplicates"] == []
    assert body["accepted"] == [records[0].record_id, records[1].record_id, records[3].record_id]
    [entry] = body["rejected"]
    assert entry["line"] == 4 and entry["record_id"] == bad.record_id
    found = sorted((p["code"], p["column"]) for p in entry["problems"])
    assert found == [("date.invalid", "birth_date"), ("date.order", "event_date")]
    assert set(entry["problems"][0]) == {"code", "item", "column", "message", "message_en"}

    rows = stored(core_storage)
    assert [r.record_id for r in rows] == body["accepted"]
    assert all(r.lasdec == CHIYODA and r.upload_id == body["upload_id"] for r in rows)
    assert json.loads(rows[0].record) == records[0].to_json()
    assert core_blobs.get(body["sha256"]) == data  # the original is kept
    assert get_receipt(core_storage, CHIYODA, body["upload_id"]) == receipt
    assert get_receipt(core_storage, SAPPORO_CHUO, body["upload_id"]) is None


def test_same_bytes_same_receipt(core_storage, core_samples, core_juki, core_now, terminal, upload):
    data = core_juki(core_samples.day_of(MUNICIPALITY, CHIYODA, 3))
    receipt, created = upload(terminal, data)
    again, created_again = upload(
        terminal, data, name="renamed.csv", now=core_now + timedelta(hours=1)
    )
    assert created and not created_again and again == receipt
    assert upload_count(core_storage) == 1 and len(stored(core_storage)) == 3


def test_duplicates_across_files_and_conflicts(
    core_storage, core_key, core_samples, core_juki, terminal, upload
):
    records = list(core_samples.day_of(MUNICIPALITY, CHIYODA, 4))
    upload(terminal, core_juki(records[:2]))
    changed = records[1].with_values(address="東京都千代田区九丁目9番9号")
    receipt, created = upload(terminal, core_juki([records[0], changed, records[2], records[3]]))
    body = statement.verify(receipt, core_key.public_key())
    assert created
    assert body["duplicates"] == [records[0].record_id]
    assert body["accepted"] == [records[2].record_id, records[3].record_id]
    [entry] = body["rejected"]
    assert entry["record_id"] == changed.record_id and entry["line"] == 3
    assert [p["code"] for p in entry["problems"]] == ["record.conflict"]
    rows = {r.record_id: r for r in stored(core_storage)}
    assert len(rows) == 4 and json.loads(rows[changed.record_id].record) == records[1].to_json()


def test_record_ids_are_per_municipality(core_samples, core_juki, core_enroll, terminal, upload):
    records = list(core_samples.day_of(MUNICIPALITY, CHIYODA, 2))
    ward_terminal, _ = core_enroll(SAPPORO_CHUO)
    upload(terminal, core_juki(records))
    # The ward's own notices (its address code), under the same record ids.
    wards = core_samples.day_of(MUNICIPALITY, SAPPORO_CHUO, 2)
    theirs = [
        type(mine)(mine.record_id, ward.pattern, ward.values)
        for mine, ward in zip(records, wards, strict=True)
    ]
    receipt, _ = upload(ward_terminal, core_juki(theirs))
    assert receipt["statement"]["accepted"] == [r.record_id for r in records]


def test_another_municipalitys_records_are_rejected_one_by_one(
    core_storage, core_key, core_samples, core_juki, terminal, upload
):
    """A terminal reports its own municipality's notices only (common.reporting)."""
    own = list(core_samples.day_of(MUNICIPALITY, CHIYODA, 2))
    others = list(core_samples.day_of(MUNICIPALITY, CHUO, 2))
    receipt, _ = upload(terminal, core_juki([own[0], others[0], own[1], others[1]]))
    body = statement.verify(receipt, core_key.public_key())
    assert body["accepted"] == [r.record_id for r in own]
    assert [(e["line"], e["record_id"]) for e in body["rejected"]] == [
        (3, others[0].record_id),
        (5, others[1].record_id),
    ]
    for entry in body["rejected"]:
        [problem] = entry["problems"]
        assert problem["code"] == "address.other_municipality"
        assert (problem["item"], problem["column"]) == ("address", "address_code")
        assert "131024（東京都中央区）" in problem["message"]
        assert "131016（東京都千代田区）" in problem["message"]
    assert [r.record_id for r in stored(core_storage)] == [r.record_id for r in own]


def test_a_wards_terminal_reports_with_its_wards_code(
    core_storage, core_key, core_samples, core_juki, core_enroll, upload
):
    """Designated cities: the ward keeps the residence records (住基法 第38条), so its code."""
    ward, _ = core_enroll(SAPPORO_CHUO)
    own, city, other_ward = core_samples.day_of(MUNICIPALITY, SAPPORO_CHUO, 3)
    city = city.with_values(address_code=SAPPORO, address="北海道札幌市中央区一丁目1番1号")
    other_ward = other_ward.with_values(address_code=SAPPORO_KITA, address="北海道札幌市北区一丁目")
    receipt, _ = upload(ward, core_juki([own, city, other_ward]))
    body = statement.verify(receipt, core_key.public_key())
    assert body["accepted"] == [own.record_id]
    problems = {e["record_id"]: e["problems"] for e in body["rejected"]}
    assert [p["code"] for p in problems[city.record_id]] == ["address.other_municipality"]
    assert "区のコード「011011」" in problems[city.record_id][0]["message"]
    assert [p["code"] for p in problems[other_ward.record_id]] == ["address.other_municipality"]
    assert "011029（北海道札幌市北区）" in problems[other_ward.record_id][0]["message"]


def truncated(data: bytes) -> bytes:
    return data[:-4]


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda recs: truncated(encode_notice_file(MUNICIPALITY, recs)), "file.truncated"),
        (lambda recs: encode_notice_file(MINISTRY, []), "file.direction"),
        (lambda recs: b"", "file.empty"),
        (lambda recs: b"C1,A\r\n", "file.encoding"),
        (lambda recs: juki.encode("renkei-municipality-notice-v1,pattern\r\n"), "file.header"),
    ],
)
def test_file_errors_store_nothing(
    core_storage, core_blobs, core_key, core_samples, terminal, upload, make, code
):
    data = make(list(core_samples.day_of(MUNICIPALITY, CHIYODA, 3)))
    receipt, created = upload(terminal, data)
    body = statement.verify(receipt, core_key.public_key())
    assert created and body["file_error"]["code"] == code
    assert body["file_error"]["message"] and body["file_error"]["message_en"]
    assert body["accepted"] == [] and body["rejected"] == [] and body["records"] == 0
    assert stored(core_storage) == [] and upload_count(core_storage) == 1
    assert core_blobs.exists(body["sha256"])  # even a bad file is kept as evidence
    assert upload(terminal, data)[0] == receipt


def test_too_many_records_is_a_file_error(core_storage, core_samples, core_juki, terminal, upload):
    data = core_juki(core_samples.day_of(MUNICIPALITY, CHIYODA, 4))
    receipt, _ = upload(terminal, data, max_records=3)
    assert receipt["statement"]["file_error"]["code"] == "file.too_many_records"
    assert stored(core_storage) == []
    exact, _ = upload(
        terminal, core_juki(core_samples.day_of(MUNICIPALITY, CHIYODA, 3)), max_records=3
    )
    assert len(exact["statement"]["accepted"]) == 3


@pytest.mark.parametrize(
    "name",
    [
        "bad\udcff.csv",  # a lone surrogate
        "x" * 256,
        "千" * 86,  # 258 bytes of UTF-8
        "a\x9b31m.csv",  # C1 CSI
        "evil\u202ecsv.exe",  # right-to-left override
        "a\u200bb.csv",  # zero width space (format)
        "a\x7f.csv",
        "a\u2028b.csv",  # line separator
        "../x.csv",
        "",
    ],
)
def test_an_unsafe_file_name_is_refused_before_anything_is_stored(
    core_storage, core_blobs, core_samples, core_juki, terminal, upload, name
):
    """The name goes into the signed receipt and onto operators' screens (issue #18)."""
    data = core_juki(core_samples.day_of(MUNICIPALITY, CHIYODA, 1))
    with pytest.raises(UploadError) as refused:
        upload(terminal, data, name=name)
    assert refused.value.code == "upload.file_name"
    assert upload_count(core_storage) == 0 and not core_blobs.exists(
        hashlib.sha256(data).hexdigest()
    )


def test_a_long_japanese_file_name_within_255_bytes_is_kept(
    core_samples, core_juki, terminal, upload, core_key
):
    name = "千" * 81 + ".csv"  # 247 bytes
    receipt, _ = upload(
        terminal, core_juki(core_samples.day_of(MUNICIPALITY, CHIYODA, 1)), name=name
    )
    assert statement.verify(receipt, core_key.public_key())["file_name"] == name
