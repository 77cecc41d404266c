"""The server's signing key is made once, even by two ``init`` runs at the same moment."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from server.keys import load_or_create_signing_key, load_signing_key


def _public(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _make(path: str, start, out) -> None:  # type: ignore[no-untyped-def]
    start.wait()
    out.put(_public(load_or_create_signing_key(Path(path))))


def test_racing_inits_on_a_shared_folder_end_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing-key.pem"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    out = context.Queue()
    workers = [context.Process(target=_make, args=(str(path), start, out)) for _ in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    keys = {out.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
    assert len(keys) == 1  # every run uses the key that is on disk
    assert keys == {_public(load_signing_key(path))}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing-key.pem"]  # no temp left


def test_an_existing_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    first = load_or_create_signing_key(path)
    again = load_or_create_signing_key(path)
    assert _public(first) == _public(again)
