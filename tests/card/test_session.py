"""The read flow over a fake transport (the virtual chip called directly, no PC/SC)."""

from __future__ import annotations

import base64
import json
import pathlib
import re

import pytest

from appliance.agent.card import apdu, session, signature
from appliance.agent.card.apdu import CardError
from tests.card import pki
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


def test_address_block_skips_a_slot_cut_off_while_its_date_was_written():
    data = (
        bytes.fromhex("D208") + b"20200101" + bytes.fromhex("D306") + b"011002" + bytes.fromhex("D403") + b"abc"
        + bytes.fromhex("D208") + b"202" + bytes(5) + bytes.fromhex("D306") + b"131016" + bytes.fromhex("D402") + b"xy"
    )  # fmt: skip
    entries = session.parse_address_block(data)
    assert [e.write_date for e in entries] == ["20200101"]


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
    with pytest.raises(CardError) as info:
        session.read_card(ChipTransport(chip), "AB9876")
    assert info.value.code == "card.bad_card_number"
    assert "12" in info.value.message_ja
    assert not any(c[1] in (0x84, 0x82) for c in chip.log)


def test_sm_read_without_verify_is_security_status():
    chip = VirtualChip(2, GOOD)
    transport = ChipTransport(chip)
    apdu.check_status(transport.transmit(apdu.select_df(apdu.AID_DF1)), "SELECT")
    with pytest.raises(CardError) as info:
        apdu.check_status(transport.transmit(apdu.sm_read_binary(1)), "READ BINARY")
    assert info.value.code == "card.security_status"


def _read(chip: VirtualChip, **kwargs) -> session.CardRead:
    anchors = [pki.issuer(chip.generation).anchor]
    return session.read_card(
        ChipTransport(chip), GOOD, trust_anchors=anchors, now=pki.GOOD_DATE, **kwargs
    )


COMMON_KEYS = {"card_type", "card_number", "front", "addresses", "signature"}


@pytest.mark.parametrize("generation", [1, 2])
def test_to_dict_is_json_safe_with_the_documented_keys(generation):
    result = _read(VirtualChip(generation, GOOD)).to_dict()
    assert json.loads(json.dumps(result)) == result
    assert set(result) == COMMON_KEYS
    assert result["card_type"] == {
        "generation": generation,
        "kind": "residence_card",
        "specified": False,
        "code": "1" if generation == 1 else "05",
    }
    assert result["signature"]["status"] == "valid"
    if generation == 1:
        assert result["front"] is None
        assert result["addresses"] == [
            {"write_date": "20240401", "lasdec": "131016", "address": "東京都台東区上野1丁目1番1号"}
        ]
    else:
        assert result["front"]["card_expiry_date"] == "2031-04-01"
        assert result["addresses"] == []


def test_to_dict_without_card_number():
    result = session.read_card(ChipTransport(VirtualChip(2, GOOD))).to_dict()
    assert result == {
        "card_type": {"generation": 2, "kind": "residence_card", "specified": False, "code": "05"},
        "card_number": None,
        "front": None,
        "addresses": [],
        "signature": None,
    }


@pytest.mark.parametrize("generation", [1, 2])
def test_to_dict_with_images_as_base64(generation):
    chip = VirtualChip(generation, GOOD)
    images = _read(chip, read_images=True).to_dict()["images"]
    names = {"front_image", "photo"} if generation == 1 else {"name_image", "photo"}
    assert set(images) == names
    for name in names:
        assert base64.b64decode(images[name]) == chip.images[name]


@pytest.mark.parametrize("code", [b"07", b"08"])
def test_specified_cards_are_refused_before_authentication(code):
    chip = VirtualChip(2, GOOD, kind_code=code)
    with pytest.raises(CardError) as info:
        session.read_card(ChipTransport(chip), GOOD)
    assert info.value.code == "card.specified_not_supported"
    assert not any(c[1] in (0x84, 0x82) for c in chip.log)
    # the public card type is still readable
    assert session.read_card(ChipTransport(chip)).card_type.specified


def test_oversized_image_gives_invalid_signature_not_a_crash():
    chip = VirtualChip(2, GOOD, images={"photo": bytes(3001)})
    result = _read(chip)
    assert result.signature.status == signature.INVALID
    assert "3000" in result.signature.detail
    assert result.front["date_of_birth"] == "1995-03-12"


def test_without_anchor_the_read_reports_not_checked():
    chip = VirtualChip(1, GOOD)
    result = session.read_card(ChipTransport(chip), GOOD, now=pki.GOOD_DATE)
    assert result.signature.status == signature.NOT_CHECKED


def test_card_without_signature_file_is_a_card_error():
    chip = VirtualChip(2, GOOD)
    del chip.dfs[apdu.AID_DF3][0x02]
    with pytest.raises(CardError) as info:
        _read(chip)
    assert info.value.code == "card.file_not_found"


def test_garbled_sm_answer_is_sm_data_incorrect_in_japanese():
    chip = VirtualChip(2, GOOD)
    transport = ChipTransport(chip)
    session.authenticate(transport, 2, GOOD)
    apdu.check_status(transport.transmit(apdu.select_df(apdu.AID_DF1)), "SELECT")
    with pytest.raises(CardError) as info:
        # decrypting with the wrong session key: the padding check fails
        session._sm_read(transport, 2, bytes(16), session.SFI_GEN2_PRINTED, "READ")
    assert info.value.code == "card.sm_data_incorrect"
    assert info.value.message_ja.startswith("セキュアメッセージング")


MODULES = ["apdu", "crypto", "reader", "session", "signature", "front"]


def test_every_error_code_of_the_read_side_is_documented():
    root = pathlib.Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "card.md").read_text()
    documented = set(re.findall(r"^\| `(card\.[a-z_]+)`", docs, re.M))
    documented |= set(re.findall(r"`, `(card\.[a-z_]+)`", docs))
    used = set(apdu.DEFAULT_MESSAGES_JA)
    for name in MODULES:
        source = (root / "appliance" / "agent" / "card" / f"{name}.py").read_text()
        used |= set(re.findall(r'"(card\.[a-z_]+)"', source))
    assert used - documented == set()
