"""The key ceremony of the update repository: make the keys, rotate them, renew the root.

Why two kinds of key: the root and targets keys decide what a terminal
installs, so they live *offline* — files the ceremony writes to a folder the
operator names (removable media locked away between uses), never under the
server's data folder, which a thief of the server would take along.  The
snapshot and timestamp keys only vouch for freshness; they must sign every
hour without a person present, so they live *online* in
``<data_dir>/updates/keys/`` (0600).  Stealing the server therefore lets an
attacker at most hold terminals on the current release until the operator
rotates those keys — never install something of their own.

Rotation (TUF specification §5.3.4): the new root version is signed by a
threshold of the *old* root's root keys and of the *new* root's, so a
terminal holding the old root can walk to the new one.  When a role other
than root gets a new key, its metadata is first re-signed with the old *and*
the new key, then the new root is written: a client holding either root
accepts the repository at every moment, so a crash anywhere in between
leaves nothing a terminal refuses.  The old online key file is deleted
last; old offline key files are the operator's to destroy (docs/updates.md).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from .update_repo import (
    OFFLINE_ROLES,
    ONLINE_ROLES,
    ROLES,
    UpdateError,
    UpdateRepository,
    check_signer,
    iso,
    key_file_name,
    save_signer,
    serialize,
    sign,
)

__all__ = ["KeyResult", "check_offline_dir", "init_repository", "renew_root", "rotate_keys"]


@dataclass
class KeyResult:
    """What a ceremony step did: the root version written and every new key file."""

    root_version: int
    root_path: Path
    root_sha256: str
    root_expires: str
    key_files: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "root_version": self.root_version,
            "root": str(self.root_path),
            "root_sha256": self.root_sha256,
            "root_expires": self.root_expires,
            "key_files": self.key_files,
            "warnings": self.warnings,
        }


def check_offline_dir(offline_dir: Path, data_dir: Path) -> Path:
    """Refuse a folder inside the server's data folder; create it (0700) if it does not exist."""
    offline = Path(offline_dir).expanduser().resolve()
    data = Path(data_dir).expanduser().resolve()
    if offline == data or data in offline.parents:
        raise UpdateError(
            f"{offline_dir} is inside the server's data folder {data_dir}: the root and targets "
            "keys must be kept offline (e.g. removable media), never beside what they protect",
            code="update.offline_dir",
        )
    try:
        offline.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UpdateError(
            f"cannot create {offline_dir}: {exc.strerror}", code="update.offline_dir"
        ) from None
    return offline


def _save_offline(offline: Path, role: str, signer: CryptoSigner) -> str:
    path = offline / key_file_name(role, signer.public_key.keyid)
    try:
        save_signer(path, signer)
    except OSError as exc:
        raise UpdateError(f"{path}: {exc.strerror}", code="update.offline_dir") from None
    return str(path)


def _write_root(repo: UpdateRepository, root: Metadata[Root]) -> KeyResult:
    data = serialize(root)
    name = f"{root.signed.version}.root.json"
    repo.files.write_metadata(name, data)
    return KeyResult(
        root_version=root.signed.version,
        root_path=repo.files.metadata_dir / name,
        root_sha256=hashlib.sha256(data).hexdigest(),
        root_expires=iso(root.signed.expires),
    )


def init_repository(
    repo: UpdateRepository,
    *,
    data_dir: Path,
    offline_dir: Path,
    now: datetime,
    root_keys: int = 1,
    threshold: int = 1,
) -> KeyResult:
    """Make the four roles' keys and version 1 of every role's metadata.

    Writes the root and targets private keys to ``offline_dir`` (refused
    under ``data_dir``), the snapshot and timestamp keys to the repository's
    ``keys/``, then targets, snapshot and timestamp, and ``1.root.json``
    last: a repository exists once its root does.  Refuses
    (``update.initialised``) when a root exists already.
    """
    if not 1 <= threshold <= root_keys:
        raise UpdateError(
            f"the root threshold must be between 1 and the number of root keys ({root_keys}), "
            f"got {threshold}",
            code="update.threshold",
        )
    offline = check_offline_dir(offline_dir, data_dir)
    with repo.files.lock():
        if repo.initialised():
            raise UpdateError(
                f"{repo.files.metadata_dir} has a root already; to change keys use "
                "`renkei-server update-keys rotate`",
                code="update.initialised",
            )
        signers = {
            "root": [CryptoSigner.generate_ed25519() for _ in range(root_keys)],
            "targets": [CryptoSigner.generate_ed25519()],
            "snapshot": [CryptoSigner.generate_ed25519()],
            "timestamp": [CryptoSigner.generate_ed25519()],
        }
        files: dict[str, list[str]] = {}
        for role in ROLES:
            for signer in signers[role]:
                if role in OFFLINE_ROLES:
                    path = _save_offline(offline, role, signer)
                else:
                    path = str(
                        repo.files.write_key(key_file_name(role, signer.public_key.keyid), signer)
                    )
                files.setdefault(role, []).append(path)
        root = Metadata(Root(expires=repo.expiry("root", now), consistent_snapshot=True))
        for role in ROLES:
            for signer in signers[role]:
                root.signed.add_key(signer.public_key, role)
        root.signed.roles["root"].threshold = threshold
        targets = Metadata(Targets(expires=repo.expiry("targets", now)))
        sign(targets, signers["targets"])
        targets_meta = repo.write_signed(targets, "1.targets.json")
        snapshot = Metadata(Snapshot(expires=repo.expiry("snapshot", now)))
        snapshot.signed.meta["targets.json"] = targets_meta
        sign(snapshot, signers["snapshot"])
        snapshot_meta = repo.write_signed(snapshot, "1.snapshot.json")
        timestamp = Metadata(
            Timestamp(expires=repo.expiry("timestamp", now), snapshot_meta=snapshot_meta)
        )
        sign(timestamp, signers["timestamp"])
        repo.write_signed(timestamp, "timestamp.json")
        sign(root, signers["root"])
        result = _write_root(repo, root)
    result.key_files = files
    return result


def _check_root_signers(root: Root, signers: Sequence[Signer]) -> None:
    for index, signer in enumerate(signers):
        check_signer(root, "root", signer, f"root key {index + 1}")
    have = {s.public_key.keyid for s in signers}
    if len(have) < root.roles["root"].threshold:
        raise UpdateError(
            f"root version {root.version} needs {root.roles['root'].threshold} root keys to sign; "
            f"{len(have)} given",
            code="update.key",
        )


def _next_root(
    repo: UpdateRepository, old: Metadata[Root], highest: int, now: datetime
) -> Metadata[Root]:
    new = copy.deepcopy(old)
    new.signed.version = highest + 1
    new.signed.expires = repo.expiry("root", now)
    return new


def _verify_rotation(old: Metadata[Root], new: Metadata[Root]) -> None:
    """The spec's rule: the new root verifies with the old root's keys and with its own."""
    try:
        old.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    except UnsignedMetadataError as exc:  # pragma: no cover - the checks above prevent it
        raise UpdateError(f"the new root would not verify: {exc}", code="update.key") from None


def renew_root(
    repo: UpdateRepository, root_signers: Sequence[Signer], *, now: datetime
) -> KeyResult:
    """A new root version with the same keys and a fresh expiry (before the 365 days run out)."""
    with repo.files.lock():
        state = repo.load()
        _check_root_signers(state.root.signed, root_signers)
        new = _next_root(repo, state.root, state.highest["root"], now)
        sign(new, root_signers)
        _verify_rotation(state.root, new)
        return _write_root(repo, new)


def rotate_keys(
    repo: UpdateRepository,
    roles: Sequence[str],
    root_signers: Sequence[Signer],
    *,
    data_dir: Path,
    now: datetime,
    offline_dir: Path | None = None,
    old_targets_signer: Signer | None = None,
) -> KeyResult:
    """Replace the keys of ``roles`` with new ones and publish the root that says so.

    ``root_signers``: the current root keys (a threshold of them).  A new
    root or targets key is written to ``offline_dir``; a new snapshot or
    timestamp key to the repository's ``keys/``.  When every replaced key
    is still at hand (the online ones in ``keys/``, the targets key as
    ``old_targets_signer``), the re-signed metadata carries the old and the
    new signature and is written before the new root, so no client ever
    refuses the repository.  When one is missing (lost, or deleted after a
    theft), the root is written first: a terminal refreshing in the moment
    until the rest follows fails once and succeeds at its next run (the
    result's ``warnings`` say so).
    """
    roles = list(dict.fromkeys(roles))
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UpdateError(
            f"unknown role {unknown or roles!r} (one of {', '.join(ROLES)})", code="update.role"
        )
    offline = None
    if any(r in OFFLINE_ROLES for r in roles):
        if offline_dir is None:
            raise UpdateError(
                "a new root or targets key is an offline key: name the folder for it with "
                "--offline-dir",
                code="update.offline_dir",
            )
        offline = check_offline_dir(offline_dir, data_dir)
    with repo.files.lock():
        state = repo.load()
        old_root = state.root
        _check_root_signers(old_root.signed, root_signers)
        if old_targets_signer is not None:
            check_signer(old_root.signed, "targets", old_targets_signer, "the targets key")
        chain_roles = [r for r in roles if r != "root"]  # metadata to sign again, not just root
        old: dict[str, list[Signer]] = {role: [] for role in ONLINE_ROLES}
        for role in ONLINE_ROLES if chain_roles else ():
            try:
                old[role] = repo.online_signers(role, old_root.signed)
            except UpdateError:
                if role not in roles:  # a key that stays must be at hand to sign
                    raise
        old["targets"] = [old_targets_signer] if old_targets_signer is not None else []
        new_root = _next_root(repo, old_root, state.highest["root"], now)
        fresh: dict[str, list[CryptoSigner]] = {}
        files: dict[str, list[str]] = {}
        for role in roles:
            old_keyids = list(old_root.signed.roles[role].keyids)
            fresh[role] = [CryptoSigner.generate_ed25519() for _ in old_keyids]
            for signer in fresh[role]:
                if role in OFFLINE_ROLES:
                    assert offline is not None
                    path = _save_offline(offline, role, signer)
                else:
                    name = key_file_name(role, signer.public_key.keyid)
                    path = str(repo.files.write_key(name, signer))
                files.setdefault(role, []).append(path)
            for keyid in old_keyids:
                new_root.signed.revoke_key(keyid, role)
            for signer in fresh[role]:
                new_root.signed.add_key(signer.public_key, role)
        sign(new_root, [*root_signers, *fresh.get("root", [])])
        _verify_rotation(old_root, new_root)
        # every replaced key at hand: sign with old and new, root last; else root first
        root_first = not all(old.get(r) for r in chain_roles)
        signers = {r: [*old.get(r, []), *fresh.get(r, [])] for r in ONLINE_ROLES}
        warnings: list[str] = []
        if root_first:
            missing = ", ".join(r for r in chain_roles if not old.get(r))
            warnings.append(
                f"the current {missing} key was not at hand: the new root was written before the "
                "metadata it signs; a terminal refreshing in that moment failed once and will "
                "succeed at its next run"
            )
            result = _write_root(repo, new_root)
        if chain_roles:
            targets = None
            if "targets" in roles:
                targets = repo.next_targets(state, now)
                sign(targets, [*old["targets"], *fresh["targets"]])
            repo.write_chain(
                state,
                now=now,
                targets=targets,
                resign_snapshot="snapshot" in roles,
                signers=signers,
            )
        if not root_first:
            result = _write_root(repo, new_root)
        for role in roles:
            if role in ONLINE_ROLES:
                retired = {k[:16] for k in old_root.signed.roles[role].keyids}
                for path in repo.files.key_files():
                    name, _, prefix = path.stem.partition("-")
                    if name == role and prefix in retired:
                        repo.files.remove_key(path)
    result.key_files = files
    result.warnings = warnings
    return result
