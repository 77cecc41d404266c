"""The four promises, checked against the real folders and the server's database after every fault.

1. **Every ministry notice placed once and whole in the right inbox.**  Every
   visible inbox file is a batch the server cut for *this* municipality,
   under its contract name, byte for byte (SHA-256); no batch is there twice;
   no ministry notice (record id) is in two files or belongs to another
   municipality.  Finally (``final=True``): every batch is there and
   acknowledged, and the inbox holds exactly the notices imported for it.
2. **Every municipality record at the server exactly once.**  No record of a
   good file twice (at most once while the fault lasts, exactly once in the
   end), none of a refused file ever, and each file's bytes in at most one
   upload.
3. **No file lost from the outbox.**  The files staff dropped, counted by
   content, equal the files found in outbox/, the spool, sent/ and rejected/
   (receipts and reports aside) — none missing, none doubled.  Finally each is
   where it must end: in sent/ with a receipt signed by the server for these
   bytes, in rejected/ with a report, or still in the outbox when it was
   never the agent's to take (a temporary name).
4. **No partial file visible.**  Follows from 1 and 3 for inbox, sent and
   rejected (a partial file would not match any whole one); every receipt
   parses and verifies; and finally no half-written temporary file remains
   and partial/ is empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa

from common import statement
from common.noticefile import NoticeReader
from common.records import Record
from server.batches import list_batches
from server.storage import received_notices, uploads

from .terminal import Terminal

__all__ = ["check", "sha"]

SIDECARS = (".receipt.json", ".report.txt")
_INBOX_NAME = re.compile(r"ministry-(\d{6})-(\d{8})-(\d{6})\.csv")
_TEMPORARY = re.compile(r"^\..*\.tmp-")
_ids_cache: dict[str, list[str]] = {}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_sha_cache: dict[tuple, str] = {}


def _file_sha(path: Path) -> str:
    """SHA-256 of a file, remembered by inode, size and change time (files are read often)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def _record_ids(data: bytes) -> list[str]:
    digest = sha(data)
    if digest not in _ids_cache:
        reader = NoticeReader(io.BytesIO(data), name="inbox")
        _ids_cache[digest] = [row.record_id for row in reader if isinstance(row, Record)]
    return _ids_cache[digest]


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


class _Findings:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)


def _inbox(world, terminal: Terminal, final: bool, out: _Findings) -> dict:  # type: ignore[no-untyped-def]
    lasdec = terminal.lasdec
    batches = {
        (b.business_date.strftime("%Y%m%d"), b.sequence): b
        for b in list_batches(world.server.storage, lasdec, pending_only=False)
    }
    seen_batches: Counter = Counter()
    seen_ids: Counter = Counter()
    temporaries = []
    for path in _entries(terminal.folder_view("inbox")):
        if path.name.startswith("."):
            temporaries.append(path.name)
            continue
        found = _INBOX_NAME.fullmatch(path.name)
        batch = batches.get((found.group(2), int(found.group(3)))) if found else None
        if found is None or found.group(1) != lasdec or batch is None:
            out.expect(False, f"{lasdec} inbox: {path.name} is no batch of {lasdec}")
            continue
        data = path.read_bytes()
        out.expect(
            sha(data) == batch.sha256,
            f"{lasdec} inbox: {path.name} is not whole ({len(data)} of {batch.size} bytes)",
        )
        seen_batches[batch.batch_id] += 1
        seen_ids.update(_record_ids(data))
    twice = [b for b, n in seen_batches.items() if n > 1]
    out.expect(not twice, f"{lasdec} inbox: batches placed twice: {twice}")
    doubled = [r for r, n in seen_ids.items() if n > 1]
    out.expect(not doubled, f"{lasdec} inbox: notices in two files: {doubled[:5]}")
    mine = world.ministry_ids.get(lasdec, set())
    foreign = sorted(set(seen_ids) - mine)
    out.expect(not foreign, f"{lasdec} inbox: notices of another municipality: {foreign[:5]}")
    if final:
        missing = [b.batch_id for b in batches.values() if b.batch_id not in seen_batches]
        out.expect(not missing, f"{lasdec} inbox: batches missing: {missing}")
        pending = [b.batch_id for b in batches.values() if b.pending]
        out.expect(not pending, f"{lasdec}: batches not acknowledged at the server: {pending}")
        absent = sorted(mine - set(seen_ids))
        out.expect(not absent, f"{lasdec} inbox: notices never delivered: {absent[:5]}")
        out.expect(not temporaries, f"{lasdec} inbox: temporary files left: {temporaries}")
    return {"batches": len(seen_batches), "notices": len(seen_ids)}


def _outbox(world, terminal: Terminal, final: bool, out: _Findings) -> dict:  # type: ignore[no-untyped-def]
    lasdec = terminal.lasdec
    server_key = statement.public_key_from_text(world.server_key)
    dropped = Counter(d.digest for d in terminal.drops if d.expect != "special")
    found: dict[str, Counter] = {}
    where: dict[str, list[str]] = {}
    temporaries = []
    for folder in ("outbox", "spool", "sent", "rejected"):
        counter: Counter = Counter()
        for path in _entries(terminal.folder_view(folder)):
            if path.is_symlink() or not path.is_file():
                counter[f"special:{path.name}"] += 1
                continue
            if folder != "outbox" and _TEMPORARY.match(path.name):
                temporaries.append(f"{folder}/{path.name}")
                continue
            digest = _file_sha(path)
            if folder in ("sent", "rejected") and path.name.endswith(SIDECARS):
                if digest not in dropped:  # the agent's receipt or report, not a staff file
                    if path.name.endswith(".receipt.json"):
                        _receipt(path, server_key, out, lasdec, folder)
                    continue
            counter[digest] += 1
            where.setdefault(digest, []).append(f"{folder}/{path.name}")
        found[folder] = counter
    everywhere: Counter = Counter()
    for counter in found.values():
        everywhere.update({k: v for k, v in counter.items() if not k.startswith("special:")})
    lost = dropped - everywhere
    extra = everywhere - dropped
    out.expect(not lost, f"{lasdec}: dropped files lost: {_names(terminal, lost)}")
    out.expect(
        not extra,
        f"{lasdec}: files never dropped, or doubled: {[where[d] for d in extra]}",
    )
    if final:
        for drop in terminal.drops:
            if drop.expect == "special":
                continue
            where = found[drop.expect][drop.digest]
            out.expect(where > 0, f"{lasdec}: {drop.name} is not in {drop.expect}/")
            if drop.expect in ("sent", "rejected"):
                sidecar = ".receipt.json" if drop.expect == "sent" else ".report.txt"
                folder = terminal.folder_view(drop.expect)
                copies = [
                    p
                    for p in _entries(folder)
                    if p.is_file() and not p.is_symlink() and _file_sha(p) == drop.digest
                ]
                out.expect(
                    any((folder / (p.name + sidecar)).exists() for p in copies),
                    f"{lasdec}: {drop.name} in {drop.expect}/ has no {sidecar}",
                )
        out.expect(not temporaries, f"{lasdec}: temporary files left: {temporaries}")
        out.expect(not found["spool"], f"{lasdec}: files still in the spool")
        partial = _entries(terminal.folder_view("partial"))
        out.expect(not partial, f"{lasdec}: partial downloads left: {[p.name for p in partial]}")
    return {
        "dropped": len(terminal.drops),
        "sent": sum(found["sent"].values()),
        "rejected": sum(found["rejected"].values()),
        "waiting": sum(found["outbox"].values()) + sum(found["spool"].values()),
    }


def _names(terminal: Terminal, digests: Iterable[str]) -> list[str]:
    wanted = set(digests)
    return [d.name for d in terminal.drops if d.digest in wanted]


def _receipt(path: Path, key, out: _Findings, lasdec: str, folder: str) -> None:  # type: ignore[no-untyped-def]
    try:
        body = statement.verify(json.loads(path.read_bytes()), key)
    except (ValueError, statement.StatementError) as exc:
        out.expect(False, f"{lasdec} {folder}/{path.name}: not a whole, signed receipt ({exc})")
        return
    out.expect(body.get("lasdec") == lasdec, f"{lasdec} {folder}/{path.name}: another lasdec")


def _server(world, terminal: Terminal, final: bool, out: _Findings) -> dict:  # type: ignore[no-untyped-def]
    lasdec = terminal.lasdec
    good = {rid for d in terminal.drops if d.expect == "sent" for rid in d.record_ids}
    with world.server.storage.read() as conn:
        rows = conn.execute(
            sa.select(received_notices.c.record_id, sa.func.count())
            .where(received_notices.c.lasdec == lasdec)
            .group_by(received_notices.c.record_id)
        ).all()
        per_sha = conn.execute(
            sa.select(uploads.c.sha256, sa.func.count())
            .where(uploads.c.lasdec == lasdec)
            .group_by(uploads.c.sha256)
        ).all()
    stored = dict(rows)
    twice = [rid for rid, n in stored.items() if n > 1]
    out.expect(not twice, f"{lasdec} server: records stored twice: {twice[:5]}")
    unknown = sorted(set(stored) - good)
    out.expect(
        not unknown, f"{lasdec} server: records from refused or unknown files: {unknown[:5]}"
    )
    doubled = [digest for digest, n in per_sha if n > 1]
    out.expect(not doubled, f"{lasdec} server: the same file stored as two uploads")
    if final:
        missing = sorted(good - set(stored))
        out.expect(not missing, f"{lasdec} server: records never received: {missing[:5]}")
    return {"records": len(stored)}


def check(world, *, final: bool, terminals: Iterable[Terminal] | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Check the invariants; raise AssertionError listing every breach.  Returns counts per lasdec."""
    out = _Findings()
    counts = {}
    for terminal in terminals or world.terminals.values():
        counts[terminal.lasdec] = {
            **_inbox(world, terminal, final, out),
            **_outbox(world, terminal, final, out),
            **_server(world, terminal, final, out),
        }
    if out.problems:
        raise AssertionError("invariants broken:\n  " + "\n  ".join(out.problems))
    return counts
