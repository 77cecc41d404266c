"""A virtual residence-card chip and a vpcd socket client that presents it to pcscd.

The chip answers the commands appliance.agent.card implements, as the public
在留カード等仕様書 describes them: MF card type, DF selection, GET CHALLENGE,
MUTUAL AUTHENTICATE (checking M.IFD with keys from its own card number),
SM VERIFY, and plain / SM READ BINARY with access conditions. It reuses
the crypto module's primitives (block cipher, MAC, session key); the
IFD-side flow is checked independently in test_crypto.py.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from appliance.agent.card import apdu, crypto

SW_OK = b"\x90\x00"


def _tlv(tag: int, value: bytes) -> bytes:
    tag_bytes = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = b"\x82" + n.to_bytes(2, "big")
    return tag_bytes + length + value


def _atr() -> bytes:
    """PC/SC contactless-style ATR announcing T=1 (TD1 T=0, TD2 T=1) with TCK."""
    body = bytes([0x88, 0x80, 0x01]) + bytes.fromhex("0000000000717100")
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


class VirtualChip:
    """Chip state machine: one instance per inserted card."""

    def __init__(
        self, generation: int, card_number: str, *, kind_code: bytes | None = None, address=None
    ):
        self.generation = generation
        self.card_number = card_number
        self.key = crypto.derive_key(card_number)
        code = kind_code or (b"1" if generation == 1 else b"05")
        self.mf = {0x0B: _tlv(0xC0, b"01"), 0x0A: _tlv(0xC1, code)}
        # df -> sfi -> (data, access) with access "auth" (plain after VERIFY) or "sm"
        self.dfs: dict[bytes, dict[int, tuple[bytes, str]]] = {
            apdu.AID_DF1: {},
            apdu.AID_DF2: {},
            apdu.AID_DF3: {},
        }
        if generation == 2:
            self.dfs[apdu.AID_DF1][0x01] = (_tlv(0xC2, card_number.encode()), "sm")
        else:
            entries = address or [
                ("20240401", "131016", "東京都台東区上野1丁目1番1号".encode("cp932"))
            ]
            block = b""
            for date, lasdec, text in entries:
                block += (
                    _tlv(0xD2, date.encode())
                    + _tlv(0xD3, lasdec.encode())
                    + _tlv(0xD4, text.ljust(342, b"\x00"))
                )
            self.dfs[apdu.AID_DF2][0x01] = (block, "auth")
        self.current: bytes | None = None
        self.rnd_icc: bytes | None = None
        self.ks_enc: bytes | None = None
        self.verified = False
        self.log: list[bytes] = []

    def reset(self) -> None:
        self.current = None
        self.rnd_icc = None
        self.ks_enc = None
        self.verified = False

    def process(self, command: bytes) -> bytes:
        self.log.append(command)
        cla, ins, p1, p2 = command[:4]
        if (cla, ins, p1, p2) == (0x00, 0xA4, 0x04, 0x0C):
            aid = command[5 : 5 + command[4]]
            if aid not in self.dfs:
                return b"\x6a\x82"
            self.current = aid
            return SW_OK
        if (cla, ins) == (0x00, 0xB0):
            return self._read(p1, plain=True)
        if (cla, ins) == (0x08, 0xB0):
            return self._read(p1, plain=False)
        if (cla, ins) == (0x00, 0x84):
            self.rnd_icc = os.urandom(8)
            return self.rnd_icc + SW_OK
        if (cla, ins) == (0x00, 0x82):
            return self._mutual_auth(command[5:45])
        if (cla, ins, p2) == (0x08, 0x20, 0x86):
            return self._verify(command[5:])
        return b"\x6d\x00"

    def _mutual_auth(self, data: bytes) -> bytes:
        rnd_icc, self.rnd_icc = self.rnd_icc, None
        self.verified = False
        self.ks_enc = None
        if rnd_icc is None or len(data) != 40:
            return b"\x69\x85"
        e_ifd, m_ifd = data[:32], data[32:]
        if crypto.mac(self.generation, self.key, e_ifd) != m_ifd:
            return b"\x63\x00"
        plain = crypto.cipher_decrypt(self.generation, self.key, e_ifd)
        if plain[8:16] != rnd_icc:
            return b"\x63\x00"
        k_icc = os.urandom(16)
        e_icc = crypto.cipher_encrypt(self.generation, self.key, rnd_icc + plain[:8] + k_icc)
        self.ks_enc = crypto.derive_session_key(plain[16:32], k_icc)
        return e_icc + crypto.mac(self.generation, self.key, e_icc) + SW_OK

    def _verify(self, data: bytes) -> bytes:
        if self.ks_enc is None:
            return b"\x69\x82"
        if len(data) < 3 or data[0] != 0x86 or data[2] != 0x01:
            return b"\x69\x88"
        try:
            number = crypto.decrypt_sm_data(self.generation, self.ks_enc, data[3 : 2 + data[1]])
        except ValueError:
            return b"\x69\x88"
        if number != self.card_number.encode():
            return b"\x63\x00"
        self.verified = True
        return SW_OK

    def _read(self, p1: int, *, plain: bool) -> bytes:
        sfi = p1 & 0x1F
        if self.current is None:
            data = self.mf.get(sfi)
            if data is None:
                return b"\x6a\x82"
            return data + SW_OK
        entry = self.dfs[self.current].get(sfi)
        if entry is None:
            return b"\x6a\x82"
        data, access = entry
        if not self.verified:
            return b"\x69\x82"
        if plain:
            return (data + SW_OK) if access == "auth" else b"\x69\x82"
        ct = crypto.encrypt_sm_data(self.generation, self.ks_enc, data)
        return _tlv(0x86, b"\x01" + ct) + SW_OK


class VpcdCard:
    """Connects to vpcd's TCP port and serves one chip until remove() (= card pulled)."""

    def __init__(self, port: int, chip: VirtualChip):
        self.chip = chip
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                part = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not part:
                return None
            buf += part
        return buf

    def _send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">H", len(payload)) + payload)

    def _serve(self) -> None:
        while True:
            header = self._recv_exact(2)
            if header is None:
                return
            msg = self._recv_exact(struct.unpack(">H", header)[0])
            if msg is None:
                return
            try:
                if len(msg) == 1:
                    if msg[0] == 0x04:
                        self._send(_atr())
                    elif msg[0] in (0x00, 0x02):  # power off / reset: security state is lost
                        self.chip.reset()
                    # 01 power on: no answer either
                else:
                    self._send(self.chip.process(msg))
            except OSError:
                return

    def remove(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)
