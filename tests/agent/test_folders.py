"""The appliance folders: real files in tmp_path; renames that never replace; crashes."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from appliance.agent import folders as folders_module
from appliance.agent.errors import FolderError
from appliance.agent.folders import (
    FOLDER_MODES,
    MAX_NAME_BYTES,
    REASONS,
    Folders,
    check_name,
    is_temporary_name,
    move_to,
    place_atomically,
    safe_name,
)
from common.atomicwrite import is_temporary

ROOT = Path(__file__).resolve().parents[2]
SJIS_NAME = os.fsdecode("市町村通知".encode("cp932") + b".csv")  # as os.listdir gives it


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    f = Folders(tmp_path / "srv", tmp_path / "state")
    f.ensure()
    return f


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- ensure ----------------------------------------------------------------------------------


def test_ensure_creates_every_folder_with_its_mode(tmp_path: Path) -> None:
    f = Folders(tmp_path / "srv", tmp_path / "state")
    old = os.umask(0o077)  # modes must not depend on the umask
    try:
        f.ensure()
    finally:
        os.umask(old)
    assert f.inbox == tmp_path / "srv" / "inbox"
    assert f.spool == tmp_path / "state" / "spool"
    for key, path in f.all().items():
        assert stat.S_IMODE(path.stat().st_mode) == FOLDER_MODES[key], key
    f.ensure()  # again: nothing to do


def test_ensure_leaves_existing_folders_alone(tmp_path: Path) -> None:
    (tmp_path / "srv" / "inbox").mkdir(parents=True)
    os.chmod(tmp_path / "srv" / "inbox", 0o700)
    Folders(tmp_path / "srv", tmp_path / "state").ensure()
    assert stat.S_IMODE((tmp_path / "srv" / "inbox").stat().st_mode) == 0o700


def test_ensure_refuses_a_file_in_place_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "outbox").write_text("oops")
    with pytest.raises(FolderError) as caught:
        Folders(tmp_path / "srv", tmp_path / "state").ensure()
    assert caught.value.code == "folder.not_dir"
    assert (tmp_path / "srv" / "outbox").read_text() == "oops"


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "notice.csv",
        "市町村通知_20261127.csv",
        "ﾃｽﾄ ファイル (2).csv",
        "e\u0301te\u0301.csv",  # NFD, as macOS sends: accepted
        "a" * (MAX_NAME_BYTES - 4) + ".csv",
        "あ" * 66 + ".c",  # 200 bytes
    ],
)
def test_good_names(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", "name.empty"),
        (".", "name.dots"),
        ("..", "name.dots"),
        ("a/b.csv", "name.separator"),
        ("../b.csv", "name.separator"),
        ("a\\b.csv", "name.separator"),
        ("a\nb.csv", "name.control"),
        ("a\tb.csv", "name.control"),
        ("a\x7fb.csv", "name.control"),
        ("a\x85b.csv", "name.control"),  # C1
        ("invoice\u202ecsv.exe", "name.control"),  # right-to-left override
        # Refused by the server too (400 upload.file_name): other format characters and separators.
        ("a\u200bb.csv", "name.control"),  # zero-width space
        ("\ufeffnotice.csv", "name.control"),  # byte order mark
        ("a\u2028b.csv", "name.control"),  # line separator
        ("a\u2029b.csv", "name.control"),  # paragraph separator
        ("a\U000e0041.csv", "name.control"),  # tag character
        (SJIS_NAME, "name.encoding"),
        (".hidden.csv", "name.hidden"),
        ("a" * (MAX_NAME_BYTES - 3) + ".csv", "name.too_long"),
        ("あ" * 67 + ".csv", "name.too_long"),
    ],
)
def test_bad_names(name: str, code: str) -> None:
    assert check_name(name) == code
    assert code in REASONS


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        (".notice.csv.tmp-abc123", True),  # common.atomicwrite
        (".DS_Store", True),
        (".~lock.notice.csv#", True),
        ("notice.csv~", True),
        ("~$notice.xlsx", True),
        ("notice.csv.tmp", True),
        ("notice.CSV.TMP", True),
        ("notice.csv.part", True),
        ("notice.csv.crdownload", True),
        ("Thumbs.db", True),
        ("desktop.ini", True),
        ("notice.csv", False),
        ("tmp.csv", False),
        ("notice~1.csv", False),
        ("part.csv", False),
    ],
)
def test_temporary_names(name: str, temporary: bool) -> None:
    assert is_temporary_name(name) is temporary


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notice.csv", "notice.csv"),
        ("a/b\\c.csv", "a_b_c.csv"),
        ("a\nb.csv", "a_b.csv"),
        (".hidden", "_hidden"),
        ("..", "_"),
        ("", "_"),
        (SJIS_NAME, "市町村通知.csv"),
        (os.fsdecode(b"\xff\xfe.csv"), "__.csv"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected
    assert check_name(safe_name(name)) is None


def test_safe_name_cuts_long_names_keeping_the_extension() -> None:
    cut = safe_name("通" * 100 + ".csv")
    assert cut.endswith(".csv")
    assert len(cut.encode()) <= 230
    assert cut.startswith("通" * 70)


# --- scanning the outbox ---------------------------------------------------------------------


def put(folder: Path, name: str, data: bytes = b"data") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_scan_sorts_the_outbox(folders: Folders, tmp_path: Path) -> None:
    out = folders.outbox
    put(out, "b.csv")
    put(out, "a.csv")
    os.utime(out / "b.csv", (1_000_000, 1_000_000))  # older content: first
    for temporary in (".a.csv.tmp-xyz", "a.csv.part", "c.csv~", "~$c.xlsx", ".DS_Store"):
        put(out, temporary)
    (out / "link.csv").symlink_to(out / "a.csv")
    (out / "dangling.csv").symlink_to(tmp_path / "nowhere")
    (out / "folder.csv").mkdir()
    os.mkfifo(out / "pipe.csv")
    put(out, "bad\nname.csv")
    put(out, SJIS_NAME)

    scan = folders.scan_outbox(now=time.time() + 60, settle=5, max_bytes=1000)
    # oldest content first (mtime), then by name
    assert [(f.name, f.problem) for f in scan.complete] == [
        ("b.csv", None),
        ("a.csv", None),
        ("bad\nname.csv", "name.control"),
        (SJIS_NAME, "name.encoding"),
    ]
    assert scan.complete[0].path == out / "b.csv"
    assert scan.complete[0].size == 4
    assert scan.complete[0].ok and not scan.complete[-1].ok
    assert scan.waiting == []
    assert dict(scan.ignored) == {
        ".a.csv.tmp-xyz": "temporary",
        "a.csv.part": "temporary",
        "c.csv~": "temporary",
        "~$c.xlsx": "temporary",
        ".DS_Store": "temporary",
        "link.csv": "symlink",
        "dangling.csv": "symlink",
        "folder.csv": "folder",
        "pipe.csv": "not_regular",
    }
    assert folders.complete_outbox_files(now=time.time() + 60, settle=5) == scan.complete


def test_files_still_changing_are_not_complete(folders: Folders) -> None:
    now = time.time()
    fresh = put(folders.outbox, "fresh.csv")
    scan = folders.scan_outbox(now=now, settle=5)
    assert [f.name for f in scan.waiting] == ["fresh.csv"] and scan.complete == []
    # a copy tool gives the file the source's old mtime, but the ctime is now
    os.utime(fresh, (now - 3600, now - 3600))
    assert [f.name for f in folders.scan_outbox(now=time.time(), settle=5).waiting] == ["fresh.csv"]
    assert [f.name for f in folders.scan_outbox(now=time.time() + 5, settle=5).complete] == [
        "fresh.csv"
    ]
    # growing: another write restarts the wait
    with fresh.open("ab") as handle:
        handle.write(b"more")
    st = fresh.stat()
    assert folders.scan_outbox(now=st.st_ctime + 4.9, settle=5).complete == []
    assert [f.size for f in folders.scan_outbox(now=st.st_ctime + 5, settle=5).complete] == [8]


def test_an_mtime_in_the_future_does_not_block_a_file(folders: Folders) -> None:
    path = put(folders.outbox, "future.csv")
    os.utime(path, (time.time() + 86_400, time.time() + 86_400))  # a client with a wrong clock
    assert [f.name for f in folders.scan_outbox(now=time.time() + 6, settle=5).complete] == [
        "future.csv"
    ]


def test_a_file_too_large_is_refused_by_its_size_unread(folders: Folders) -> None:
    big = folders.outbox / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(8 * 1024**3)  # 8 GiB, sparse: reading it would take minutes
    put(folders.outbox, "small.csv", b"x" * 100)
    files = folders.complete_outbox_files(now=time.time() + 60, settle=5, max_bytes=100)
    by_name = {f.name: f for f in files}
    assert by_name["small.csv"].ok
    assert by_name["big.csv"].problem == "file.too_large"
    assert str(8 * 1024**3) in by_name["big.csv"].detail


def test_a_missing_outbox_is_empty(tmp_path: Path) -> None:
    scan = Folders(tmp_path / "none", tmp_path / "state").scan_outbox(now=0, settle=0)
    assert (scan.complete, scan.waiting, scan.ignored) == ([], [], [])


# --- moving and placing ----------------------------------------------------------------------


def test_move_is_a_rename_and_never_replaces(folders: Folders) -> None:
    put(folders.sent, "a.csv", b"older")
    put(folders.sent, "a (2).csv", b"older 2")
    source = put(folders.outbox, "a.csv", b"new")
    inode = source.stat().st_ino
    target = move_to(source, folders.sent)
    assert target == folders.sent / "a (3).csv"
    assert target.read_bytes() == b"new" and target.stat().st_ino == inode
    assert not source.exists()
    assert (folders.sent / "a.csv").read_bytes() == b"older"
    assert (folders.sent / "a (2).csv").read_bytes() == b"older 2"


def test_move_with_a_new_name_and_a_bad_name(folders: Folders) -> None:
    bad = put(folders.outbox, "bad\nname.csv", b"1")
    assert move_to(bad, folders.rejected) == folders.rejected / "bad_name.csv"
    sjis = put(folders.outbox, SJIS_NAME, b"2")
    assert move_to(sjis, folders.rejected) == folders.rejected / "市町村通知.csv"
    other = put(folders.outbox, "x.csv", b"3")
    assert move_to(other, folders.spool, name="0001-x.csv") == folders.spool / "0001-x.csv"
    assert names(folders.outbox) == []


def test_move_refuses_what_is_not_a_regular_file(folders: Folders) -> None:
    (folders.outbox / "link.csv").symlink_to(put(folders.outbox, "a.csv"))
    with pytest.raises(FolderError) as caught:
        move_to(folders.outbox / "link.csv", folders.rejected)
    assert caught.value.code == "folder.not_regular"
    assert names(folders.rejected) == []


def test_move_without_renameat2_still_never_replaces(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folders_module, "_renameat2", None)  # link + unlink
    put(folders.sent, "a.csv", b"old")
    target = move_to(put(folders.outbox, "a.csv", b"new"), folders.sent)
    assert target.name == "a (2).csv" and target.read_bytes() == b"new"
    assert (folders.sent / "a.csv").read_bytes() == b"old"
    assert names(folders.outbox) == []


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir()
    or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs /dev/shm on another file system than the temporary folder",
)
def test_move_across_file_systems_copies_then_unlinks(folders: Folders) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        source = put(Path(other), "a.csv", b"content" * 1000)
        os.chmod(source, 0o640)
        target = move_to(source, folders.spool)
        assert target == folders.spool / "a.csv"
        assert target.read_bytes() == b"content" * 1000
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert not source.exists()
        # an interrupted cross-device move (copy done, source not yet unlinked) finishes alone
        again = put(Path(other), "a.csv", b"content" * 1000)
        assert move_to(again, folders.spool) == target
        assert not again.exists()
        assert names(folders.spool) == ["a.csv"]


def test_move_raises_other_errors(folders: Folders) -> None:
    with pytest.raises(FileNotFoundError):
        move_to(folders.outbox / "missing.csv", folders.sent)
    with pytest.raises(OSError) as caught:
        move_to(put(folders.outbox, "a.csv"), folders.root / "no-such-folder")
    assert caught.value.errno == errno.ENOENT
    assert names(folders.outbox) == ["a.csv"]


def test_place_bytes_and_files(folders: Folders, tmp_path: Path) -> None:
    target = place_atomically(b"batch", folders.inbox, "ministry-131016-20261127-000001.csv")
    assert target == folders.inbox / "ministry-131016-20261127-000001.csv"
    assert target.read_bytes() == b"batch"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    source = put(tmp_path, "partial.bin", b"x" * (3 << 20))  # several chunks
    copied = place_atomically(source, folders.inbox, "big.csv", mode=0o600)
    assert copied.read_bytes() == b"x" * (3 << 20)
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    assert source.exists()  # a copy: the source stays
    assert [n for n in names(folders.inbox) if is_temporary(n)] == []


def test_place_is_idempotent_for_the_same_bytes(folders: Folders) -> None:
    first = place_atomically(b"receipt", folders.sent, "a.csv.receipt.json")
    assert place_atomically(b"receipt", folders.sent, "a.csv.receipt.json") == first
    other = place_atomically(b"another receipt", folders.sent, "a.csv.receipt.json")
    assert other == folders.sent / "a.csv.receipt (2).json"
    # the same bytes again find the numbered copy, not a third file
    assert place_atomically(b"another receipt", folders.sent, "a.csv.receipt.json") == other
    assert first.read_bytes() == b"receipt"
    assert names(folders.sent) == ["a.csv.receipt (2).json", "a.csv.receipt.json"]


def test_place_refuses_text_and_cleans_up_after_errors(folders: Folders, tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        place_atomically("text", folders.inbox, "a.csv")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        place_atomically(tmp_path / "missing", folders.inbox, "a.csv")
    assert names(folders.inbox) == []


def test_place_sanitises_the_name(folders: Folders) -> None:
    assert place_atomically(b"r", folders.rejected, "../../etc/passwd").parent == folders.rejected


def test_sigkill_while_placing_leaves_only_a_temporary(folders: Folders, tmp_path: Path) -> None:
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from appliance.agent.folders import place_atomically
        place_atomically(Path({str(fifo)!r}), Path({str(folders.inbox)!r}), "batch.csv")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT
    )
    try:
        with fifo.open("wb") as feed:  # blocks until the child opens it
            feed.write(b"half of a batch")
            feed.flush()
            deadline = time.time() + 10
            while not any(n.startswith(".batch.csv") for n in names(folders.inbox)):
                assert time.time() < deadline
                time.sleep(0.01)
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    except BrokenPipeError:
        pass
    assert proc.returncode == -signal.SIGKILL
    left = names(folders.inbox)
    assert len(left) == 1 and is_temporary(left[0])  # no "batch.csv", never a partial one
    assert is_temporary_name(left[0])
    # the rerun places the whole file; the stale temporary stays ignored
    placed = place_atomically(b"the whole batch", folders.inbox, "batch.csv")
    assert placed.name == "batch.csv" and placed.read_bytes() == b"the whole batch"
