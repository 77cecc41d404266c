"""The upload phase of ``run_sync`` against the real server under gunicorn (spec §5.2).

The server in this module accepts at most :data:`MAX_RECORDS` records per
file (more is a whole-file error in the receipt) and :data:`MAX_UPLOAD`
bytes per request (more is a 413), so both refusals happen for real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.config import RetryPolicy
from appliance.agent.mail import MailError
from appliance.agent.outbox import check_notice_file
from common import statement
from common.items import MINISTRY
from common.noticefile import encode_notice_file
from common.synthetic import SampleFactory
from tests.agent.helpers import (
    Site,
    dead_transport,
    drop,
    notice_file,
    sha,
    stored_records,
    uploads_of,
)
from tests.server.conftest import API_A, API_B, API_C

pytestmark = pytest.mark.slow

MAX_RECORDS = 40
MAX_UPLOAD = 60_000


@pytest.fixture(scope="module")
def agent_server_env() -> dict[str, str]:
    return {
        "RENKEI_SERVER_MAX_RECORDS_PER_FILE": str(MAX_RECORDS),
        "RENKEI_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    }


@pytest.fixture
def make_site(agent_server, tmp_path):  # type: ignore[no-untyped-def]
    sites: list[Site] = []

    def make(lasdec: str = API_A, **overrides) -> Site:  # type: ignore[no-untyped-def]
        site = Site(agent_server, tmp_path / f"site{len(sites)}", lasdec, **overrides)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


# --- the tests -----------------------------------------------------------------------------------


def test_a_good_file_is_sent_receipted_and_moved_to_sent(make_site):
    site = make_site(API_A)
    data = notice_file(API_A, 5, "good")
    drop(site, "千代田区 20261127.csv", data)

    report = site.sync(download=False)

    assert report.status == "ok", report.to_json()
    assert report.counts()["uploads"]["sent"] == 1
    sent = site.files("sent")
    assert sent["千代田区 20261127.csv"] == data
    receipt = json.loads(sent["千代田区 20261127.csv.receipt.json"])
    body = statement.verify(receipt, site.server.server_key.public_key())
    assert body["sha256"] == sha(data) and len(body["accepted"]) == 5
    assert "千代田区 20261127.csv.report.txt" not in sent
    assert stored_records(site, "good") == [f"C-good-{i:05d}" for i in range(5)]
    assert os.listdir(site.folders.outbox) == [] and os.listdir(site.folders.spool) == []
    (row,) = site.queue.uploads()
    assert row.state == "done" and json.loads(row.receipt_json) == receipt


def test_records_the_server_refuses_are_listed_in_a_report_next_to_the_file(make_site):
    site = make_site(API_B)
    drop(site, "first.csv", notice_file(API_B, 3, "conflict", seed=3))
    site.sync(download=False)
    # the same record ids with other content: the server refuses them as conflicts
    second = notice_file(API_B, 3, "conflict", seed=4)
    drop(site, "second.csv", second)

    report = site.sync(download=False)

    assert report.status == "partial" and report.exit_code == 1
    assert [p.code for p in report.problems] == ["upload.records_rejected"]
    sent = site.files("sent")
    assert sent["second.csv"] == second
    text = sent["second.csv.report.txt"].decode("utf-8-sig")
    assert "受け付けできなかったレコード（3 件）" in text and "C-conflict-00000" in text
    assert "second.csv" not in site.files("rejected")


def test_a_file_the_server_refuses_as_a_whole_goes_to_rejected_with_its_receipt(make_site):
    site = make_site(API_C)
    data = notice_file(API_C, MAX_RECORDS + 1, "toomany")
    drop(site, "big.csv", data)

    report = site.sync(download=False)

    assert [p.code for p in report.problems] == ["file.too_many_records"]
    assert report.counts()["uploads"]["refused"] == 1
    rejected = site.files("rejected")
    assert rejected["big.csv"] == data
    assert json.loads(rejected["big.csv.receipt.json"])["statement"]["file_error"]["code"] == (
        "file.too_many_records"
    )
    assert "ファイル全体を受け付けませんでした" in rejected["big.csv.report.txt"].decode(
        "utf-8-sig"
    )
    assert site.files("sent") == {}
    assert stored_records(site, "toomany") == []


def test_a_file_over_the_servers_size_limit_is_refused_and_moved_to_rejected(make_site):
    site = make_site(API_A)
    data = notice_file(API_A, 200, "huge")
    assert len(data) > MAX_UPLOAD
    drop(site, "huge.csv", data)

    report = site.sync(download=False)

    assert [p.code for p in report.problems] == ["request.too_large"]
    assert site.files("rejected")["huge.csv"] == data
    assert "大きすぎます" in site.files("rejected")["huge.csv.report.txt"].decode("utf-8-sig")
    (row,) = site.queue.uploads()
    assert row.state == "given_up"
    assert uploads_of(site, data) == 0


def _ministry_file() -> bytes:
    return encode_notice_file(MINISTRY, SampleFactory(seed=2).day_of(MINISTRY, API_A, 2))


def _version_2() -> bytes:
    data = notice_file(API_A, 2, "v2")
    tag = "renkei-municipality-notice-v1".encode("utf-16-be")
    return data.replace(tag, "renkei-municipality-notice-v2".encode("utf-16-be"), 1)


BAD_FILES = [
    # (id, name, content or None for a symlink, code in the report)
    (
        "utf-8",
        "utf8.csv",
        lambda: "renkei-municipality-notice-v1,pattern\r\nC-1,A,千代田区\r\n".encode(),
        "file.encoding",
    ),
    ("version", "v2.csv", _version_2, "file.version"),
    (
        "records",
        "bad-records.csv",
        lambda: notice_file(API_A, 4, "bad", bad=(1, 3)),
        "date.invalid",
    ),
    ("empty", "empty.csv", lambda: b"", "file.empty"),
    ("ministry", "ministry.csv", _ministry_file, "file.direction"),
    ("symlink", "link.csv", None, "file.symlink"),
    ("control-char", "bad\tname.csv", lambda: notice_file(API_A, 1, "ctl"), "name.control"),
    ("backslash", "a\\b.csv", lambda: notice_file(API_A, 1, "bsl"), "name.separator"),
    ("too-large", "large.csv", lambda: b"x" * 5001, "file.too_large"),
]


@pytest.mark.parametrize(
    ("name", "content", "code"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_a_bad_outbox_file_goes_to_rejected_with_a_japanese_report_and_is_not_sent(
    make_site, tmp_path, name, content, code
):
    site = make_site(API_A, max_file_bytes=5000 if code == "file.too_large" else 64 << 20)
    path = site.folders.outbox / name
    if content is None:
        target = tmp_path / "secret.csv"
        target.write_bytes(notice_file(API_A, 1, "secret"))
        path.symlink_to(target)
        data = None
    else:
        data = content()
        path.write_bytes(data)

    report = site.sync(download=False)

    assert report.status == "partial" and report.exit_code == 1, report.to_json()
    assert report.counts()["uploads"]["rejected"] == 1
    rejected = sorted(site.folders.rejected.iterdir())
    assert len(rejected) == 2, rejected
    kept, text_path = rejected if not rejected[0].name.endswith(".report.txt") else rejected[::-1]
    assert text_path.name == kept.name + ".report.txt"
    if data is None:
        assert kept.is_symlink() and (tmp_path / "secret.csv").exists()
    else:
        assert kept.read_bytes() == data
        assert uploads_of(site, data) == 0
    text = text_path.read_bytes()
    assert text.startswith(b"\xef\xbb\xbf") and b"\r\n" in text
    text = text.decode("utf-8-sig")
    assert "送信していません" in text and code in text
    assert site.queue.uploads() == []
    assert os.listdir(site.folders.outbox) == []


def test_the_local_check_lists_every_bad_record():
    checked = check_notice_file(
        notice_file(API_A, 6, "every", bad=(0, 2, 5)), "x.csv", reporter=API_A
    )
    assert not checked.ok and checked.records == 6 and checked.file_error is None
    assert [entry["record_id"] for entry in checked.rejected] == [
        "C-every-00000",
        "C-every-00002",
        "C-every-00005",
    ]
    assert all(entry["problems"] for entry in checked.rejected)
    assert check_notice_file(notice_file(API_A, 3, "fine"), "y.csv", reporter=API_A).ok


def test_the_local_check_refuses_another_municipalitys_records_as_the_server_does():
    # 中央区's records in 千代田区's outbox: not this terminal's to report (common.reporting).
    checked = check_notice_file(notice_file(API_B, 3, "theirs"), "z.csv", reporter=API_A)
    assert not checked.ok and len(checked.rejected) == 3
    for entry in checked.rejected:
        codes = [problem["code"] for problem in entry["problems"]]
        assert codes == ["address.other_municipality"], entry
        assert "131024" in entry["problems"][0]["message"]  # the code it named, in Japanese


def test_the_same_file_dropped_twice_is_sent_once(make_site):
    site = make_site(API_B)
    data = notice_file(API_B, 4, "twice")
    drop(site, "a.csv", data)
    drop(site, "b.csv", data)  # the same bytes in the same run
    first = site.sync(download=False)
    drop(site, "a.csv", data)  # and again, under a name already in sent/
    second = site.sync(download=False)

    assert first.counts()["uploads"]["sent"] == 1
    assert first.counts()["uploads"]["duplicate"] == 1
    assert second.counts()["uploads"]["duplicate"] == 1
    assert second.counts()["uploads"]["sent"] == 0
    assert uploads_of(site, data) == 1
    assert len(site.queue.uploads()) == 1
    sent = site.files("sent")
    originals = sorted(n for n in sent if n.endswith(".csv"))
    assert originals == ["a (2).csv", "a.csv", "b.csv"]
    receipts = {sent[f"{n}.receipt.json"] for n in originals}
    assert len(receipts) == 1
    assert stored_records(site, "twice") == [f"C-twice-{i:05d}" for i in range(4)]


def test_server_down_then_back_the_file_is_retried_after_its_wait(make_site):
    policy = RetryPolicy(base=30.0, cap=600.0, jitter=0.5, give_up_after=3600.0)
    site = make_site(API_C, retry=policy)
    data = notice_file(API_C, 2, "down")
    drop(site, "down.csv", data)
    now = time.time()

    with dead_transport(site) as dead:
        down = site.sync(transport=dead, download=False, clock=lambda: now)

    assert down.status == "failed" and down.exit_code == 1
    assert [p.code for p in down.problems] == ["net.refused"]
    (row,) = site.queue.uploads()
    assert row.state == "failed" and row.attempts == 1 and "net.refused" in row.last_error
    assert now + 15 <= row.next_try <= now + 30
    assert os.listdir(site.folders.spool) and site.files("sent") == {}

    early = site.sync(download=False, clock=lambda: now + 10)
    assert early.counts()["uploads"]["sent"] == 0 and uploads_of(site, data) == 0

    later = site.sync(download=False, clock=lambda: now + 31)
    assert later.status == "ok" and later.counts()["uploads"]["sent"] == 1
    assert site.files("sent")["down.csv"] == data and uploads_of(site, data) == 1


def _blob_free(site: Site, tag: str) -> bytes:
    """A file whose blob folder on the server does not exist yet (so it can be blocked)."""
    for number in range(200):
        data = notice_file(site.lasdec, 2, f"{tag}{number}")
        if not (site.server.blobs.root / sha(data)[:2]).exists():
            return data
    raise AssertionError("no free blob folder")


def test_a_server_error_fails_the_upload_and_a_later_run_sends_it(make_site):
    site = make_site(API_B, retry=RetryPolicy(base=1.0, cap=2.0, jitter=0.0, give_up_after=60))
    data = _blob_free(site, "err")
    block = site.server.blobs.root / sha(data)[:2]
    block.write_bytes(b"")  # the server cannot make the blob's folder: a real 500
    drop(site, "err.csv", data)
    now = time.time()
    try:
        failed = site.sync(download=False, clock=lambda: now)
    finally:
        block.unlink()

    assert failed.status == "failed"
    assert [p.code for p in failed.problems] == ["internal"]
    assert site.queue.uploads()[0].state == "failed"

    sent = site.sync(download=False, clock=lambda: now + 5)
    assert sent.status == "ok" and uploads_of(site, data) == 1
    assert site.files("sent")["err.csv"] == data


def test_a_receipt_not_signed_by_the_pinned_key_is_not_kept(make_site):
    wrong = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
    site = make_site(API_C, server_key=wrong, retry=RetryPolicy(base=1, cap=1, jitter=0))
    data = notice_file(API_C, 2, "unsigned")
    drop(site, "u.csv", data)
    now = time.time()

    report = site.sync(download=False, clock=lambda: now)

    assert [p.code for p in report.problems] == ["receipt.invalid"]
    assert site.queue.uploads()[0].state == "failed" and site.files("sent") == {}
    # with the right key the same bytes are sent again: the server answers with its receipt
    right = statement.public_key_to_text(site.server.server_key.public_key())
    site.config = dataclasses.replace(site.config, server_key=right)
    again = site.sync(download=False, clock=lambda: now + 5)
    assert again.status == "ok" and uploads_of(site, data) == 1
    assert site.files("sent")["u.csv"] == data


def test_a_long_failure_is_mailed_once_per_incident_and_a_mail_failure_does_not_fail_the_run(
    make_site,
):
    policy = RetryPolicy(base=10.0, cap=40.0, jitter=0.0, give_up_after=100.0)
    site = make_site(API_A, retry=policy)
    drop(site, "late.csv", notice_file(API_A, 2, "late"))
    mails: list[tuple[str, str]] = []
    t0 = time.time()

    def notify(subject: str, body: str) -> None:
        mails.append((subject, body))

    def down(at: float, notifier=notify):  # type: ignore[no-untyped-def]
        with dead_transport(site) as dead:
            return site.sync(transport=dead, clock=lambda: t0 + at, notify=notifier)

    assert down(0).status == "failed" and mails == []
    assert down(50).status == "failed" and mails == []
    third = down(150)  # 150 s after the first failure: past give_up_after
    assert third.counts()["uploads"]["given_up"] == 1
    assert len(mails) == 1 and third.notified
    subject, body = mails[0]
    assert API_A in subject and "失敗" in subject and "--retry-failed" in body
    fourth = down(200)
    assert fourth.status == "failed" and len(mails) == 1  # the same incident
    assert [p.code for p in fourth.problems] == ["net.refused", "upload.given_up"]

    ok = site.sync(clock=lambda: t0 + 250, notify=notify, retry_failed=True)
    assert ok.status == "ok", ok.to_json()
    assert site.files("sent")["late.csv"]

    def broken(subject: str, body: str) -> None:
        raise MailError("mail.connect", "the relay refused the connection")

    assert down(300, broken).status == "failed"  # a new incident starts
    failing_mail = down(450, broken)
    assert failing_mail.status == "failed" and not failing_mail.notified
    assert [w.code for w in failing_mail.warnings] == ["mail.connect"]
    retried = down(460)
    assert retried.notified and len(mails) == 2


def test_a_full_disk_leaves_the_file_in_the_outbox_for_the_next_run(make_site, monkeypatch):
    import errno

    from appliance.agent import outbox

    site = make_site(API_C)
    data = notice_file(API_C, 2, "full")
    drop(site, "full.csv", data)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "move_to", full)
        report = site.sync(download=False)

    assert [p.code for p in report.problems] == ["disk.full"]
    assert site.files("outbox") == {"full.csv": data} and site.queue.uploads() == []

    assert site.sync(download=False).status == "ok"
    assert site.files("sent")["full.csv"] == data and uploads_of(site, data) == 1


def test_dropping_a_given_up_file_again_sends_it_once(make_site):
    site = make_site(API_A, retry=RetryPolicy(base=5.0, cap=5.0, jitter=0.0, give_up_after=0.0))
    data = notice_file(API_A, 2, "again")
    drop(site, "again.csv", data)
    now = time.time()
    with dead_transport(site) as dead:
        gave_up = site.sync(transport=dead, download=False, clock=lambda: now)
    assert gave_up.counts()["uploads"]["given_up"] == 1
    assert site.queue.uploads()[0].state == "given_up"

    drop(site, "again.csv", data)  # staff drop it again: "send it after all"
    report = site.sync(download=False, clock=lambda: now + 1)

    assert report.status == "ok", report.to_json()
    assert report.counts()["uploads"]["sent"] == 1
    assert report.counts()["uploads"]["duplicate"] == 1
    assert uploads_of(site, data) == 1
    assert sorted(n for n in site.files("sent") if n.endswith(".csv")) == [
        "again (2).csv",
        "again.csv",
    ]
