"""The read flow over a fake transport (the virtual chip called directly, no PC/SC)."""

from __future__ import annotations

import pytest

from appliance.agent.card import apdu, session
from appliance.agent.card.apdu import CardError
from tests.card.virtual_card import VirtualChip

GOOD = "AB98765432CD"


class ChipTransport:
    def __init__(self, chip: VirtualChip):
        self.chip = chip

    def transmit(self, command: bytes) -> apdu.Response:
        return apdu.parse_response(self.chip.process(command))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("C10131", (1, session.KIND_RESIDENCE, False, "1")),
        ("C10132", (1, session.KIND_SPECIAL_PERMANENT, False, "2")),
        ("C1023035", (2, session.KIND_RESIDENCE, False, "05")),
        ("C1023036", (2, session.KIND_SPECIAL_PERMANENT, False, "06")),
        ("C1023037", (2, session.KIND_RESIDENCE, True, "07")),
        ("C1023038", (2, session.KIND_SPECIAL_PERMANENT, True, "08")),
    ],
)
def test_parse_card_type(data, expected):
    assert session.parse_card_type(bytes.fromhex(data)) == session.CardType(*expected)


@pytest.mark.parametrize(
    ("data", "code"), [("C10133", "card.not_supported"), ("C00131", "card.bad_tlv")]
)
def test_parse_card_type_refuses_unknown(data, code):
    with pytest.raises(CardError) as info:
        session.parse_card_type(bytes.fromhex(data))
    assert info.value.code == code


def test_address_block_skips_unused_slots_and_keeps_order():
    data = (
        bytes.fromhex("D208") + b"20200101" + bytes.fromhex("D306") + b"011002" + bytes.fromhex("D403") + b"abc"
        + bytes.fromhex("D208") + b"20240401" + bytes.fromhex("D306") + b"131016" + bytes.fromhex("D402") + b"xy"
        + bytes.fromhex("D208") + bytes(8) + bytes.fromhex("D306") + bytes(6) + bytes.fromhex("D402") + bytes(2)
    )  # fmt: skip
    entries = session.parse_address_block(data)
    assert [(e.write_date, e.lasdec, e.address) for e in entries] == [
        ("20200101", "011002", "abc"),
        ("20240401", "131016", "xy"),
    ]


def test_address_block_incomplete_entry_is_refused():
    with pytest.raises(apdu.TlvError):
        session.parse_address_block(bytes.fromhex("D2083230323430343031D306313331303136"))


@pytest.mark.parametrize("generation", [1, 2])
def test_read_flow_both_generations(generation):
    result = session.read_card(ChipTransport(VirtualChip(generation, GOOD)), GOOD.lower())
    assert result.card_type.generation == generation
    assert result.card_number == GOOD
    assert bool(result.addresses) == (generation == 1)


@pytest.mark.parametrize("generation", [1, 2])
def test_wrong_number_maps_to_clear_error(generation):
    with pytest.raises(CardError) as info:
        session.read_card(ChipTransport(VirtualChip(generation, GOOD)), "AB98765432CE")
    assert info.value.code == "card.wrong_card_number"


def test_malformed_card_number_is_refused_before_talking_to_the_card():
    chip = VirtualChip(2, GOOD)
    with pytest.raises(ValueError):
        session.read_card(ChipTransport(chip), "AB9876")
    assert not any(c[1] in (0x84, 0x82) for c in chip.log)


def test_sm_read_without_verify_is_security_status():
    chip = VirtualChip(2, GOOD)
    transport = ChipTransport(chip)
    apdu.check_status(transport.transmit(apdu.select_df(apdu.AID_DF1)), "SELECT")
    with pytest.raises(CardError) as info:
        apdu.check_status(transport.transmit(apdu.sm_read_binary(1)), "READ BINARY")
    assert info.value.code == "card.security_status"
