"""Benchmark: one ``renkei-agent sync`` against the linkage server, vs the bare transfers inside it.

Measured in one run on this machine, against the real server under gunicorn
with TLS on 127.0.0.1 (the shipped ``server/gunicorn.conf.py``, two workers):

* ``sync_vs_bare_transfers``: the wall time of a real ``renkei-agent sync``
  (a subprocess, as the timer starts it: interpreter start, imports, queue,
  preflight, then the cycle) that downloads a 10,000-record ministry batch —
  verifying its manifest signature and hash, placing it atomically, recording
  and acknowledging it — and uploads a 10,000-record municipality notice file
  — validating every record locally first, spooling it, verifying the signed
  receipt and filing it — against the time of the bare transfers of the same
  bytes with the same client: ``HttpsTransport.download`` into memory and
  ``HttpsTransport.upload`` of a file of the same size (another 10,000
  records, so the server stores it for the first time too).  ``ratio`` is
  bare / sync: the share of the run spent moving bytes and waiting for the
  server; the rest is the agent's own work.  ``startup_seconds`` is what an
  agent process costs before any work (``renkei-agent --version``).
* ``agent_memory``: the agent's peak resident set size during that sync
  (``getrusage(RUSAGE_CHILDREN)`` in a small launcher process that starts it;
  see ``_LAUNCHER``) (target < 100 MB).

Bounded: one sync, one set of bare transfers and a short warm-up; every
subprocess has a timeout, and gunicorn is stopped and the temporary folder
removed at the end, whatever happens.

Run as ``python -m bench.agent``; ``make bench`` calls ``run()``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.transport import HttpsTransport
from bench.server import init_server
from common import statement
from common.items import MUNICIPALITY
from common.noticefile import encode_notice_file
from common.synthetic import SampleFactory
from server.config import ServerConfig
from server.enrollment import enroll, issue_token
from server.keys import load_or_create_signing_key
from server.storage import Storage
from tests.server.client import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
LASDEC = "131024"  # 東京都中央区
RECORDS = 10_000
TARGET_RSS_MB = 100
TIMEOUT = 600.0


def _terminal(config: ServerConfig) -> tuple[str, Ed25519PrivateKey]:
    storage = Storage(config.database_url)
    try:
        key = Ed25519PrivateKey.generate()
        token = issue_token(storage, LASDEC, now=datetime.now(UTC), ttl=600)
        public = statement.public_key_to_text(key.public_key())
        return enroll(storage, token, public, now=datetime.now(UTC)).terminal_id, key
    finally:
        storage.dispose()


def _municipality_file(number: int, records: int = RECORDS) -> bytes:
    """A valid municipality notice file; each ``number`` its own business day, so no id repeats."""
    day = date(2026, 11, 27) - timedelta(days=number)
    samples = SampleFactory(seed=200 + number, day=day)
    return encode_notice_file(MUNICIPALITY, samples.day_of(MUNICIPALITY, LASDEC, records))


def _server_key(config: ServerConfig) -> str:
    signing = load_or_create_signing_key(config.signing_key_path)
    return statement.public_key_to_text(signing.public_key())


def _bare(
    url: str,
    ca_file: Path,
    terminal: tuple[str, Ed25519PrivateKey],
    upload: bytes,
    records: int,
) -> dict:
    """The same transfers as the sync, with the same client and nothing else."""
    terminal_id, key = terminal
    with HttpsTransport(url, terminal_id=terminal_id, key=key, ca_file=ca_file) as transport:
        (batch,) = transport.list_batches()
        # warm-up: the server's code paths, the connection
        transport.download(batch["batch_id"], io.BytesIO())
        transport.upload(_municipality_file(99, 10), file_name="warm-up.csv")
    with HttpsTransport(url, terminal_id=terminal_id, key=key, ca_file=ca_file) as transport:
        started = time.perf_counter()
        sink = io.BytesIO()
        transport.download(batch["batch_id"], sink)
        downloaded = time.perf_counter()
        status, receipt = transport.upload(upload, file_name="bare.csv")
        finished = time.perf_counter()
    assert len(sink.getvalue()) == batch["size"], "the bare download is incomplete"
    assert status == 201 and len(receipt["statement"]["accepted"]) == records, receipt
    return {
        "batch_bytes": batch["size"],
        "download_seconds": downloaded - started,
        "upload_seconds": finished - downloaded,
        "seconds": finished - started,
    }


def _agent_config(root: Path, config: ServerConfig, url: str, terminal) -> Path:  # type: ignore[no-untyped-def]
    terminal_id, key = terminal
    key_path = root / "terminal-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    values = {
        "server_url": url,
        "lasdec": LASDEC,
        "terminal_id": terminal_id,
        "key_path": str(key_path),
        "server_key": _server_key(config),
        "ca_file": str(config.data_dir / "tls" / "ca.crt"),
        "folder_root": str(root / "srv"),
        "state_dir": str(root / "state"),
        "settle_seconds": 0,
    }
    path = root / "agent.toml"
    path.write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8"
    )
    return path


#: Runs a program and writes its exit status, wall time and peak RSS (KiB) as JSON to argv[1].
#: The peak RSS must come from a small process's own child: Linux carries the memory high-water
#: mark of a process across exec, and a child forked from this (large) process starts with
#: this process's.
_LAUNCHER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
status = subprocess.run(sys.argv[3:], timeout=float(sys.argv[2])).returncode
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "seconds": seconds, "peak_kib": peak}, out)
"""


def _measure(argv: list[str], log: Path) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS in MB, stdout) of one process."""
    env = {k: v for k, v in os.environ.items() if k != "RENKEI_AGENT_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    figures = log.with_suffix(".json")
    launcher = [sys.executable, "-c", _LAUNCHER, str(figures), str(TIMEOUT)]
    with log.open("w+b") as out, log.with_suffix(".err").open("w+b") as err:
        subprocess.run(
            [*launcher, *argv], cwd=ROOT, env=env, stdout=out, stderr=err, timeout=TIMEOUT + 30
        )
        measured = json.loads(figures.read_text())
        out.seek(0)
        err.seek(0)
        if measured["status"] not in (0, 1):
            raise RuntimeError(f"{argv[2:]} exited {measured['status']}: {err.read()[-2000:]!r}")
        stdout = out.read().decode("utf-8", "replace")
    return measured["status"], measured["seconds"], measured["peak_kib"] / 1024, stdout


def run(records: int = RECORDS) -> dict:
    with tempfile.TemporaryDirectory(prefix="renkei-bench-agent-") as temp:
        root = Path(temp)
        config = init_server(root / "data", {LASDEC: records})
        bare_terminal, agent_terminal = _terminal(config), _terminal(config)
        bare_file, agent_file = _municipality_file(0, records), _municipality_file(1, records)
        gunicorn = ServerProcess(
            config.data_dir, log_path=root / "gunicorn.log", workers=2, threads=4
        )
        gunicorn.start()
        try:
            url = f"https://127.0.0.1:{gunicorn.port}"
            ca_file = config.data_dir / "tls" / "ca.crt"
            bare = _bare(url, ca_file, bare_terminal, bare_file, records)

            agent_toml = _agent_config(root, config, url, agent_terminal)
            outbox = root / "srv" / "outbox"
            outbox.mkdir(parents=True)
            (outbox / "bench.csv").write_bytes(agent_file)
            cli = [sys.executable, "-m", "appliance.agent.cli"]
            _status, startup, _rss, _out = _measure([*cli, "--version"], root / "version.log")
            status, seconds, rss, stdout = _measure(
                [*cli, "sync", "--json", "--config", str(agent_toml)], root / "sync.log"
            )
        finally:
            gunicorn.stop()
        report = json.loads(stdout)
        counts = report["downloads"], report["uploads"]
        if status != 0 or counts[0]["acknowledged"] != 1 or counts[1]["sent"] != 1:
            raise RuntimeError(f"the sync did not do the whole cycle: {report['problems']}")
        sent = (root / "srv" / "sent" / "bench.csv.receipt.json").read_text(encoding="utf-8")
        if len(json.loads(sent)["statement"]["accepted"]) != records:
            raise RuntimeError("the server did not accept every record of the agent's file")
    return {
        "sync_vs_bare_transfers": {
            "batch_records": records,
            "batch_bytes": bare["batch_bytes"],
            "file_records": records,
            "file_bytes": len(agent_file),
            "bare_file_bytes": len(bare_file),
            "sync_seconds": seconds,
            "startup_seconds": startup,
            "bare_download_seconds": bare["download_seconds"],
            "bare_upload_seconds": bare["upload_seconds"],
            "bare_seconds": bare["seconds"],
            "ratio": bare["seconds"] / seconds,
        },
        "agent_memory": {
            "batch_records": records,
            "file_records": records,
            "peak_rss_mb": rss,
            "target_peak_rss_mb": TARGET_RSS_MB,
        },
    }


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=1)
    print()
