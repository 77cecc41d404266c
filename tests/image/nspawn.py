"""Boot an appliance root tree with systemd-nspawn and run commands inside it.

The image tests (issue 8) check the built appliance from the inside, booted
by its own systemd, not by reading files.  How the harness does it, and why:

* ``systemd-nspawn --boot --register=no --keep-unit --private-network`` — this
  machine is not booted with systemd, so there is no machined to register
  with; ``--keep-unit`` keeps nspawn in the caller's cgroup.  The container
  has only a loopback interface until a test adds a veth (:meth:`add_veth`).
* ``--volatile=overlay`` — the built tree is the lower layer of an overlay
  whose upper layer is a tmpfs nspawn makes and drops: every boot starts from
  the tree as built, changes vanish with the container, and several
  containers (``pytest -n 2``) can boot the same tree at once.
* ``SYSTEMD_NSPAWN_TMPFS_TMP=0`` — nspawn would put its own tmpfs on ``/tmp``;
  the image's ``tmp.mount`` (noexec) is one of the things under test.
* ``--console=passive`` — no terminal is needed; the container's console
  output is not read (the journal inside is).
* Commands run through ``nsenter --all --target PID`` into the namespaces of
  the container's PID 1 (the child of nspawn whose ``NSpid`` ends in 1), with
  an empty environment apart from ``PATH``, ``LANG`` and ``HOME``.
* Host directories are bind-mounted under ``/run/renkei-test/`` (lynis, an
  output folder), never into the image's own folders.
* Stopping: SIGRTMIN+4 to the container's PID 1 (systemd powers off), then
  SIGKILL to nspawn if it has not exited in time.  Only processes this
  harness started are signalled, by their id.

Tools: ``systemd-nspawn`` (Debian ``systemd-container``), ``nsenter``
(``util-linux``), ``ip`` (``iproute2``); root.  :func:`need` fails the test when
one is missing, or skips every image test when ``RENKEI_SKIP_IMAGE=1``.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "Container",
    "ContainerError",
    "Pty",
    "need",
    "unique_name",
]

ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_LOG_COLOR": "0",
}
_counter = itertools.count(1)


def need(*tools: str, root: bool = True) -> None:
    """Fail (not skip) when a tool is missing; skip everything when RENKEI_SKIP_IMAGE=1.

    CI installs what the image tests need (``make test``), so a missing tool
    there is a broken set-up, not a reason to pass quietly.
    """
    if os.environ.get("RENKEI_SKIP_IMAGE") == "1":
        pytest.skip("RENKEI_SKIP_IMAGE=1")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"image tests need {', '.join(missing)} (Debian: systemd-container, util-linux, "
            "iproute2, lynis); `make test` installs them, or set RENKEI_SKIP_IMAGE=1"
        )
    if root and os.geteuid() != 0:
        pytest.fail("image tests boot containers and must run as root (or RENKEI_SKIP_IMAGE=1)")


def unique_name(prefix: str = "renkei") -> str:
    """A machine / namespace name no other test process uses at the same time."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


class ContainerError(RuntimeError):
    """The container did not boot, or a command inside it failed."""


@dataclass
class Container:
    """One booted appliance: ``with Container(root, workdir) as c: c.run("systemctl", …)``.

    ``binds`` / ``binds_ro`` map a host path to a path inside the container;
    ``workdir`` (the test's own temporary folder) receives nspawn's log.
    """

    root: Path
    workdir: Path
    name: str = field(default_factory=unique_name)
    binds: Mapping[Path, str] = field(default_factory=dict)
    binds_ro: Mapping[Path, str] = field(default_factory=dict)
    boot_timeout: float = 120.0
    _nspawn: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _leader: int | None = field(default=None, init=False, repr=False)
    _netns: list[str] = field(default_factory=list, init=False, repr=False)

    # --- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def leader(self) -> int:
        if self._leader is None:
            raise ContainerError("the container is not running")
        return self._leader

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.nspawn.log"

    def start(self) -> str:
        """Boot; return ``systemctl is-system-running`` once the boot is over."""
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            "--volatile=overlay",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
            f"--machine={self.name}",
        ]
        argv += [f"--bind={host}:{inside}" for host, inside in self.binds.items()]
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.binds_ro.items()]
        env = {**os.environ, "SYSTEMD_NSPAWN_TMPFS_TMP": "0"}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + self.boot_timeout
        try:
            self._leader = self._find_leader(deadline)
            return self._wait_booted(deadline)
        except BaseException:
            self.stop()
            raise

    def _find_leader(self, deadline: float) -> int:
        assert self._nspawn is not None
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited: {self._log_tail()}")
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                if fields.get("PPid", "").strip() != str(self._nspawn.pid):
                    continue
                nspid = fields.get("NSpid", "").split()
                if len(nspid) > 1 and nspid[-1] == "1":
                    return int(entry.name)
            time.sleep(0.05)
        raise ContainerError(f"no container PID 1 under nspawn: {self._log_tail()}")

    def _wait_booted(self, deadline: float) -> str:
        last = ""
        while time.monotonic() < deadline:
            assert self._nspawn is not None
            if self._nspawn.poll() is not None:
                raise ContainerError(f"the container exited while booting: {self._log_tail()}")
            remaining = max(1.0, deadline - time.monotonic())
            try:
                done = self.run(
                    "systemctl", "is-system-running", "--wait", check=False,
                    timeout=min(remaining, 30.0),
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                continue
            last = (done.stdout or done.stderr).strip()
            if last in ("running", "degraded", "maintenance", "stopping"):
                return last
            time.sleep(0.2)
        raise ContainerError(f"boot did not finish in {self.boot_timeout} s (last: {last!r})")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Power the container off; kill nspawn if it does not exit; remove test namespaces."""
        for netns in self._netns:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
        self._netns.clear()
        process, leader = self._nspawn, self._leader
        self._nspawn = self._leader = None
        if process is None:
            return
        if process.poll() is None and leader is not None:
            try:
                os.kill(leader, signal.SIGRTMIN + 4)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    # --- commands ---------------------------------------------------------------------------

    def _argv(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        environment = {**ENV, **(env or {})}
        return [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "--",
            "/usr/bin/env",
            "-i",
            *(f"{key}={value}" for key, value in environment.items()),
            *argv,
        ]

    def run(
        self,
        *argv: str,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container; raise ContainerError on failure when ``check``."""
        done = subprocess.run(
            self._argv(argv, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"{shlex.join(argv)} exited {done.returncode}\n"
                f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
            )
        return done

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``/bin/sh -ec script`` inside the container."""
        return self.run("/bin/sh", "-ec", script, **kwargs)  # type: ignore[arg-type]

    def popen(self, *argv: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running command inside the container; the caller stops it.

        Killing the returned process stops only nsenter on this side: stop the
        command by its process id inside the container (``sh(f"kill {pid}")``).
        """
        return subprocess.Popen(
            self._argv(argv, env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def write(self, path: str, text: str, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write a file inside the container (parents made), atomically, with mode and owner."""
        self.run(
            "/bin/sh", "-ec",
            'mkdir -p "$(dirname "$1")"; cat > "$1.tmp"; chmod "$2" "$1.tmp"; '
            'chown "$3" "$1.tmp"; mv -f "$1.tmp" "$1"',
            "write", path, f"{mode:o}", owner,
            input=text,
        )  # fmt: skip

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show UNIT -p …`` as a mapping."""
        args = [f"--property={p}" for p in properties]
        out = self.systemctl("show", unit, *args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "--quiet", *args, check=False).stdout

    def wait_for(
        self, script: str, timeout: float = 30.0, interval: float = 0.3
    ) -> subprocess.CompletedProcess[str]:
        """Re-run a shell check inside until it succeeds; ContainerError with its output if never."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.sh(script, check=False)
            if done.returncode == 0:
                return done
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"not true within {timeout} s: {script}\n{done.stdout}{done.stderr}"
                )
            time.sleep(interval)

    # --- the network ------------------------------------------------------------------------

    def add_veth(self, inside: str, inside_address: str, outside_address: str) -> str:
        """A veth wire from interface ``inside`` (in the container) to a fresh network namespace.

        Returns the namespace's name (``ip netns exec NAME …``); it is deleted at :meth:`stop`.
        """
        netns = unique_name("rkpeer")
        outside = f"vo{os.getpid() % 100000}{next(_counter)}"[:15]
        subprocess.run(["ip", "netns", "add", netns], check=True)
        self._netns.append(netns)
        steps = [
            ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
            ["ip", "link", "set", inside, "netns", str(self.leader)],
            ["ip", "link", "set", outside, "netns", netns],
            ["ip", "-n", netns, "addr", "add", outside_address, "dev", outside],
            ["ip", "-n", netns, "link", "set", outside, "up"],
            ["ip", "-n", netns, "link", "set", "lo", "up"],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        self.run("ip", "addr", "add", inside_address, "dev", inside)
        self.run("ip", "link", "set", inside, "up")
        return netns


class Pty:
    """A pseudo-terminal inside the container, for a unit that needs a terminal (``TTYPath=``).

    A small Python program inside the container opens the pty, prints the
    slave's path, copies everything written to the terminal into ``log`` (a
    file inside the container) and types what :meth:`send` gives it.
    The container has no ``/dev/tty1``; this stands in for it.
    """

    _PROGRAM = r"""
import os, pty, select, struct, sys, termios, fcntl, time
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
print(os.getpid(), os.ttyname(slave), flush=True)
log = open(sys.argv[1], "ab", buffering=0)
while True:
    ready, _, _ = select.select([master, 0], [], [])
    if master in ready:
        try:
            log.write(os.read(master, 65536))
        except OSError:  # hung up (TTYVHangup=) until the unit opens the terminal again
            time.sleep(0.05)
    if 0 in ready:
        data = os.read(0, 1024)
        if not data:
            break
        os.write(master, data)
"""

    def __init__(self, container: Container, log: str) -> None:
        self.container = container
        self.log = log
        self.process = container.popen("python3", "-c", self._PROGRAM, log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().split()
        if len(line) != 2 or not line[1].startswith("/dev/pts/"):
            self.process.kill()
            self.process.wait(10)
            raise ContainerError(f"no pty inside the container: {line!r}")
        self.inner_pid, self.path = line

    def send(self, keys: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(keys.encode())
        self.process.stdin.flush()

    def screen(self) -> str:
        """Everything written to the terminal so far (escape sequences included)."""
        return self.container.run("cat", self.log, check=False).stdout

    def close(self) -> None:
        """Stop the program inside (by its id there), then its nsenter on this side."""
        self.container.sh(f"kill {self.inner_pid}", check=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def parse_listeners(tables: Mapping[str, str]) -> set[tuple[str, str, int]]:
    """Listening sockets from /proc/net/{tcp,tcp6,udp,udp6} texts: (proto, address, port).

    TCP sockets in LISTEN (state 0A) and UDP sockets bound with no peer
    (state 07).  Addresses as printed by :mod:`ipaddress`.
    """
    import ipaddress

    found: set[tuple[str, str, int]] = set()
    for proto, text in tables.items():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            local, state = fields[1], fields[3]
            wanted = "0A" if proto.startswith("tcp") else "07"
            if state != wanted:
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            address = ipaddress.ip_address(b"".join(words))
            found.add((proto.rstrip("6"), str(address), int(hex_port, 16)))
    return found


def listeners(container: Container) -> set[tuple[str, str, int]]:
    """The container's listening TCP and UDP sockets (its own network namespace)."""
    tables = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        tables[proto] = container.run("cat", f"/proc/net/{proto}", check=False).stdout
    return parse_listeners(tables)


def stage_lynis(target: Path, sources: Iterable[tuple[Path, str]] | None = None) -> Path:
    """A copy of the host's lynis (Debian package) laid out to run with ``--usecwd``.

    lynis is never installed into the image: this folder is bind-mounted
    read-only into the container and run from there.
    """
    need("lynis")
    layout = sources or [
        (Path("/usr/sbin/lynis"), "lynis"),
        (Path("/usr/share/lynis/include"), "include"),
        (Path("/usr/share/lynis/db"), "db"),
        (Path("/etc/lynis/plugins"), "plugins"),
        (Path("/etc/lynis/default.prf"), "default.prf"),
    ]
    target.mkdir(parents=True, exist_ok=True)
    for source, name in layout:
        destination = target / name
        if source.is_dir():
            shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, destination)
    # lynis refuses include files that are group- or world-writable or not root's.
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            os.chown(path, 0, 0)
    return target
