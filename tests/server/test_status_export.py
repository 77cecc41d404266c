"""The operator's status view and the export of received notices."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta

import pytest

from common.items import MUNICIPALITY
from server.batches import acknowledge, list_batches
from server.closeday import close_day
from server.enrollment import note_contact, revoke_terminal
from server.export import export_received, variation_sequences
from server.status import server_status
from server.uploads import receive_upload
from tests.server.conftest import CHIYODA, SAPPORO_CHUO

DAY = date(2026, 11, 27)
ASAHIKAWA = "012041"
NIHONBASHI = "131024"  # 東京都中央区: no terminal


@pytest.fixture
def day(core_storage, core_blobs, core_key, core_samples, core_juki, core_enroll, core_now):
    """Two closed days; Chiyoda fetched the first and uploaded today; others in other states."""
    yesterday = core_now - timedelta(days=1)
    chiyoda, _ = core_enroll(CHIYODA, now=yesterday - timedelta(days=1))
    ward, _ = core_enroll(SAPPORO_CHUO, now=yesterday)
    core_enroll(ASAHIKAWA, now=core_now - timedelta(days=3))  # enrolled, never heard from again
    revoke_terminal(core_storage, ward.terminal_id, now=yesterday)
    close_day(core_storage, core_blobs, core_key, DAY - timedelta(days=1), now=yesterday)
    close_day(core_storage, core_blobs, core_key, DAY, now=core_now)
    first = list_batches(core_storage, CHIYODA, pending_only=True)[0]
    acknowledge(
        core_storage, CHIYODA, first.batch_id, first.sha256, chiyoda.terminal_id, now=yesterday
    )

    records = list(core_samples.day_of(MUNICIPALITY, CHIYODA, 3))
    records[0] = records[0].with_values(name_kanji="辻󠄃花")
    bad = records[2].with_values(birth_date="2026")

    def send(recs, when):
        return receive_upload(
            core_storage,
            core_blobs,
            core_key,
            chiyoda,
            core_juki(recs),
            file_name="f.csv",
            now=when,
            max_records=100,
        )[0]

    send(records[:1], yesterday)  # yesterday: not "today"
    send([records[1], bad], core_now - timedelta(minutes=30))
    note_contact(
        core_storage, chiyoda.terminal_id, now=core_now, agent_version="1.1", clock_skew=2.5
    )
    return {"chiyoda": chiyoda, "records": records, "yesterday": yesterday}


def test_status_per_municipality(core_storage, core_now, day):
    status = server_status(core_storage, now=core_now)
    rows = {m.lasdec: m for m in status.municipalities}
    assert status.today == DAY and status.latest_closed == DAY and len(rows) > 1800

    chiyoda = rows[CHIYODA]
    assert (chiyoda.terminals, chiyoda.revoked, chiyoda.last_contact) == (1, 0, core_now)
    assert chiyoda.agent_versions == ("1.1",) and chiyoda.clock_skew == 2.5
    assert (chiyoda.pending, chiyoda.acknowledged, chiyoda.last_sequence) == (1, 1, 2)
    assert chiyoda.oldest_pending == DAY and not chiyoda.overdue(status.latest_closed)
    assert (chiyoda.uploads_today, chiyoda.rejected_today, chiyoda.file_errors_today) == (1, 1, 0)

    asahikawa = rows[ASAHIKAWA]
    assert asahikawa.pending == 2 and asahikawa.overdue(status.latest_closed)
    assert asahikawa.silent(core_now) and asahikawa.agent_versions == ("1.0.0",)

    assert (rows[SAPPORO_CHUO].terminals, rows[SAPPORO_CHUO].revoked) == (0, 1)
    quiet = rows[NIHONBASHI]
    assert (quiet.terminals, quiet.pending, quiet.uploads_today) == (0, 2, 0)

    attention = [m.lasdec for m in status.attention()]
    assert attention == sorted([ASAHIKAWA, SAPPORO_CHUO, CHIYODA])

    summary = status.to_json(all_rows=False)
    assert summary["with_terminals"] == 2 and summary["overdue"] == 1 and summary["attention"] == 3
    assert [m["lasdec"] for m in summary["municipalities"]] == attention
    assert len(status.to_json()["municipalities"]) == len(rows)
    json.dumps(status.to_json())  # serialisable


def test_export_received(core_storage, core_now, day):
    out = io.StringIO()
    assert export_received(core_storage, out) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    records = day["records"]
    assert [line["record"] for line in lines] == [records[0].to_json(), records[1].to_json()]
    first = lines[0]
    assert first["lasdec"] == CHIYODA and first["upload_id"].startswith("up_")
    assert first["terminal_id"] == day["chiyoda"].terminal_id
    assert first["received_at"] == "2026-11-26T09:00:00Z"
    assert first["variants"] == [
        {"column": "name_kanji", "position": 0, "character": "辻󠄃", "base": "辻"}
    ]
    assert lines[1]["variants"] == []

    recent = io.StringIO()
    assert export_received(core_storage, recent, since=core_now - timedelta(hours=1)) == 1
    assert json.loads(recent.getvalue())["record"]["record_id"] == records[1].record_id


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"a": "abc"}, []),
        ({"a": "x辻\U000e0103y"}, [(1, "辻")]),
        ({"a": "葛\U000e0100葛\U000e0101"}, [(0, "葛"), (2, "葛")]),
        ({"a": "A\ufe00"}, [(0, "A")]),
    ],
)
def test_variation_sequences(record, expected):
    assert [(v["position"], v["base"]) for v in variation_sequences(record)] == expected


def test_status_table_marks_what_needs_action(core_storage, core_now, day):
    lines = server_status(core_storage, now=core_now).text_lines()
    assert "要確認 3" in lines[0] and "未受領 1" in lines[0]
    assert lines[1].split()[:3] == ["code", "団体", "端末"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert sorted(rows) == sorted([ASAHIKAWA, SAPPORO_CHUO, CHIYODA])
    assert rows[ASAHIKAWA][3:5] == ["3日前!", "2!"]  # silent since enrolling; one batch overdue
    assert rows[SAPPORO_CHUO][2] == "0!"  # its only terminal was revoked
    assert rows[CHIYODA][2:] == ["1", "0分前", "1", "1", "1", "1", "+2.5s", "1.1"]
    all_lines = server_status(core_storage, now=core_now).text_lines(all_rows=True)
    assert len(all_lines) == 2 + len(server_status(core_storage, now=core_now).municipalities)
