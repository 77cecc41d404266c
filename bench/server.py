"""Benchmark: the linkage server (gunicorn behind its nginx front), over TLS on loopback, with
signing clients.

Measured in one run on this machine, as shipped — the front (``renkei-server
front``: nginx, one worker per core, TLS) passing whole requests to
``server/gunicorn.conf.py`` (2 × cores + 1 gthread workers) — with a real
SQLite database:

* ``list_download_ack``: sustained requests/s of a terminal's daily cycle —
  list the batches, download a 1,000-record batch, acknowledge it — from
  several client threads, each its own enrolled terminal;
* ``upload``: sustained uploads/s (and records/s) of distinct 1,000-record
  municipality notice files, each parsed, validated, stored and receipted;
* ``download_vs_nginx``: download throughput of the 1,000-record batch from
  the server (signed, verified, nonce recorded, through the front) against
  Debian's ``nginx`` serving the same bytes as a static file over TLS with
  the same certificate, as a ratio (target ≥ 0.3);
* ``download_vs_nginx_large``: the same for a 10,000-record batch, which
  separates the per-request cost (signature check, database) from the cost
  of moving the bytes.

The two sides of a comparison get the same treatment: as many static nginx
worker processes as gunicorn has workers (the server's side has its front's
as well), the same number of client connections
(one keep-alive connection per client thread on both), one untimed request
per connection first (so neither side's TLS handshakes are timed), the same
request count and the same client code reading and checking every body.
The downloads alternate between the two servers in slices, so that other
work on a shared machine falls on both sides alike.  The signed requests are
signed before the clock starts: signing (about a millisecond of the load
generator's CPU per request, on the same cores as the server) is the
terminal's work, done on its own appliance, and the unsigned nginx requests
have no such cost; the server still verifies every signature and records
every nonce inside the timed loop.  (Until issue 10 nginx ran one worker per
core, after gunicorn rather than alternating with it, the clients signed
inside the timed loop, and 40/8 requests per client made the nginx side last
a fifth of a second.)

nginx is started here with a temporary configuration on 127.0.0.1 and
stopped at the end; when it is not installed the ratios are reported as not
measured.  Every loop is bounded by a request count.  Debian package:
``nginx``.

Run as ``python -m bench.server``; ``make bench`` calls ``run()``.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, records_to_jsonl
from common.synthetic import SampleFactory
from server.blobs import BlobStore
from server.closeday import close_day
from server.config import ServerConfig, load_config
from server.enrollment import enroll, issue_token
from server.ingest import import_notices
from server.keys import load_or_create_signing_key
from server.municipalities import load_master, shipped_master
from server.storage import Storage, business_day
from server.tls import make_dev_ca, make_server_cert
from tests.server.client import ServerProcess, SigningClient, stop_process_group

TARGET = 0.3
DAILY = "131016"  # 東京都千代田区: the 1,000-record batch, the uploads
LARGE = "131024"  # 東京都中央区: the 10,000-record batch
RECORDS = 1_000
LARGE_RECORDS = 10_000
CLIENTS = 4
CYCLES_PER_CLIENT = 25  # list + download + ack
UPLOADS_PER_CLIENT = 4
DOWNLOADS_PER_CLIENT = 100
LARGE_DOWNLOADS_PER_CLIENT = 20
SLICES = 5  # each comparison alternates between gunicorn and nginx this many times


def init_server(data_dir: Path, batches: dict[str, int]) -> ServerConfig:
    """A server data folder with TLS (certificate for 127.0.0.1) and, for today, one batch of
    ``batches[lasdec]`` ministry notices per municipality named (the agent benchmark uses it too).
    """
    ca_cert, ca_key = make_dev_ca(data_dir / "tls")
    make_server_cert(data_dir / "tls", ca_cert, ca_key)
    config = load_config(env={}, data_dir=data_dir)
    config.blob_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(config.database_url)
    try:
        storage.migrate()
        load_master(
            storage, [m for m in shipped_master() if m.code == "130001" or m.code in batches]
        )
        key = load_or_create_signing_key(config.signing_key_path)
        now = datetime.now(UTC)
        day = business_day(now)
        samples = SampleFactory(seed=3, day=day)
        out = io.StringIO()
        records = [
            r for lasdec, count in batches.items() for r in samples.day_of(MINISTRY, lasdec, count)
        ]
        records_to_jsonl(MINISTRY, records, out)
        result = import_notices(
            storage, out.getvalue().encode(), file_name="day.jsonl", business_date=day, now=now
        )
        assert result.ok, result.to_json()["file_error"]
        close_day(storage, BlobStore(config.blob_dir), key, day, now=now)
    finally:
        storage.dispose()
    return config


def _terminals(
    config: ServerConfig, lasdec: str, count: int
) -> list[tuple[str, Ed25519PrivateKey]]:
    storage = Storage(config.database_url)
    try:
        out = []
        for _ in range(count):
            key = Ed25519PrivateKey.generate()
            token = issue_token(storage, lasdec, now=datetime.now(UTC), ttl=600)
            public = statement.public_key_to_text(key.public_key())
            terminal = enroll(storage, token, public, now=datetime.now(UTC))
            out.append((terminal.terminal_id, key))
        return out
    finally:
        storage.dispose()


def _parallel(
    clients: list[SigningClient], work: Callable[[int, SigningClient], int]
) -> tuple[int, float]:
    """Run ``work(index, client)`` on every client at once; (sum of what it returns, seconds)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        total = sum(pool.map(work, range(len(clients)), clients))
    return total, time.perf_counter() - started


def _cycles(path: str, sha256: str, cycles: int) -> Callable[[int, SigningClient], int]:
    def work(_index: int, client: SigningClient) -> int:
        for _ in range(cycles):
            listed = client.get("/api/v1/batches?all=1")
            assert listed.status == 200, listed.body[:200]
            data = client.get(path)
            assert data.status == 200 and hashlib.sha256(data.body).hexdigest() == sha256
            ack = client.post_json(f"{path}/ack", {"sha256": sha256})
            assert ack.status == 200, ack.body[:200]
        return 3 * cycles

    return work


def _upload_files(count: int, records: int) -> list[bytes]:
    """Distinct 1,000-record files: one business day each, so no record id repeats."""
    start = date(2026, 11, 27)
    return [
        encode_notice_file(
            MUNICIPALITY,
            SampleFactory(seed=100 + i, day=start - timedelta(days=i)).day_of(
                MUNICIPALITY, DAILY, records
            ),
        )
        for i in range(count)
    ]


def _uploads(files: list[bytes], each: int, records: int) -> Callable[[int, SigningClient], int]:
    def work(index: int, client: SigningClient) -> int:
        mine = files[index * each : (index + 1) * each]
        for number, data in enumerate(mine):
            headers = {
                "Content-Type": "application/octet-stream",
                "Renkei-File-Name": quote(f"bench-{index}-{number}.csv"),
            }
            reply = client.post("/api/v1/uploads", data, headers=headers)
            assert reply.status == 201, reply.body[:300]
            assert len(reply.json()["statement"]["accepted"]) == records
        return len(mine)

    return work


def _presign(clients: list[SigningClient], path: str, count: int) -> list[list[dict[str, str]]]:
    """``count`` signed GETs of ``path`` per client, each with its own nonce, made before timing."""
    return [[client.signed_headers("GET", path) for _ in range(count)] for client in clients]


def _downloads(
    path: str, size: int, count: int, *, signed: list[list[dict[str, str]]] | None
) -> Callable[[int, SigningClient], int]:
    """GET ``path`` ``count`` times per client, with the client's pre-signed headers when given."""

    def work(index: int, client: SigningClient) -> int:
        for number in range(count):
            headers = signed[index][number] if signed is not None else None
            reply = client.get(path, sign=False, headers=headers)
            assert reply.status == 200 and len(reply.body) == size, (reply.status, reply.body[:200])
        return count * size

    return work


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Nginx:
    """Debian's nginx on loopback with a temporary configuration, serving one folder over TLS.

    ``workers`` worker processes: the benchmark gives it as many as gunicorn has.
    """

    def __init__(self, root: Path, www: Path, cert: Path, key: Path, *, workers: int):
        self.root = root
        self.workers = workers
        self.www = www
        self.cert = cert
        self.key = key
        self.process: subprocess.Popen | None = None
        self.port = 0

    def _config(self) -> str:
        user = "user root root;" if os.geteuid() == 0 else ""  # root's temp dirs are 0700
        return f"""{user}
worker_processes {self.workers};
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {self.root}/client_body;
    proxy_temp_path {self.root}/proxy;
    fastcgi_temp_path {self.root}/fastcgi;
    uwsgi_temp_path {self.root}/uwsgi;
    scgi_temp_path {self.root}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        root {self.www};
        location / {{ default_type application/octet-stream; }}
    }}
}}
"""

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is not installed (Debian package nginx)")
        self.root.mkdir(exist_ok=True)
        for _attempt in range(3):
            self.port = _free_port()
            conf = self.root / "nginx.conf"
            conf.write_text(self._config())
            self.process = subprocess.Popen(
                [binary, "-e", str(self.root / "error.log"), "-p", str(self.root), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                except OSError:
                    time.sleep(0.05)
            self.stop()  # the port was taken meanwhile, or nginx failed: try another port
        log = self.root / "error.log"
        raise RuntimeError(f"nginx did not start: {log.read_text()[-500:] if log.exists() else ''}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, timeout=10)


def _compare(
    signers: list[SigningClient],
    path: str,
    static: list[SigningClient],
    static_path: str,
    body: bytes,
    count: int,
) -> tuple[float, float | str]:
    """(gunicorn MB/s, nginx MB/s or why it was not measured), ``count`` downloads per client each.

    The downloads are taken in :data:`SLICES` alternating slices, gunicorn then
    nginx, so that other work on the machine falls on both sides alike; each
    side's figure is its bytes over its own timed seconds.  Both sides first
    make one untimed request per connection.  When nginx is missing (no
    ``static`` clients) or fails, gunicorn is still measured.
    """
    size = len(body)
    missing = "" if static else "not measured: nginx did not start"

    def nginx_side(part: int) -> tuple[int, float]:
        nonlocal missing
        if missing:
            return 0, 0.0
        try:
            return _parallel(static, _downloads(static_path, size, part, signed=None))
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            missing = f"not measured: {exc}"
            return 0, 0.0

    _parallel(signers, _downloads(path, size, 1, signed=_presign(signers, path, 1)))
    nginx_side(1)
    slices = min(SLICES, count)
    parts = [count // slices + (1 if i < count % slices else 0) for i in range(slices)]
    sent, seconds, static_sent, static_seconds = 0, 0.0, 0, 0.0
    for part in parts:
        signed = _presign(signers, path, part)
        done, took = _parallel(signers, _downloads(path, size, part, signed=signed))
        sent, seconds = sent + done, seconds + took
        done, took = nginx_side(part)
        static_sent, static_seconds = static_sent + done, static_seconds + took
    return sent / seconds / 1e6, missing or static_sent / static_seconds / 1e6


def _close(clients: list[SigningClient]) -> None:
    for client in clients:
        client.close()


def run(
    *,
    records: int = RECORDS,
    large_records: int = LARGE_RECORDS,
    clients: int = CLIENTS,
    rounds: float = 1.0,
) -> dict:
    """Every figure above; ``rounds`` scales the request counts (the smoke test runs a sliver)."""

    def times(count: int) -> int:
        return max(1, round(count * rounds))

    cycles, uploads_each = times(CYCLES_PER_CLIENT), times(UPLOADS_PER_CLIENT)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="renkei-bench-server-") as temp:
        root = Path(temp)
        config = init_server(root / "data", {DAILY: records, LARGE: large_records})
        files = _upload_files(clients * uploads_each, records)
        daily_ids = _terminals(config, DAILY, clients)
        large_ids = _terminals(config, LARGE, clients)
        cpus = os.cpu_count() or 1
        gunicorn = ServerProcess(  # as shipped: nginx one worker per CPU, gunicorn 2 × CPUs + 1
            config.data_dir,
            log_path=root / "gunicorn.log",
            workers=2 * cpus + 1,
            front_workers=cpus,
        )
        gunicorn.start()
        daily = [gunicorn.client(key=key, key_id=tid) for tid, key in daily_ids]
        large = [gunicorn.client(key=key, key_id=tid) for tid, key in large_ids]
        blobs = BlobStore(config.blob_dir)
        try:
            (batch,) = daily[0].get("/api/v1/batches").json()["batches"]
            (big,) = large[0].get("/api/v1/batches").json()["batches"]
            data, big_data = blobs.get(batch["sha256"]), blobs.get(big["sha256"])

            requests, seconds = _parallel(daily, _cycles(batch["file"], batch["sha256"], cycles))
            report["list_download_ack"] = {
                "clients": clients,
                "batch_records": records,
                "batch_bytes": len(data),
                "requests": requests,
                "requests_per_s": requests / seconds,
                "cycles_per_s": requests / 3 / seconds,
            }

            uploads, seconds = _parallel(daily, _uploads(files, uploads_each, records))
            report["upload"] = {
                "clients": clients,
                "file_records": records,
                "file_bytes": len(files[0]),
                "uploads": uploads,
                "uploads_per_s": uploads / seconds,
                "records_per_s": uploads * records / seconds,
            }

            comparisons = (
                (
                    "download_vs_nginx",
                    records,
                    daily,
                    batch["file"],
                    data,
                    times(DOWNLOADS_PER_CLIENT),
                ),
                (
                    "download_vs_nginx_large",
                    large_records,
                    large,
                    big["file"],
                    big_data,
                    times(LARGE_DOWNLOADS_PER_CLIENT),
                ),
            )
            www = root / "www"
            www.mkdir()
            for name, _records, _signers, _path, body, _count in comparisons:
                (www / f"{name}.csv").write_bytes(body)
            nginx = _Nginx(
                root / "nginx",
                www,
                config.tls_dir / "server.crt",
                config.tls_dir / "server.key",
                workers=gunicorn.workers,
            )
            try:
                nginx.start()
            except (OSError, RuntimeError) as exc:
                reason: str | None = f"not measured: {exc}"
            else:
                reason = None
            try:
                for name, batch_records, signers, path, body, count in comparisons:
                    static = [
                        SigningClient("127.0.0.1", nginx.port, ca_file=config.tls_dir / "ca.crt")
                        for _ in range(clients if reason is None else 0)
                    ]
                    try:
                        ours, theirs = _compare(signers, path, static, f"/{name}.csv", body, count)
                    finally:
                        _close(static)
                    figures = report[name] = {
                        "batch_records": batch_records,
                        "file_bytes": len(body),
                        "gunicorn_mb_s": ours,
                    }
                    if isinstance(theirs, str):
                        figures["nginx"] = reason or theirs
                    else:
                        figures["nginx_mb_s"] = theirs
                        figures["ratio"] = ours / theirs
                        figures["target"] = TARGET
            finally:
                nginx.stop()
        finally:
            _close(daily + large)
            gunicorn.stop()
    return report


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=1)
    print()
