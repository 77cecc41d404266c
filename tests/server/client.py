"""A small signing HTTPS client, and a gunicorn process, for the integration tests and benchmark.

:class:`SigningClient` speaks to a real gunicorn over TLS with nothing but ``http.client`` and
``ssl``, trusting only the test's own CA, and signs requests exactly as a
terminal does (``common.httpsig``).  Every knob a test needs to make a *bad*
request is a parameter: no signature, another key or key id, a shifted
``created`` time, a fixed nonce (to replay), or pre-built headers sent as
they are.

:class:`GunicornProcess` runs the real server (``server/gunicorn.conf.py``)
on a port the kernel picks, waits until it answers, and stops it with its
whole process group, so no test leaves a worker behind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.httpsig import new_nonce, sign_request

_CHUNK = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN_CONF = ROOT / "server" / "gunicorn.conf.py"
_LISTENING = re.compile(r"Listening at: https?://([0-9.]+):([0-9]+)")
#: Data folders whose database is not their own SQLite file -> its URL (see :func:`use_database`).
_DATABASES: dict[Path, str] = {}


def use_database(data_dir: Path, url: str) -> None:
    """Note that the server of ``data_dir`` uses the database at ``url`` (e.g. PostgreSQL).

    :class:`GunicornProcess` is given a data folder; this is how it learns the
    database the test's fixtures made for that folder.
    """
    _DATABASES[Path(data_dir).resolve()] = url


def stop_process_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group, wait, SIGKILL if it lingers; then kill any member left behind.

    Every server a test or benchmark starts (gunicorn, nginx, dnsmasq, chronyd) runs in its own
    process group (``start_new_session=True``), so its workers go with it.
    """
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # workers share the group
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=timeout)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


class SigningClient:
    """One keep-alive HTTPS connection to ``host:port``; reconnects when the server closed it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_file: str | Path,
        key: Ed25519PrivateKey | None = None,
        key_id: str | None = None,
        agent_version: str = "renkei-test/1",
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
        authority: str | None = None,
    ):
        self.host = host
        self.port = port
        #: The host[:port] requests name (Host header, signature) when it is not host:port: the
        #: load balancer's name, so one signed request is valid at every app server behind it.
        self.authority = authority
        self.key = key
        self.key_id = key_id
        self.agent_version = agent_version
        self.clock = clock
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self._conn: http.client.HTTPSConnection | None = None

    @property
    def origin(self) -> str:
        return f"https://{self.authority or f'{self.host}:{self.port}'}"

    def _start(self, conn: http.client.HTTPSConnection, method: str, path: str) -> None:
        conn.putrequest(
            method, path, skip_host=self.authority is not None, skip_accept_encoding=True
        )
        if self.authority is not None:
            conn.putheader("Host", self.authority)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SigningClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building requests ------------------------------------------------------------------------

    def signed_headers(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: Ed25519PrivateKey | None = None,
        key_id: str | None = None,
        created: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The Content-Digest and signature headers for this request (sign with the client's key)."""
        key = key or self.key
        key_id = key_id or self.key_id
        if key is None or key_id is None:
            raise ValueError("this client has no key to sign with")
        return sign_request(
            method,
            self.origin + path,
            {},
            body,
            key_id=key_id,
            private_key=key,
            created=int(self.clock()) if created is None else created,
            nonce=nonce or new_nonce(),
        )

    # -- sending ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        sign: bool = True,
        **signing: Any,
    ) -> Reply:
        """Send one request; sign it unless ``sign=False`` (then ``headers`` go as they are)."""
        sent = {"Renkei-Agent-Version": self.agent_version, **(headers or {})}
        if sign:
            sent.update(self.signed_headers(method, path, body, **signing))
        return self._exchange(method, path, body, sent)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: bytes, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def post_json(self, path: str, document: Any, **kwargs: Any) -> Reply:
        body = json.dumps(document).encode("utf-8")
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return self.request("POST", path, body, headers=headers, **kwargs)

    def get_interrupted(self, path: str, keep: int, **signing: Any) -> tuple[int, bytes]:
        """GET ``path``, read only ``keep`` bytes of the body, then drop the connection.

        What a terminal sees when the line fails mid-download: the status and
        the bytes that arrived.
        """
        conn = self._connection()
        headers = {"Renkei-Agent-Version": self.agent_version}
        headers.update(self.signed_headers("GET", path, b"", **signing))
        self._start(conn, "GET", path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        data = response.read(keep)
        self.close()
        return response.status, data

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=self.timeout
            )
        return self._conn

    def _exchange(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return self._once(conn, method, path, body, headers)
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                ssl.SSLEOFError,
                ssl.SSLZeroReturnError,
            ):
                # A kept-alive connection the server closed meanwhile (its keep-alive
                # timeout ran out): retry once on a new connection.
                self.close()
                if attempt == 2:
                    raise
            except BaseException:
                self.close()  # a connection in an unknown state is not reused
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        conn: http.client.HTTPSConnection,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> Reply:
        self._start(conn, method, path)
        names = {name.lower() for name in headers}
        for name, value in headers.items():
            conn.putheader(name, value)
        if body or method in {"POST", "PUT"}:
            if "content-length" not in names:
                conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        interrupted = False
        try:
            view = memoryview(body)
            for start in range(0, len(view), _CHUNK):
                conn.send(view[start : start + _CHUNK])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The server answered early (e.g. 413) and stopped reading: read its answer.
            interrupted = True
        try:
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        reply = Reply(
            response.status, {name.lower(): value for name, value in response.getheaders()}, data
        )
        if response.will_close or interrupted or reply.status == 413:
            # After a 413 the server drops the unread body and the connection with it,
            # even when its answer said keep-alive.
            self.close()
        return reply


class GunicornProcess:
    """``gunicorn -c server/gunicorn.conf.py`` for one data folder, on 127.0.0.1 and a free port.

    The port is chosen by the kernel (bind to port 0) and read from the
    master's log, so there is no race with another test for a "free" port.
    The server runs in its own session; :meth:`stop` signals the whole
    process group and waits, escalating to SIGKILL.

    The database is the data folder's SQLite file unless ``database_url`` is
    given or the folder was registered with :func:`use_database` (the server
    tests' fixtures do on ``--database=postgresql``).  No ``RENKEI_SERVER_*``
    variable of the test process reaches the server.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        log_path: Path,
        workers: int = 2,
        threads: int = 4,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.database_url = database_url or _DATABASES.get(self.data_dir.resolve())
        self.log_path = Path(log_path)
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def client(self, **kwargs: Any) -> SigningClient:
        assert self.port is not None, "the server is not running"
        return SigningClient("127.0.0.1", self.port, ca_file=self.ca_file, **kwargs)

    def start(self, timeout: float = 30.0, *, port: int = 0) -> None:
        """Start and wait until ``/healthz`` answers; ``port`` 0 lets the kernel choose."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_SERVER_")}
        env.update(
            RENKEI_SERVER_DATA_DIR=str(self.data_dir),
            RENKEI_SERVER_BIND=f"127.0.0.1:{port}",
            WEB_CONCURRENCY=str(self.workers),
            RENKEI_GUNICORN_THREADS=str(self.threads),
            PYTHONPATH=str(ROOT),
        )
        if self.database_url:
            env["RENKEI_SERVER_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            self.port = self._wait_for_port(offset, timeout)
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self, offset: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            with self.log_path.open("rb") as log:
                log.seek(offset)
                found = _LISTENING.search(log.read().decode("utf-8", "replace"))
            if found:
                return int(found.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited ({self.process.returncode}): {self.log_tail()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"gunicorn did not listen within {timeout} s: {self.log_tail()}")

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                with self.client(timeout=2) as probe:
                    reply = probe.get("/healthz", sign=False)
                if reply.status == 200:
                    return
                last = reply
            except OSError as exc:  # refused, reset, TLS not ready yet
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"gunicorn not healthy within {timeout} s ({last}): {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        self.port = None
        if process is None:
            return
        stop_process_group(process, timeout)

    def restart(self) -> None:
        """Stop, then start again on the same port (signatures cover host and port)."""
        port = self.port or 0
        self.stop()
        self.start(port=port)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> GunicornProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
