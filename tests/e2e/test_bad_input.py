"""Scenario 5: a corpus of bad municipality notice files through the outbox (``corpus.py``).

Staff of 浜松市中央区 drop 60-odd broken files at once — wrong encodings,
broken structure, invalid records, a file over the size limit, a large file
with its one bad record at the end, bad names, a symlink to /etc/shadow, a
FIFO, a folder, a file the agent may not read, seeded mutations — next to
three good files, on a day the ministry has a batch for them.  One timer run:

* every bad file is in rejected/ with a report naming its reason (and, for
  invalid records, the record's problem); the FIFO and the folder are left
  alone in the outbox; nothing was sent of any of them;
* the agent did not crash (a recorded run, no traceback) and nothing else was
  delayed: the batch was placed and the three good files were sent in the
  same run;
* the invariants hold.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from common.errors import NoticeFileError
from common.items import MUNICIPALITY
from common.noticefile import NoticeReader, encode_notice_file

from . import invariants
from .corpus import Case, bad_files
from .report import emit
from .world import World, municipality_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _put(terminal, case: Case) -> str:  # type: ignore[no-untyped-def]
    """Create the entry in the outbox as staff would (via the host's view); returns its name."""
    outbox = os.fsencode(terminal.folder_view("outbox"))
    raw = case.name if isinstance(case.name, bytes) else case.name.encode("utf-8")
    path = os.path.join(outbox, raw)
    gid = terminal.staff_gid()
    if case.kind == "symlink":
        os.symlink(case.data, path)
        os.lchown(path, 0, gid)
    elif case.kind == "fifo":
        os.mkfifo(path, 0o660)
        os.chown(path, 0, gid)
    elif case.kind == "folder":
        os.mkdir(path, 0o770)
        os.chown(path, 0, gid)
    else:
        with open(path, "wb") as out:
            if case.kind == "sparse":
                out.truncate(case.size)
            else:
                out.write(case.data)
        os.chown(path, 0, gid)
        os.chmod(path, 0o000 if case.kind == "unreadable" else 0o640)
    name = os.fsdecode(raw)
    if case.kind in ("file", "unreadable"):
        terminal.dropped(name, case.data, expect=case.expect)
    elif case.kind == "sparse":
        zeros = hashlib.sha256()
        for start in range(0, case.size, 1 << 20):
            zeros.update(bytes(min(1 << 20, case.size - start)))
        terminal.dropped(name, expect=case.expect, digest=zeros.hexdigest())
    else:
        terminal.dropped(name, expect="special")
    # How the run's record names it: bytes that are not UTF-8 as \xNN.
    return raw.decode("utf-8", "backslashreplace")


def test_a_corpus_of_bad_files(world: World, request):  # type: ignore[no-untyped-def]
    terminal = world.terminals["221384"]
    tag = world.tag("bad")
    cases = list(bad_files(terminal.lasdec, tag))
    assert len(cases) >= 50
    names = {_put(terminal, case): case for case in cases}
    good = {}
    for number in range(3):
        records = municipality_records(terminal.lasdec, 5, f"{tag}-good{number}")
        name = f"{tag}-good{number}.csv"
        terminal.drop(
            name,
            encode_notice_file(MUNICIPALITY, records),
            expect="sent",
            record_ids=[r.record_id for r in records],
        )
        good[name] = records
    world.publish({terminal.lasdec: 50})

    run = terminal.agent()

    assert "Traceback" not in run.stderr, run.stderr
    assert run.status == 1 and run.outcome == "partial", (run.status, run.summary.get("problems"))
    assert not [p for p in run.summary["problems"] if p["failure"]], run.summary["problems"]
    events = {event["name"]: event for event in run.summary["files"]}
    assert run.outcomes("batches") == ["placed", "acknowledged"]  # nothing else delayed
    for name in good:
        assert [e["outcome"] for e in run.summary["files"] if e["name"] == name] == [
            "queued",
            "sent",
        ], name
    groups: dict[str, list[str]] = {}
    rejected = terminal.folder_view("rejected")
    for name, case in names.items():
        if case.expect == "outbox":
            assert name not in events, events.get(name)
            entry = terminal.folder_view("outbox") / str(case.name)
            assert entry.exists() and not entry.is_symlink(), name
            groups.setdefault(case.group, []).append("left in the outbox")
            continue
        event = events.get(name)
        assert event is not None, (name, sorted(events)[:5])
        assert (event["outcome"], event.get("code")) == ("rejected", case.code), (case.label, event)
        moved = rejected / Path(event["path"]).name
        assert moved.is_symlink() if case.kind == "symlink" else moved.is_file(), moved
        report = (rejected / (moved.name + ".report.txt")).read_text(encoding="utf-8-sig")
        # the report names the reason: the record's problem, or what is wrong with the file
        assert f"コード: {case.problem or case.code}" in report, (case.label, report[:600])
        groups.setdefault(case.group, []).append(case.problem or case.code)
    counts = invariants.check(world, final=True, terminals=[terminal])
    emit(
        request,
        f"Scenario 5 — {len(cases)} bad files and 3 good ones in one outbox "
        f"(one run, {run.seconds:.1f} s: batch placed, good files sent)",
        ("kind", "files", "each rejected with its reason (or left alone)", "check"),
        [
            (group, len(reasons), ", ".join(sorted(set(reasons))), "ok")
            for group, reasons in groups.items()
        ]
        + [("invariants", "", f"final: {counts[terminal.lasdec]['records']} records", "ok")],
    )


def test_lf_line_ends_are_named_as_such():
    records = municipality_records("221384", 3, "lf")
    text = encode_notice_file(MUNICIPALITY, records).decode("juki").replace("\r\n", "\n")
    with pytest.raises(NoticeFileError) as caught:
        list(NoticeReader(io.BytesIO(text.encode("juki")), name="lf.csv"))
    assert caught.value.code == "file.line_end"
