"""Second-generation printed entries (DF1/EF02) into the ``front`` dict."""

from __future__ import annotations

import pytest

from appliance.agent.card import front
from appliance.agent.card.apdu import CardError


def _file(*objects: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([t, len(v)]) + v for t, v in objects)


RESIDENCE = _file(
    (0xC5, b"20310401"),
    (0xC6, b"19950312"),
    (0xC7, b"2"),
    (0xC8, b"VNM"),
    (0xC9, b"T000000001"),
    (0xCE, b"0300"),
    (0xCA, b"01"),
    (0xCB, b"20280401"),
    (0xCC, b"2"),
    (0xCD, b"20310401"),
)


def test_residence_card_fields():
    assert len(RESIDENCE) == 73  # the file size the spec gives
    assert front.parse_printed_entries(RESIDENCE) == {
        "card_expiry_date": "2031-04-01",
        "date_of_birth": "1995-03-12",
        "sex_code": "2",
        "sex": "female",
        "nationality_code": "VNM",
        "status_of_residence_code": "T000000001",
        "period_of_stay_code": "0300",
        "period_of_stay_indefinite": False,
        "permission_type_code": "01",
        "permission_date": "2028-04-01",
        "work_restriction_code": "2",
        "work_restriction_ja": "在留資格に基づく就労活動のみ可",
        "period_of_stay_expiry_date": "2031-04-01",
        "raw": {
            "C5": "20310401",
            "C6": "19950312",
            "C7": "2",
            "C8": "VNM",
            "C9": "T000000001",
            "CE": "0300",
            "CA": "01",
            "CB": "20280401",
            "CC": "2",
            "CD": "20310401",
        },
    }


def test_special_permanent_certificate_has_no_residence_only_fields():
    data = _file(
        (0xC5, b"20320815"),
        (0xC6, b"19620405"),
        (0xC7, b"1"),
        (0xC8, b"KOR"),
        (0xC9, b"S000000000"),
        (0xCE, b"0000"),
    )
    assert len(data) == 46
    fields = front.parse_printed_entries(data)
    assert fields["date_of_birth"] == "1962-04-05"
    assert fields["sex"] == "male"
    assert fields["period_of_stay_indefinite"] is True
    for absent in (
        "permission_type_code",
        "permission_date",
        "work_restriction_code",
        "period_of_stay_expiry_date",
        "work_restriction_ja",
    ):
        assert fields[absent] is None


def test_not_a_date_is_kept_as_read():
    fields = front.parse_printed_entries(_file((0xC5, b"20310231"), (0xC6, b"1995")))
    assert fields["card_expiry_date"] == "20310231"
    assert fields["date_of_birth"] == "1995"


def test_unknown_tags_are_kept_in_raw_and_filler_ignored():
    fields = front.parse_printed_entries(_file((0xC7, b"3"), (0xCF, b"x")) + bytes(6))
    assert fields["sex"] == "unspecified"
    assert fields["raw"] == {"C7": "3", "CF": "x"}
    assert fields["period_of_stay_indefinite"] is None


@pytest.mark.parametrize(
    "data",
    [
        _file((0xC8, b"\xff\xfe\xfd")),  # not UTF-8
        _file((0xC5, b"20310401"), (0xC5, b"20310402")),  # repeated tag
        b"\xc5\x08" + b"2031",  # truncated
    ],
)
def test_malformed_printed_entries_are_a_card_error(data):
    with pytest.raises(CardError) as info:
        front.parse_printed_entries(data)
    assert info.value.code == "card.bad_tlv"
    assert info.value.message_ja != info.value.message
