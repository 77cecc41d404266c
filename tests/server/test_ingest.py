"""Importing ministry notices: every problem reported, the rest loaded, nothing twice."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, format_row, header, record_fields
from common.records import Record
from common.synthetic import SampleFactory
from server.errors import NoticeImportError
from server.ingest import import_notices
from server.storage import Storage, imports, notices
from tests.server.conftest import CHIYODA, SAPPORO, SAPPORO_CHUO, ministry_jsonl

DAY = date(2026, 11, 27)


def stored(storage: Storage) -> dict[str, sa.Row]:
    with storage.read() as conn:
        return {row.record_id: row for row in conn.execute(sa.select(notices))}


def run(storage: Storage, data: bytes, now: datetime, **kwargs):
    kwargs.setdefault("business_date", DAY)
    return import_notices(storage, data, file_name="in.jsonl", now=now, **kwargs)


def good_records(samples: SampleFactory, count: int = 4, lasdec: str = CHIYODA) -> list[Record]:
    return list(samples.day_of(MINISTRY, lasdec, count))


def test_good_and_bad_records(core_storage: Storage, core_samples: SampleFactory, core_now):
    good = good_records(core_samples, 3) + good_records(core_samples, 2, SAPPORO_CHUO)
    missing = good_records(core_samples, 3)[2].with_values(sex=None)  # pattern C: sex is ●
    two_problems = good_records(core_samples, 1)[0].with_values(
        birth_date="20261340", nationality="QQQ"
    )
    city = good_records(core_samples, 1)[0].with_values(address_code=SAPPORO)
    data = ministry_jsonl([good[0], missing, good[1], two_problems, good[2], city, *good[3:]])
    data = data.replace(b"\n", b"\nnot json\n", 1)  # line 2 becomes garbage; records move down
    result = run(core_storage, data, core_now)

    assert result.records == 9 and result.loaded == 5 and result.duplicates == []
    assert not result.ok and result.file_error is None
    by_line = {entry["line"]: entry for entry in result.rejected}
    assert sorted(by_line) == [2, 4, 6, 8]
    assert [p["code"] for p in by_line[2]["problems"]] == ["row.json"]
    assert by_line[4]["record_id"] == missing.record_id
    assert [(p["code"], p["column"]) for p in by_line[4]["problems"]] == [("item.missing", "sex")]
    assert sorted(p["code"] for p in by_line[6]["problems"]) == ["code.unknown", "date.invalid"]
    assert [p["code"] for p in by_line[8]["problems"]] == ["routing.not_receiving"]
    assert all(p["message"] and p["message_en"] for e in result.rejected for p in e["problems"])

    rows = stored(core_storage)
    assert sorted(rows) == sorted(r.record_id for r in good)
    for record in good:
        row = rows[record.record_id]
        assert row.lasdec == record.get("address_code") and row.business_date == DAY
        assert json.loads(row.record) == record.to_json() and row.batch_id is None
        assert row.substitutions is None
    with core_storage.read() as conn:
        audit = conn.execute(sa.select(imports)).one()
    assert (audit.records, audit.loaded, audit.rejected) == (9, 5, 4)


def test_reimport_loads_nothing_twice(core_storage: Storage, core_samples, core_now):
    records = good_records(core_samples, 5)
    data = ministry_jsonl(records)
    first = run(core_storage, data, core_now)
    assert first.ok and first.loaded == 5
    again = run(core_storage, data, core_now, business_date=date(2026, 11, 28))
    assert again.ok and again.loaded == 0
    assert again.duplicates == [r.record_id for r in records]
    rows = stored(core_storage)
    assert len(rows) == 5 and {r.business_date for r in rows.values()} == {DAY}


def test_same_id_other_content_is_a_conflict(core_storage: Storage, core_samples, core_now):
    records = good_records(core_samples, 2)
    run(core_storage, ministry_jsonl(records), core_now)
    changed = records[1].with_values(address="東京都千代田区九丁目9番9号")
    result = run(core_storage, ministry_jsonl([records[0], changed]), core_now)
    assert result.loaded == 0 and result.duplicates == [records[0].record_id]
    [entry] = result.rejected
    assert entry["record_id"] == changed.record_id and entry["line"] == 3
    assert [p["code"] for p in entry["problems"]] == ["record.conflict"]
    assert json.loads(stored(core_storage)[changed.record_id].record) == records[1].to_json()


def utf8_csv(records: list[Record]) -> bytes:
    rows = [format_row(header(MINISTRY))] + [format_row(record_fields(r)) for r in records]
    return "".join(rows).encode("utf-8")


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda data: data[:-7], "file.truncated"),
        (lambda data: data[:-3] + b"\xff\xfe\n", "file.encoding"),
        (
            lambda data: data.replace(b"renkei-ministry-notice-v1", b"renkei-ministry-notice-v9"),
            "file.version",
        ),
        (
            lambda data: data.replace(
                b"renkei-ministry-notice-v1", b"renkei-municipality-notice-v1"
            ),
            {"jsonl": "file.direction", "csv": "file.header"},  # CSV: the columns differ too
        ),
        (lambda data: b"", "file.empty"),
    ],
)
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_file_errors_load_nothing(
    core_storage: Storage, core_samples, core_now, mangle, code, kind
):
    records = good_records(core_samples, 6)
    data = ministry_jsonl(records) if kind == "jsonl" else utf8_csv(records)
    result = run(core_storage, mangle(data), core_now)
    code = code[kind] if isinstance(code, dict) else code
    assert result.file_error is not None and result.file_error["code"] == code
    assert result.file_error["message"] and result.file_error["message_en"]
    assert result.loaded == 0 and result.rejected == [] and not result.ok
    assert stored(core_storage) == {}


def test_a_municipality_notice_file_is_refused(core_storage: Storage, core_samples, core_now):
    data = encode_notice_file(MUNICIPALITY, core_samples.day_of(MUNICIPALITY, CHIYODA, 2))
    result = run(core_storage, data, core_now)
    assert result.file_error["code"] == "file.direction" and stored(core_storage) == {}


@pytest.mark.parametrize("kind", ["csv", "juki"])
def test_csv_and_juki_inputs(core_storage: Storage, core_samples, core_now, kind):
    records = good_records(core_samples, 3)
    bad = records[1].with_values(change_reason="M-ZZ")
    data = (
        utf8_csv([records[0], bad, records[2]])
        if kind == "csv"
        else encode_notice_file(MINISTRY, [records[0], bad, records[2]])
    )
    result = run(core_storage, data, core_now)
    assert result.loaded == 2
    [entry] = result.rejected
    assert entry["line"] == 3 and entry["record_id"] == bad.record_id
    assert [p["code"] for p in entry["problems"]] == ["change_reason.not_in_pattern"]


def test_degenerate(core_storage: Storage, core_samples, core_now):
    base = good_records(core_samples, 1)[0]  # pattern A: a name with kanji
    record = base.with_values(name_kanji="金㐌俊")  # 㐌 has no Juki code; 縮退 to 色
    plain = run(core_storage, ministry_jsonl([record]), core_now)
    assert [p["code"] for p in plain.rejected[0]["problems"]] == ["text.unencodable"]

    result = run(core_storage, ministry_jsonl([record]), core_now, degenerate=True)
    assert result.ok and result.loaded == 1
    [sub] = result.substitutions
    assert (sub["record_id"], sub["column"], sub["position"]) == (record.record_id, "name_kanji", 1)
    assert (sub["original"], sub["replacement"]) == ("㐌", "色")
    row = stored(core_storage)[record.record_id]
    assert json.loads(row.record)["name_kanji"] == "金色俊"
    assert json.loads(row.substitutions) == [sub]
    again = run(core_storage, ministry_jsonl([record]), core_now, degenerate=True)
    assert again.duplicates == [record.record_id] and again.loaded == 0


def test_no_fallback_is_still_rejected(core_storage: Storage, core_samples, core_now):
    record = good_records(core_samples, 1)[0].with_values(name_kanji="金가")
    result = run(core_storage, ministry_jsonl([record]), core_now, degenerate=True)
    assert [p["code"] for p in result.rejected[0]["problems"]] == ["text.unencodable"]


def test_import_needs_the_master(tmp_path: Path, core_samples, core_now):
    storage = Storage(f"sqlite:///{tmp_path}/empty.sqlite3")
    storage.migrate()
    with pytest.raises(NoticeImportError) as caught:
        run(storage, ministry_jsonl(good_records(core_samples, 1)), core_now)
    assert caught.value.code == "import.no_master"
    storage.dispose()
