"""The read flow: card type, card-number authentication, secure-messaging reads.

Works over anything with ``transmit(apdu) -> Response`` (``reader.CardConnection``
in production, a fake in unit tests) and reads only what the caller needs:
the public card type always; with a card number, the card number and
printed entries (generation 2) or the address block (generation 1), and —
unless the caller turns the check off — the signature with the data it
covers. The images are part of that signed data, so they are read to
verify and dropped afterwards; they are returned only when asked for.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from appliance.agent.card import apdu, crypto, front, signature
from appliance.agent.card.apdu import CardError, Response, TlvError
from appliance.agent.card.signature import SignatureCheck

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
SFI_GEN2_CARD_NUMBER = 0x01  # DF1/EF01, P1 81 (SM)
SFI_GEN2_PRINTED = 0x03  # DF1/EF02 printed entries, P1 83 (SM)
SFI_GEN2_IMAGES = 0x04  # DF1/EF03 name image D0 + face image D1, P1 84 (SM)
SFI_GEN1_FRONT_IMAGE = 0x05  # DF1/EF01 front image D0, P1 85 (SM)
SFI_GEN1_PHOTO = 0x06  # DF1/EF02 photo D1, P1 86 (SM)
SFI_GEN1_ADDRESS = 0x01  # DF2/EF01, P1 81 (plain after authentication)
SFI_SIGNATURE = 0x02  # DF3/EF01, P1 82 (plain after authentication), both generations

TAG_CARD_TYPE = 0xC1
TAG_CARD_NUMBER = 0xC2
TAG_WRITE_DATE = 0xD2
TAG_LASDEC = 0xD3
TAG_ADDRESS = 0xD4
TAG_IMAGE_D0 = 0xD0  # gen 1 front image (MMR TIFF); gen 2 name image (MMR TIFF)
TAG_IMAGE_D1 = 0xD1  # face photo (JPEG 2000)


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
    """What one read produced; fields the generation does not offer stay empty.

    ``images`` holds raw image bytes by name (generation 1 ``front_image``
    and ``photo``; generation 2 ``name_image`` and ``photo``) and is filled
    only when the caller asked for images.
    """

    card_type: CardType
    card_number: str | None = None
    addresses: list[AddressEntry] = field(default_factory=list)
    front: dict[str, Any] | None = None
    signature: SignatureCheck | None = None
    images: dict[str, bytes] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view with the keys documented in docs/card.md; images as base64."""
        out: dict[str, Any] = {
            "card_type": {
                "generation": self.card_type.generation,
                "kind": self.card_type.kind,
                "specified": self.card_type.specified,
                "code": self.card_type.code,
            },
            "card_number": self.card_number,
            "front": None if self.front is None else copy.deepcopy(self.front),
            "addresses": [
                {"write_date": a.write_date, "lasdec": a.lasdec, "address": a.address}
                for a in self.addresses
            ],
            "signature": None if self.signature is None else self.signature.to_dict(),
        }
        if self.images:
            out["images"] = {
                name: base64.b64encode(data).decode("ascii") for name, data in self.images.items()
            }
        return out


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
    # An unused slot has an empty date; a slot whose date is not 8 digits was
    # cut off mid-write (the date goes last) and holds no whole entry either.
    return [e for e in entries if len(e.write_date) == 8 and e.write_date.isdigit()]


def _address_entry(values: dict[int, bytes]) -> AddressEntry:
    def text(tag: int) -> str:
        return values[tag].strip(b"\x00\xff ").decode("ascii", errors="replace")

    return AddressEntry(text(TAG_WRITE_DATE), text(TAG_LASDEC), values[TAG_ADDRESS])


def _specified_not_supported(card_type: CardType) -> CardError:
    return CardError(
        f"card type {card_type.code} is a 特定在留カード-family card; its chip uses a separate "
        "specification (在留 AP, SET SESSION KEY) that this driver does not implement",
        code="card.specified_not_supported",
        message_ja="特定在留カード・特定特別永住者証明書の読み取りには対応していません。",
    )


def _images(data: bytes, what: str) -> dict[int, bytes]:
    objects = apdu.tlv_dict(data)
    if TAG_IMAGE_D0 not in objects and TAG_IMAGE_D1 not in objects:
        raise TlvError(f"{what} holds neither a D0 nor a D1 image")
    return objects


def _check_signature(
    transport: Transport,
    generation: int,
    signed_data: bytes,
    trust_anchors: Sequence[x509.Certificate],
    now: datetime,
) -> SignatureCheck:
    _ok(transport, apdu.select_df(apdu.AID_DF3), "SELECT DF3")
    data = _ok(
        transport, apdu.read_binary(SFI_SIGNATURE, 0, extended=True), "READ BINARY signature"
    )
    return signature.verify(generation, data, signed_data, trust_anchors=trust_anchors, at=now)


def _signed_data(make, *args) -> bytes | SignatureCheck:
    """Build the signed data, or an ``invalid`` result when the chip's values cannot be it."""
    try:
        return make(*args)
    except ValueError as exc:  # _Malformed (oversized value) or TlvError
        return SignatureCheck(signature.INVALID, f"signed data malformed: {exc}")


def _read_gen2(
    transport: Transport,
    card_type: CardType,
    ks_enc: bytes,
    *,
    trust_anchors: Sequence[x509.Certificate],
    read_images: bool,
    check_signature: bool,
    now: datetime,
) -> CardRead:
    def sm(sfi: int, what: str) -> bytes:
        return _sm_read(transport, crypto.GEN2, ks_enc, sfi, what)

    _ok(transport, apdu.select_df(apdu.AID_DF1), "SELECT DF1")
    number = apdu.tlv_dict(sm(SFI_GEN2_CARD_NUMBER, "READ BINARY card number")).get(TAG_CARD_NUMBER)
    if number is None:
        raise TlvError("card number file has no C2 object")
    printed = sm(SFI_GEN2_PRINTED, "READ BINARY printed entries")
    fields = front.parse_printed_entries(printed)
    images: dict[str, bytes] = {}
    check: SignatureCheck | None = None
    if read_images or check_signature:
        objects = _images(sm(SFI_GEN2_IMAGES, "READ BINARY name and face images"), "DF1/EF03")
        name_image = objects.get(TAG_IMAGE_D0, b"")
        face_image = objects.get(TAG_IMAGE_D1, b"")
        if read_images:
            images = {"name_image": name_image, "photo": face_image}
        if check_signature:
            signed = _signed_data(signature.signed_data_gen2, printed, face_image, name_image)
            check = (
                signed
                if isinstance(signed, SignatureCheck)
                else _check_signature(transport, crypto.GEN2, signed, trust_anchors, now)
            )
    return CardRead(
        card_type,
        number.decode("ascii", errors="replace"),
        front=fields,
        signature=check,
        images=images,
    )


def _read_gen1(
    transport: Transport,
    card_type: CardType,
    ks_enc: bytes,
    card_number: str,
    *,
    trust_anchors: Sequence[x509.Certificate],
    read_images: bool,
    check_signature: bool,
    now: datetime,
) -> CardRead:
    _ok(transport, apdu.select_df(apdu.AID_DF2), "SELECT DF2")
    data = _ok(
        transport, apdu.read_binary(SFI_GEN1_ADDRESS, 0, extended=True), "READ BINARY address"
    )
    addresses = parse_address_block(data)
    images: dict[str, bytes] = {}
    check: SignatureCheck | None = None
    if read_images or check_signature:
        _ok(transport, apdu.select_df(apdu.AID_DF1), "SELECT DF1")
        front_image = _images(
            _sm_read(
                transport, crypto.GEN1, ks_enc, SFI_GEN1_FRONT_IMAGE, "READ BINARY front image"
            ),
            "DF1/EF01",
        ).get(TAG_IMAGE_D0, b"")
        photo = _images(
            _sm_read(transport, crypto.GEN1, ks_enc, SFI_GEN1_PHOTO, "READ BINARY photo"),
            "DF1/EF02",
        ).get(TAG_IMAGE_D1, b"")
        if read_images:
            images = {"front_image": front_image, "photo": photo}
        if check_signature:
            signed = _signed_data(signature.signed_data_gen1, front_image, photo)
            check = (
                signed
                if isinstance(signed, SignatureCheck)
                else _check_signature(transport, crypto.GEN1, signed, trust_anchors, now)
            )
    return CardRead(
        card_type,
        crypto.check_card_number(card_number).decode(),
        addresses,
        signature=check,
        images=images,
    )


def read_card(
    transport: Transport,
    card_number: str | None = None,
    *,
    trust_anchors: Sequence[x509.Certificate] = (),
    read_images: bool = False,
    check_signature: bool = True,
    now: datetime | None = None,
) -> CardRead:
    """Read the card type, and with a card number authenticate and read what the generation offers.

    Generation 2: card number (DF1/EF01 C2) and printed entries (DF1/EF02)
    under secure messaging. Generation 1: the card has no readable
    card-number file, so the verified number is reported, and the address
    block (DF2/EF01) is read. With ``check_signature`` (default) the signed
    images are read too and the DF3/EF01 signature is checked against
    ``trust_anchors`` at ``now`` (default: the current time); the images are
    kept in the result only with ``read_images``. A signature that does not
    check out is a status in the result, not an error: the read itself
    succeeded. 特定 cards (C1 07/08) are refused with a card number.
    """
    card_type = read_card_type(transport)
    if card_number is None:
        return CardRead(card_type)
    if card_type.specified:
        crypto.check_card_number(card_number)
        raise _specified_not_supported(card_type)
    ks_enc = authenticate(transport, card_type.generation, card_number)
    options = {
        "trust_anchors": tuple(trust_anchors),
        "read_images": read_images,
        "check_signature": check_signature,
        "now": now or datetime.now(UTC),
    }
    if card_type.generation == crypto.GEN2:
        return _read_gen2(transport, card_type, ks_enc, **options)
    return _read_gen1(transport, card_type, ks_enc, card_number, **options)
