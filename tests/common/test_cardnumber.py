"""Card numbers (在留カード等の番号) and card kinds."""

from __future__ import annotations

import pytest

from common import cardnumber, codes

RESIDENCE_CARD, CERTIFICATE, DEEMED = "1", "2", "3"


@pytest.mark.parametrize("kind", [RESIDENCE_CARD, CERTIFICATE])
@pytest.mark.parametrize(
    ("number", "problems"),
    [
        ("AB12345678CD", []),
        ("AA12345678BB", []),  # the ministry's test vector number
        ("ZZ00000000ZZ", []),
        ("ab12345678cd", ["card_number.format"]),  # lower case
        ("Ab12345678CD", ["card_number.format"]),
        ("AB1234567CD", ["card_number.format"]),  # 11 characters
        ("AB123456789CD", ["card_number.format"]),  # 13 characters
        ("AB12345678C", ["card_number.format"]),
        ("ABC2345678CD", ["card_number.format"]),  # letter among the digits
        ("A112345678CD", ["card_number.format"]),
        ("AB12345678C1", ["card_number.format"]),
        ("AB１２３４５６７８CD", ["card_number.format"]),  # full-width digits
        ("ＡＢ12345678ＣＤ", ["card_number.format"]),  # full-width letters
        ("AB12345678CD\n", ["card_number.format"]),
        (" AB12345678CD", ["card_number.format"]),
        ("AB 12345678 CD", ["card_number.format"]),
        ("AB12345678ÇD", ["card_number.format"]),
        ("", ["card_number.format"]),
        (None, ["card_number.format"]),
    ],
)
def test_twelve_character_cards(number, problems, kind):
    assert cardnumber.validate(number, kind) == problems


@pytest.mark.parametrize(
    ("number", "problems"),
    [
        ("12345678", []),
        ("123456789", []),
        ("A12345678", []),
        ("AB12345678", []),
        ("1234567", ["card_number.format"]),
        ("ABC12345678", ["card_number.format"]),
        ("a12345678", ["card_number.format"]),
        ("１２３４５６７８", ["card_number.format"]),
        (
            "AB12345678CD",
            ["card_number.format"],
        ),  # a residence card number is not a registration number
    ],
)
def test_deemed_registration_certificate(number, problems):
    assert cardnumber.validate(number, DEEMED) == problems


@pytest.mark.parametrize("kind", ["", "0", "4", "01", "１", "在留カード", None])
def test_unknown_kind(kind):
    assert cardnumber.validate("AB12345678CD", kind) == ["card_kind.unknown"]


def test_every_card_kind_has_a_number_format():
    assert set(codes.table("card_kind")) == set(cardnumber.NUMBER_FORMATS)


def test_card_kind_labels():
    kinds = codes.table("card_kind")
    assert kinds["1"].label_ja == "在留カード"
    assert kinds["2"].label_ja == "特別永住者証明書"
    assert "外国人登録証明書" in kinds["3"].label_ja
