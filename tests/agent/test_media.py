"""``renkei-agent media``: media as loop-mounted file system images, mounted by the agent's code.

Needs root and losetup; the image is FAT (mkfs.vfat, Debian: dosfstools) when the running
kernel has vfat, else ext4 (some CI kernels and containers have no vfat module); both are
types the shipped mount unit allows.
Every loop device and mount a test makes is removed by the fixture, failed or not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.agent import media as m
from appliance.agent.mount import Mounter, find_mount
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file
from common.synthetic import SampleFactory

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "appliance/rootfs/etc/systemd/system/media-renkei.mount"
LASDEC = "131016"
DEVICE = m.DeviceId("0781", "5583", "TESTSERIAL01", "/dev/loop-test")
NOW = dt.datetime(2025, 4, 1, 9, 0, tzinfo=dt.UTC)


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    for tool in ("losetup", f"mkfs.{FSTYPE}", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: dosfstools, e2fsprogs, util-linux)")


def _kernel_has(fstype: str) -> bool:
    return any(
        line.split()[-1] == fstype for line in Path("/proc/filesystems").read_text().splitlines()
    )


FSTYPE = "vfat" if _kernel_has("vfat") else "ext4"


def _mounted_at(where: Path) -> bool:
    return find_mount(where) is not None


class Loop:
    """A FAT image on a loop device; ``cleanup`` unmounts and detaches whatever is left."""

    def __init__(self, tmp: Path, size: str):
        self.image = tmp / "media.img"
        self.where = tmp / "mnt"
        subprocess.run(["truncate", "-s", size, str(self.image)], check=True)
        mkfs = ["mkfs.vfat"] if FSTYPE == "vfat" else ["mkfs.ext4", "-q", "-F", "-m", "0"]
        subprocess.run([*mkfs, str(self.image)], check=True, capture_output=True)
        self.device = Path(
            subprocess.run(
                ["losetup", "-f", "--show", str(self.image)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

    def cleanup(self) -> None:
        while _mounted_at(self.where):
            plain = subprocess.run(["umount", str(self.where)], check=False, capture_output=True)
            if plain.returncode != 0:  # still busy: detach it lazily
                subprocess.run(["umount", "-l", str(self.where)], check=False)
        subprocess.run(["losetup", "-d", str(self.device)], check=False, capture_output=True)

    def attached(self) -> str:
        """What still holds the image; the kernel may take a moment to let go under load."""
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, text=True)
            if not out.stdout.strip() or time.monotonic() > deadline:
                return out.stdout.strip()
            time.sleep(0.1)


@pytest.fixture
def make_loop(tmp_path):
    _need_root_tools()
    loops: list[Loop] = []

    def make(size: str = "16M") -> Loop:
        folder = tmp_path / f"l{len(loops)}"
        folder.mkdir()
        loop = Loop(folder, size)
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.cleanup()
        leaked = loop.attached()
        assert leaked == "", f"loop device leaked: {leaked}"


@pytest.fixture
def site(tmp_path):
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    for folder in (inbox, outbox, state):
        folder.mkdir()
    return inbox, outbox, state / m.JOURNAL_NAME


def _ministry(day: str, seq: int, count: int = 2) -> tuple[str, bytes]:
    samples = SampleFactory(seed=seq, day=dt.date.fromisoformat(day))
    data = encode_notice_file(MINISTRY, samples.day_of(MINISTRY, LASDEC, count))
    return f"ministry-{LASDEC}-{day.replace('-', '')}-{seq}.csv", data


def _municipality(count: int = 2, seed: int = 5) -> bytes:
    return encode_notice_file(
        MUNICIPALITY, SampleFactory(seed=seed).day_of(MUNICIPALITY, LASDEC, count)
    )


def _visible(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != "lost+found"
    )


# --- pure parts -------------------------------------------------------------------------------


def test_the_shipped_mount_unit_has_the_options_and_types_the_agent_uses():
    text = UNIT.read_text()
    options = re.search(r"^Options=(.*)$", text, re.M)[1].split(",")
    types = re.search(r"^Type=(.*)$", text, re.M)[1].split(",")
    assert tuple(options) == m.MOUNT_OPTIONS
    assert tuple(types) == m.MOUNT_TYPES
    assert m.missing_options(options) == []
    assert re.search(r"^Where=(.*)$", text, re.M)[1] == str(m.MOUNT_POINT)
    assert re.search(r"^What=(.*)$", text, re.M)[1] == str(m.DEVICE_LINK)


def test_manifest_round_trip_and_malformed_manifests_are_refused():
    files = [m.FileEntry("a.csv", 3, "a" * 64), m.FileEntry("日本.csv", 0, "0" * 64)]
    assert m.parse_manifest(m.manifest_text(files)) == files
    for bad in ("", "name\tsize\n", "name\tsize\tsha256\na.csv\tx\t" + "a" * 64):
        with pytest.raises(ValueError):
            m.parse_manifest(bad)


@pytest.mark.parametrize(
    ("date", "everything", "expected"),
    [
        (None, False, ["ministry-131016-20250402-2.csv"]),
        ("2025-04-01", False, ["ministry-131016-20250401-1.csv"]),
        ("20250402", False, ["ministry-131016-20250402-2.csv"]),
        (None, True, ["ministry-131016-20250401-1.csv", "ministry-131016-20250402-2.csv"]),
    ],
)
def test_which_files_are_exported(date, everything, expected):
    inbox = [("ministry-131016-20250401-1.csv", "s1"), ("ministry-131016-20250402-2.csv", "s2")]
    entries = [
        {
            "direction": "export",
            "status": "ok",
            "files": [{"name": "x", "source": inbox[0][0], "sha256": "s1"}],
        },
        {
            "direction": "export",
            "status": "failed",
            "files": [{"name": inbox[1][0], "sha256": "s2"}],
        },
    ]
    chosen = m.select_exports(inbox, m.exported_keys(entries), date=date, everything=everything)
    assert [name for name, _ in chosen] == expected


def test_a_bad_date_is_refused():
    with pytest.raises(ValueError):
        m.select_exports([], set(), date="April")


# --- real media -------------------------------------------------------------------------------


def test_the_medium_is_mounted_nosuid_nodev_noexec(make_loop):
    loop = make_loop()
    mounted = Mounter().attach(loop.device, loop.where)
    line = next(
        entry.split()
        for entry in Path("/proc/mounts").read_text().splitlines()
        if entry.split()[1] == str(loop.where)
    )
    assert line[0] == str(loop.device) and line[2] == FSTYPE
    assert {"nosuid", "nodev", "noexec", "noatime"} <= set(line[3].split(","))
    assert Mounter().attach(loop.device, loop.where) == mounted  # found, not mounted twice
    assert Mounter().eject(loop.where) is True
    assert not _mounted_at(loop.where)
    assert Mounter().eject(loop.where) is False


def test_a_mount_without_noexec_is_refused(make_loop):
    loop = make_loop()
    loop.where.mkdir()
    subprocess.run(["mount", "-o", "nosuid,nodev", str(loop.device), str(loop.where)], check=True)
    with pytest.raises(m.MediaError) as caught:
        Mounter().attach(loop.device, loop.where)
    assert caught.value.code == "media.options" and "noexec" in caught.value.message


def test_no_medium_plugged_in(tmp_path):
    with pytest.raises(m.MediaError) as caught:
        Mounter().attach(tmp_path / "no-such-device", tmp_path / "mnt")
    assert caught.value.code == "media.absent" and "媒体" in caught.value.message_ja


def test_a_corrupted_file_system_is_a_clear_error(make_loop):
    loop = make_loop()
    with open(loop.device, "r+b") as disk:  # the boot sector and first FAT: garbage
        disk.write(os.urandom(64 * 1024))
        disk.flush()
        os.fsync(disk.fileno())
    with pytest.raises(m.MediaError) as caught:
        Mounter().attach(loop.device, loop.where)
    assert caught.value.code == "media.mount"
    assert "broken" in caught.value.message and "壊れている" in caught.value.message_ja
    assert not _mounted_at(loop.where)


def test_export_and_import_round_trip(make_loop, site):
    inbox, outbox, journal = site
    loop = make_loop()
    mounted = Mounter().attach(loop.device, loop.where)
    files = dict([_ministry("2025-04-01", 1), _ministry("2025-04-02", 2)])
    for name, data in files.items():
        (inbox / name).write_bytes(data)

    result = m.export_to_media(inbox, mounted.where, journal, DEVICE, now=lambda: NOW)

    folder = mounted.where / m.MINISTRY_DIR
    assert result.manifest == "MANIFEST-20250401-090000.tsv"
    assert _visible(folder) == sorted([*files, result.manifest])
    listed = m.parse_manifest((folder / result.manifest).read_text())
    assert {e.name: e.sha256 for e in listed} == {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    entry = m.read_journal(journal)[-1]
    assert entry["status"] == "ok" and entry["device"]["serial"] == "TESTSERIAL01"
    assert m.export_to_media(inbox, mounted.where, journal, DEVICE, now=lambda: NOW).files == []
    again = m.export_to_media(
        inbox, mounted.where, journal, DEVICE, now=lambda: NOW, date="2025-04-01"
    )
    assert [(f.name, f.outcome) for f in again.files] == [(min(files), "already")]

    good, bad = _municipality(), b"not a notice file\n"
    incoming = mounted.where / m.MUNICIPALITY_DIR
    incoming.mkdir()
    (incoming / "good.csv").write_bytes(good)
    (incoming / "bad.csv").write_bytes(bad)
    (incoming / ".good.csv.tmp-part").write_bytes(good[:10])  # a copy cut short: ignored
    ministry_name, ministry_data = next(iter(files.items()))
    (incoming / "wrong-way.csv").write_bytes(ministry_data)
    Mounter().eject(loop.where)  # pulled and plugged in again
    mounted = Mounter().attach(loop.device, loop.where)

    imported = m.import_from_media(
        mounted.where, outbox, journal, DEVICE, now=lambda: NOW, reporter=LASDEC
    )

    outcomes = {f.name: (f.outcome, f.code) for f in imported.files}
    assert outcomes == {
        "bad.csv": ("refused", outcomes["bad.csv"][1]),
        "good.csv": ("imported", ""),
        "wrong-way.csv": ("refused", "file.direction"),
    }
    assert os.listdir(outbox) == ["good.csv"] and (outbox / "good.csv").read_bytes() == good
    assert _visible(incoming / "imported") == ["good.csv"]
    refused = incoming / "refused"
    assert _visible(refused) == [
        "bad.csv",
        "bad.csv.report.txt",
        "wrong-way.csv",
        "wrong-way.csv.report.txt",
    ]
    assert (refused / "bad.csv").read_bytes() == bad
    report = (refused / "wrong-way.csv.report.txt").read_bytes()
    assert report.startswith(b"\xef\xbb\xbf") and b"\r\n" in report
    text = report.decode("utf-8-sig")
    assert (
        "法務省通知のファイルです" in text
        and "refused" in text
        and "outbox には入れていません" in text
    )
    assert m.read_journal(journal)[-1]["direction"] == "import"
    again = m.import_from_media(
        mounted.where, outbox, journal, DEVICE, now=lambda: NOW, reporter=LASDEC
    )
    assert again.files == []


def test_a_full_medium_leaves_no_file_that_looks_whole(make_loop, site):
    inbox, _outbox, journal = site
    loop = make_loop("1M")
    mounted = Mounter().attach(loop.device, loop.where)
    small, small_data = _ministry("2025-04-01", 1)
    (inbox / small).write_bytes(small_data)
    (inbox / "ministry-131016-20250402-2.csv").write_bytes(os.urandom(3 << 20))

    with pytest.raises(m.MediaError) as caught:
        m.export_to_media(inbox, mounted.where, journal, DEVICE, now=lambda: NOW)

    assert caught.value.code == "media.io" and "full" in caught.value.message
    assert _visible(mounted.where / m.MINISTRY_DIR) == [small]  # whole; no manifest, no part
    entry = m.read_journal(journal)[-1]
    assert entry["status"] == "failed" and m.exported_keys([entry]) == set()


_KILLER = """
import datetime as dt, os, sys
from pathlib import Path
from appliance.agent import media as m
from appliance.agent.mount import Mounter, find_mount
inbox, where, journal = map(Path, sys.argv[1:4])
def pull(written):
    if written >= 1 << 20:
        os._exit(9)  # the process dies mid-copy, as with a pulled medium or a power cut
m.export_to_media(inbox, where, journal, m.DeviceId(), now=lambda: dt.datetime.now(dt.UTC),
                  progress=pull)
"""


def test_a_copy_cut_mid_file_leaves_only_a_temporary_name(make_loop, site):
    inbox, outbox, journal = site
    loop = make_loop()
    mounted = Mounter().attach(loop.device, loop.where)
    data = os.urandom(3 << 20)
    name = "ministry-131016-20250401-1.csv"
    (inbox / name).write_bytes(data)

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLER),
            str(inbox),
            str(mounted.where),
            str(journal),
        ],
        cwd=ROOT,
        capture_output=True,
    )

    assert done.returncode == 9, done.stderr
    folder = mounted.where / m.MINISTRY_DIR
    left = [n for n in os.listdir(folder) if n != "lost+found"]
    assert _visible(folder) == [] and len(left) == 1
    assert left[0].startswith(f".{name}.tmp-") and m.is_temporary_name(left[0])
    assert m.read_journal(journal) == []  # nothing was journaled as exported
    result = m.export_to_media(inbox, mounted.where, journal, DEVICE, now=lambda: NOW)
    assert (folder / name).read_bytes() == data and result.manifest in os.listdir(folder)
