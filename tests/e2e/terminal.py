"""A municipality's appliance for the e2e tests: its own network namespace and file system, the
image's users, folders and firewall, provisioned with ``renkei-provision``, the agent run as its
systemd unit says.

Scenarios use :class:`Terminal`, whose behaviour (provisioning, staff
dropping files, a timer run, the run's record, a full disk) is built on five
primitives a subclass provides: ``start``, ``close``, ``view`` (a path
inside), ``enter`` (run a command inside, as root or a user) and
``launch_agent`` (one run of the agent, as the image's unit runs it).
:class:`NamespaceTerminal` is the one that runs here.  A terminal booted from
the real image (``systemd-nspawn --boot --network-namespace-path=/run/netns/
terminal-…``, issue 8) implements the same five — ``enter`` through
``nsenter --target=<the container's init> --all`` or ``systemd-run
--machine``, ``launch_agent`` as ``systemctl start --wait
renkei-agent.service`` (the timer's own unit, sandbox included), ``view``
under the machine's root directory — and every scenario runs on it
unchanged.

How :class:`NamespaceTerminal` stands in for the image:

* **Its own file system where the image has state.**  A helper process holds
  a private mount namespace (entered with the network namespace: ``nsenter
  --mount --net``) in which ``/etc`` and ``/var/lib`` are overlays on the
  host's (writes land in the terminal's folder, the host's files are never
  touched), and ``/srv``, ``/var/lib/renkei`` and ``/media`` are small tmpfs
  mounts (so "disk full" is real).  The mounts vanish with the helper, even
  if the test process is killed.
* **The image's users and folders**: ``systemd-sysusers`` and
  ``systemd-tmpfiles --create`` with the image's own ``renkei.conf`` files
  from ``appliance/rootfs/usr/lib/``.
* **Provisioned on site**: ``renkei-provision configure`` / ``enroll`` /
  ``check`` run as root with ``--root /`` (the default, as the technician
  runs them); the ruleset they wrote is loaded with ``nft -f
  /etc/nftables.conf`` (what ``systemctl restart nftables`` does).
* **The agent as its unit**: :class:`AgentUnit` reads
  ``appliance/rootfs/etc/systemd/system/renkei-agent.service`` and applies
  what can be applied without systemd as PID 1: ``ExecStart`` (the image's
  ``/usr/bin/renkei-agent`` is this virtualenv's script), ``User``/``Group``
  with the supplementary groups (``setpriv --init-groups``), ``UMask``,
  ``Environment``, ``NoNewPrivileges``, an empty ``CapabilityBoundingSet``
  and ``ConditionPathExists``.  The file-system sandbox (``ProtectSystem``
  …) and ``IPAddressAllow`` are systemd's; the nftables ruleset enforces the
  same addresses here.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomicwrite import write_bytes
from provisioning.render import toml_text

from .network import DNS_ADDRESS, NTP_ADDRESS, SERVER_ADDRESS, SMTP_ADDRESS, Lgwan, Link

__all__ = ["AgentRun", "AgentUnit", "Drop", "NamespaceTerminal", "Terminal"]

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = ROOT / "appliance" / "rootfs"
UNIT = ROOTFS / "etc/systemd/system/renkei-agent.service"
BIN = Path(sys.executable).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
#: The agent's settle time (agent.toml's default ``settle_seconds``), plus a margin.
SETTLE = 5.2
FOLDER_ROOT = "/srv/renkei"
STATE_DIR = "/var/lib/renkei"


@dataclass
class AgentUnit:
    """What ``renkei-agent.service`` says about running the agent (the [Service] section)."""

    exec_start: list[str]
    user: str
    group: str
    umask: str = "0022"
    environment: dict[str, str] = field(default_factory=dict)
    conditions: list[str] = field(default_factory=list)
    no_new_privileges: bool = False
    no_capabilities: bool = False

    @classmethod
    def load(cls, path: Path = UNIT) -> AgentUnit:
        values: dict[str, list[str]] = {}
        section = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
        environment: dict[str, str] = {}
        for entry in values.get("Service.Environment", []):
            for pair in shlex.split(entry):
                name, _, value = pair.partition("=")
                environment[name] = value
        return cls(
            exec_start=shlex.split(values["Service.ExecStart"][-1]),
            user=values["Service.User"][-1],
            group=values["Service.Group"][-1],
            umask=values.get("Service.UMask", ["0022"])[-1],
            environment=environment,
            conditions=values.get("Unit.ConditionPathExists", []),
            no_new_privileges=values.get("Service.NoNewPrivileges", ["no"])[-1] == "yes",
            no_capabilities=values.get("Service.CapabilityBoundingSet", ["x"])[-1] == "",
        )

    def command(self) -> list[str]:
        """``ExecStart`` with the image's console script replaced by this virtualenv's."""
        program, *args = self.exec_start
        return [str(BIN / Path(program).name), *args]


@dataclass(frozen=True)
class Drop:
    """One file staff put into the outbox (its SHA-256), and where it must end up."""

    name: str
    digest: str
    expect: str  # sent, rejected, outbox; special: not a regular file, checked by its test
    record_ids: tuple[str, ...] = ()


@dataclass
class AgentRun:
    """One run of the agent: exit status, output, and the run's record from the queue."""

    status: int | None  # None: killed
    stdout: str
    stderr: str
    summary: dict  # the run's report as the queue recorded it ({} if none)
    seconds: float
    prior_run: int | None = None  # the last run recorded before this one started

    @property
    def outcome(self) -> str:
        """The run's status (ok, partial, failed, refused), "killed", or "skipped"."""
        if self.status is None:
            return "killed"
        return str(self.summary.get("status") or f"exit {self.status}")

    def codes(self) -> list[str]:
        return [problem["code"] for problem in self.summary.get("problems", [])]

    def outcomes(self, kind: str) -> list[str]:
        """``batches`` or ``files`` events' outcomes, in order."""
        return [event["outcome"] for event in self.summary.get(kind, [])]


class Terminal(abc.ABC):
    """An appliance as a scenario sees it; subclasses say how to reach inside (module docstring).

    The subclass provides :meth:`start`, :meth:`close`, :meth:`view` (a path inside,
    as this process reaches it), :meth:`enter` (the argv prefix that runs a command
    inside, as root or a user) and :meth:`launch_agent` (one run of the agent as the
    image's unit runs it); everything else here is built on those.
    """

    def __init__(self, net: Lgwan, link: Link, folder: Path):
        self.net = net
        self.link = link
        self.lasdec = link.lasdec
        self.folder = folder
        self.unit = AgentUnit.load()
        self.enrollment: dict = {}
        self.last_drop = 0.0
        #: Every file staff dropped, in order: the ledger of the "nothing lost" invariant.
        self.drops: list[Drop] = []

    @abc.abstractmethod
    def start(self) -> Terminal: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def view(self, inside: str) -> Path: ...

    @abc.abstractmethod
    def enter(self, argv: list[str], user: str | None) -> list[str]: ...

    @abc.abstractmethod
    def launch_agent(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start ``ExecStart`` (plus ``args``, with ``env`` added) as the unit would; the process
        must be a session leader (its group is what :meth:`kill_agent` kills)."""

    # -- inside ------------------------------------------------------------------------------

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``argv`` inside the terminal, as root or ``user``; this repository importable."""
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            self.enter(argv, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**base, **(env or {})},
            cwd="/",
        )

    # -- provisioning ----------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What the technician enters for this terminal (copied from the LGWAN terminal)."""
        link = self.link
        return {
            "interface": "eth1",
            "dhcp": False,
            "address": f"{link.address}/24",
            "gateway": link.gateway,
            "dns_servers": [DNS_ADDRESS],
            "ntp_servers": [NTP_ADDRESS],
            "server_url": "https://renkei.test",
            "server_address": f"{SERVER_ADDRESS}/32",
            "lasdec": self.lasdec,
            "smtp_host": SMTP_ADDRESS,
            "smtp_port": 25,
            "smtp_sender": f"renkei-agent@t{self.lasdec}.example.lg.jp",
            "smtp_recipients": [f"juki@t{self.lasdec}.example.lg.jp"],
        }

    def provision(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.run([str(BIN / "renkei-provision"), *args], timeout=timeout)

    def install(self, token: str, ca_file: Path) -> dict:
        """configure → load the firewall → enroll → check; returns the check's lines by name."""
        settings = self.folder / "settings.toml"
        settings.write_text(toml_text(self.settings()), encoding="utf-8")
        steps = [
            self.provision("configure", "--yes", "--from", str(settings)),
            self.run(["nft", "-f", "/etc/nftables.conf"]),
            self.provision("enroll", "--token", token, "--ca-file", str(ca_file), "--json"),
        ]
        for step in steps:
            if step.returncode != 0:
                raise AssertionError(
                    f"terminal {self.lasdec}: {' '.join(step.args[-6:])} exited "
                    f"{step.returncode}:\n{step.stdout}\n{step.stderr}"
                )
        self.enrollment = json.loads(steps[2].stdout)
        return self.check()

    def check(self) -> dict:
        result = self.provision("check", "--json")
        assert result.returncode in (0, 1, 2), result.stderr
        return {line["name"]: line for line in json.loads(result.stdout)}

    # -- the agent ---------------------------------------------------------------------------

    def start_agent(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one run of the agent as its unit does, ``ExecStart`` plus ``args``."""
        for condition in self.unit.conditions:
            if not self.view(condition).exists():
                raise AssertionError(f"ConditionPathExists={condition} is not met")
        try:
            prior = self.last_run().get("run_id")
        except AssertionError:  # the queue cannot be read (its disk is full): see finish_agent
            prior = None
        process = self.launch_agent(list(args), env or {})
        process.renkei_prior_run = prior  # type: ignore[attr-defined]
        process.renkei_started = time.monotonic()  # type: ignore[attr-defined]
        return process

    def finish_agent(
        self, process: subprocess.Popen, *, timeout: float = 180.0, summary: bool = True
    ) -> AgentRun:
        """Wait for the run (SIGKILL after ``timeout``, as ``TimeoutStartSec`` would stop it).

        ``summary=False``: do not read the run's record now (its disk is full); call
        :meth:`read_summary` later."""
        started = getattr(process, "renkei_started", time.monotonic())
        left = max(0.0, started + timeout - time.monotonic())
        try:
            stdout, stderr = process.communicate(timeout=left)
            status: int | None = process.returncode
        except subprocess.TimeoutExpired:
            self.kill_agent(process)
            stdout, stderr = process.communicate()
            status = None
        if status is not None and status < 0:
            status = None  # killed by a signal
        run = AgentRun(status, stdout, stderr, {}, time.monotonic() - started)
        run.prior_run = getattr(process, "renkei_prior_run", None)
        if summary:
            self.read_summary(run)
        return run

    def read_summary(self, run: AgentRun) -> AgentRun:
        """Fill in the run's record from the queue ({} if this run recorded none)."""
        found = self.last_run()
        run.summary = {} if found.get("run_id") == run.prior_run else found
        return run

    @staticmethod
    def kill_agent(process: subprocess.Popen) -> None:
        """SIGKILL the agent (and anything it started): a power cut, as far as it can tell."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def agent(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180.0
    ) -> AgentRun:
        """One timer run: waits until dropped files have settled, runs, returns the run."""
        self.settle()
        return self.finish_agent(self.start_agent(*args, env=env), timeout=timeout)

    def settle(self) -> None:
        wait = self.last_drop + SETTLE - time.time()
        if wait > 0:
            time.sleep(wait)

    def queue(self, sql: str) -> list:
        """Rows of a query on the agent's queue, read as the agent's user (no file changes owner)."""
        code = (
            "import json, sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], timeout=30)\n"
            "print(json.dumps(db.execute(sys.argv[2]).fetchall()))\n"
        )
        result = self.run(
            [sys.executable, "-c", code, f"{STATE_DIR}/queue.sqlite3", sql], user=self.unit.user
        )
        if result.returncode != 0:
            if "no such table" in result.stderr or "unable to open" in result.stderr:
                return []
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def last_run(self) -> dict:
        rows = self.queue(
            "SELECT run_id, status, summary_json FROM runs ORDER BY run_id DESC LIMIT 1"
        )
        if not rows:
            return {}
        run_id, status, summary = rows[0]
        try:
            data = json.loads(summary or "{}")
        except ValueError:
            data = {}
        data.setdefault("status", status)
        data.setdefault("run_id", run_id)
        if status == "running":
            data["status"] = "cut short"
        return data

    # -- staff -------------------------------------------------------------------------------

    def folder_view(self, name: str) -> Path:
        """A staff folder (inbox, outbox, sent, rejected) or the agent's (spool, partial, quarantine)."""
        if name in ("inbox", "outbox", "sent", "rejected"):
            return self.view(f"{FOLDER_ROOT}/{name}")
        return self.view(f"{STATE_DIR}/{name}")

    def staff_gid(self) -> int:
        for line in self.view("/etc/group").read_text().splitlines():
            name, _x, gid, *_ = line.split(":")
            if name == "renkei-staff":
                return int(gid)
        raise AssertionError("no renkei-staff group in the terminal")

    def drop(self, name: str, data: bytes, *, expect: str, record_ids: Sequence[str] = ()) -> Path:
        """Staff put a file into the outbox (written under a temporary name, then renamed).

        ``expect``: where it must end — ``sent``, ``rejected``, or ``outbox`` (ignored
        there, e.g. a temporary name); ``record_ids``: the records the server must get.
        """
        target = self.folder_view("outbox") / name
        write_bytes(target, data, mode=0o640)
        os.chown(target, 0, self.staff_gid())
        self.dropped(name, data, expect=expect, record_ids=record_ids)
        return target

    def dropped(
        self,
        name: str,
        data: bytes = b"",
        *,
        expect: str,
        record_ids: Sequence[str] = (),
        digest: str | None = None,
    ) -> None:
        """Note a file that reached the outbox another way (registered media, the LAN drop).

        ``digest``: the SHA-256 when the bytes are not at hand (a large sparse file)."""
        digest = digest or hashlib.sha256(data).hexdigest()
        self.drops.append(Drop(name, digest, expect, tuple(record_ids)))
        self.last_drop = time.time()

    def files(self, folder: str) -> dict[str, bytes]:
        path = self.folder_view(folder)
        return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}

    # -- the disk ----------------------------------------------------------------------------

    def free(self, mount: str) -> int:
        st = os.statvfs(self.view(mount))
        return st.f_bavail * st.f_frsize

    def fill(self, mount: str, *, leave: int = 0) -> None:
        """Fill the file system of ``mount`` (``/srv`` or ``/var/lib/renkei``) to ``leave`` bytes."""
        filler = self.view(mount) / ".e2e-filler"
        with filler.open("ab") as handle:
            while (want := self.free(mount) - leave) >= PAGE:
                try:
                    handle.write(b"\0" * min(want, MIB))
                    handle.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break

    def unfill(self, mount: str) -> None:
        (self.view(mount) / ".e2e-filler").unlink(missing_ok=True)

    # -- the end -----------------------------------------------------------------------------


class NamespaceTerminal(Terminal):
    """The appliance of ``link.lasdec`` in the namespace ``link.namespace`` (module docstring)."""

    def __init__(
        self,
        net: Lgwan,
        link: Link,
        folder: Path,
        *,
        srv_bytes: int = 96 * MIB,
        state_bytes: int = 64 * MIB,
    ):
        super().__init__(net, link, folder)
        self.sizes = {"/srv": srv_bytes, STATE_DIR: state_bytes}
        self.helper: subprocess.Popen | None = None

    def start(self) -> NamespaceTerminal:
        layers = {}
        for name in ("etc", "etc.work", "varlib", "varlib.work"):
            layers[name] = self.folder / name
            layers[name].mkdir(parents=True)
        script = "\n".join(
            [
                "set -e",
                f"mount -t overlay renkei-etc -o lowerdir=/etc,upperdir={layers['etc']},"
                f"workdir={layers['etc.work']} /etc",
                f"mount -t overlay renkei-varlib -o lowerdir=/var/lib,upperdir={layers['varlib']},"
                f"workdir={layers['varlib.work']} /var/lib",
                f"mount -t tmpfs -o size={self.sizes['/srv']},mode=0755 renkei-srv /srv",
                f"mkdir -p {STATE_DIR}",
                f"mount -t tmpfs -o size={self.sizes[STATE_DIR]},mode=0700 renkei-state {STATE_DIR}",
                "mount -t tmpfs -o size=1m,mode=0755 renkei-media /media",
                f"systemd-sysusers {ROOTFS / 'usr/lib/sysusers.d/renkei.conf'} >/dev/null",
                f"systemd-tmpfiles --create {ROOTFS / 'usr/lib/tmpfiles.d/renkei.conf'}",
                "echo ready",
                "exec cat >/dev/null",
            ]
        )
        self.helper = subprocess.Popen(
            self.net.exec_argv(
                self.link.namespace, "unshare", "--mount", "--propagation", "private"
            )
            + ["sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.helper.stdout is not None and self.helper.stderr is not None
        if self.helper.stdout.readline().strip() != b"ready":
            error = self.helper.stderr.read().decode("utf-8", "replace")
            self.close()
            raise RuntimeError(f"terminal {self.lasdec}: the file system was not set up: {error}")
        return self

    @property
    def pid(self) -> int:
        assert self.helper is not None, "the terminal is not running"
        return self.helper.pid

    def view(self, inside: str) -> Path:
        """A path inside the terminal, as this (root) process reaches it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def enter(self, argv: list[str], user: str | None) -> list[str]:
        prefix = ["nsenter", f"--target={self.pid}", "--mount", "--net", "--"]
        if user is None:
            return prefix + argv
        return prefix + [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--init-groups",
            "--",
            *argv,
        ]

    def launch_agent(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        """What of the unit can be had without systemd (module docstring): user, groups,
        umask, environment, no new privileges, no capabilities; ``ExecStart``."""
        unit = self.unit
        argv = ["setpriv", f"--reuid={unit.user}", f"--regid={unit.group}", "--init-groups"]
        if unit.no_new_privileges:
            argv.append("--no-new-privs")
        if unit.no_capabilities:
            argv += ["--inh-caps=-all", "--bounding-set=-all"]
        argv += ["--", "sh", "-c", f'umask {unit.umask} && exec "$@"', "renkei-agent"]
        argv += unit.command() + args
        return subprocess.Popen(
            self.enter(argv, None),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/bin:/bin", **unit.environment, **env},
            cwd="/",
            start_new_session=True,
        )

    def close(self) -> None:
        helper, self.helper = self.helper, None
        if helper is None:
            return
        if helper.stdin is not None:
            helper.stdin.close()
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait(timeout=10)
        for stream in (helper.stdout, helper.stderr):
            if stream is not None:
                stream.close()
