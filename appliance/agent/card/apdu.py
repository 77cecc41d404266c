"""APDU building, status-word mapping and BER-TLV parsing for the residence-card chip.

Pure: builds command bytes and interprets answers, so the session logic and
the virtual card in the tests share one definition of every byte. Command
layouts follow the 在留カード等仕様書 command descriptions (SELECT FILE,
GET CHALLENGE, MUTUAL AUTHENTICATE, VERIFY, READ BINARY; see docs/card.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.agent.errors import AgentError

__all__ = [
    "DEFAULT_MESSAGES_JA",
    "AID_DF1",
    "AID_DF2",
    "AID_DF3",
    "CardError",
    "CardStatusError",
    "Response",
    "TlvError",
    "check_status",
    "get_challenge",
    "mutual_authenticate",
    "parse_response",
    "parse_sm_response",
    "parse_tlv",
    "read_binary",
    "select_df",
    "sm_read_binary",
    "sm_verify",
    "tlv_dict",
]

_AID_PREFIX = bytes.fromhex("D392F0004F")
AID_DF1 = _AID_PREFIX + b"\x02" + bytes(10)
AID_DF2 = _AID_PREFIX + b"\x03" + bytes(10)
AID_DF3 = _AID_PREFIX + b"\x04" + bytes(10)

SW_OK = 0x9000

# Status word -> (code, English message, Japanese message). Codes are stable
# for --json output and tests; messages say what the counter should do next.
_STATUS = {
    0x6300: (
        "card.wrong_card_number",
        "the card number does not match this card; check the number printed on the card",
        "在留カード等番号がカードと一致しません。券面の番号を確認してください。",
    ),
    0x6982: (
        "card.security_status",
        "the card refused access: card-number authentication has not succeeded",
        "カードがアクセスを拒否しました(番号認証が未了です)。",
    ),
    0x6882: (
        "card.sm_not_supported",
        "the card does not accept secure messaging for this command",
        "このコマンドはセキュアメッセージングに対応していません。",
    ),
    0x6988: (
        "card.sm_data_incorrect",
        "the card could not process the secure-messaging data objects (session key mismatch?)",
        "セキュアメッセージングのデータが不正です。",
    ),
    0x6A82: (
        "card.file_not_found",
        "the card has no such file: it may be a different card generation or not a residence card",
        "指定したファイルがカードにありません。",
    ),
    0x6A86: (
        "card.bad_parameters",
        "the card rejected the command parameters (P1/P2)",
        "P1/P2が不正です。",
    ),
    0x6B00: (
        "card.offset_out_of_range",
        "the read offset is outside the file",
        "オフセットがファイルの範囲外です。",
    ),
    0x6D00: (
        "card.not_supported",
        "the card does not support this command",
        "カードがこのコマンドに対応していません。",
    ),
    0x6E00: (
        "card.not_supported",
        "the card does not support this command class",
        "カードがこのクラスに対応していません。",
    ),
}


# Japanese message for codes raised without one (the staff always see Japanese).
DEFAULT_MESSAGES_JA = {
    "card.error": "カードの読み取りに失敗しました。",
    "card.no_pcsc": "PC/SCサービス(pcscd)に接続できません。",
    "card.bad_tlv": "カードのデータ形式が不正です。カードを置き直して、もう一度実行してください。",
    "card.bad_response": "カードの応答が不正です。カードを置き直して、もう一度実行してください。",
    "card.sm_data_incorrect": "セキュアメッセージングのデータが不正です。",
    "card.bad_card_number": "在留カード等番号は英数字12文字で入力してください。",
    "card.status": "カードが予期しない応答を返しました。",
}


class CardError(AgentError, ValueError):
    """Anything about the card, the reader or the exchange that stops a read.

    Always carries a Japanese message: the one given, else the default for
    the code, else a generic one.
    """

    code = "card.error"

    def __init__(self, message: str, *, code: str | None = None, message_ja: str | None = None):
        effective = code or self.code
        super().__init__(
            message,
            code=code,
            message_ja=message_ja
            or DEFAULT_MESSAGES_JA.get(effective, DEFAULT_MESSAGES_JA["card.error"]),
        )


class CardStatusError(CardError):
    """The card answered with a status word other than 90 00."""

    def __init__(self, sw: int, command: str):
        code, message, message_ja = _STATUS.get(
            sw,
            (
                "card.status",
                "the card answered with an unexpected status",
                "カードが予期しない応答を返しました。",
            ),
        )
        super().__init__(f"{command}: {message} (SW {sw:04X})", code=code, message_ja=message_ja)
        self.sw = sw
        self.command = command


class TlvError(CardError):
    """The card's data is not well-formed BER-TLV."""

    code = "card.bad_tlv"


@dataclass(frozen=True)
class Response:
    """A response APDU split into data and status word."""

    data: bytes
    sw: int


def parse_response(raw: bytes) -> Response:
    """Split the trailing SW1 SW2 off a response APDU."""
    if len(raw) < 2:
        raise CardError(f"response APDU too short ({len(raw)} bytes)", code="card.bad_response")
    return Response(bytes(raw[:-2]), int.from_bytes(raw[-2:], "big"))


def check_status(response: Response, command: str) -> bytes:
    """Return the data when SW is 90 00, else raise the mapped CardStatusError."""
    if response.sw != SW_OK:
        raise CardStatusError(response.sw, command)
    return response.data


def select_df(aid: bytes) -> bytes:
    """SELECT a DF by its 16-byte AID, no FCI: 00 A4 04 0C 10 <AID>."""
    if len(aid) != 16:
        raise ValueError("AID must be 16 bytes")
    return bytes([0x00, 0xA4, 0x04, 0x0C, 0x10]) + aid


def _sfi_p1(sfi: int) -> int:
    if not 1 <= sfi <= 30:
        raise ValueError(f"short file id out of range: {sfi}")
    return 0x80 | sfi


def read_binary(sfi: int, le: int = 0, *, extended: bool = False) -> bytes:
    """Plain READ BINARY of a whole EF by short file id (P1 = 80 | SFI, offset 0).

    Short Le 0 means 256 bytes; the extended form (Le 00 00 = the whole file)
    is for files longer than 256 bytes.
    """
    if extended:
        return bytes([0x00, 0xB0, _sfi_p1(sfi), 0x00, 0x00]) + le.to_bytes(2, "big")
    if not 0 <= le <= 255:
        raise ValueError("short Le must be 0..255")
    return bytes([0x00, 0xB0, _sfi_p1(sfi), 0x00, le])


def get_challenge() -> bytes:
    """GET CHALLENGE for the 8-byte RND.ICC."""
    return bytes.fromhex("0084000008")


def mutual_authenticate(data: bytes) -> bytes:
    """MUTUAL AUTHENTICATE with E.IFD || M.IFD (40 bytes), Le 00."""
    if len(data) != 40:
        raise ValueError("MUTUAL AUTHENTICATE data must be 40 bytes")
    return bytes([0x00, 0x82, 0x00, 0x00, 0x28]) + data + b"\x00"


def sm_verify(encrypted: bytes) -> bytes:
    """SM VERIFY of the card number: 08 20 00 86 Lc 86 L 01 <encrypted>."""
    do = bytes([0x86, len(encrypted) + 1, 0x01]) + encrypted
    return bytes([0x08, 0x20, 0x00, 0x86, len(do)]) + do


def sm_read_binary(sfi: int) -> bytes:
    """SM READ BINARY of a whole EF: extended Lc 00 00 04, Le DO 96 02 00 00, Le 00 00."""
    return bytes(
        [0x08, 0xB0, _sfi_p1(sfi), 0x00, 0x00, 0x00, 0x04, 0x96, 0x02, 0x00, 0x00, 0x00, 0x00]
    )


def parse_sm_response(data: bytes) -> bytes:
    """Return the ciphertext of an SM response ``86 L 01 <ciphertext>``."""
    tag, value, rest = _read_one(data, 0)
    if tag != 0x86 or rest != len(data) or not value or value[0] != 0x01:
        raise TlvError("secure-messaging response is not a single 86 data object with indicator 01")
    return value[1:]


def _read_one(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one BER-TLV object at pos; return (tag, value, next position)."""
    if pos >= len(data):
        raise TlvError("TLV truncated before tag")
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        # Two-byte tag. The chip's tags are at most two bytes (e.g. DF D1 for
        # the address image), even where strict BER would read on after a
        # second byte with bit 8 set, so we stop at two.
        if pos >= len(data):
            raise TlvError("TLV truncated inside tag")
        tag = (tag << 8) | data[pos]
        pos += 1
    if pos >= len(data):
        raise TlvError("TLV truncated before length")
    length = data[pos]
    pos += 1
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise TlvError("TLV length field malformed")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise TlvError(f"TLV value of tag {tag:X} needs {length} bytes, {len(data) - pos} left")
    return tag, bytes(data[pos : pos + length]), pos + length


def parse_tlv(data: bytes) -> list[tuple[int, bytes]]:
    """Parse a flat sequence of BER-TLV objects (the chip's files are flat).

    Trailing 00/FF filler after the last object is ignored: EFs may be
    longer than their content.
    """
    items = []
    pos = 0
    while pos < len(data):
        if all(b in (0x00, 0xFF) for b in data[pos:]):
            break
        tag, value, pos = _read_one(data, pos)
        items.append((tag, value))
    return items


def tlv_dict(data: bytes) -> dict[int, bytes]:
    """parse_tlv as a tag -> value map; refuse duplicate tags (ambiguous data)."""
    out: dict[int, bytes] = {}
    for tag, value in parse_tlv(data):
        if tag in out:
            raise TlvError(f"duplicate tag {tag:X}")
        out[tag] = value
    return out
