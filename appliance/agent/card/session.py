"""The read flow: card type, card-number authentication, secure-messaging reads.

Works over anything with ``transmit(apdu) -> Response`` (``reader.CardConnection``
in production, a fake in unit tests) and reads only what the caller needs:
the public card type always; with a card number, the card number file
(generation 2) or the address block (generation 1 DF2/EF01). Images, the
signature and the certificate are not read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from appliance.agent.card import apdu, crypto
from appliance.agent.card.apdu import CardError, Response, TlvError

__all__ = [
    "AddressEntry",
    "CardRead",
    "CardType",
    "Transport",
    "authenticate",
    "parse_address_block",
    "parse_card_type",
    "read_card",
    "read_card_type",
]

KIND_RESIDENCE = "residence_card"
KIND_SPECIAL_PERMANENT = "special_permanent_resident_certificate"

# C1 values: generation 1 '1'/'2'; generation 2 "05"/"06" and, for the
# 特定在留カード variant, "07"/"08". Odd = residence card, even = special
# permanent resident certificate (see docs/card.md: to be checked against
# the spec's file table).
_CARD_TYPES = {
    b"1": (1, KIND_RESIDENCE, False),
    b"2": (1, KIND_SPECIAL_PERMANENT, False),
    b"05": (2, KIND_RESIDENCE, False),
    b"06": (2, KIND_SPECIAL_PERMANENT, False),
    b"07": (2, KIND_RESIDENCE, True),
    b"08": (2, KIND_SPECIAL_PERMANENT, True),
}

SFI_MF_CARD_TYPE = 0x0A  # MF/EF02, P1 8A
SFI_GEN2_CARD_NUMBER = 0x01  # DF1/EF01, P1 81
SFI_GEN1_ADDRESS = 0x01  # DF2/EF01, P1 81

TAG_CARD_TYPE = 0xC1
TAG_CARD_NUMBER = 0xC2
TAG_WRITE_DATE = 0xD2
TAG_LASDEC = 0xD3
TAG_ADDRESS = 0xD4


class Transport(Protocol):
    """What the session needs from a connection."""

    def transmit(self, apdu: bytes) -> Response: ...


@dataclass(frozen=True)
class CardType:
    """Card type from MF/EF02 (C1): generation and kind of card."""

    generation: int
    kind: str
    specified: bool
    code: str


@dataclass(frozen=True)
class AddressEntry:
    """One entry of the generation-1 address block (DF2/EF01).

    ``address_raw`` is kept as the card's bytes because the text encoding is
    JIS-based; ``address`` is a best-effort decoding for display.
    """

    write_date: str
    lasdec: str
    address_raw: bytes

    @property
    def address(self) -> str:
        return self.address_raw.rstrip(b"\x00 ").decode("cp932", errors="replace").rstrip("\u3000 ")


@dataclass(frozen=True)
class CardRead:
    """What one read produced; fields the generation does not offer stay empty."""

    card_type: CardType
    card_number: str | None = None
    addresses: list[AddressEntry] = field(default_factory=list)


def _ok(transport: Transport, command: bytes, what: str) -> bytes:
    return apdu.check_status(transport.transmit(command), what)


def parse_card_type(data: bytes) -> CardType:
    """Interpret the MF/EF02 contents (C1 TLV); unknown codes are 'not supported'."""
    value = apdu.tlv_dict(data).get(TAG_CARD_TYPE)
    if value is None:
        raise TlvError("card type file has no C1 object")
    known = _CARD_TYPES.get(value)
    if known is None:
        raise CardError(
            f"unknown card type {value!r}: not a residence card or special permanent resident certificate",
            code="card.not_supported",
            message_ja="在留カード・特別永住者証明書ではないか、対応していない種類のカードです。",
        )
    generation, kind, specified = known
    return CardType(generation, kind, specified, value.decode("ascii"))


def read_card_type(transport: Transport) -> CardType:
    """Read MF/EF02 without authentication: header first, then the whole object."""
    header = _ok(transport, apdu.read_binary(SFI_MF_CARD_TYPE, 2), "READ BINARY card type")
    if len(header) < 2 or header[1] & 0x80:
        raise TlvError("card type header malformed")
    data = _ok(
        transport, apdu.read_binary(SFI_MF_CARD_TYPE, 2 + header[1]), "READ BINARY card type"
    )
    return parse_card_type(data)


def authenticate(transport: Transport, generation: int, card_number: str) -> bytes:
    """GET CHALLENGE, MUTUAL AUTHENTICATE, SM VERIFY; return the session key KSenc.

    A wrong card number shows as 63 00 (card.wrong_card_number) from the card
    or as a failed M.ICC check on our side.
    """
    crypto.check_card_number(card_number)
    rnd_icc = _ok(transport, apdu.get_challenge(), "GET CHALLENGE")
    request = crypto.make_mutual_auth(generation, card_number, rnd_icc)
    answer = _ok(transport, apdu.mutual_authenticate(request.data), "MUTUAL AUTHENTICATE")
    try:
        ks_enc = crypto.open_icc_response(request, answer)
    except crypto.AuthenticationError as exc:
        raise CardError(
            str(exc), code="card.auth_failed", message_ja="カードとの相互認証に失敗しました。"
        ) from exc
    _ok(transport, apdu.sm_verify(crypto.verify_data(generation, ks_enc, card_number)), "VERIFY")
    return ks_enc


def _sm_read(transport: Transport, generation: int, ks_enc: bytes, sfi: int, what: str) -> bytes:
    data = _ok(transport, apdu.sm_read_binary(sfi), what)
    try:
        return crypto.decrypt_sm_data(generation, ks_enc, apdu.parse_sm_response(data))
    except (crypto.AuthenticationError, ValueError) as exc:
        if isinstance(exc, CardError):
            raise
        raise CardError(
            f"{what}: cannot decrypt the card's answer ({exc})", code="card.sm_data_incorrect"
        ) from exc


def parse_address_block(data: bytes) -> list[AddressEntry]:
    """Group the D2 (write date), D3 (local government code), D4 (address) objects.

    The block may hold several entries in order; an entry whose date is empty
    (all 00/FF or spaces) is an unused slot and is skipped.
    """
    entries: list[AddressEntry] = []
    current: dict[int, bytes] = {}
    for tag, value in apdu.parse_tlv(data):
        if tag not in (TAG_WRITE_DATE, TAG_LASDEC, TAG_ADDRESS):
            continue
        if tag in current:
            raise TlvError(f"address block entry repeats tag {tag:X}")
        current[tag] = value
        if len(current) == 3:
            entries.append(_address_entry(current))
            current = {}
    if current:
        raise TlvError("address block ends with an incomplete entry")
    return [e for e in entries if e.write_date]


def _address_entry(values: dict[int, bytes]) -> AddressEntry:
    def text(tag: int) -> str:
        return values[tag].strip(b"\x00\xff ").decode("ascii", errors="replace")

    return AddressEntry(text(TAG_WRITE_DATE), text(TAG_LASDEC), values[TAG_ADDRESS])


def read_card(transport: Transport, card_number: str | None = None) -> CardRead:
    """Read the card type, and with a card number authenticate and read number/address.

    Generation 2: DF1/EF01 (C2) under secure messaging. Generation 1: the card
    has no readable card-number file, so the verified number is reported, and
    DF2/EF01 (the address block) is read after authentication.
    """
    card_type = read_card_type(transport)
    if card_number is None:
        return CardRead(card_type)
    generation = card_type.generation
    ks_enc = authenticate(transport, generation, card_number)
    if generation == crypto.GEN2:
        _ok(transport, apdu.select_df(apdu.AID_DF1), "SELECT DF1")
        plain = _sm_read(
            transport, generation, ks_enc, SFI_GEN2_CARD_NUMBER, "READ BINARY card number"
        )
        number = apdu.tlv_dict(plain).get(TAG_CARD_NUMBER)
        if number is None:
            raise TlvError("card number file has no C2 object")
        return CardRead(card_type, number.decode("ascii", errors="replace"))
    _ok(transport, apdu.select_df(apdu.AID_DF2), "SELECT DF2")
    data = _ok(
        transport, apdu.read_binary(SFI_GEN1_ADDRESS, 0, extended=True), "READ BINARY address"
    )
    return CardRead(
        card_type, crypto.check_card_number(card_number).decode(), parse_address_block(data)
    )
