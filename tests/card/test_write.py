"""The MODEL address write: text encoding, slots, key providers, the flow over the chip.

The flow tests call the writable virtual chip directly (``ChipTransport``);
test_card_cli.py drives the same chip through pcscd + vpcd with the real
``renkei-agent`` command. Expected card contents are spelled out here from
the model's layout (``virtual_writable.entry_slot``), not taken from the
module under test.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from appliance.agent.card import address_write as aw
from appliance.agent.card import session
from appliance.agent.card.apdu import CardError
from appliance.agent.card.keyprovider import (
    DeviceKeyProvider,
    KeyProviderError,
    KeyProviderSettings,
    TestKeyProvider,
    make_key_provider,
)
from tests.card.virtual_writable import (
    OTHER_MASTER_KEY,
    TEST_MASTER_KEY,
    ChipTransport,
    WritableChip,
    empty_slot,
    entry_slot,
)

NUMBER = "AA12345678BB"
OLD = ("20240401", "131016", "東京都千代田区霞が関１丁目１番１号".encode("cp932"))
NEW_ADDRESS = "東京都台東区上野１丁目２番３号"
NEW_SLOT = entry_slot("20250401", "131067", NEW_ADDRESS.encode("cp932"))


@pytest.fixture
def provider(tmp_path: Path) -> TestKeyProvider:
    key = tmp_path / "test-master.key"
    key.write_text(f"# test key\n{TEST_MASTER_KEY.hex()}\n")
    key.chmod(0o600)
    return TestKeyProvider(key)


def new_entry(date: str = "20250401", lasdec: str = "131067", address: str = NEW_ADDRESS):
    return aw.prepare_entry(date, lasdec, address)


# --- address text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("東京都", "938c8b9e9373"),
        ("上野1-2", "8fe396ec312d32"),  # ASCII stays single-byte
        ("ｱｲ", "b1b2"),  # JIS X 0201 katakana
        ("１－２～３", "8250817c825181608252"),  # full-width minus and tilde as cp932 holds them
        ("高\u3000橋", "8d8281408bb4"),
    ],
)
def test_address_is_stored_as_shift_jis_padded_with_zeros(text, stored):
    raw = aw.encode_address(text)
    assert raw == bytes.fromhex(stored).ljust(342, b"\x00")


@pytest.mark.parametrize(
    ("text", "named", "hint"),
    [
        ("東京都髙島", "U+9AD9", None),  # IBM extension, not JIS X 0208
        ("大阪市①", "U+2460", None),  # NEC row 13
        (
            "上野1\u22122",
            "U+2212",
            "U+FF0D",
        ),  # MINUS SIGN would read back as FULLWIDTH HYPHEN-MINUS
        ("上野1\u301c2", "U+301C", "U+FF5E"),  # WAVE DASH would read back as FULLWIDTH TILDE
        ("住所\n二行目", "U+000A", None),
        ("\ue000", "U+E000", None),  # user-defined area
        ("札幌😀", "U+1F600", None),
        ("Café", "U+00E9", None),
    ],
)
def test_unencodable_character_is_refused_and_named(text, named, hint):
    with pytest.raises(aw.AddressInputError) as info:
        aw.encode_address(text)
    error = info.value
    assert error.code == "card.unencodable"
    assert named in error.message and named in error.message_ja
    if hint:
        assert hint in error.message and hint in error.message_ja


def test_address_length_limit():
    assert len(aw.encode_address("あ" * 171)) == 342
    with pytest.raises(aw.AddressInputError) as info:
        aw.encode_address("あ" * 172)
    assert info.value.code == "card.address_too_long"
    with pytest.raises(aw.AddressInputError) as info:
        aw.encode_address("")
    assert info.value.code == "card.empty_address"


@pytest.mark.parametrize(
    ("date", "lasdec", "code", "fragment"),
    [
        ("20250230", "131067", "card.bad_date", "YYYYMMDD"),
        ("2025-04-01", "131067", "card.bad_date", "YYYYMMDD"),
        ("２０２５０４０１", "131067", "card.bad_date", "YYYYMMDD"),
        ("20990101", "131067", "card.bad_date", "after today"),
        ("20250401", "13106", "card.bad_lasdec", "six ASCII digits"),
        ("20250401", "131068", "card.bad_lasdec", "check digit"),
        ("20250401", "999997", "card.bad_lasdec", "no municipality"),
        ("20250401", "130001", "card.bad_lasdec", "prefecture"),
    ],
)
def test_bad_date_or_local_government_code(date, lasdec, code, fragment):
    with pytest.raises(aw.AddressInputError) as info:
        aw.prepare_entry(date, lasdec, "東京都", today=dt.date(2025, 6, 1))
    assert info.value.code == code
    assert fragment in info.value.message
    assert lasdec in info.value.message_ja or date in info.value.message_ja


def test_entry_names_the_municipality():
    entry = new_entry()
    assert entry.to_dict() == {
        "write_date": "20250401",
        "lasdec": "131067",
        "municipality": "東京都台東区",
        "address": NEW_ADDRESS,
    }


# --- the block ------------------------------------------------------------------------------


def test_slots_are_classified():
    half_date = bytearray(NEW_SLOT)
    half_date[2:10] = b"2025" + bytes(4)  # pulled while the date was being written
    body_only = bytearray(NEW_SLOT)
    body_only[2:10] = bytes(8)  # pulled before the date was written
    block = entry_slot(*OLD) + bytes(half_date) + bytes(body_only) + empty_slot()
    slots = aw.parse_slots(block)
    assert [s.state for s in slots] == ["entry", "partial", "partial", "free"]
    assert (slots[0].write_date, slots[0].lasdec) == ("20240401", "131016")
    assert slots[0].address == "東京都千代田区霞が関１丁目１番１号"


@pytest.mark.parametrize(
    "block",
    [
        b"",
        empty_slot()[:-1],
        b"\xd2\x09" + empty_slot()[2:],
        entry_slot(*OLD)[:10] + b"\xd3\x07" + entry_slot(*OLD)[12:],
    ],
)
def test_block_not_in_the_model_layout_is_refused(block):
    with pytest.raises(CardError) as info:
        aw.parse_slots(block)
    assert info.value.code == "card.bad_address_block"


# --- key providers --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_test_key_file_readable_by_others_is_refused(tmp_path, mode):
    key = tmp_path / "k"
    key.write_text(TEST_MASTER_KEY.hex())
    key.chmod(mode)
    with pytest.raises(KeyProviderError) as info:
        TestKeyProvider(key)
    assert info.value.code == "card.key_file"
    assert "chmod 600" in info.value.message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_test_key_file_owner_only_is_accepted(tmp_path, mode):
    key = tmp_path / "k"
    key.write_text(TEST_MASTER_KEY.hex().upper() + "\n")
    key.chmod(mode)
    provider = TestKeyProvider(key)
    assert provider.for_tests_only
    assert "tests/development only" in provider.description


@pytest.mark.parametrize("content", ["", "00" * 15, "zz" * 16, "00" * 17])
def test_malformed_test_key_file_is_refused(tmp_path, content):
    key = tmp_path / "k"
    key.write_text(content)
    key.chmod(0o600)
    with pytest.raises(KeyProviderError) as info:
        TestKeyProvider(key)
    assert info.value.code == "card.key_file"
    assert "32 hex digits" in info.value.message


def test_missing_test_key_file(tmp_path):
    with pytest.raises(KeyProviderError) as info:
        make_key_provider(KeyProviderSettings(kind="test", test_key_file=tmp_path / "none"))
    assert info.value.code == "card.key_file"


def test_production_placeholder_says_what_to_supply():
    provider = make_key_provider(KeyProviderSettings())
    assert isinstance(provider, DeviceKeyProvider) and not provider.for_tests_only
    with pytest.raises(KeyProviderError) as info:
        provider.ensure_ready()
    error = info.value
    assert error.code == "card.no_key_provider"
    for needed in ("PKCS#11", "pkcs11_module", "pkcs11_slot", "pkcs11_key_label", "sam_reader"):
        assert needed in error.message
    assert "鍵装置" in error.message_ja and "設定されていません" in error.message_ja


def test_configured_device_without_a_driver_is_refused_clearly():
    settings = KeyProviderSettings(
        kind="pkcs11",
        pkcs11_module=Path("/usr/lib/vendor-pkcs11.so"),
        pkcs11_slot=3,
        pkcs11_key_label="addr",
    )
    with pytest.raises(KeyProviderError) as info:
        make_key_provider(settings).open_write_session(NUMBER, bytes(8))
    assert info.value.code == "card.no_key_provider"
    assert "/usr/lib/vendor-pkcs11.so" in info.value.message
    assert "no driver" in info.value.message


# --- the chip refuses what it must ----------------------------------------------------------


def _verified(chip: WritableChip) -> ChipTransport:
    transport = ChipTransport(chip)
    session.read_card_type(transport)
    session.authenticate(transport, chip.generation, NUMBER)
    transport.transmit(bytes.fromhex("00A4040C10") + bytes.fromhex("D392F0004F03") + bytes(10))
    return transport


def _write_session(transport, provider):
    challenge = transport.transmit(aw.write_challenge()).data
    ws = provider.open_write_session(NUMBER, challenge)
    answer = transport.transmit(aw.write_authenticate(ws.terminal_cryptogram()))
    assert answer.sw == 0x9000
    ws.check_card_cryptogram(answer.data)
    return ws


def _command(ws, offset: int, data: bytes) -> bytes:
    header = aw.write_binary_header(offset)
    body = ws.wrap_command(header, data)
    return header + bytes([len(body)]) + body + b"\x00"


def test_chip_refuses_write_authentication_before_card_number_verify(provider):
    chip = WritableChip(1, NUMBER)
    transport = ChipTransport(chip)
    challenge = transport.transmit(aw.write_challenge()).data
    ws = provider.open_write_session(NUMBER, challenge)
    assert transport.transmit(aw.write_authenticate(ws.terminal_cryptogram())).sw == 0x6982


def test_chip_refuses_write_without_session_bad_mac_and_replay(provider):
    chip = WritableChip(2, NUMBER)
    transport = _verified(chip)
    before = chip.block
    # no write session: a command wrapped for another session is refused
    other = _verified(WritableChip(2, NUMBER))
    stray = _command(_write_session(other, provider), 12, b"131067")
    assert transport.transmit(stray).sw == 0x6982
    ws = _write_session(transport, provider)
    good = _command(ws, 12, b"131067")
    tampered = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]  # last MAC byte
    assert transport.transmit(tampered).sw == 0x6988  # and the session is over
    assert transport.transmit(good).sw == 0x6982
    ws = _write_session(transport, provider)
    first = _command(ws, 12, b"131067")
    answer = transport.transmit(first)
    assert answer.sw == 0x9000
    ws.check_response(answer.data)
    assert transport.transmit(first).sw == 0x6988  # replayed: counter and chain moved on
    assert chip.block[12:18] == b"131067" and chip.block[18:] == before[18:]


# --- the flow over the chip -----------------------------------------------------------------


@pytest.mark.parametrize("generation", [1, 2])
def test_round_trip(generation, provider):
    chip = WritableChip(generation, NUMBER, entries=[OLD], slots=3)
    result = aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert chip.block == entry_slot(*OLD) + NEW_SLOT + empty_slot()
    assert (result.slot, result.written) == (1, True)
    data = result.to_dict()
    assert data["slot"] == 2 and data["slots"] == 3 and data["verified"] is True
    assert data["entry"]["municipality"] == "東京都台東区"
    # the date went last: the final WRITE BINARY is the one at the slot's first byte
    writes = [c for c in chip.log if c[:2] == b"\x84\xd6"]
    assert int.from_bytes(writes[-1][2:4], "big") == 364
    assert all(int.from_bytes(c[2:4], "big") >= 374 for c in writes[:-1])
    assert all(len(c) <= 5 + 255 + 1 for c in writes)  # short APDUs
    if generation == 1:  # the read side sees it
        read = session.read_card(ChipTransport(chip), NUMBER, check_signature=False)
        assert [(a.write_date, a.lasdec, a.address) for a in read.addresses] == [
            ("20240401", "131016", "東京都千代田区霞が関１丁目１番１号"),
            ("20250401", "131067", NEW_ADDRESS),
        ]


def test_running_again_does_not_write_twice(provider):
    chip = WritableChip(1, NUMBER, entries=[OLD])
    aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    writes = chip.writes
    again = aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert (again.written, again.plan.already_written, again.slot) == (False, True, 1)
    assert chip.writes == writes


def test_wrong_key_is_refused_and_nothing_written(provider):
    chip = WritableChip(1, NUMBER, entries=[OLD], master_key=OTHER_MASTER_KEY)
    before = chip.block
    with pytest.raises(aw.WriteError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert info.value.code == "card.write_auth_failed"
    assert info.value.write_state == "not_written"
    assert "何も書き込まれていません" in info.value.message_ja
    assert chip.block == before and chip.writes == 0


def test_wrong_card_number_is_refused_before_any_write(provider):
    chip = WritableChip(2, NUMBER)
    with pytest.raises(CardError) as info:
        aw.write_address(ChipTransport(chip), "AA12345678BC", new_entry(), provider)
    assert info.value.code == "card.wrong_card_number"
    assert chip.writes == 0 and not any(c[:2] == b"\x80\x84" for c in chip.log)


def test_block_full(provider):
    chip = WritableChip(1, NUMBER, entries=[OLD, OLD], slots=2)
    with pytest.raises(CardError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert info.value.code == "card.address_block_full"
    assert "2" in info.value.message_ja
    assert chip.writes == 0


def test_date_before_the_last_entry_is_refused(provider):
    chip = WritableChip(1, NUMBER, entries=[OLD])
    with pytest.raises(aw.AddressInputError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(date="20240331"), provider)
    assert info.value.code == "card.date_before_last_entry"
    assert chip.writes == 0


def test_specified_card_is_not_written(provider):
    chip = WritableChip(2, NUMBER, kind_code=b"07")
    with pytest.raises(CardError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert info.value.code == "card.specified_not_supported"


def test_no_key_provider_stops_before_the_card_is_touched():
    chip = WritableChip(1, NUMBER)
    with pytest.raises(KeyProviderError) as info:
        aw.write_address(
            ChipTransport(chip), NUMBER, new_entry(), DeviceKeyProvider(KeyProviderSettings())
        )
    assert info.value.code == "card.no_key_provider"
    assert chip.log == []


@pytest.mark.parametrize(
    ("pull_after", "state_after_pull"),
    [
        (0, "free"),  # pulled as the first write arrived
        (200, "partial"),  # inside the address
        (354 + 5, "partial"),  # inside the date (D2 08 and three digits)
        (364, "entry"),  # everything on the card, pulled before the answer
    ],
)
@pytest.mark.parametrize("generation", [1, 2])
def test_card_pulled_mid_write_then_retry_completes(
    generation, pull_after, state_after_pull, provider
):
    chip = WritableChip(generation, NUMBER, entries=[OLD])
    chip.pull_after = pull_after
    with pytest.raises(aw.WriteError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    error = info.value
    assert error.code == "card.removed"
    assert error.write_state == "partial_possible" and error.slot == 1
    assert "同じ内容でもう一度" in error.message_ja
    assert error.to_json()["write_state"] == "partial_possible"
    assert aw.parse_slots(chip.block)[1].state == state_after_pull
    # a read in between does not take the half-written slot for an entry of the new date
    if generation == 1 and state_after_pull != "entry":
        chip.insert()
        read = session.read_card(ChipTransport(chip), NUMBER, check_signature=False)
        assert "20250401" not in [a.write_date for a in read.addresses]
    chip.insert()
    result = aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert result.written == (state_after_pull != "entry")
    assert result.to_dict()["completed_partial_entry"] == (state_after_pull == "partial")
    assert chip.block == entry_slot(*OLD) + NEW_SLOT + empty_slot()


def test_read_back_mismatch_is_reported(provider):
    chip = WritableChip(1, NUMBER, entries=[OLD])
    chip.corrupt_write = True
    with pytest.raises(aw.WriteError) as info:
        aw.write_address(ChipTransport(chip), NUMBER, new_entry(), provider)
    assert info.value.code == "card.write_mismatch"
    assert info.value.write_state == "mismatch"
    assert "slot 2" in info.value.message
    assert "一致しません" in info.value.message_ja
