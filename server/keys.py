"""The server's Ed25519 signing key: it signs batch manifests and upload receipts.

The key is a PKCS#8 PEM file readable only by the server's user (mode 0600),
made once by ``renkei-server init`` and never printed; its key id
(``common.statement.key_id``) is what operators and terminals compare.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.atomicwrite import TEMP_MARK, TEMP_PREFIX, fsync_dir

from .errors import ServerError

__all__ = ["load_or_create_signing_key", "load_signing_key", "public_key_pem"]


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the signing key.  Raises ServerError ``key.missing`` or ``key.invalid``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ServerError(
            f"the signing key {path} does not exist; run `renkei-server init` first",
            code="key.missing",
        ) from None
    except OSError as exc:
        raise ServerError(f"the signing key {path}: {exc.strerror}", code="key.missing") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ServerError(
            f"the signing key {path} cannot be read: {exc}", code="key.invalid"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ServerError(f"the signing key {path} is not an Ed25519 key", code="key.invalid")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the signing key, making it first (mode 0600, folder 0700) if it does not exist.

    Two ``init`` runs at once on a shared data folder (several app servers)
    must end with one key, not with the last writer's: the new key is written
    and fsynced under a temporary name, then *linked* to ``path``, which fails
    if a key got there first — then that key is the one, and is loaded.
    """
    path = Path(path)
    if path.exists():
        return load_signing_key(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp made it 0600
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return load_signing_key(path)  # another init won: its key is the server's
        fsync_dir(path.parent)
    finally:
        os.unlink(temp)
    return key


def public_key_pem(key: Ed25519PrivateKey) -> str:
    """The public half as PEM (SubjectPublicKeyInfo), for terminals and auditors."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
