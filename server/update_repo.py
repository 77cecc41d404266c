"""The TUF repository of terminal-agent releases: metadata signed here, served as files by the API.

Why TUF (The Update Framework, python-tuf) rather than one signature over a
release: a signature alone does not stop a stolen server or a man in the
middle from replaying an *old* signed release (rollback), from serving the
same metadata forever so a terminal never learns of a fix (freeze), or from
mixing files of two releases.  TUF's four roles close those holes, each
with its own key:

* ``root`` — names the keys of every role; offline; 365 days.
* ``targets`` — lists the releases with their length, SHA-256 and version;
  offline (``publish`` is given the key file); 90 days.
* ``snapshot`` — pins the version of ``targets``; online; 7 days.
* ``timestamp`` — pins the version of ``snapshot``; online; 1 day,
  re-signed hourly by ``renkei-server update-timestamp`` (a systemd timer).

Layout under ``<data_dir>/updates/`` (the contract with the agent,
consistent snapshots on): ``metadata/N.root.json``, ``metadata/timestamp.json``,
``metadata/N.snapshot.json``, ``metadata/N.targets.json``,
``targets/<sha256>.renkei-agent-<version>.tar.gz``, and the online keys in
``keys/<role>-<keyid>.pem`` (0600).

Crash safety: every file is written atomically, and a change is written
bottom-up — target file, targets, snapshot, and the timestamp *last*.  Until
the new timestamp is in place, clients follow the old timestamp to the old,
untouched files; version numbers are never reused (the next version is above the
highest on disk, so a file left by an interrupted run is never published
with other content; see :func:`next_version`).  Writers take a lock (``.lock``) so the
hourly timer and an operator's ``publish`` cannot interleave.

:class:`RepositoryFiles` is the only part that touches the disk; tests
replace it to kill the process between any two writes.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from packaging.version import InvalidVersion, Version
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from common.atomicwrite import atomic_write, fsync_dir, write_bytes

from .errors import ServerError
from .update_bundle import BUNDLE_FORMAT, TARGET_NAME, read_release

__all__ = [
    "METADATA_NAME",
    "ONLINE_ROLES",
    "ROLES",
    "TARGET_FILE_NAME",
    "ExpiryPolicy",
    "RepoState",
    "RepositoryFiles",
    "UpdateError",
    "UpdateRepository",
    "iso",
    "key_file_name",
    "load_signer",
    "next_version",
    "published_versions",
    "save_signer",
    "updates_dir",
]

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
#: Names the API serves (the contract): ``[N.]role.json`` and ``<sha256>.<target>``.
METADATA_NAME = re.compile(r"(?:([1-9][0-9]{0,9})\.)?(root|timestamp|snapshot|targets)\.json")
TARGET_FILE_NAME = re.compile(r"([0-9a-f]{64})\.(renkei-agent-[0-9A-Za-z.+-]{1,40}\.tar\.gz)")
_SERIALIZER = JSONSerializer(compact=False)
_BLOCK = 1024 * 1024


class UpdateError(ServerError):
    """The repository refused or could not do what was asked (``update.*``; see docs/updates.md)."""

    code = "update.error"


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata is valid, and when it counts as "expiring soon"."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    #: ``refresh_timestamp`` re-signs the snapshot too when it expires within this.
    snapshot_refresh: timedelta = timedelta(days=3)
    #: Status warns when a role expires within this (timestamp: the timer stopped 12 h ago).
    warning: Mapping[str, timedelta] = field(
        default_factory=lambda: {
            "root": timedelta(days=30),
            "targets": timedelta(days=14),
            "snapshot": timedelta(days=1),
            "timestamp": timedelta(hours=12),
        }
    )

    def lifetime(self, role: str) -> timedelta:
        return getattr(self, role)


def next_version(highest: int, now: datetime) -> int:
    """The version for new targets, snapshot or timestamp metadata signed at ``now``.

    One above the highest ever written, or the signing time in Unix seconds
    when that is larger.  Why the clock: a data folder restored from last
    night's backup holds lower versions than the terminals have already
    seen, and they would refuse everything (TUF's rollback protection) until
    the counters caught up; versions that follow the clock are above
    anything signed before the backup was taken.  Root versions are not
    chosen this way: a client walks them one by one.
    """
    return max(highest + 1, int(now.timestamp()))


def updates_dir(data_dir: Path) -> Path:
    """The repository's folder inside the server's data folder."""
    return Path(data_dir) / "updates"


# --- keys ---------------------------------------------------------------------------------------


def key_file_name(role: str, keyid: str) -> str:
    """``<role>-<first 16 hex digits of the key id>.pem``: a new key never overwrites an old one."""
    return f"{role}-{keyid[:16]}.pem"


def save_signer(path: Path, signer: CryptoSigner) -> None:
    """Write the private key (PKCS#8 PEM, mode 0600); refuse to replace an existing file."""
    if path.exists():
        raise UpdateError(
            f"{path} exists already; a key file is never overwritten", code="update.key"
        )
    write_bytes(path, signer.private_bytes, mode=0o600)


def load_signer(path: Path) -> CryptoSigner:
    """A signer from an Ed25519 key file; :class:`UpdateError` ``update.key`` names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UpdateError(f"{path}: {exc.strerror}", code="update.key") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UpdateError(
            f"{path}: not an unencrypted PKCS#8 PEM private key ({exc})", code="update.key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateError(f"{path}: not an Ed25519 key", code="update.key")
    return CryptoSigner(key)


def check_signer(root: Root, role: str, signer: Signer, source: object) -> None:
    """Refuse a key that the current root does not name for ``role`` (a revoked or wrong key)."""
    keyid = signer.public_key.keyid
    if keyid not in root.roles[role].keyids:
        wanted = ", ".join(k[:16] for k in root.roles[role].keyids)
        raise UpdateError(
            f"{source}: key {keyid[:16]} is not a {role} key of root version {root.version} "
            f"(the {role} key is {wanted}); use the current key file",
            code="update.key",
        )


def sign(md: Metadata, signers: Sequence[Signer]) -> None:
    """Replace the signatures of ``md`` with one by each signer (each key once)."""
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


def serialize(md: Metadata) -> bytes:
    return md.to_bytes(_SERIALIZER)


# --- the disk -----------------------------------------------------------------------------------


class RepositoryFiles:
    """The repository folder: reading, atomic writing, the writers' lock.  No TUF logic."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.metadata_dir = self.root / "metadata"
        self.targets_dir = self.root / "targets"
        self.keys_dir = self.root / "keys"

    def ensure(self) -> None:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.metadata_dir.mkdir(mode=0o755, exist_ok=True)
        self.targets_dir.mkdir(mode=0o755, exist_ok=True)
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for writers; readers (the API) never need it."""
        self.ensure()
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def versions(self, role: str) -> list[int]:
        """Versions of ``N.<role>.json`` on disk, in order (leftovers of a crash included)."""
        if not self.metadata_dir.is_dir():
            return []
        found = []
        for name in os.listdir(self.metadata_dir):
            match = METADATA_NAME.fullmatch(name)
            if match and match.group(1) and match.group(2) == role:
                found.append(int(match.group(1)))
        return sorted(found)

    def read_metadata(self, name: str) -> bytes:
        return (self.metadata_dir / name).read_bytes()

    def write_metadata(self, name: str, data: bytes) -> None:
        write_bytes(self.metadata_dir / name, data, mode=0o644)

    def target_path(self, name: str) -> Path:
        return self.targets_dir / name

    def add_target(self, source: Path, name: str) -> str:
        """Copy ``source`` in as ``targets/<name>`` atomically; return the SHA-256 of the copy."""
        digest = hashlib.sha256()
        with source.open("rb") as reader, atomic_write(self.targets_dir / name) as writer:
            while block := reader.read(_BLOCK):
                digest.update(block)
                writer.write(block)
        return digest.hexdigest()

    def write_key(self, name: str, signer: CryptoSigner) -> Path:
        path = self.keys_dir / name
        save_signer(path, signer)
        return path

    def key_files(self) -> list[Path]:
        if not self.keys_dir.is_dir():
            return []
        return sorted(p for p in self.keys_dir.glob("*.pem") if p.is_file())

    def remove_key(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_dir(path.parent)


# --- the repository -----------------------------------------------------------------------------


@dataclass
class RepoState:
    """The repository as clients see it: the latest root and the chain the timestamp points to."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]
    #: The highest version on disk per versioned role: the next one is above (next_version).
    highest: dict[str, int]


def published_versions(targets: Targets) -> dict[str, Version]:
    """Target name -> release version, from ``custom.renkei.version`` (else the target's name)."""
    found = {}
    for name, info in targets.targets.items():
        custom = info.custom
        text = None
        if isinstance(custom, dict) and isinstance(custom.get("renkei"), dict):
            text = custom["renkei"].get("version")
        if not isinstance(text, str):
            match = TARGET_NAME.fullmatch(name)
            text = match.group(1) if match else None
        if text is None:
            continue
        try:
            found[name] = Version(text)
        except InvalidVersion:  # a foreign entry is listed, never compared
            continue
    return found


class UpdateRepository:
    """Load, sign and write the repository's metadata.  Every method that writes takes the lock."""

    def __init__(self, files: RepositoryFiles, policy: ExpiryPolicy | None = None):
        self.files = files
        self.policy = policy or ExpiryPolicy()

    @classmethod
    def for_data_dir(cls, data_dir: Path, policy: ExpiryPolicy | None = None) -> UpdateRepository:
        return cls(RepositoryFiles(updates_dir(data_dir)), policy)

    # -- reading ----------------------------------------------------------------------------------

    def initialised(self) -> bool:
        return bool(self.files.versions("root"))

    def _read(self, name: str, role: type) -> Metadata:
        try:
            md = Metadata.from_bytes(self.files.read_metadata(name))
        except FileNotFoundError:
            raise UpdateError(
                f"{self.files.metadata_dir / name} is missing; the repository is incomplete "
                "(restore it from the backup)",
                code="update.corrupt",
            ) from None
        except OSError as exc:
            raise UpdateError(f"{self.files.metadata_dir / name}: {exc.strerror}") from None
        except DeserializationError as exc:
            raise UpdateError(
                f"{self.files.metadata_dir / name} is not TUF metadata: {exc}",
                code="update.corrupt",
            ) from None
        if not isinstance(md.signed, role):
            raise UpdateError(
                f"{self.files.metadata_dir / name} is not {role.type} metadata",
                code="update.corrupt",
            )
        return md

    def load(self) -> RepoState:
        """The current state; :class:`UpdateError` ``update.not_initialised`` before ``init``."""
        roots = self.files.versions("root")
        if not roots:
            raise UpdateError(
                f"there is no update repository in {self.files.root}; run "
                "`renkei-server update-keys init --offline-dir DIR` first",
                code="update.not_initialised",
            )
        root = self._read(f"{roots[-1]}.root.json", Root)
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise UpdateError("the snapshot does not list targets.json", code="update.corrupt")
        targets = self._read(f"{targets_meta.version}.targets.json", Targets)
        highest = {
            "root": roots[-1],
            "snapshot": max([snapshot.signed.version, *self.files.versions("snapshot")]),
            "targets": max([targets.signed.version, *self.files.versions("targets")]),
        }
        return RepoState(root, timestamp, snapshot, targets, highest)

    def online_signers(self, role: str, root: Root) -> list[Signer]:
        """The online keys in ``keys/`` that ``root`` names for ``role``; at least one."""
        wanted = set(root.roles[role].keyids)
        signers = []
        for path in self.files.key_files():
            if not path.name.startswith(f"{role}-"):
                continue
            signer = load_signer(path)
            if signer.public_key.keyid in wanted:
                signers.append(signer)
        if not signers:
            raise UpdateError(
                f"the online {role} key is missing from {self.files.keys_dir} (root version "
                f"{root.version} names {', '.join(k[:16] for k in wanted)}); restore it from the "
                f"backup, or rotate it with `renkei-server update-keys rotate --role {role}`",
                code="update.key",
            )
        return signers

    # -- writing ------------------------------------------------------------------------------------

    def expiry(self, role: str, now: datetime) -> datetime:
        """When metadata of ``role`` signed at ``now`` expires (UTC, whole seconds)."""
        return (now + self.policy.lifetime(role)).astimezone(UTC).replace(microsecond=0)

    def write_signed(self, md: Metadata, name: str) -> MetaFile:
        """Write signed metadata as ``name``; return its entry (version, length, SHA-256)."""
        data = serialize(md)
        self.files.write_metadata(name, data)
        return MetaFile.from_data(md.signed.version, data, ["sha256"])

    def write_chain(
        self,
        state: RepoState,
        *,
        now: datetime,
        targets: Metadata[Targets] | None = None,
        resign_snapshot: bool = False,
        signers: Mapping[str, Sequence[Signer]] | None = None,
    ) -> RepoState:
        """Write the signed ``targets`` (if given), a new snapshot (if needed), a new timestamp.

        The timestamp is written last: until then clients see the old chain.
        ``signers`` overrides the online keys of a role (a key rotation signs
        with the old and the new key, so both the old and the new root accept).
        """
        root = state.root.signed
        chosen = dict(signers or {})
        for role in ONLINE_ROLES:
            if role not in chosen:
                chosen[role] = self.online_signers(role, root)
        snapshot = state.snapshot
        snapshot_meta = state.timestamp.signed.snapshot_meta
        if targets is not None or resign_snapshot:
            snapshot = copy.deepcopy(state.snapshot)
            if targets is not None:
                snapshot.signed.meta["targets.json"] = self.write_signed(
                    targets, f"{targets.signed.version}.targets.json"
                )
            snapshot.signed.version = next_version(state.highest["snapshot"], now)
            snapshot.signed.expires = self.expiry("snapshot", now)
            sign(snapshot, chosen["snapshot"])
            snapshot_meta = self.write_signed(snapshot, f"{snapshot.signed.version}.snapshot.json")
        timestamp = copy.deepcopy(state.timestamp)
        timestamp.signed.snapshot_meta = snapshot_meta
        timestamp.signed.version = next_version(state.timestamp.signed.version, now)
        timestamp.signed.expires = self.expiry("timestamp", now)
        sign(timestamp, chosen["timestamp"])
        self.write_signed(timestamp, "timestamp.json")
        highest = dict(state.highest)
        highest["snapshot"] = max(highest["snapshot"], snapshot.signed.version)
        if targets is not None:
            highest["targets"] = max(highest["targets"], targets.signed.version)
        return RepoState(state.root, timestamp, snapshot, targets or state.targets, highest)

    def next_targets(self, state: RepoState, now: datetime) -> Metadata[Targets]:
        """A copy of the current targets with the next version and a fresh expiry (unsigned)."""
        targets = copy.deepcopy(state.targets)
        targets.signed.version = next_version(state.highest["targets"], now)
        targets.signed.expires = self.expiry("targets", now)
        return targets

    def publish(self, bundle: Path, targets_signer: Signer, *, now: datetime) -> dict[str, Any]:
        """Add the release in ``bundle`` as a target and sign targets, snapshot and timestamp.

        Refuses (``update.not_newer``) a version not above every published
        one; publishing the very same file again changes nothing.  Raises
        :class:`~server.update_bundle.BundleError` for a bad bundle and
        :class:`UpdateError` ``update.key`` for a key that is not the current
        targets key.
        """
        release = read_release(bundle)
        name = release.target_name
        stored = f"{release.sha256}.{name}"
        with self.files.lock():
            state = self.load()
            check_signer(state.root.signed, "targets", targets_signer, "the targets key")
            existing = state.targets.signed.targets.get(name)
            if existing is not None and existing.hashes.get("sha256") == release.sha256:
                if not self.files.target_path(stored).is_file():
                    self.files.add_target(Path(bundle), stored)  # repair a lost copy
                return self._result(release, state, already=True)
            versions = published_versions(state.targets.signed)
            highest = max(versions.values(), default=None)
            if highest is not None and Version(release.version) <= highest:
                raise UpdateError(
                    f"{bundle}: version {release.version} is not newer than {highest}, the highest "
                    "published; terminals never install an older or equal version — publish a new "
                    "version number",
                    code="update.not_newer",
                )
            copied = self.files.add_target(Path(bundle), stored)
            if copied != release.sha256:
                self.files.target_path(stored).unlink(missing_ok=True)
                raise UpdateError(f"{bundle} changed while it was being published; try again")
            targets = self.next_targets(state, now)
            targets.signed.targets[name] = TargetFile(
                release.length,
                {"sha256": release.sha256},
                name,
                {"custom": {"renkei": {"version": release.version, "format": BUNDLE_FORMAT}}},
            )
            sign(targets, [targets_signer])
            state = self.write_chain(state, now=now, targets=targets)
        return self._result(release, state, already=False)

    @staticmethod
    def _result(release: Any, state: RepoState, *, already: bool) -> dict[str, Any]:
        return {
            **release.to_json(),
            "already_published": already,
            "targets_version": state.targets.signed.version,
            "snapshot_version": state.snapshot.signed.version,
            "timestamp_version": state.timestamp.signed.version,
            "timestamp_expires": iso(state.timestamp.signed.expires),
        }

    def renew_targets(self, targets_signer: Signer, *, now: datetime) -> RepoState:
        """Re-sign the targets as they are with a fresh expiry (before the 90 days run out)."""
        with self.files.lock():
            state = self.load()
            check_signer(state.root.signed, "targets", targets_signer, "the targets key")
            targets = self.next_targets(state, now)
            sign(targets, [targets_signer])
            return self.write_chain(state, now=now, targets=targets)

    def refresh_timestamp(self, *, now: datetime) -> dict[str, Any]:
        """Re-sign the timestamp with the online key (and the snapshot when it expires soon).

        What the hourly timer runs.  The result lists ``problems``: roles
        whose metadata only the offline keys can renew and that expire within
        their warning period (or have expired).
        """
        with self.files.lock():
            state = self.load()
            resign = state.snapshot.signed.expires - now <= self.policy.snapshot_refresh
            state = self.write_chain(state, now=now, resign_snapshot=resign)
        return {
            "snapshot_resigned": resign,
            "roles": self.role_summary(state),
            "problems": [p for p in self.problems(state, now) if p["role"] in OFFLINE_ROLES],
        }

    # -- status -------------------------------------------------------------------------------------

    @staticmethod
    def role_summary(state: RepoState) -> dict[str, dict[str, Any]]:
        root = state.root.signed
        summary = {}
        for role, md in (
            ("root", state.root),
            ("targets", state.targets),
            ("snapshot", state.snapshot),
            ("timestamp", state.timestamp),
        ):
            summary[role] = {
                "version": md.signed.version,
                "expires": iso(md.signed.expires),
                "keys": [k[:16] for k in root.roles[role].keyids],
                "threshold": root.roles[role].threshold,
            }
        return summary

    def problems(self, state: RepoState, now: datetime) -> list[dict[str, str]]:
        """Expired roles, and roles expiring within their warning period, each with what to do."""
        todo = {
            "root": "renew it: `renkei-server update-keys renew --role root --root-key FILE`",
            "targets": "publish a release or `renkei-server update-keys renew --role targets`",
            "snapshot": "run `renkei-server update-timestamp` (is its timer running?)",
            "timestamp": "run `renkei-server update-timestamp` (is its timer running?)",
        }
        found = []
        for role, md in (
            ("root", state.root),
            ("targets", state.targets),
            ("snapshot", state.snapshot),
            ("timestamp", state.timestamp),
        ):
            expires = md.signed.expires
            if expires <= now:
                code, said = "update.expired", "has expired"
            elif expires - now <= self.policy.warning[role]:
                code, said = "update.expiring", "expires soon"
            else:
                continue
            found.append(
                {
                    "code": code,
                    "role": role,
                    "message": f"{role} metadata version {md.signed.version} {said} "
                    f"({iso(expires)}): {todo[role]}",
                }
            )
        return found


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
