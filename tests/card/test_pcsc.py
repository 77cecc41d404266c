"""The read flow through the real PC/SC stack: pcscd + vsmartcard-vpcd + pyscard.

A pcscd of our own (own reader.conf.d with vpcd on a free port) serves the
tests; the virtual chip from virtual_card.py is "inserted" by connecting to
vpcd and "pulled" by closing the socket. Skipped only when pcscd or the vpcd
driver is not installed.

Isolation: Debian's pcscd 1.9.9 always listens on /run/pcscd/pcscd.comm,
and pcsc-lite's client reads PCSCLITE_CSOCK_NAME once per process and
caches it. So, when we may (root with unshare), pcscd runs in a private
mount namespace with its own directory bound on /run/pcscd, and this module
points PCSCLITE_CSOCK_NAME at that directory when it is imported, before any
PC/SC call: parallel workers and a system pcscd then never collide. There is
one daemon per test process, shared by every module that uses the fixtures
here — other PC/SC test modules import ``vpcd_port`` and ``insert`` from this
module instead of starting their own. Without unshare, the daemon takes the
system socket and the tests skip when another pcscd holds it.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from appliance.agent.card import reader, session, signature
from appliance.agent.card.apdu import CardError
from tests.card import pki
from tests.card.virtual_card import VirtualChip, VpcdCard

PCSCD = shutil.which("pcscd") or ("/usr/sbin/pcscd" if os.path.exists("/usr/sbin/pcscd") else None)
VPCD_DRIVER = sorted(glob.glob("/usr/lib/pcsc/drivers/serial/libifdvpcd.so*"))
UNSHARE = shutil.which("unshare")

pytestmark = pytest.mark.skipif(
    PCSCD is None or not VPCD_DRIVER, reason="needs Debian packages pcscd and vsmartcard-vpcd"
)

SYSTEM_SOCKET = "/run/pcscd/pcscd.comm"

GOOD = "AA12345678BB"
WRONG = "AA12345678BC"


def _can_isolate() -> bool:
    """True when pcscd can get a private /run/pcscd (root, unshare, bind mounts allowed)."""
    if PCSCD is None or not VPCD_DRIVER or UNSHARE is None or os.geteuid() != 0:
        return False
    probe = 'mkdir -p /run/pcscd && mount --bind "$1" /run/pcscd'
    try:
        with tempfile.TemporaryDirectory() as d:
            done = subprocess.run(
                [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", probe, "sh", d],
                capture_output=True,
                timeout=10,
            )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


ISOLATED = _can_isolate()
# Per process, created when the daemon starts; set now, before any PC/SC call caches it.
RUN_DIR = os.path.join(tempfile.gettempdir(), f"renkei-pcscd-{os.getpid()}")
if ISOLATED:
    os.environ["PCSCLITE_CSOCK_NAME"] = os.path.join(RUN_DIR, "pcscd.comm")


def _free_port_pair() -> int:
    """A port p with p and p+1 free (vpcd listens on one port per slot)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        if port + 1 < 65536:
            return port
    raise RuntimeError("no free port pair")


def _pcscd_running() -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(SYSTEM_SOCKET)
        except OSError:
            return False
    return True


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except CardError as exc:
            last = exc
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


class _Daemon:
    """The process's one pcscd with vpcd; started on first use, stopped at exit."""

    proc: subprocess.Popen | None = None
    port: int | None = None
    failure: str | None = None

    @classmethod
    def start(cls) -> int:
        if cls.port is not None:
            return cls.port
        if cls.failure:
            pytest.fail(cls.failure)
        if not ISOLATED and os.path.exists(SYSTEM_SOCKET) and _pcscd_running():
            pytest.skip(
                "a pcscd is already running and we cannot isolate ours (needs root, unshare)"
            )
        os.makedirs(RUN_DIR, exist_ok=True)
        conf = os.path.join(RUN_DIR, "reader.conf.d")
        os.makedirs(conf, exist_ok=True)
        port = _free_port_pair()
        with open(os.path.join(conf, "vpcd"), "w") as f:
            f.write(
                f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:X}\n'
                f"LIBPATH {VPCD_DRIVER[0]}\nCHANNELID 0x{port:X}\n"
            )
        if ISOLATED:  # unshare execs sh, which execs pcscd: the pid is pcscd's
            script = 'mkdir -p /run/pcscd && mount --bind "$1" /run/pcscd && exec "$2" -f -c "$3"'
            command = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script]
            command += ["sh", RUN_DIR, PCSCD, conf]
        else:
            command = [PCSCD, "-f", "-c", conf]
        log_path = os.path.join(RUN_DIR, "pcscd.log")
        with open(log_path, "wb") as log:
            cls.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        atexit.register(cls.stop)
        proc = cls.proc
        try:
            _wait(
                lambda: (
                    proc.poll() is not None
                    or any("Virtual PCD" in r for r in reader.list_readers())
                ),
                10,
                "vpcd",
            )
        except AssertionError as exc:
            cls.failure = f"pcscd did not show the vpcd reader: {exc}"
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                cls.failure = f"pcscd exited: {f.read()[-2000:]}"
        if cls.failure:
            cls.stop()
            pytest.fail(cls.failure)
        cls.port = port
        return port

    @classmethod
    def stop(cls) -> None:
        proc, cls.proc = cls.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def vpcd_port():
    """vpcd's TCP port of this process's pcscd (started on first use, stopped at exit)."""
    return _Daemon.start()


@pytest.fixture
def insert(vpcd_port):
    """Insert a chip: ``insert(VirtualChip(...)) -> VpcdCard``; all are pulled after the test."""
    cards: list[VpcdCard] = []

    def _insert(chip: VirtualChip) -> VpcdCard:
        card = VpcdCard(vpcd_port, chip)
        cards.append(card)
        return card

    yield _insert
    for card in cards:
        card.remove()
    if cards:
        # pcscd polls the reader every 0.4 s; a card put back before the poll
        # has seen it go is never announced, so let one poll pass first.
        time.sleep(1.0)
    # wait until pcscd has seen the card go, so the next test starts empty
    _wait(lambda: _no_card(), 10, "card absent")


def _no_card() -> bool:
    try:
        reader.connect().close()
    except CardError as exc:
        return exc.code == "card.no_card"
    return False


def _connect() -> reader.CardConnection:
    return _wait(reader.connect, 10, "card present")


def test_lists_virtual_readers(vpcd_port):
    names = reader.list_readers()
    assert any(name.startswith("Virtual PCD") for name in names)


def test_no_card_is_a_clear_error(vpcd_port):
    with pytest.raises(CardError) as info:
        reader.connect()
    assert info.value.code == "card.no_card"


def test_unknown_reader_is_a_clear_error(vpcd_port):
    with pytest.raises(CardError) as info:
        reader.connect("No Such Reader 00 00")
    assert info.value.code == "card.no_reader"


def _read(chip: VirtualChip, **kwargs) -> session.CardRead:
    with _connect() as conn:
        return session.read_card(
            conn,
            GOOD,
            trust_anchors=[pki.issuer(chip.generation).anchor],
            now=pki.GOOD_DATE,
            **kwargs,
        )


def test_read_gen2_with_right_card_number(insert):
    chip = VirtualChip(2, GOOD)
    insert(chip)
    result = _read(chip)
    assert result.card_type == session.CardType(2, session.KIND_RESIDENCE, False, "05")
    assert result.card_number == GOOD
    assert result.front["date_of_birth"] == "1995-03-12"
    assert result.front["nationality_code"] == "VNM"
    assert result.front["period_of_stay_expiry_date"] == "2031-04-01"
    assert result.signature.status == signature.VALID
    # the images were read to verify, and not kept
    assert result.images == {}
    assert "images" not in result.to_dict()
    # card number, printed entries and images were read under secure messaging, never in plain
    for p1 in (0x81, 0x83, 0x84):
        assert any(c[:3] == bytes([0x08, 0xB0, p1]) for c in chip.log)
        assert not any(c[:3] == bytes([0x00, 0xB0, p1]) for c in chip.log)


def test_read_gen2_special_permanent_resident_certificate(insert):
    chip = VirtualChip(2, GOOD, kind_code=b"06")
    insert(chip)
    result = _read(chip)
    assert result.card_type.kind == session.KIND_SPECIAL_PERMANENT
    assert result.front["date_of_birth"] == "1962-04-05"
    assert result.front["sex"] == "male"
    assert result.front["permission_date"] is None
    assert result.signature.status == signature.VALID


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("tamper", ["data", "signature"])
def test_tampered_card_reads_but_signature_is_invalid(insert, generation, tamper):
    chip = VirtualChip(generation, GOOD, tamper=tamper)
    insert(chip)
    result = _read(chip)
    assert result.card_number == GOOD
    assert result.signature.status == signature.INVALID


@pytest.mark.parametrize("generation", [1, 2])
def test_images_only_when_asked(insert, generation):
    chip = VirtualChip(generation, GOOD)
    insert(chip)
    result = _read(chip, read_images=True)
    assert result.images["photo"] == chip.images["photo"]
    key = "front_image" if generation == 1 else "name_image"
    assert result.images[key] == chip.images[key]
    assert result.signature.status == signature.VALID


def test_signature_check_off_reads_no_images(insert):
    chip = VirtualChip(2, GOOD)
    insert(chip)
    result = _read(chip, check_signature=False)
    assert result.signature is None
    assert result.front["date_of_birth"] == "1995-03-12"
    assert not any(c[1] == 0xB0 and c[2] == 0x84 for c in chip.log)


def test_read_gen2_with_wrong_card_number(insert):
    insert(VirtualChip(2, GOOD))
    with _connect() as conn, pytest.raises(CardError) as info:
        session.read_card(conn, WRONG)
    assert info.value.code == "card.wrong_card_number"


def test_read_card_type_only_without_number(insert):
    chip = VirtualChip(2, GOOD, kind_code=b"06")
    insert(chip)
    with _connect() as conn:
        result = session.read_card(conn)
    assert result.card_type.kind == session.KIND_SPECIAL_PERMANENT
    assert result.card_number is None
    assert not any(c[1] == 0x82 for c in chip.log)  # no authentication attempted


def test_read_gen1_address_with_right_card_number(insert):
    address = "東京都台東区上野1丁目1番1号".encode("cp932")
    chip = VirtualChip(1, GOOD, address=[("20240401", "131067", address)])
    insert(chip)
    result = _read(chip)
    assert result.card_type.generation == 1
    assert result.card_number == GOOD
    assert [(a.write_date, a.lasdec, a.address) for a in result.addresses] == [
        ("20240401", "131067", "東京都台東区上野1丁目1番1号")
    ]
    assert result.front is None  # generation 1 offers the front as an image only
    assert result.signature.status == signature.VALID
    assert result.images == {}
    # front image and photo under secure messaging, signature file in plain
    assert any(c[:3] == bytes.fromhex("08B085") for c in chip.log)
    assert any(c[:3] == bytes.fromhex("08B086") for c in chip.log)
    assert any(c[:3] == bytes.fromhex("00B082") for c in chip.log)


def test_read_gen1_with_wrong_card_number(insert):
    insert(VirtualChip(1, GOOD))
    with _connect() as conn, pytest.raises(CardError) as info:
        session.read_card(conn, WRONG)
    assert info.value.code == "card.wrong_card_number"


def test_card_pulled_is_a_clear_error(insert):
    card = insert(VirtualChip(2, GOOD))
    with _connect() as conn:
        session.read_card_type(conn)
        card.remove()
        deadline = time.monotonic() + 5
        error = None
        while error is None and time.monotonic() < deadline:
            try:
                session.read_card_type(conn)
            except CardError as exc:
                error = exc
            time.sleep(0.05)
    assert error is not None and error.code == "card.removed"
