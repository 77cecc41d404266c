"""Scenario 1: a normal day, the way it will run in production.

The ministry imports the day's notices for several municipalities (one name
needs the MJ縮退マップ: 㐌 has no Juki code) and closes the day.  Staff of
千代田区 bring their municipality notice file on a registered medium (a loop
device with an ext4 file system) and import it into the outbox; 札幌市中央区
drops its file into the outbox directly; names carry an ideographic
variation sequence (辻󠄃) and a variant kanji with a code point of its own (髙).
Every terminal's timer fires at once; each fetches exactly its own batch (an
empty one where nothing happened), sends its files and files them in sent/
with the server's receipt.  Staff export the day's notices to the medium and
eject it.  The ministry's export shows the received records in Unicode with
the characters intact, and the operator's status has nothing pending.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from common.items import MUNICIPALITY
from common.noticefile import NoticeReader, encode_notice_file
from common.records import Record

from . import invariants
from .report import emit
from .terminal import Terminal
from .world import ELSEWHERE, World, municipality_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IVS_NAME = "辻\U000e0103花"  # 辻󠄃: an MJ variant that exists only as a variation sequence
VARIANT_NAME = "髙橋花子"  # 髙: a variant with its own code point
DEGENERATE_NAME = "金㐌俊"  # 㐌 has no Juki code: the MJ縮退マップ gives 色


def _named(records: list[Record], index: int, kanji: str) -> Record:
    """Give the ``index``-th record that carries a name this kanji name; returns it."""
    chosen = [i for i, r in enumerate(records) if "name_alphabet" in r.values][index]
    records[chosen] = records[chosen].with_values(name_kind="3", name_kanji=kanji)
    return records[chosen]


class Medium:
    """A registered USB stick: an ext4 image on a loop device, staff's files already on it."""

    def __init__(self, folder: Path, files: dict[str, bytes]):
        content = folder / "content"
        (content / "MUNICIPALITY").mkdir(parents=True)
        for name, data in files.items():
            (content / "MUNICIPALITY" / name).write_bytes(data)
        self.image = folder / "medium.img"
        subprocess.run(["truncate", "-s", "16M", str(self.image)], check=True)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(content), str(self.image)],
            check=True,
            capture_output=True,
        )
        self.device = subprocess.run(
            ["losetup", "-f", "--show", str(self.image)], check=True, capture_output=True, text=True
        ).stdout.strip()

    def detach(self) -> None:
        subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)
        left = subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, text=True)
        assert not left.stdout.strip(), f"loop device left attached: {left.stdout}"


def media(terminal: Terminal, command: str, device: str) -> subprocess.CompletedProcess:
    """``renkei-agent media COMMAND`` as staff run it (sudo: as root) on the terminal."""
    argv = [terminal.unit.command()[0], "media", command]
    if command != "eject":
        argv += ["--device", device, "--json"]
    return terminal.run(argv)


def inbox_records(data: bytes) -> list[Record]:
    return [r for r in NoticeReader(io.BytesIO(data), name="inbox") if isinstance(r, Record)]


def test_a_normal_day(world: World, request, tmp_path):  # type: ignore[no-untyped-def]
    chiyoda, sapporo, hamamatsu = (world.terminals[code] for code in world.lasdecs)
    rows: list[tuple] = []

    # During the day: 千代田区's file comes on the registered medium, 札幌市中央区's into the outbox.
    tag = world.tag("day")
    chiyoda_records = municipality_records(chiyoda.lasdec, 6, f"{tag}-{chiyoda.lasdec}")
    ivs = _named(chiyoda_records, 0, IVS_NAME)
    variant = _named(chiyoda_records, 1, VARIANT_NAME)
    chiyoda_file = encode_notice_file(MUNICIPALITY, chiyoda_records)
    sapporo_records = municipality_records(sapporo.lasdec, 4, f"{tag}-{sapporo.lasdec}")
    medium = Medium(tmp_path, {"municipality-131016.csv": chiyoda_file})
    try:
        imported = media(chiyoda, "import", medium.device)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert [f["outcome"] for f in json.loads(imported.stdout)["files"]] == ["imported"]
        chiyoda.dropped(
            "municipality-131016.csv",
            chiyoda_file,
            expect="sent",
            record_ids=[r.record_id for r in chiyoda_records],
        )
        rows.append(("medium → outbox 131016", "renkei-agent media import", "1 file", "ok"))
        sapporo.drop(
            "市町村通知.csv",
            encode_notice_file(MUNICIPALITY, sapporo_records),
            expect="sent",
            record_ids=[r.record_id for r in sapporo_records],
        )

        # After business hours the ministry imports the day and closes it.
        day = world.next_day()
        notices = world.ministry_notices(
            {chiyoda.lasdec: 30, sapporo.lasdec: 12, ELSEWHERE: 5}, day, world.tag("m")
        )
        notices[0] = notices[0].with_values(name_kind="3", name_kanji=DEGENERATE_NAME)
        _, result = world.publish({}, extra=notices, degenerate=True, day=day)
        assert [
            (s["record_id"], s["original"], s["replacement"]) for s in result["substitutions"]
        ] == [(notices[0].record_id, "㐌", "色")], result["substitutions"]
        rows.append(("import + close-day", "renkei-server", f"{len(notices)} notices, {day}", "ok"))

        # The evening timers fire on every terminal at once.
        runs = world.run_agents()
        for code, run in runs.items():
            assert run.status == 0 and run.outcome == "ok", (code, run.stderr, run.summary)
            assert run.outcomes("batches") == ["placed", "acknowledged"], (code, run.summary)
        seconds = max(run.seconds for run in runs.values())
        rows.append(("timers fire × 3", "renkei-agent sync", f"ok, exit 0, {seconds:.1f} s", "ok"))

        # Each inbox holds exactly its own batch; 浜松市中央区 got an empty one.
        counts = invariants.check(world, final=True)
        stamp = day.strftime("%Y%m%d")
        for terminal, expected in ((chiyoda, 30), (sapporo, 12), (hamamatsu, 0)):
            (name,) = [n for n in terminal.files("inbox") if f"-{stamp}-" in n]
            records = inbox_records(terminal.files("inbox")[name])
            assert len(records) == expected, (terminal.lasdec, len(records))
            assert {r.values["address_code"] for r in records} <= {terminal.lasdec}
            rows.append((f"inbox {terminal.lasdec}", name, f"{expected} notices, its own", "ok"))
        delivered = {r.record_id: r for r in inbox_records(_on(chiyoda, stamp))}
        assert delivered[notices[0].record_id].values["name_kanji"] == "金色俊"
        rows.append(("縮退 㐌 → 色", notices[0].record_id, "listed at import, in the batch", "ok"))

        # Staff export the day's notices onto the medium and eject it.
        exported = media(chiyoda, "export", medium.device)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        files = json.loads(exported.stdout)["files"]
        assert files, exported.stdout
        on_medium = chiyoda.view("/media/renkei/MINISTRY")
        for entry in files:
            assert (on_medium / entry["name"]).read_bytes() == chiyoda.files("inbox")[entry["name"]]
        assert any(p.name.startswith("MANIFEST-") for p in on_medium.iterdir())
        ejected = media(chiyoda, "eject", medium.device)
        assert ejected.returncode == 0, ejected.stderr
        assert not on_medium.exists()
        rows.append(
            ("inbox → medium 131016", "media export + eject", f"{len(files)} file(s)", "ok")
        )
    finally:
        chiyoda.run(["umount", "/media/renkei"])
        medium.detach()

    # Staff's files are in sent/ with receipts; the ministry exports them in Unicode.
    export = world.folder / f"received-{stamp}.jsonl"
    world.server.cli("export", "-o", str(export))
    lines = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    by_id = {line["record"]["record_id"]: line for line in lines}
    for record in chiyoda_records + sapporo_records:
        assert by_id[record.record_id]["record"] == {
            "record_id": record.record_id,
            "pattern": record.pattern,
            **{k: v for k, v in record.values.items() if v},
        }
    assert by_id[ivs.record_id]["record"]["name_kanji"] == IVS_NAME
    assert by_id[ivs.record_id]["variants"] == [
        {"column": "name_kanji", "position": 0, "character": "辻\U000e0103", "base": "辻"}
    ]
    assert by_id[variant.record_id]["record"]["name_kanji"] == VARIANT_NAME
    assert by_id[variant.record_id]["variants"] == []
    rows.append(("export (Unicode)", "renkei-server export", "10 records; 辻󠄃 IVS, 髙 intact", "ok"))

    status = world.status()
    pending = {
        row["lasdec"]: row for row in status["municipalities"] if row["lasdec"] in world.lasdecs
    }
    assert all(not row["batches_pending"] for row in pending.values()), pending
    rows.append(("operator status", "renkei-server status", "nothing pending", "ok"))
    rows += [
        (f"invariants {code}", "final", f"{c['batches']} batch(es), {c['records']} records", "ok")
        for code, c in counts.items()
    ]
    emit(
        request,
        "Scenario 1 — a normal day: 3 terminals, a registered medium, IVS and 縮退",
        ("step", "how", "result", "check"),
        rows,
    )


def _on(terminal: Terminal, stamp: str) -> bytes:
    return next(data for name, data in terminal.files("inbox").items() if f"-{stamp}-" in name)
