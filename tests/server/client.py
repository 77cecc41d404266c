"""A small signing HTTPS client, and the real server's processes, for the integration tests and
benchmarks.

:class:`SigningClient` speaks to the real server over TLS with nothing but ``http.client`` and
``ssl``, trusting only the test's own CA, and signs requests exactly as a
terminal does (``common.httpsig``).  Every knob a test needs to make a *bad*
request is a parameter: no signature, another key or key id, a shifted
``created`` time, a fixed nonce (to replay), or pre-built headers sent as
they are.

:class:`ServerProcess` runs the server as an operator does — gunicorn
(``server/gunicorn.conf.py``) on its socket and the front (``renkei-server
front``, nginx) on a free port of 127.0.0.1 — waits until it answers, and
stops both with their whole process groups, so no test leaves a worker
behind.  :func:`spawn`, :func:`app_argv` and :func:`front_argv` start the
same two processes elsewhere (in a network namespace).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.httpsig import new_nonce, sign_request

_CHUNK = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN_CONF = ROOT / "server" / "gunicorn.conf.py"
#: Data folders whose database is not their own SQLite file -> its URL (see :func:`use_database`).
_DATABASES: dict[Path, str] = {}


def use_database(data_dir: Path, url: str) -> None:
    """Note that the server of ``data_dir`` uses the database at ``url`` (e.g. PostgreSQL).

    :class:`ServerProcess` is given a data folder; this is how it learns the
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


def app_argv(gunicorn_conf: Path = GUNICORN_CONF) -> list[str]:
    """gunicorn with the app, as ``renkei-server serve`` runs it (on the run folder's socket)."""
    return [sys.executable, "-m", "gunicorn", "--config", str(gunicorn_conf)]


def front_argv() -> list[str]:
    """``renkei-server front``: nginx, rendered from the same configuration."""
    return [str(Path(sys.executable).with_name("renkei-server")), "front"]


def spawn(
    argv: Sequence[str], env: Mapping[str, str], *, log_path: Path, prefix: Sequence[str] = ()
) -> subprocess.Popen:
    """One server process as a unit would run it: own session, output appended to ``log_path``,
    under ``prefix`` (e.g. ``ip netns exec NS``).  The caller waits for it to be ready."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*prefix, *argv],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


class ServerProcess:
    """The real server for one data folder: gunicorn on its socket, nginx in front on 127.0.0.1.

    What an operator runs: gunicorn with ``server/gunicorn.conf.py`` listening
    on the run folder's socket, then ``renkei-server front`` (nginx, TLS, the
    shipped deadlines and limits) on a port of 127.0.0.1.  nginx cannot listen
    on port 0, so a free port is found by binding one and closing it; should
    something take it meanwhile, nginx says so and another port is tried.
    Both run in their own sessions; :meth:`stop` signals each whole process
    group and waits, escalating to SIGKILL.

    ``log_path`` gets gunicorn's output; nginx's errors and access log go to
    :attr:`front_log_path` and :attr:`access_log_path` next to it.  The
    database is the data folder's SQLite file unless ``database_url`` is
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
        front_workers: int = 1,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.database_url = database_url or _DATABASES.get(self.data_dir.resolve())
        self.log_path = Path(log_path)
        self.front_log_path = self.log_path.with_name(self.log_path.stem + "-front.log")
        self.access_log_path = self.log_path.with_name(self.log_path.stem + "-access.log")
        self.workers = workers
        self.threads = threads
        self.front_workers = front_workers
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None  # gunicorn
        self.front: subprocess.Popen | None = None  # nginx
        self.port: int | None = None
        self.run_dir: Path | None = None

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    @property
    def process_groups(self) -> tuple[int, int]:
        """(gunicorn's, nginx's): everything the server runs, for a benchmark's CPU count."""
        assert self.process is not None and self.front is not None, "the server is not running"
        return self.process.pid, self.front.pid

    @property
    def app_socket(self) -> Path:
        assert self.run_dir is not None, "the server is not running"
        return self.run_dir / "app.sock"

    def client(self, **kwargs: Any) -> SigningClient:
        assert self.port is not None, "the server is not running"
        return SigningClient("127.0.0.1", self.port, ca_file=self.ca_file, **kwargs)

    def environment(self, port: int) -> dict[str, str]:
        """The variables both processes get (as an operator's unit files would set them)."""
        assert self.run_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_SERVER_")}
        env.update(
            RENKEI_SERVER_DATA_DIR=str(self.data_dir),
            RENKEI_SERVER_BIND=f"127.0.0.1:{port}",
            RENKEI_SERVER_RUN_DIR=str(self.run_dir),
            RENKEI_SERVER_FRONT_ACCESS_LOG=str(self.access_log_path),
            RENKEI_SERVER_FRONT_WORKERS=str(self.front_workers),
            WEB_CONCURRENCY=str(self.workers),
            RENKEI_GUNICORN_THREADS=str(self.threads),
            PYTHONPATH=str(ROOT),
        )
        if self.database_url:
            env["RENKEI_SERVER_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0, *, port: int = 0) -> None:
        """Start both and wait until ``/healthz`` answers through the front; ``port`` 0: any.

        The app is told the front's port too (the names a signed request may
        carry include it), so a port nginx could not take means starting both again.
        """
        # A short folder of its own: a socket's path has at most 107 bytes.
        self.run_dir = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
        try:
            for attempt in range(5):
                self.port = port or _free_port()
                offset = self.front_log_path.stat().st_size if self.front_log_path.exists() else 0
                env = self.environment(self.port)
                self.process = spawn(app_argv(), env, log_path=self.log_path)
                self.front = spawn(front_argv(), env, log_path=self.front_log_path)
                if self._wait_until_healthy(timeout, offset):
                    return
                self.stop_app()
                if port or attempt == 4:
                    raise RuntimeError(f"port {self.port} is taken: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def start_app(self) -> None:
        """gunicorn again after :meth:`stop_app` (the front kept running)."""
        assert self.port is not None and self.process is None
        self.process = spawn(app_argv(), self.environment(self.port), log_path=self.log_path)
        self._wait_until_healthy(30.0, None)

    def stop_app(self, timeout: float = 15.0) -> None:
        """Stop gunicorn alone; the front stays and answers 503 meanwhile."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, timeout)

    def _wait_until_healthy(self, timeout: float, front_log_offset: int | None) -> bool:
        """Wait for ``/healthz`` through the front: True; False when nginx could not take the
        port (it exits saying so; its log from ``front_log_offset`` on is read)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, process in (("gunicorn", self.process), ("the front (nginx)", self.front)):
                if process is not None and process.poll() is not None:
                    if process is self.front and front_log_offset is not None:
                        with self.front_log_path.open("rb") as log:
                            log.seek(front_log_offset)
                            if b"Address already in use" in log.read():
                                self.front = None
                                return False
                    raise RuntimeError(f"{name} exited ({process.returncode}): {self.log_tail()}")
            try:
                with self.client(timeout=2) as probe:
                    reply = probe.get("/healthz", sign=False)
                if reply.status == 200:
                    return True
                last = reply
            except OSError as exc:  # refused, reset, TLS not ready yet
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"server not healthy within {timeout} s ({last}): {self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        front, self.front = self.front, None
        self.port = None
        if front is not None:
            stop_process_group(front, timeout)
        self.stop_app(timeout)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def restart(self) -> None:
        """Stop, then start again on the same port (signatures cover host and port)."""
        port = self.port or 0
        self.stop()
        self.start(port=port)

    def log_tail(self, lines: int = 30) -> str:
        said = []
        for path in (self.log_path, self.front_log_path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                continue
            said.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(said)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    """A port of 127.0.0.1 nobody listens on now (the kernel's choice for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
