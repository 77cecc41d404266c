"""Test helpers shared by several agent test modules, so that test modules never import each other.

* :class:`Site` — one appliance (its own enrolled terminal, key, folders,
  queue and configuration) against the module's :class:`AgentServer`; the
  server-side look-ups (:func:`pending`, :func:`batch_row`,
  :func:`stored_records`, :func:`uploads_of`) and :func:`publish_days`,
  which closes more business days at the server.
* :func:`notice_file` — valid (or deliberately broken) municipality notice
  files for the outbox.
* :class:`Recorder`, :class:`Tls`, :data:`HOST`, :func:`free_port` — an
  aiosmtpd handler that keeps what it receives, and the TLS files of a
  relay, for the mail and unit tests.

Fixtures stay in the modules (or conftest.py); only plain code lives here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from appliance.agent.config import AgentConfig
from appliance.agent.download import inbox_name
from appliance.agent.folders import Folders
from appliance.agent.queue import Queue
from appliance.agent.sync import RunReport, run_sync
from common import statement
from common.items import MUNICIPALITY
from common.noticefile import encode_notice_file
from common.patterns import load_patterns
from common.records import Record
from common.synthetic import SampleFactory
from server.batches import list_batches
from server.storage import received_notices, uploads
from tests.agent.conftest import LOOPBACK, SERVER_NAME, AgentServer, Enrolled, free_port
from tests.server.conftest import api_publish
from tests.smtp_relay import REFUSED, Delivered, Recorder

__all__ = [
    "HOST",
    "PASSWORD",
    "REFUSED",
    "USER",
    "Delivered",
    "Recorder",
    "Site",
    "Tls",
    "batch_row",
    "dead_transport",
    "drop",
    "expected_name",
    "free_port",
    "notice_file",
    "notice_records",
    "pending",
    "publish_days",
    "sha",
    "stored_records",
    "uploads_of",
]


# --- one appliance -------------------------------------------------------------------------------


class Site:
    """One appliance for ``lasdec``: its own key, folders, queue and configuration.

    ``open_queue=False``: the queue is not opened here (``queue`` is None), for a
    site whose state folder only the agent's own process can reach.
    """

    def __init__(
        self,
        server: AgentServer,
        root: Path,
        lasdec: str,
        *,
        open_queue: bool = True,
        **overrides: Any,
    ):
        self.server = server
        self.root = root
        self.terminal: Enrolled = server.enroll(lasdec)
        key_path = root / "terminal-key.pem"
        root.mkdir(parents=True, exist_ok=True)
        key_path.write_bytes(
            self.terminal.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        settings: dict[str, Any] = {
            "server_url": server.url,
            "lasdec": lasdec,
            "terminal_id": self.terminal.terminal_id,
            "key_path": key_path,
            "server_key": statement.public_key_to_text(server.server_key.public_key()),
            "ca_file": server.ca_file,
            "folder_root": root / "srv",
            "state_dir": root / "state",
            "settle_seconds": 0.0,
        }
        settings.update(overrides)
        self.config = AgentConfig(**settings)
        self.folders = Folders(self.config.folder_root, self.config.state_dir)
        self.folders.ensure()
        self.queue: Queue = Queue(self.config.queue_path) if open_queue else None  # type: ignore[assignment]

    @property
    def lasdec(self) -> str:
        return self.config.lasdec

    def sync(self, transport=None, **options: Any) -> RunReport:  # type: ignore[no-untyped-def]
        """One run with a transport to the server (or the one given)."""
        options.setdefault("clock", time.time)
        if transport is not None:
            return run_sync(
                self.config, transport=transport, queue=self.queue, folders=self.folders, **options
            )
        with self.server.transport(self.terminal) as real:
            return run_sync(
                self.config, transport=real, queue=self.queue, folders=self.folders, **options
            )

    def files(self, folder: str) -> dict[str, bytes]:
        """Name → bytes of the files in one of the folders (``inbox``, ``sent`` …)."""
        path = getattr(self.folders, folder)
        return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}

    def write_config(self, path: Path, **extra: Any) -> Path:
        """This site's configuration as agent.toml (for the command line), plus ``extra`` keys.

        ``extra`` may also replace a key of the site's own configuration.
        """
        c = self.config
        values: dict[str, Any] = {
            "server_url": c.server_url,
            "lasdec": c.lasdec,
            "terminal_id": c.terminal_id,
            "key_path": str(c.key_path),
            "server_key": c.server_key,
            "ca_file": str(c.ca_file),
            "folder_root": str(c.folder_root),
            "state_dir": str(c.state_dir),
            "settle_seconds": c.settle_seconds,
            "max_file_bytes": c.max_file_bytes,
        }
        values.update(extra)
        lines = []
        for key, value in values.items():
            if value is None:
                continue
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
            lines.append(f"{key} = {text}")  # JSON strings, lists and numbers are TOML too
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()


def dead_transport(site: Site):  # type: ignore[no-untyped-def]
    """A transport to a port nothing listens on: every request is ``net.refused``."""
    return site.server.transport(site.terminal, url=f"https://{SERVER_NAME}:{free_port()}")


# --- the server's side ---------------------------------------------------------------------------


def pending(server: AgentServer, lasdec: str) -> list:
    """The server's pending batches for ``lasdec`` (from its database), in sequence order."""
    return list_batches(server.storage, lasdec, pending_only=True)


def batch_row(server: AgentServer, lasdec: str, batch_id: str):  # type: ignore[no-untyped-def]
    found = [
        b
        for b in list_batches(server.storage, lasdec, pending_only=False)
        if b.batch_id == batch_id
    ]
    assert found, batch_id
    return found[0]


_DAYS = iter(range(1, 400))


def publish_days(server: AgentServer, counts: Mapping[str, int], days: int = 1) -> None:
    """Close ``days`` more business days (later than any before), ``counts`` notices each."""
    for _ in range(days):
        offset = next(_DAYS)
        api_publish(
            server.storage,
            server.blobs,
            server.server_key,
            datetime.now(UTC) + timedelta(days=offset),
            dict(counts),
            seed=100 + offset,
        )


def expected_name(batch) -> str:  # type: ignore[no-untyped-def]
    """The inbox name of a server batch row."""
    return inbox_name(batch.lasdec, batch.business_date.isoformat(), batch.sequence)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_records(site: Site, tag: str) -> list[str]:
    """Record ids the server stored for the site's municipality with ``tag``."""
    with site.server.storage.read() as conn:
        rows = conn.execute(
            sa.select(received_notices.c.record_id).where(
                received_notices.c.lasdec == site.lasdec,
                received_notices.c.record_id.like(f"C-{tag}-%"),
            )
        ).scalars()
        return sorted(rows)


def uploads_of(site: Site, data: bytes) -> int:
    """How many uploads the server recorded with these bytes."""
    with site.server.storage.read() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(uploads).where(uploads.c.sha256 == sha(data))
        ).scalar()


# --- outbox files --------------------------------------------------------------------------------

_PATTERNS = [p for p in load_patterns(MUNICIPALITY).values() if not p.pending]


def notice_records(lasdec: str, count: int, tag: str, *, seed: int = 3) -> list[Record]:
    """Valid municipality notices with record ids unique to ``tag``."""
    factory = SampleFactory(seed=seed)
    return [
        factory.record(_PATTERNS[i % len(_PATTERNS)], lasdec, record_id=f"C-{tag}-{i:05d}")
        for i in range(count)
    ]


def notice_file(
    lasdec: str, count: int, tag: str, *, bad: tuple[int, ...] = (), seed: int = 3
) -> bytes:
    """A municipality notice file of ``count`` records; those at ``bad`` get an impossible date."""
    records = notice_records(lasdec, count, tag, seed=seed)
    for index in bad:
        record = records[index]
        column = next(c for c in record.values if c.endswith("date"))
        records[index] = record.with_values(**{column: "20261399"})
    return encode_notice_file(MUNICIPALITY, records)


def drop(site: Site, name: str, data: bytes) -> Path:
    """Put a file into the site's outbox, as staff do."""
    path = site.folders.outbox / name
    path.write_bytes(data)
    return path


# --- a mail relay --------------------------------------------------------------------------------

HOST = LOOPBACK
USER = "renkei-agent"
PASSWORD = 'pa$$ w0rd:\\"x'


@dataclass(frozen=True)
class Tls:
    """A relay's TLS files: the CA that signed ``cert``, another CA, the certificate and key."""

    ca: Path
    other_ca: Path
    cert: Path
    key: Path
