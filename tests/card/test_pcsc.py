"""The read flow through the real PC/SC stack: pcscd + vsmartcard-vpcd + pyscard.

A pcscd of our own (own reader.conf.d with vpcd on a free port; the daemon's
socket path is fixed, so the module skips if another pcscd is running) runs
for this module; the virtual chip from
virtual_card.py is "inserted" by connecting to vpcd and "pulled" by closing
the socket. Skipped only when pcscd or the vpcd driver is not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from appliance.agent.card import reader, session
from appliance.agent.card.apdu import CardError
from tests.card.virtual_card import VirtualChip, VpcdCard

PCSCD = shutil.which("pcscd") or ("/usr/sbin/pcscd" if os.path.exists("/usr/sbin/pcscd") else None)
VPCD_DRIVER = sorted(glob.glob("/usr/lib/pcsc/drivers/serial/libifdvpcd.so*"))

pytestmark = pytest.mark.skipif(
    PCSCD is None or not VPCD_DRIVER, reason="needs Debian packages pcscd and vsmartcard-vpcd"
)

# Debian's pcscd 1.9.9 ignores PCSCLITE_CSOCK_NAME (only the client library
# reads it), so the daemon always listens here; we refuse to start a second one.
SYSTEM_SOCKET = "/run/pcscd/pcscd.comm"

GOOD = "AA12345678BB"
WRONG = "AA12345678BC"


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


@pytest.fixture(scope="module")
def vpcd_port(tmp_path_factory):
    base = tmp_path_factory.mktemp("pcsc")
    conf = base / "reader.conf.d"
    conf.mkdir()
    port = _free_port_pair()
    (conf / "vpcd").write_text(
        f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x{port:X}\n'
        f"LIBPATH {VPCD_DRIVER[0]}\nCHANNELID 0x{port:X}\n"
    )
    if os.path.exists(SYSTEM_SOCKET) and _pcscd_running():
        pytest.skip("a pcscd is already running; this test starts its own and would collide")
    log = open(base / "pcscd.log", "wb")  # closed in the teardown below
    proc = subprocess.Popen([PCSCD, "-f", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(
            lambda: (
                proc.poll() is not None or any("Virtual PCD" in r for r in reader.list_readers())
            ),
            10,
            "vpcd",
        )
        if proc.poll() is not None:
            pytest.fail(f"pcscd exited: {(base / 'pcscd.log').read_text(errors='replace')[-2000:]}")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def insert(vpcd_port):
    cards: list[VpcdCard] = []

    def _insert(chip: VirtualChip) -> VpcdCard:
        card = VpcdCard(vpcd_port, chip)
        cards.append(card)
        return card

    yield _insert
    for card in cards:
        card.remove()
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


def test_read_gen2_with_right_card_number(insert):
    chip = VirtualChip(2, GOOD)
    insert(chip)
    with _connect() as conn:
        result = session.read_card(conn, GOOD)
    assert result.card_type == session.CardType(2, session.KIND_RESIDENCE, False, "05")
    assert result.card_number == GOOD
    # the card number file was read under secure messaging, never in plain
    assert any(c[:3] == bytes.fromhex("08B081") for c in chip.log)


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
    insert(VirtualChip(1, GOOD, address=[("20240401", "131067", address)]))
    with _connect() as conn:
        result = session.read_card(conn, GOOD)
    assert result.card_type.generation == 1
    assert result.card_number == GOOD
    assert [(a.write_date, a.lasdec, a.address) for a in result.addresses] == [
        ("20240401", "131067", "東京都台東区上野1丁目1番1号")
    ]


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
