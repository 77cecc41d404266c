"""``renkei-agent card …``: CliRunner over the virtual chip, and the real command through pcscd + vpcd.

CLI-layer tests put the writable virtual chip behind ``card_cli.connect_card``
(no PC/SC). The real-stack tests run the ``renkei-agent`` console script in
a subprocess against the test process's pcscd with the vpcd driver (the
``vpcd_port`` / ``insert`` fixtures of test_pcsc.py, which isolate that
pcscd in a private mount namespace and point PCSCLITE_CSOCK_NAME at it; the
subprocess inherits the variable), with the writable chip inserted over
vpcd's socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.agent import card_cli
from appliance.agent.card import reader
from appliance.agent.card.apdu import CardError
from appliance.agent.cli import main
from tests.card.test_pcsc import PCSCD, VPCD_DRIVER, _wait, insert, vpcd_port
from tests.card.virtual_card import VpcdCard
from tests.card.virtual_writable import (
    OTHER_MASTER_KEY,
    TEST_MASTER_KEY,
    ChipTransport,
    WritableChip,
    empty_slot,
    entry_slot,
)

__all__ = ["insert", "vpcd_port"]  # fixtures shared with test_pcsc.py (one pcscd per process)

ROOT = Path(__file__).resolve().parents[2]
NUMBER = "AA12345678BB"
MASKED = "********78BB"
OLD = ("20240401", "131016", "東京都千代田区霞が関１丁目１番１号".encode("cp932"))
NEW_ADDRESS = "東京都台東区上野１丁目２番３号"
NEW_SLOT = entry_slot("20250401", "131067", NEW_ADDRESS.encode("cp932"))
WRITE = [
    "card",
    "write-address",
    "--card-number",
    NUMBER,
    "--lasdec",
    "131067",
    "--address",
    NEW_ADDRESS,
    "--date",
    "20250401",
]


def write_config(folder: Path, *, key: bytes | None = TEST_MASTER_KEY, extra: str = "") -> Path:
    """agent.toml with only [card] (the card commands need nothing else) and the test key."""
    lines = ["[card]"]
    if key is not None:
        (folder / "test-master.key").write_text(key.hex() + "\n")
        (folder / "test-master.key").chmod(0o600)
        lines += ['key_provider = "test"', 'test_key_file = "test-master.key"']
    path = folder / "agent.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


# --- the CLI layer over the chip (CliRunner) --------------------------------------------------


class ChipConnection(ChipTransport):
    """What reader.connect returns, with the chip behind it."""

    reader_name = "Virtual chip"

    def __enter__(self) -> ChipConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass


@pytest.fixture
def chip(monkeypatch) -> WritableChip:
    chip = WritableChip(1, NUMBER, entries=[OLD])
    monkeypatch.setattr(card_cli, "connect_card", lambda name=None: ChipConnection(chip))
    monkeypatch.setattr(card_cli, "list_reader_names", lambda: ["Virtual chip"])
    return chip


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path)


def run(args, *, config: Path | None = None, tty: bool = False, input: str | None = None, mp=None):
    if mp is not None:
        mp.setattr(card_cli, "_stdin_is_tty", lambda: tty)
    extra = ["--config", str(config)] if config else []
    return CliRunner().invoke(main, [*args, *extra], input=input)


def test_read_json_and_human_output_masks_the_card_number(chip, config):
    result = run(["card", "read", "--card-number", NUMBER.lower(), "--json"], config=config)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["card_number"] == NUMBER
    assert data["card_type"] == {
        "generation": 1,
        "kind": "residence_card",
        "specified": False,
        "code": "1",
    }
    assert data["addresses"][0]["address"] == "東京都千代田区霞が関１丁目１番１号"
    human = run(["card", "read", "--card-number", NUMBER], config=config)
    assert human.exit_code == 0, human.output
    assert NUMBER not in human.output and MASKED in human.output
    assert "在留カード" in human.output and "2024年04月01日" in human.output
    assert "電子署名" in human.output


def test_read_without_number_reads_the_type_only(chip, config):
    result = run(["card", "read"], config=config)
    assert result.exit_code == 0, result.output
    assert "在留カード(第1世代" in result.output
    assert not any(c[1] == 0x82 for c in chip.log)


def test_read_saves_images_owner_only(chip, config, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    result = run(
        ["card", "read", "--card-number", NUMBER, "--json", "--images", str(folder)],
        config=config,
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)["images"]
    assert set(saved) == {"front_image", "photo"}
    assert Path(saved["front_image"]).suffix == ".tif" and Path(saved["photo"]).suffix == ".jp2"
    for path in saved.values():
        assert Path(path).stat().st_mode & 0o777 == 0o600
        assert Path(path).read_bytes()[:4] in (b"II*\x00", b"\x00\x00\x00\x0c")


def test_readers_lists_and_marks_the_card(chip, config):
    result = run(["card", "readers", "--json"], config=config)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": "Virtual chip", "card_present": True, "configured": False}
    ]


def test_confirmation_on_a_terminal_no_leaves_the_card_alone(chip, config, monkeypatch):
    before = chip.block
    result = run(WRITE, config=config, tty=True, input="n\n", mp=monkeypatch)
    assert result.exit_code == 3, result.output
    shown = result.stderr
    assert MASKED in shown and NUMBER not in result.output
    for fragment in ("2025年04月01日", "131067 東京都台東区", NEW_ADDRESS, "2 / 3 欄目", "試験用"):
        assert fragment in shown
    assert "取りやめました" in shown
    assert chip.block == before and chip.writes == 0


def test_confirmation_yes_writes(chip, config, monkeypatch):
    result = run(WRITE, config=config, tty=True, input="y\n", mp=monkeypatch)
    assert result.exit_code == 0, result.output
    assert "書き込みました(2欄目)" in result.stdout
    assert chip.block == entry_slot(*OLD) + NEW_SLOT + empty_slot()


def test_end_of_input_at_the_prompt_is_not_a_yes(chip, config, monkeypatch):
    result = run(WRITE, config=config, tty=True, input="", mp=monkeypatch)
    assert result.exit_code == 3
    assert chip.writes == 0


def test_not_a_terminal_needs_yes(chip, config, monkeypatch):
    result = run(WRITE, config=config, tty=False, mp=monkeypatch)
    assert result.exit_code == 2
    assert "--yes" in result.output
    assert chip.log == []


def test_write_json(chip, config):
    result = run([*WRITE, "--yes", "--json"], config=config)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["entry"] == {
        "write_date": "20250401",
        "lasdec": "131067",
        "municipality": "東京都台東区",
        "address": NEW_ADDRESS,
    }
    assert (data["slot"], data["slots"], data["written"], data["verified"]) == (2, 3, True, True)
    assert NUMBER not in result.stdout
    again = run([*WRITE, "--yes", "--json"], config=config)
    assert again.exit_code == 0
    assert json.loads(again.stdout)["already_written"] is True


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        (["--lasdec", "131068"], "card.bad_lasdec", "検査数字"),
        (["--lasdec", "130001"], "card.bad_lasdec", "都道府県"),
        (["--address", "東京都髙島平"], "card.unencodable", "U+9AD9"),
        (["--date", "20250431"], "card.bad_date", "20250431"),
        (["--card-number", "AA1234"], "card.bad_card_number", "12文字"),
    ],
)
def test_bad_input_exits_2_before_the_card(chip, config, change, code, fragment):
    args = list(WRITE)
    i = args.index(change[0])
    args[i + 1] = change[1]
    result = run([*args, "--yes", "--json"], config=config)
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"]["code"] == code
    assert fragment in result.stderr
    assert chip.log == []


def test_no_key_provider_exits_2(chip, tmp_path):
    result = run([*WRITE, "--yes", "--json"], config=write_config(tmp_path, key=None))
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "card.no_key_provider"
    assert "鍵装置" in result.stderr
    assert chip.log == []


def test_key_file_readable_by_others_exits_2(chip, config):
    (config.parent / "test-master.key").chmod(0o644)
    result = run([*WRITE, "--yes", "--json"], config=config)
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "card.key_file"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('readr = "x"\n', "did you mean 'card.reader'"),
        ('key_provider = "hsm"\n', "card.key_provider"),
        ('sam_reader = "SAM 00 00"\n', "card.sam_reader"),
    ],
)
def test_bad_card_settings_exit_2(chip, tmp_path, extra, fragment):
    path = write_config(tmp_path, key=None, extra=extra)
    result = run(["card", "read"], config=path)
    assert result.exit_code == 2
    assert fragment in result.stderr


def test_card_pulled_reports_partial_write(chip, config):
    chip.pull_after = 100
    result = run([*WRITE, "--yes", "--json"], config=config)
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert (error["code"], error["write_state"], error["slot"]) == (
        "card.removed",
        "partial_possible",
        1,
    )
    chip.insert()
    again = run([*WRITE, "--yes", "--json"], config=config)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["completed_partial_entry"] is True


def test_no_card_exits_5(monkeypatch, config):
    def no_card(name=None):
        raise CardError("no card", code="card.no_card", message_ja="カードが置かれていません。")

    monkeypatch.setattr(card_cli, "connect_card", no_card)
    result = run([*WRITE, "--yes"], config=config)
    assert result.exit_code == 5
    assert "カードが置かれていません" in result.stderr


def test_mask_card_number():
    assert card_cli.mask_card_number("AB12345678CD") == "********78CD"
    assert card_cli.mask_card_number(None) == "-"


# --- the real command through pcscd + vpcd ----------------------------------------------------

AGENT = Path(sys.executable).with_name("renkei-agent")
_needs_stack = pytest.mark.skipif(
    PCSCD is None or not VPCD_DRIVER or not AGENT.exists(),
    reason="needs Debian packages pcscd and vsmartcard-vpcd, and renkei-agent installed",
)


def real_stack(test):
    """Through pcscd + vpcd with the console script: a few seconds each."""
    return pytest.mark.slow(_needs_stack(test))


def agent(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The console script, talking to this process's pcscd (PCSCLITE_CSOCK_NAME is inherited)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environment.pop("RENKEI_AGENT_CONFIG", None)
    return subprocess.run(
        [str(AGENT), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _card_is(present: bool) -> bool:
    try:
        reader.connect().close()
    except CardError:
        return not present
    return present


def put(insert, chip: WritableChip) -> VpcdCard:
    """Insert the chip over vpcd, wire its simulated pull to closing the socket, wait for pcscd.

    A pcscd quirk: when a card vanishes in the middle of a command, the
    client's SCardDisconnect marks the reader empty, but pcscd's reader
    thread learns of the removal only at its next poll (every 0.4 s); a card
    that is back before that poll is never announced, and the reader stays
    "empty". So a card that does not show up is taken away, and put back
    after a pause, as staff would do.
    """
    for _ in range(3):
        card = insert(chip)
        chip.on_pull = lambda card=card: card.sock.shutdown(socket.SHUT_RDWR)
        try:
            _wait(lambda: _card_is(True), 3, "card present")
        except AssertionError:
            card.remove()
            time.sleep(1.0)
            continue
        return card
    raise AssertionError("the card never showed up on the reader")


def _json_of(done: subprocess.CompletedProcess):
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


@real_stack
@pytest.mark.parametrize("generation", [1, 2])
def test_real_write_round_trip(insert, tmp_path, generation):
    config = str(write_config(tmp_path))
    chip = WritableChip(generation, NUMBER, entries=[OLD])
    put(insert, chip)
    readers = _json_of(agent("card", "readers", "--json", "--config", config))
    assert {"name": "Virtual PCD 00 00", "card_present": True, "configured": False} in readers
    done = agent(*WRITE, "--yes", "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    assert _json_of(done)["slot"] == 2 and _json_of(done)["written"] is True
    assert chip.block == entry_slot(*OLD) + NEW_SLOT + empty_slot()
    read = agent("card", "read", "--card-number", NUMBER, "--json", "--config", config)
    assert read.returncode == 0, read.stderr
    data = _json_of(read)
    assert data["card_type"]["generation"] == generation
    assert data["card_number"] == NUMBER
    if generation == 1:  # the read side reads the address block of generation 1
        assert data["addresses"][-1] == {
            "write_date": "20250401",
            "lasdec": "131067",
            "address": NEW_ADDRESS,
        }


@real_stack
def test_real_wrong_key_is_refused(insert, tmp_path):
    config = str(write_config(tmp_path, key=OTHER_MASTER_KEY))
    chip = WritableChip(2, NUMBER, entries=[OLD])
    put(insert, chip)
    done = agent(*WRITE, "--yes", "--json", "--config", config)
    assert done.returncode == 1
    error = _json_of(done)["error"]
    assert (error["code"], error["write_state"]) == ("card.write_auth_failed", "not_written")
    assert "書込み用の認証" in done.stderr
    assert chip.writes == 0


@real_stack
def test_real_card_pulled_mid_write_then_retry_completes(insert, tmp_path):
    config = str(write_config(tmp_path))
    chip = WritableChip(1, NUMBER, entries=[OLD])
    chip.pull_after = 200
    card = put(insert, chip)
    done = agent(*WRITE, "--yes", "--json", "--config", config)
    assert done.returncode == 1, done.stderr
    error = _json_of(done)["error"]
    assert (error["code"], error["write_state"], error["slot"]) == (
        "card.removed",
        "partial_possible",
        1,
    )
    assert "同じ内容でもう一度" in done.stderr
    assert chip.block[364 + 2 : 364 + 10] == bytes(8)  # the date is not on the card
    assert chip.block[364 + 10 : 364 + 200] == NEW_SLOT[10:200]
    card.remove()
    _wait(lambda: _card_is(False), 10, "card absent")
    time.sleep(1.0)  # put back after a moment (pcscd's reader thread polls every 0.4 s; see put)
    put(insert, chip)
    again = agent(*WRITE, "--yes", "--json", "--config", config)
    assert again.returncode == 0, again.stderr
    assert _json_of(again)["completed_partial_entry"] is True
    assert chip.block == entry_slot(*OLD) + NEW_SLOT + empty_slot()


@real_stack
def test_real_block_full(insert, tmp_path):
    config = str(write_config(tmp_path))
    chip = WritableChip(1, NUMBER, entries=[OLD, OLD], slots=2)
    put(insert, chip)
    done = agent(*WRITE, "--yes", "--json", "--config", config)
    assert done.returncode == 1
    assert _json_of(done)["error"]["code"] == "card.address_block_full"


@real_stack
def test_real_bad_input_never_reaches_the_card(insert, tmp_path):
    config = str(write_config(tmp_path))
    chip = WritableChip(1, NUMBER, entries=[OLD])
    put(insert, chip)
    args = [a if a != NEW_ADDRESS else "東京都①" for a in WRITE]
    done = agent(*args, "--yes", "--json", "--config", config)
    assert done.returncode == 2
    assert _json_of(done)["error"]["code"] == "card.unencodable"
    assert "U+2460" in done.stderr
    assert not any(c[:1] in (b"\x80", b"\x84") for c in chip.log)


@real_stack
def test_real_no_card(vpcd_port, tmp_path):
    config = str(write_config(tmp_path))
    done = agent(*WRITE, "--yes", "--json", "--config", config)
    assert done.returncode == 5
    assert _json_of(done)["error"]["code"] == "card.no_card"
    read = agent("card", "read", "--json", "--config", config)
    assert read.returncode == 5


@real_stack
def test_real_no_reader_and_no_service(vpcd_port, tmp_path):
    config = str(write_config(tmp_path, key=None))
    read = agent("card", "read", "--reader", "No Such Reader 00 00", "--json", "--config", config)
    assert read.returncode == 5
    assert json.loads(read.stdout)["error"]["code"] == "card.no_reader"
    assert "カードリーダー" in read.stderr
    gone = agent(
        "card", "readers", "--json", "--config", config,
        PCSCLITE_CSOCK_NAME=str(tmp_path / "no-such.comm"),
    )  # fmt: skip
    assert gone.returncode == 5
    assert json.loads(gone.stdout)["error"]["code"] == "card.no_pcsc"
