"""The agent's systemd units, sysusers and tmpfiles entries, checked with systemd's own tools.

* ``systemd-analyze verify`` on the service and timer, in a scratch root that
  holds systemd's stock units (for ``sysinit.target`` …), our units and a stub
  ``/usr/bin/renkei-agent`` — the host is not booted with systemd, so the
  units are checked as files, never started.
* ``systemd-analyze security --offline=true`` scores the service; the score
  must stay ≤ 2.0, also with a provisioning drop-in that allows real addresses.
* ``systemd-sysusers --root`` and ``systemd-tmpfiles --root --create`` build
  the users and folders in a scratch root; owners and modes are read back.
* The sandbox's seccomp part, rebuilt from the unit file with libseccomp
  (``SystemCallFilter=`` sets as ``systemd-analyze syscall-filter`` lists
  them, ``MemoryDenyWriteExecute=``, ``RestrictSUIDSGID=``,
  ``RestrictAddressFamilies=`` — the rules systemd 252 loads for them), runs a
  probe that does what the agent does: import it, place files with
  ``renameat2`` through ctypes, write the SQLite queue, sign, and send a mail
  over STARTTLS.  Controls prove each filter is in force.  Namespaces, the
  read-only file system and the IP allow-list are not rebuilt here: the image
  test boots the appliance and runs the agent under the real unit.

Tests skip only when a tool is missing (systemd-analyze, systemd-sysusers,
systemd-tmpfiles, libseccomp) or, for tmpfiles, when not root (it chowns).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from appliance.agent.config import AgentConfig
from appliance.agent.folders import FOLDER_MODES
from server.tls import make_dev_ca, make_server_cert
from tests.agent.helpers import HOST, PASSWORD, USER, Recorder, Tls, free_port

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "appliance" / "rootfs"
SERVICE = ROOTFS / "etc/systemd/system/renkei-agent.service"
TIMER = ROOTFS / "etc/systemd/system/renkei-agent.timer"
SYSUSERS = ROOTFS / "usr/lib/sysusers.d/renkei.conf"
TMPFILES = ROOTFS / "usr/lib/tmpfiles.d/renkei.conf"
MAX_EXPOSURE = 2.0
DEFAULTS = AgentConfig("", "", "", Path(), "", None)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: systemd)")
    return path


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, env={**os.environ}
    )


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key)`` → every value assigned, in order (systemd keys may repeat)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


SERVICE_SETTINGS = unit_settings(SERVICE.read_text(encoding="utf-8"))
TIMER_SETTINGS = unit_settings(TIMER.read_text(encoding="utf-8"))


# --- systemd-analyze verify ----------------------------------------------------------------------


def verify_root(tmp_path: Path, service: str, timer: str) -> Path:
    """A scratch root: stock units, ``service`` and ``timer`` as our units, a stub agent."""
    root = tmp_path / "root"
    stock = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if stock is None:
        pytest.skip("systemd's unit folder is missing")
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / SERVICE.name).write_text(service, encoding="utf-8")
    (units / TIMER.name).write_text(timer, encoding="utf-8")
    stub = root / "usr/bin/renkei-agent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    return root


def verify(tmp_path: Path, service: str, timer: str) -> subprocess.CompletedProcess[str]:
    root = verify_root(tmp_path, service, timer)
    return run(
        tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", SERVICE.name, TIMER.name
    )


def test_units_verify_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = verify(tmp_path, SERVICE.read_text("utf-8"), TIMER.read_text("utf-8"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", "systemd-analyze verify must not warn about anything"


@pytest.mark.parametrize(
    ("unit", "old", "new"),
    [
        ("service", "ProtectSystem=strict", "ProtectSytem=strict"),  # unknown key
        ("service", "ExecStart=/usr/bin/renkei-agent sync", "ExecStart=/usr/bin/renkei-agnet sync"),
        ("service", "UMask=0027", "UMask=0999"),
        ("timer", "OnCalendar=Mon..Fri 17:30 Asia/Tokyo", "OnCalendar=Mon..Fri 25:30 Asia/Tokyo"),
        ("timer", "RandomizedDelaySec=30min", "RandomizedDelaySec=thirty"),
    ],
)
def test_verify_notices_a_broken_unit(tmp_path, unit, old, new) -> None:  # type: ignore[no-untyped-def]
    """The check above can fail: each edit makes systemd-analyze complain."""
    service, timer = SERVICE.read_text("utf-8"), TIMER.read_text("utf-8")
    if unit == "service":
        assert old in service
        service = service.replace(old, new)
    else:
        assert old in timer
        timer = timer.replace(old, new)
    result = verify(tmp_path, service, timer)
    assert result.returncode != 0 or result.stderr.strip(), result


# --- systemd-analyze security --------------------------------------------------------------------

_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def exposure(unit: Path) -> tuple[float, str]:
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", unit)
    match = _OVERALL.search(result.stdout)
    assert match, f"no overall exposure line:\n{result.stdout}\n{result.stderr}"
    return float(match[1]), result.stdout


def test_service_exposure_is_at_most_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    score, report = exposure(SERVICE)
    print(f"\nsystemd-analyze security --offline=true {SERVICE.name}: {score}")
    assert score <= MAX_EXPOSURE, report


def test_exposure_with_the_provisioning_drop_in(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After provisioning the allow-list names real LGWAN addresses; still ≤ 2.0."""
    unit = tmp_path / SERVICE.name
    shutil.copy(SERVICE, unit)
    drop_in = tmp_path / f"{SERVICE.name}.d"
    drop_in.mkdir()
    (drop_in / "network.conf").write_text(
        "[Service]\nIPAddressAllow=10.1.2.3 10.1.2.4 10.1.2.5 10.20.0.0/16\n", encoding="utf-8"
    )
    score, report = exposure(unit)
    assert "non-localhost" in report, "the drop-in was not read"
    assert score <= MAX_EXPOSURE, report


def test_exposure_score_is_read_from_the_unit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A bare service scores far worse: the parsed number is the unit's, not a constant."""
    bare = tmp_path / SERVICE.name
    bare.write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/bin/renkei-agent sync\nUser=renkei-agent\n",
        encoding="utf-8",
    )
    score, _ = exposure(bare)
    assert score > 5.0


# --- what the service and timer say ----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", ["oneshot"]),
        ("ExecStart", ["/usr/bin/renkei-agent sync"]),
        ("User", ["renkei-agent"]),
        ("ReadWritePaths", [f"{DEFAULTS.folder_root} {DEFAULTS.state_dir}"]),
        ("ProtectSystem", ["strict"]),
        ("CapabilityBoundingSet", [""]),
        ("AmbientCapabilities", [""]),
        ("NoNewPrivileges", ["yes"]),
        ("MemoryDenyWriteExecute", ["yes"]),
        ("IPAddressDeny", ["any"]),
        ("IPAddressAllow", ["localhost"]),
        ("SystemCallArchitectures", ["native"]),
        ("UMask", ["0027"]),
    ],
)
def test_service_setting(key, expected) -> None:  # type: ignore[no-untyped-def]
    assert SERVICE_SETTINGS.get(("Service", key)) == expected


def calendar(spec: str) -> str:
    """``systemd-analyze calendar``'s normalized form of ``spec``."""
    result = run(tool("systemd-analyze"), "calendar", spec)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Normalized form: (.+)", result.stdout)
    assert match, result.stdout
    return match[1].strip()


def test_timer_runs_after_business_end_on_weekdays() -> None:
    specs = TIMER_SETTINGS[("Timer", "OnCalendar")]
    assert len(specs) == 2, "an evening run and a retry"
    for spec in specs:
        normalized = calendar(spec)
        match = re.fullmatch(r"Mon\.\.Fri \*-\*-\* (\d\d):(\d\d):00 Asia/Tokyo", normalized)
        assert match, normalized
        assert f"{match[1]}:{match[2]}" > DEFAULTS.business_end, (
            f"{spec} starts before the default business_end {DEFAULTS.business_end}"
        )


def _seconds(span: str) -> float:
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*([a-z]*)", span):
        total += int(number) * units[unit or "s"]
    return total


@pytest.mark.parametrize(
    ("key", "check"),
    [
        ("Persistent", lambda v: v == "true"),
        ("RandomizedDelaySec", lambda v: 10 * 60 <= _seconds(v) <= 60 * 60),
        ("AccuracySec", lambda v: _seconds(v) <= 5 * 60),
        ("Unit", lambda v: v == SERVICE.name),
    ],
)
def test_timer_setting(key, check) -> None:  # type: ignore[no-untyped-def]
    [value] = TIMER_SETTINGS[("Timer", key)]
    assert check(value), f"{key}={value}"


def test_timer_is_enabled_by_timers_target() -> None:
    assert TIMER_SETTINGS[("Install", "WantedBy")] == ["timers.target"]


# --- sysusers and tmpfiles -------------------------------------------------------------------


@pytest.fixture
def provisioned_root(tmp_path) -> Path:  # type: ignore[no-untyped-def]
    """A scratch root with our users made by systemd-sysusers."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(tool("systemd-sysusers"), f"--root={root}", SYSUSERS)
    assert result.returncode == 0, result.stderr
    return root


def _entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def test_sysusers_makes_the_agent_user_and_staff_group(provisioned_root) -> None:  # type: ignore[no-untyped-def]
    users = _entries(provisioned_root / "etc/passwd")
    groups = _entries(provisioned_root / "etc/group")
    name, _, uid, gid, _, home, shell = users["renkei-agent"]
    assert int(uid) < 1000, "a system user"
    assert home == str(DEFAULTS.state_dir)
    assert shell == "/usr/sbin/nologin"
    assert groups["renkei-agent"][2] == gid, "its own primary group"
    assert "renkei-agent" in groups["renkei-staff"][3].split(","), "reads what staff drop"


def test_tmpfiles_makes_the_folders_with_owners_and_modes(provisioned_root) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --create chowns: needs root")
    result = run(tool("systemd-tmpfiles"), f"--root={provisioned_root}", "--create", TMPFILES)
    assert result.returncode == 0, result.stderr
    users = _entries(provisioned_root / "etc/passwd")
    groups = _entries(provisioned_root / "etc/group")
    agent_uid = int(users["renkei-agent"][2])
    agent_gid, staff_gid = int(groups["renkei-agent"][2]), int(groups["renkei-staff"][2])
    root_dir, state = DEFAULTS.folder_root, DEFAULTS.state_dir
    expected = {
        root_dir: ("root", staff_gid),
        **{root_dir / name: (name, staff_gid) for name in ("inbox", "outbox", "sent", "rejected")},
        state: ("state", agent_gid),
        **{state / name: (name, agent_gid) for name in ("spool", "partial", "quarantine")},
    }
    for path, (key, gid) in expected.items():
        st = (provisioned_root / path.relative_to("/")).stat()
        assert stat.S_ISDIR(st.st_mode), path
        assert (st.st_uid, st.st_gid) == (agent_uid, gid), path
        assert stat.S_IMODE(st.st_mode) == FOLDER_MODES[key], f"{path}: {oct(st.st_mode)}"


def test_tmpfiles_never_cleans_and_agrees_with_the_agent() -> None:
    """Age ``-`` on every line (nothing is ever deleted); modes equal ``FOLDER_MODES``."""
    lines = [
        line.split()
        for line in TMPFILES.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    names = {
        str(DEFAULTS.folder_root): "root",
        **{str(DEFAULTS.folder_root / n): n for n in ("inbox", "outbox", "sent", "rejected")},
        str(DEFAULTS.state_dir): "state",
        **{str(DEFAULTS.state_dir / n): n for n in ("spool", "partial", "quarantine")},
    }
    assert sorted(fields[1] for fields in lines) == sorted(names)
    for kind, path, mode, user, _group, age in lines:
        assert kind == "d" and age == "-", path
        assert int(mode, 8) == FOLDER_MODES[names[path]], path
        assert user == "renkei-agent", path


# --- the seccomp sandbox, rebuilt with libseccomp ------------------------------------------------

_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_EQ, _GE, _MASKED_EQ = 4, 5, 7
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000
_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}


def _errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def syscall_groups() -> dict[str, list[str]]:
    """Every ``@group`` → its members, as this machine's systemd defines them."""
    output = run(tool("systemd-analyze"), "syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("#"):
            current = None
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


_EPERM = 0x00050000 | errno.EPERM


def _memory_deny_write_execute() -> list:
    """No mapping both writable and executable, no mprotect adding exec (seccomp-util.c)."""
    wx = _PROT_WRITE | _PROT_EXEC
    exec_bit = [2, _MASKED_EQ, _PROT_EXEC, _PROT_EXEC]
    return [
        [_EPERM, "mmap", [[2, _MASKED_EQ, wx, wx]]],
        [_EPERM, "mprotect", [exec_bit]],
        [_EPERM, "pkey_mprotect", [exec_bit]],
        [_EPERM, "shmat", [[2, _MASKED_EQ, _SHM_EXEC, _SHM_EXEC]]],
    ]


def _suid_sgid_rules(bit: int) -> list:
    """RestrictSUIDSGID=: no file or folder created or chmod-ed with ``bit`` set."""
    mode = {arg: [arg, _MASKED_EQ, bit, bit] for arg in (1, 2, 3)}
    created = {
        2: [1, _MASKED_EQ, os.O_CREAT, os.O_CREAT],
        3: [2, _MASKED_EQ, os.O_CREAT, os.O_CREAT],
    }
    rules = [[_EPERM, name, [mode[1]]] for name in ("chmod", "fchmod", "mkdir", "mknod", "creat")]
    rules += [[_EPERM, name, [mode[2]]] for name in ("fchmodat", "mkdirat", "mknodat")]
    rules += [[_EPERM, "open", [created[2], mode[2]]], [_EPERM, "openat", [created[3], mode[3]]]]
    return rules


def _address_families(names: str) -> list:
    """RestrictAddressFamilies= as an allow-list: socket() of any other family fails."""
    allowed = {_FAMILIES[name] for name in names.split()}
    refuse = _errno(errno.EAFNOSUPPORT)
    rules = [[refuse, "socket", [[0, _EQ, n, 0]]] for n in range(64) if n not in allowed]
    return [*rules, [refuse, "socket", [[0, _GE, 64, 0]]]]


def _system_calls(lines: list[str]) -> list[str]:
    """SystemCallFilter= lines (``~`` removes) → the system calls allowed."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for line in lines:
        if line.startswith("~"):
            allowed -= _expand(line[1:].split(), groups)
        else:
            allowed |= _expand(line.split(), groups)
    return sorted(allowed)


def seccomp_filters(settings: dict[tuple[str, str], list[str]]) -> list[dict]:
    """The filters systemd 252 loads for the unit's seccomp settings, as data for the launcher.

    Each is ``{"default": action, "rules": [[action, syscall, [[arg, op, a, b], …]], …]}``;
    the allow-list comes last, so loading the others is still permitted.
    """
    service = {key: values for (section, key), values in settings.items() if section == "Service"}
    filters: list[dict] = []
    if service.get("MemoryDenyWriteExecute") == ["yes"]:
        filters.append({"default": _ALLOW, "rules": _memory_deny_write_execute()})
    if service.get("RestrictSUIDSGID") == ["yes"]:
        rules = [[_errno(errno.ENOSYS), "openat2", []]]
        rules += _suid_sgid_rules(stat.S_ISUID) + _suid_sgid_rules(stat.S_ISGID)
        filters.append({"default": _ALLOW, "rules": rules})
    if "RestrictAddressFamilies" in service:
        rules = _address_families(service["RestrictAddressFamilies"][-1])
        filters.append({"default": _ALLOW, "rules": rules})
    if "SystemCallFilter" in service:
        number = service.get("SystemCallErrorNumber", [None])[-1]
        default = _errno(getattr(errno, number)) if number else _KILL_PROCESS
        calls = _system_calls(service["SystemCallFilter"])
        filters.append({"default": default, "rules": [[_ALLOW, name, []] for name in calls]})
    return filters


LAUNCHER = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
lib = ctypes.CDLL(spec["libseccomp"], use_errno=True)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
for f in spec["filters"]:
    ctx = lib.seccomp_init(f["default"])
    assert ctx, "seccomp_init failed"
    for action, name, cmps in f["rules"]:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            continue
        array = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
        if rc < 0:
            sys.exit(f"seccomp rule {name} {cmps}: {os.strerror(-rc)}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        sys.exit(f"seccomp_load: {os.strerror(-rc)}")
    lib.seccomp_release(ctx)
os.execv(spec["argv"][0], spec["argv"])
"""

PROBE = r"""
import json, mmap, os, socket, sys, threading
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
from pathlib import Path
results = {}

def attempt(name, action):
    try:
        results[name] = ["ok", action()]
    except Exception as exc:
        results[name] = ["error", type(exc).__name__, getattr(exc, "errno", None), str(exc)]

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from appliance.agent import config, folders, mail, preflight, queue, transport  # noqa: F401

f = folders.Folders(Path(args["root"]), Path(args["state"]))
attempt("ensure", lambda: f.ensure() or sorted(p.name for p in f.state_dir.iterdir()))
attempt("place", lambda: [folders.place_atomically(data, f.inbox, "n.csv").name
                          for data in (b"one", b"two", b"one")])
(f.outbox / "staff.csv").write_bytes(b"x")
attempt("move", lambda: folders.move_to(f.outbox / "staff.csv", f.spool).name)

def use_queue():
    with queue.Queue(f.queue_path) as q, q.lock():
        q.add_upload("staff.csv", "0" * 64, str(f.spool / "staff.csv"), now=1.0)
        return [row.file_name for row in q.due_uploads(now=2.0)]
attempt("queue", use_queue)
attempt("sign", lambda: len(Ed25519PrivateKey.generate().sign(b"request")))

def in_thread():
    out = []
    worker = threading.Thread(target=lambda: out.append(threading.get_ident()))
    worker.start(); worker.join()
    return len(out)
attempt("thread", in_thread)

def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0)); b.sendto(b"ntp?", a.getsockname())
        return a.recvfrom(16)[0].decode()
attempt("udp", udp)
smtp = config.SmtpConfig(host="127.0.0.1", port=args["smtp_port"], starttls=True,
                         recipients=("juki@city.example.lg.jp",))
attempt("mail", lambda: mail.send_failure_notice(
    smtp, subject="連携エラー", body="送信できませんでした", timeout=5,
    ca_file=Path(args["ca_file"])))
# Controls: each succeeds without the sandbox.
attempt("rwx_mmap", lambda: mmap.mmap(-1, 4096, prot=7) and "mapped")
attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 15))
attempt("setgid_chmod", lambda: os.chmod(f.inbox, 0o2770))
print(json.dumps(results))
"""


def libseccomp() -> str:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        ctypes.CDLL(name)
    except OSError:
        pytest.skip("libseccomp is not installed (Debian: libseccomp2)")
    return name


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:  # type: ignore[no-untyped-def]
    """A dev CA and a certificate for 127.0.0.1, for the relay's STARTTLS."""
    folder = tmp_path_factory.mktemp("tls")
    ca_cert, ca_key = make_dev_ca(folder / "ca")
    cert, key = make_server_cert(folder / "ca", ca_cert, ca_key)
    return Tls(ca_cert, ca_cert, cert, key)


def test_agent_runs_under_the_units_seccomp_filters(tmp_path, tls) -> None:  # type: ignore[no-untyped-def]
    """MemoryDenyWriteExecute + SystemCallFilter + … do not break the agent; ctypes renameat2 works.

    A ctypes *call* into C (``renameat2``) needs no writable+executable
    memory; only a ctypes *callback* (a libffi closure) might, and the agent
    makes none.
    """
    root, state = tmp_path / "srv", tmp_path / "state"
    for name in ("", "inbox", "outbox", "sent", "rejected"):  # as tmpfiles.d makes them
        (root / name).mkdir(exist_ok=True)
        (root / name).chmod(FOLDER_MODES[name or "root"])
    state.mkdir(mode=0o700)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    recorder = Recorder(USER, PASSWORD)
    relay = Controller(recorder, hostname=HOST, port=free_port(), tls_context=context)
    relay.start()
    try:
        probe = {
            "repo": str(REPO),
            "root": str(root),
            "state": str(state),
            "smtp_port": relay.port,
            "ca_file": str(tls.ca),
        }
        spec = {
            "libseccomp": libseccomp(),
            "filters": seccomp_filters(SERVICE_SETTINGS),
            "argv": [sys.executable, "-c", PROBE, json.dumps(probe)],
        }
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        relay.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])

    assert got["ensure"] == ["ok", ["partial", "quarantine", "spool"]]
    assert got["place"] == ["ok", ["n.csv", "n (2).csv", "n.csv"]]
    assert got["move"] == ["ok", "staff.csv"]
    assert got["queue"] == ["ok", ["staff.csv"]]
    assert got["sign"] == ["ok", 64]
    assert got["thread"] == ["ok", 1]
    assert got["udp"] == ["ok", "ntp?"]
    assert got["mail"] == ["ok", None], got["mail"]
    [delivered] = recorder.messages
    assert delivered.tls
    # The controls: the filters really were in force.
    assert got["rwx_mmap"][:3] == ["error", "PermissionError", errno.EPERM]
    assert got["netlink_socket"][:3] == ["error", "OSError", errno.EAFNOSUPPORT]
    assert got["setpriority"][:3] == ["error", "PermissionError", errno.EPERM]
    assert got["setgid_chmod"][:3] == ["error", "PermissionError", errno.EPERM]
