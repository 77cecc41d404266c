"""A virtual chip that also answers the MODEL address-write commands (docs/card-write.md).

Subclass of ``virtual_card.VirtualChip`` through its documented hook
(``handle``; ``reset`` calls super). The card side of the model is written
here from the ``cryptography`` primitives, separately from
``appliance.agent.card.keyprovider``, so a mistake on one side shows as a
failed authentication or MAC rather than cancelling out.

The address block is DF2/EF01 for both generations (the model), laid out in
fixed 364-byte slots. The chip refuses writes without card-number VERIFY
and a write session (69 82), with a bad MAC or replayed counter (69 88),
and can simulate the card being pulled after a number of bytes have reached
its memory (``pull_after``), or store a wrong byte (``corrupt_write``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from appliance.agent.card import apdu
from appliance.agent.card.apdu import CardError, Response
from tests.card.virtual_card import VirtualChip

SW_OK = b"\x90\x00"
SLOT = 364
TEST_MASTER_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
OTHER_MASTER_KEY = bytes.fromhex("F0E0D0C0B0A090807060504030201000")


def empty_slot() -> bytes:
    """A slot as formatted at issuance: headers, every value byte 00."""
    return b"\xd2\x08" + bytes(8) + b"\xd3\x06" + bytes(6) + b"\xd4\x82\x01\x56" + bytes(342)


def entry_slot(date: str, lasdec: str, address: bytes) -> bytes:
    """A slot holding one entry; ``address`` are the stored bytes (padded here with 00)."""
    return (
        b"\xd2\x08"
        + date.encode()
        + b"\xd3\x06"
        + lasdec.encode()
        + b"\xd4\x82\x01\x56"
        + address.ljust(342, b"\x00")
    )


def _cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _kdf(key: bytes, constant: int, context: bytes) -> bytes:
    label = bytes(11) + bytes([constant]) + b"\x00" + b"\x00\x80" + b"\x01"
    return _cmac(key, label + context)


class WritableChip(VirtualChip):
    """VirtualChip plus the model write: WRITE CHALLENGE, WRITE AUTHENTICATE, WRITE BINARY (SM)."""

    def __init__(
        self,
        generation: int,
        card_number: str,
        *,
        master_key: bytes = TEST_MASTER_KEY,
        slots: int = 3,
        entries: list[tuple[str, str, bytes]] | None = None,
        block: bytes | None = None,
        **kwargs,
    ):
        super().__init__(generation, card_number, **kwargs)
        self.card_key = _kdf(master_key, 0x40, card_number.encode("ascii"))
        if block is None:
            used = [entry_slot(*e) for e in (entries or [])]
            block = b"".join(used) + empty_slot() * (slots - len(used))
        self.memory = bytearray(block)
        self._store()
        self.pull_after: int | None = None  # bytes the card still writes before it is pulled
        self.on_pull: Callable[[], None] = lambda: None
        self.pulled = False
        self.corrupt_write = False
        self.writes = 0  # WRITE BINARY commands that changed memory
        self._write_challenge: bytes | None = None
        self._session: dict | None = None

    @property
    def block(self) -> bytes:
        return bytes(self.memory)

    def _store(self) -> None:
        self.dfs[apdu.AID_DF2][0x01] = (bytes(self.memory), "auth")

    def reset(self) -> None:
        super().reset()
        self._write_challenge = None
        self._session = None

    def insert(self) -> None:
        """Put a pulled card back (for the direct transport; over vpcd, connect again)."""
        self.pulled = False
        self.reset()

    def handle(self, ins: int, command: bytes) -> bytes | None:
        cla = command[0]
        if (cla, ins) == (0x80, 0x84):
            self._write_challenge = os.urandom(8)
            self._session = None
            return self._write_challenge + SW_OK
        if (cla, ins) == (0x80, 0x82):
            return self._authenticate(command)
        if (cla, ins) == (0x84, 0xD6):
            return self._write(command)
        return None

    def _authenticate(self, command: bytes) -> bytes:
        challenge, self._write_challenge = self._write_challenge, None
        self._session = None
        if not self.verified:
            return b"\x69\x82"
        if challenge is None:
            return b"\x69\x85"
        if command[4] != 0x10 or len(command) < 21:
            return b"\x67\x00"
        rnd_ifd, cryptogram = command[5:13], command[13:21]
        context = rnd_ifd + challenge
        s_mac = _kdf(self.card_key, 0x06, context)
        if not hmac.compare_digest(_kdf(s_mac, 0x01, context)[:8], cryptogram):
            return b"\x63\x00"
        self._session = {
            "enc": _kdf(self.card_key, 0x04, context),
            "mac": s_mac,
            "rmac": _kdf(self.card_key, 0x07, context),
            "counter": 0,
            "chain": bytes(16),
        }
        return _kdf(s_mac, 0x00, context)[:8] + SW_OK

    def _write(self, command: bytes) -> bytes:
        session = self._session
        if session is None or not self.verified:
            return b"\x69\x82"
        if self.current != apdu.AID_DF2:
            return b"\x69\x86"
        length = command[4]
        data = command[5 : 5 + length]
        try:
            tag, do87, rest = _split_do(data)
            mac_tag, mac, end = _split_do(rest)
        except ValueError:
            self._session = None
            return b"\x69\x88"
        chain = _cmac(
            session["mac"], session["chain"] + command[:4] + data[: len(data) - len(rest)]
        )
        if (tag, mac_tag, end) != (0x87, 0x8E, b"") or not hmac.compare_digest(chain[:8], mac):
            self._session = None
            return b"\x69\x88"
        counter = session["counter"] + 1
        iv = (
            Cipher(algorithms.AES(session["enc"]), modes.ECB())
            .encryptor()
            .update(counter.to_bytes(16, "big"))
        )
        dec = Cipher(algorithms.AES(session["enc"]), modes.CBC(iv)).decryptor()
        plain = dec.update(do87[1:]) + dec.finalize()
        stripped = plain.rstrip(b"\x00")
        if do87[:1] != b"\x01" or not stripped.endswith(b"\x80"):
            self._session = None
            return b"\x69\x88"
        plain = stripped[:-1]
        session["counter"], session["chain"] = counter, chain
        offset = int.from_bytes(command[2:4], "big")
        if offset + len(plain) > len(self.memory):
            return b"\x6b\x00"
        return self._commit(offset, plain, session)

    def _commit(self, offset: int, plain: bytes, session: dict) -> bytes:
        if self.corrupt_write:
            plain = plain[:-1] + bytes([plain[-1] ^ 0x01])
        if self.pull_after is not None and self.pull_after <= len(plain):
            self.memory[offset : offset + self.pull_after] = plain[: self.pull_after]
            self._store()
            self.pull_after = None
            self.pulled = True
            self.on_pull()
            return b"\x6f\x00"  # never delivered: the card is gone
        if self.pull_after is not None:
            self.pull_after -= len(plain)
        self.memory[offset : offset + len(plain)] = plain
        self._store()
        self.writes += 1
        return b"\x8e\x08" + _cmac(session["rmac"], session["chain"] + SW_OK)[:8] + SW_OK


def _split_do(data: bytes) -> tuple[int, bytes, bytes]:
    """One BER-TLV data object (one-byte tag): (tag, value, rest)."""
    if len(data) < 2:
        raise ValueError("short")
    tag, n, pos = data[0], data[1], 2
    if n & 0x80:
        size = n & 0x7F
        n, pos = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    if pos + n > len(data):
        raise ValueError("truncated")
    return tag, data[pos : pos + n], data[pos + n :]


class ChipTransport:
    """The chip called directly (no PC/SC): a pulled chip answers nothing, like a real reader."""

    def __init__(self, chip: WritableChip):
        self.chip = chip
        chip.reset()  # a new connection starts at the MF with no security state

    def transmit(self, command: bytes) -> Response:
        if self.chip.pulled:
            raise _removed()
        answer = self.chip.process(command)
        if self.chip.pulled:
            raise _removed()
        return apdu.parse_response(answer)


def _removed() -> CardError:
    return CardError(
        "the card was removed or reset during the exchange (simulated)",
        code="card.removed",
        message_ja="通信中にカードが取り外されました。カードを置き直して、もう一度実行してください。",
    )
