"""The ministry's data centre in its namespace: the server (nginx in front of gunicorn), its
operator commands, a mail relay, and a hand on the server's faults.

* :class:`Server` — ``renkei-server init --dev-tls``, then gunicorn with the
  e2e config (``tests/e2e/gunicorn.conf.py``: the server's own settings plus
  the fault middleware) on its socket and ``renkei-server front`` (nginx, TLS)
  on 10.20.0.10:443.  :meth:`Server.kill` is SIGKILL to both whole process
  groups (no graceful anything), :meth:`Server.start` brings them back on the
  same address.  :meth:`Server.cli` runs ``renkei-server`` as
  the operator does, in the namespace.  :attr:`Server.storage` reads the
  database for the invariant checks (the test never writes to it).  The
  database is the data folder's SQLite file, or the PostgreSQL database
  ``database_url`` names (``pytest --database=postgresql``): the operator's
  ``init`` migrates it, and the server reaches it over the cluster's unix
  socket, which a network namespace does not hide.
* :class:`Faults` — the control file of :mod:`tests.e2e.faultwsgi`: add a
  rule, wait until it bit, release it.
* :class:`MailRelay` — aiosmtpd on 10.20.0.25:25 keeping every message in a Maildir.
"""

from __future__ import annotations

import http.client
import json
import mailbox
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.atomicwrite import write_bytes
from server.storage import Storage
from tests.provisioning.topology import in_netns
from tests.server.client import app_argv, front_argv, spawn, stop_process_group

from .network import SERVER_ADDRESS, SMTP_ADDRESS, Lgwan

__all__ = ["SERVER_NAME", "Faults", "MailRelay", "Server"]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
#: The server's name on the LGWAN: in its certificate, and what the LGWAN DNS answers.
SERVER_NAME = "renkei.test"


def _wait(probe, process: subprocess.Popen | None, what: str, log: Path, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(log)}")
        try:
            if probe():
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout} s ({last}):\n{_tail(log)}")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-size:]
    except FileNotFoundError:
        return ""


class Faults:
    """The fault middleware's control file (see :mod:`tests.e2e.faultwsgi`)."""

    def __init__(self, control: Path):
        self.control = control
        self.events = control.with_name(control.name + ".events")
        self._rules: list[dict] = []
        self._number = 0
        self.clear()

    def _write(self) -> None:
        write_bytes(self.control, json.dumps(self._rules).encode("utf-8"))

    def add(self, action: str, method: str | None, path: str, **rule: Any) -> str:
        """Add a rule (``hold`` or ``fail``); returns its id."""
        self._number += 1
        rule_id = f"r{self._number}"
        self._rules.append(
            {"id": rule_id, "action": action, "method": method, "path": path, **rule}
        )
        self._write()
        return rule_id

    def release(self, rule_id: str) -> None:
        for rule in self._rules:
            if rule["id"] == rule_id:
                rule["released"] = True
        self._write()

    def clear(self) -> None:
        self._rules = []
        self._write()

    def happened(self, rule_id: str, event: str) -> int:
        """How many times ``event`` (held, released, failed) happened for the rule."""
        try:
            lines = self.events.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return 0
        return sum(
            1
            for line in lines
            if (e := json.loads(line))["rule"] == rule_id and e["event"] == event
        )

    def wait(self, rule_id: str, event: str = "held", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.happened(rule_id, event):
                return
            time.sleep(0.05)
        raise TimeoutError(f"fault rule {rule_id}: no {event!r} within {timeout} s")


class Server:
    """The linkage server in the ministry namespace (see the module docstring)."""

    def __init__(self, net: Lgwan, folder: Path, *, database_url: str | None = None):
        self.net = net
        self.folder = folder
        self.data_dir = folder / "server-data"
        self.log_path = folder / "gunicorn.log"
        self.front_log_path = folder / "front.log"
        # gunicorn's socket and nginx's state: a short path (a socket's has at most 107 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="rk-e2e-", dir="/tmp"))
        self.faults = Faults(folder / "faults.json")
        self.process: subprocess.Popen | None = None  # gunicorn
        self.front: subprocess.Popen | None = None  # nginx
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'renkei.sqlite3'}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
        self.env.update(RENKEI_SERVER_DATA_DIR=str(self.data_dir), PYTHONPATH=str(ROOT))
        if database_url:
            self.env["RENKEI_SERVER_DATABASE_URL"] = database_url
        self.cli("init", "--dev-tls", "--hostname", SERVER_NAME)
        self.storage = Storage(self.database_url)

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    @property
    def public_key(self) -> str:
        """The server's signing public key (base64), as ``renkei-server public-key`` prints it."""
        return self.cli_json("public-key", "--json")["public_key"]

    # -- the operator ---------------------------------------------------------------------

    def cli(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        """``renkei-server ARGS`` in the ministry namespace; its exit status must be in ``ok``."""
        result = subprocess.run(
            self.net.exec_argv(self.net.ministry, str(BIN / "renkei-server"), *args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if result.returncode not in ok:
            raise AssertionError(
                f"renkei-server {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result

    def cli_json(self, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
        return json.loads(self.cli(*args, ok=ok).stdout)

    def token(self, lasdec: str) -> str:
        return self.cli_json("terminal", "token", "--lasdec", lasdec, "--json")["token"]

    # -- gunicorn and the front -----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Server:
        """gunicorn (the e2e config) on the run folder's socket, then the front on :443."""
        env = {
            **self.env,
            "RENKEI_SERVER_BIND": f"{SERVER_ADDRESS}:443",
            "RENKEI_SERVER_RUN_DIR": str(self.run_dir),
            "RENKEI_SERVER_FRONT_ACCESS_LOG": str(self.folder / "front-access.log"),
            "RENKEI_SERVER_FRONT_WORKERS": "1",
            "WEB_CONCURRENCY": "1",
            "RENKEI_GUNICORN_THREADS": "8",
            "RENKEI_E2E_FAULTS": str(self.faults.control),
        }
        prefix = self.net.exec_argv(self.net.ministry)
        self.process = spawn(app_argv(GUNICORN_CONF), env, log_path=self.log_path, prefix=prefix)
        self.front = spawn(front_argv(), env, log_path=self.front_log_path, prefix=prefix)
        try:
            _wait(self._healthy, self.process, "gunicorn", self.log_path, timeout)
            _wait(self._healthy, self.front, "the front (nginx)", self.front_log_path, timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _healthy(self) -> bool:
        def probe() -> bool:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            with socket.create_connection((SERVER_ADDRESS, 443), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                    conn = http.client.HTTPSConnection(SERVER_NAME, 443, timeout=2)
                    conn.sock = tls
                    conn.request("GET", "/healthz")
                    return conn.getresponse().status == 200

        return in_netns(self.net.ministry, probe)

    def kill(self) -> None:
        """SIGKILL nginx, gunicorn and their workers at once: a crash, not a shutdown."""
        for name in ("front", "process"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is None:
                continue
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            stop_process_group(process, timeout=10)

    def close(self) -> None:
        self.kill()
        self.storage.dispose()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class MailRelay:
    """aiosmtpd on 10.20.0.25:25 in the ministry namespace; every message kept in a Maildir."""

    def __init__(self, net: Lgwan, folder: Path):
        self.net = net
        self.maildir = folder / "maildir"
        self.log_path = folder / "smtp.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MailRelay:
        argv = self.net.python(
            self.net.ministry,
            *("-m", "aiosmtpd", "-n", "-l", f"{SMTP_ADDRESS}:25"),
            *("-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)),
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

        def banner() -> bool:
            def probe() -> bool:
                with socket.create_connection((SMTP_ADDRESS, 25), timeout=1) as sock:
                    return sock.recv(3) == b"220"

            return in_netns(self.net.ministry, probe)

        _wait(banner, self.process, "aiosmtpd", self.log_path, 20.0)
        return self

    def messages(self) -> list:
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(self.maildir, create=False))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, timeout=5)
