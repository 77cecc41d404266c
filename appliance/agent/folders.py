"""The appliance's folders: where staff find ministry notices and drop their own files.

Under one root (default ``/srv/renkei``), shared with staff::

    inbox/     ministry notice batches, placed whole and atomically
    outbox/    staff drop municipality notice files here
    sent/      a receipted file + <name>.receipt.json (+ <name>.report.txt)
    rejected/  a refused file + <name>.report.txt

and under the state folder (default ``/var/lib/renkei``), for the agent only::

    queue.sqlite3, spool/ (accepted, waiting to be sent), partial/ (downloads
    in progress), quarantine/ (batches that failed verification)

Rules that make a power failure at any line harmless:

* A file appears in a folder only by an atomic rename from a temporary name
  in that same folder (``.NAME.tmp-XXXX``, which every scan ignores).
* Nothing is ever overwritten: a name already taken gets a numbered suffix,
  ``notice (2).csv``, as Windows does.  Nothing is ever deleted: a move
  unlinks its source only once the file is whole under its new name.
* Placing the same bytes again under the same name finds the copy already
  there and returns it, so a step repeated after a crash does not duplicate.

An outbox file counts as complete when its name is not a temporary one and it
has not changed for ``settle`` seconds.  "Changed" is the later of mtime and
ctime: Windows Explorer and ``cp -p`` give a copy the *source's* mtime while
it is still being written, but every write updates the ctime, which no copy
tool can set.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.atomicwrite import TEMP_MARK, TEMP_PREFIX, fsync_dir, is_temporary

from .errors import FolderError

__all__ = [
    "FOLDER_MODES",
    "MAX_NAME_BYTES",
    "REASONS",
    "Folders",
    "OutboxFile",
    "OutboxScan",
    "check_name",
    "is_temporary_name",
    "move_link",
    "move_to",
    "MAX_NUMBERED",
    "numbered_names",
    "printable_name",
    "place_atomically",
    "safe_name",
]

#: Longest outbox file name accepted, in UTF-8 bytes.  Leaves room under the
#: 255-byte limit of Linux file systems for ``.receipt.json``, ``.report.txt``,
#: a numbered suffix and the temporary prefix and mark.
MAX_NAME_BYTES = 200
_MAX_TARGET_BYTES = 230  # names this module writes: MAX_NAME_BYTES + sidecar suffix + " (N)"
MAX_NUMBERED = 9999
_CHUNK = 1 << 20

#: Modes of folders ``ensure`` creates (existing folders are left as they are).
#: Staff folders are shared with the `renkei-staff` group (setgid, so new files keep
#: the group; see appliance/rootfs/usr/lib/tmpfiles.d/renkei.conf); state is the agent's alone.
FOLDER_MODES = {
    "root": 0o2750,
    "inbox": 0o2770,
    "outbox": 0o2770,
    "sent": 0o2770,
    "rejected": 0o2770,
    "state": 0o700,
    "spool": 0o700,
    "partial": 0o700,
    "quarantine": 0o700,
}

#: Why a name or file is refused: code -> (English, Japanese for staff).
REASONS: dict[str, tuple[str, str]] = {
    "name.empty": ("the file name is empty", "ファイル名がありません"),
    "name.dots": ("the file name is '.' or '..'", "ファイル名が「.」または「..」です"),
    "name.separator": (
        "the file name contains a path separator (/ or \\)",
        "ファイル名にフォルダの区切り文字（/ または \\）が含まれています",
    ),
    "name.control": (
        "the file name contains a control or format character (line break, tab, direction mark, "
        "zero-width space …)",
        "ファイル名に制御文字（改行・タブ・文字の向きを変える記号・幅のない空白など）が含まれています",
    ),
    "name.encoding": (
        "the file name is not valid UTF-8 (it may be in Shift_JIS)",
        "ファイル名の文字コードが UTF-8 ではありません（Shift_JIS の可能性があります）",
    ),
    "name.too_long": (
        f"the file name is longer than {MAX_NAME_BYTES} bytes in UTF-8",
        f"ファイル名が長すぎます（UTF-8 で {MAX_NAME_BYTES} バイトまで。全角文字ではおよそ 66 文字まで）",
    ),
    "name.hidden": (
        "the file name starts with a dot (a hidden file)",
        "ファイル名がピリオド（.）で始まっています（隠しファイル）",
    ),
    "file.too_large": (
        "the file is larger than the limit (max_file_bytes)",
        "ファイルが大きすぎます（上限を超えています）",
    ),
}

# Suffixes and names of files that are still being written or are not documents.
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp")
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# Characters a name must not hold (the server refuses them too, 400 upload.file_name): controls
# (Cc), format characters (Cf: direction controls, which make "txt.exe" display as "exe.txt",
# zero-width characters, the BOM) and line or paragraph separators.  Lone surrogates (Cs) are
# bytes that are not UTF-8: name.encoding, repaired by safe_name.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def is_temporary_name(name: str) -> bool:
    """True for names of files still being written, or not meant for the agent at all.

    Our own temporaries (``common.atomicwrite``), dotfiles, editor backups
    (``name~``), Office lock files (``~$name``), partial downloads and copies
    (``.tmp``, ``.part``, ``.crdownload`` …), and Windows' ``Thumbs.db`` and
    ``desktop.ini``.  These are skipped silently, never refused.
    """
    lower = name.lower()
    return (
        is_temporary(name)
        or name.startswith(".")
        or name.endswith("~")
        or name.startswith("~$")
        or lower.endswith(_TEMP_SUFFIXES)
        or lower in _JUNK_NAMES
    )


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def printable_name(name: str) -> str:
    """``name`` for reports, logs and the run record: bytes that are not UTF-8 shown as ``\\xNN``.

    ``os.scandir`` hands such bytes over as lone surrogates, which no UTF-8
    text (a report, the queue's JSON) can hold; written as they are, they
    crashed the run.  A valid name is returned unchanged.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


def check_name(name: str) -> str | None:
    """None when ``name`` is acceptable for an outbox file; else a code from :data:`REASONS`.

    Any Unicode name is accepted (NFC or not: macOS clients send NFD) except
    one with a path separator, a control or direction character, bytes that
    are not UTF-8 (``os.listdir`` hands those over as lone surrogates), a
    leading dot, or more than :data:`MAX_NAME_BYTES` bytes.
    """
    if not name:
        return "name.empty"
    if name in (".", ".."):
        return "name.dots"
    if "/" in name or "\\" in name:
        return "name.separator"
    if any(_is_control(char) for char in name):
        return "name.control"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "name.encoding"
    if name.startswith("."):
        return "name.hidden"
    if size > MAX_NAME_BYTES:
        return "name.too_long"
    return None


def safe_name(name: str, *, max_bytes: int = _MAX_TARGET_BYTES) -> str:
    """A name this module may write: ``name`` itself when it is fine, else a repaired copy.

    Bytes that are not UTF-8 are read as Shift_JIS (CP932) when they are
    that, so staff still recognise the name; separators, control characters
    and a leading dot become ``_``; a long name is cut, keeping its extension.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        try:
            decoded = raw.decode("cp932")
        except UnicodeDecodeError:
            decoded = None
        # CP932 maps stray bytes to private-use characters: then it was not Shift_JIS.
        if decoded is None or any(unicodedata.category(c) in ("Co", "Cc") for c in decoded):
            decoded = raw.decode("utf-8", "replace").replace("\ufffd", "_")
        name = decoded
    name = "".join("_" if char in "/\\" or _is_control(char) else char for char in name)
    if name in ("", ".", ".."):
        name = "_"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name.encode("utf-8")) > max_bytes:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode("utf-8")) > 16:
            stem, ext = name, ""
        keep = max_bytes - len(ext.encode("utf-8")) - (1 if ext else 0)
        stem = stem.encode("utf-8")[:keep].decode("utf-8", "ignore")
        name = f"{stem}.{ext}" if ext else stem
    return name


def numbered_names(name: str) -> Iterator[str]:
    """``name``, ``stem (2).ext``, ``stem (3).ext`` … (the extension is the last suffix)."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for number in range(2, MAX_NUMBERED + 1):
        yield f"{stem} ({number}).{ext}" if ext else f"{stem} ({number})"


# --- atomic, non-replacing renames -----------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (AttributeError, OSError):  # not glibc ≥ 2.28
    _renameat2 = None


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename atomically; FileExistsError instead of replacing an existing ``target``.

    Uses ``renameat2(RENAME_NOREPLACE)`` (Linux ≥ 3.15 on ext4, xfs, btrfs,
    tmpfs); where the file system lacks it, ``link`` (which never replaces)
    then ``unlink`` of the source.
    """
    if _renameat2 is not None:
        result = _renameat2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target, follow_symlinks=False)
    os.unlink(source)


def _same_content(path: Path, size: int, digest: str) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    return _sha256_file(path) == digest


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def place_atomically(
    data_or_path: bytes | bytearray | memoryview | os.PathLike[str],
    folder: Path,
    name: str,
    *,
    mode: int = 0o644,
) -> Path:
    """Write bytes (or a copy of a file) into ``folder`` as ``name``, whole or not at all.

    The content is written to a temporary name in ``folder``, fsynced,
    renamed without replacing anything, and the folder fsynced.  If ``name``
    is taken by other content, a numbered name is used; if a candidate name
    already holds exactly these bytes (a repeat after a crash), that path is
    returned and nothing new is written.  ``name`` goes through
    :func:`safe_name`.  Returns the final path.
    """
    if isinstance(data_or_path, str):
        raise TypeError("place_atomically takes bytes or a Path, not str")
    folder = Path(folder)
    name = safe_name(name)
    fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}{TEMP_MARK}", dir=folder)
    temp = Path(temp_name)
    sha = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data_or_path, bytes | bytearray | memoryview):
                data = bytes(data_or_path)
                out.write(data)
                sha.update(data)
                size = len(data)
            else:
                with open(data_or_path, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                        sha.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        digest = sha.hexdigest()
        for candidate in numbered_names(name):
            target = folder / candidate
            if _same_content(target, size, digest):
                temp.unlink()  # our own temporary: the same bytes are already placed
                return target
            try:
                _rename_noreplace(temp, target)
            except FileExistsError:
                continue
            fsync_dir(folder)
            return target
        raise FolderError(
            f"{folder}: more than {MAX_NUMBERED} files named like {name!r}; tidy the folder",
            code="folder.full",
        )
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def move_link(source: Path, target: Path) -> Path:
    """Move a symbolic link itself (never what it points to) to ``target``, never replacing.

    A rename, not ``link`` + ``unlink``: with ``fs.protected_hardlinks`` (on by
    default) the kernel refuses to hard-link a symlink the agent does not own,
    and staff own what they drop.  Raises FileExistsError when ``target`` exists.
    """
    _rename_noreplace(Path(source), Path(target))
    fsync_dir(Path(target).parent)
    fsync_dir(Path(source).parent)
    return Path(target)


def move_to(path: Path, folder: Path, *, name: str | None = None) -> Path:
    """Move ``path`` into ``folder`` (as ``name``, default its own name); return the new path.

    An atomic rename when both are on one file system; a name already taken
    gets a numbered suffix, never replaced.  The name goes through
    :func:`safe_name`, so a file with a bad name can still be moved to
    rejected/.  Across file systems the file is copied with
    :func:`place_atomically` (which finds a copy an interrupted move left) and
    only then unlinked from its old place.
    """
    path = Path(path)
    folder = Path(folder)
    target_name = safe_name(name if name is not None else path.name)
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise FolderError(f"{path}: only regular files are moved", code="folder.not_regular")
    for candidate in numbered_names(target_name):
        target = folder / candidate
        try:
            _rename_noreplace(path, target)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            placed = place_atomically(
                path, folder, target_name, mode=stat.S_IMODE(st.st_mode) & 0o777
            )
            path.unlink()
            fsync_dir(path.parent)
            return placed
        fsync_dir(folder)
        fsync_dir(path.parent)
        return target
    raise FolderError(
        f"{folder}: more than {MAX_NUMBERED} files named like {target_name!r}; tidy the folder",
        code="folder.full",
    )


# --- the folders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxFile:
    """One file in the outbox.

    ``problem`` is None for a file to validate and send, else a code from
    :data:`REASONS` (bad name, too large): such a file goes to rejected/
    unread, with a report.  ``detail`` says more, in English, for logs.
    """

    path: Path
    name: str
    size: int
    mtime: float
    problem: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class OutboxScan:
    """Everything in the outbox, sorted out (for ``sync`` and ``status``).

    ``complete``: settled files, acceptable or refused (``problem``);
    ``waiting``: files still changing; ``ignored``: (name, why) for
    temporary names, symlinks, folders and other non-regular entries.
    """

    complete: list[OutboxFile] = field(default_factory=list)
    waiting: list[OutboxFile] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)


class Folders:
    """The staff folders under ``root`` and the agent's own under ``state_dir``."""

    def __init__(self, root: Path, state_dir: Path):
        self.root = Path(root)
        self.state_dir = Path(state_dir)
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.sent = self.root / "sent"
        self.rejected = self.root / "rejected"
        self.spool = self.state_dir / "spool"
        self.partial = self.state_dir / "partial"
        self.quarantine = self.state_dir / "quarantine"

    @property
    def queue_path(self) -> Path:
        return self.state_dir / "queue.sqlite3"

    def all(self) -> dict[str, Path]:
        """Every folder by its name in :data:`FOLDER_MODES`."""
        return {
            "root": self.root,
            "inbox": self.inbox,
            "outbox": self.outbox,
            "sent": self.sent,
            "rejected": self.rejected,
            "state": self.state_dir,
            "spool": self.spool,
            "partial": self.partial,
            "quarantine": self.quarantine,
        }

    def ensure(self) -> None:
        """Create missing folders with :data:`FOLDER_MODES` (existing ones are not touched).

        Raises FolderError ``folder.not_dir`` when a folder's name is taken by
        something that is not a folder.
        """
        for key, path in self.all().items():
            if path.is_dir():
                continue
            if path.exists() or path.is_symlink():
                raise FolderError(f"{path} exists but is not a folder", code="folder.not_dir")
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, FOLDER_MODES[key])
            fsync_dir(path.parent)

    def scan_outbox(
        self, *, now: float, settle: float, max_bytes: int = 64 * 1024 * 1024
    ) -> OutboxScan:
        """Sort the outbox's entries (see :class:`OutboxScan`); oldest first by mtime, then name.

        Nothing is opened or read: a file too large is refused by its size.
        """
        scan = OutboxScan()
        try:
            entries = list(os.scandir(self.outbox))
        except FileNotFoundError:
            return scan
        for entry in entries:
            name = entry.name
            if is_temporary_name(name):
                scan.ignored.append((name, "temporary"))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing (staff took it back)
            if stat.S_ISLNK(st.st_mode):
                scan.ignored.append((name, "symlink"))
                continue
            if not stat.S_ISREG(st.st_mode):
                scan.ignored.append((name, "folder" if stat.S_ISDIR(st.st_mode) else "not_regular"))
                continue
            changed = max(st.st_ctime, st.st_mtime) if st.st_mtime <= now else st.st_ctime
            file = OutboxFile(Path(entry.path), name, st.st_size, st.st_mtime)
            if now - changed < settle:
                scan.waiting.append(file)
                continue
            problem = check_name(name)
            detail = REASONS[problem][0] if problem else ""
            if problem is None and st.st_size > max_bytes:
                problem = "file.too_large"
                detail = f"{st.st_size} bytes, the limit is {max_bytes}"
            scan.complete.append(
                OutboxFile(file.path, name, file.size, file.mtime, problem, detail)
            )
        for files in (scan.complete, scan.waiting):
            files.sort(key=lambda f: (f.mtime, f.name))
        scan.ignored.sort()
        return scan

    def complete_outbox_files(
        self, *, now: float, settle: float, max_bytes: int = 64 * 1024 * 1024
    ) -> list[OutboxFile]:
        """Settled outbox files: those to send (``ok``) and those to refuse (``problem``)."""
        return self.scan_outbox(now=now, settle=settle, max_bytes=max_bytes).complete
