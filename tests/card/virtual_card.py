"""A virtual residence-card chip and a vpcd socket client that presents it to pcscd.

The chip answers the commands appliance.agent.card implements, as the public
在留カード等仕様書 describes them: MF card type, DF selection, GET CHALLENGE,
MUTUAL AUTHENTICATE (checking M.IFD with keys from its own card number),
SM VERIFY, and plain / SM READ BINARY with access conditions. It reuses
the crypto module's primitives (block cipher, MAC, session key); the
IFD-side flow is checked independently in test_crypto.py.

It carries realistic contents for both generations and both kinds: generation 2
card number, printed entries, name/face/address images; generation 1 front
image, photo and address block; and in DF3 a signature over the signed data
(built here, independently of the driver's signature module) by a test
card-issuing key from pki.py, whose certificate a test CA issued.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading

from appliance.agent.card import apdu, crypto
from tests.card import pki

SW_OK = b"\x90\x00"

# Synthetic printed entries (DF1/EF02, generation 2) in file order. The codes
# are placeholders in the documented formats, not real code-table values.
RESIDENCE_CARD_PRINTED = [
    (0xC5, b"20310401"),  # card expiry date
    (0xC6, b"19950312"),  # date of birth
    (0xC7, b"2"),  # sex
    (0xC8, b"VNM"),  # nationality / region
    (0xC9, b"T000000001"),  # status of residence (10-character code)
    (0xCE, b"0300"),  # period of stay: 3 years
    (0xCA, b"01"),  # permission type
    (0xCB, b"20280401"),  # permission date
    (0xCC, b"2"),  # work restriction
    (0xCD, b"20310401"),  # period of stay expiry date
]  # 53 value bytes, 73-byte file
SPECIAL_PERMANENT_PRINTED = [
    (0xC5, b"20320815"),
    (0xC6, b"19620405"),
    (0xC7, b"1"),
    (0xC8, b"KOR"),
    (0xC9, b"S000000000"),
    (0xCE, b"0000"),
]  # 34 value bytes, 46-byte file (which tags: inferred from the sizes, see docs/card.md)


def _synthetic(header: bytes, size: int, seed: int) -> bytes:
    """Deterministic stand-in image bytes behind a real format signature."""
    rng = random.Random(seed)
    return header + bytes(rng.getrandbits(8) for _ in range(size - len(header)))


_TIFF = b"II*\x00"
_JP2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _default_images(generation: int) -> dict[str, bytes]:
    if generation == 1:  # D0 front image up to 7000 bytes, D1 photo up to 3000
        return {"front_image": _synthetic(_TIFF, 4100, 1), "photo": _synthetic(_JP2, 2300, 2)}
    return {  # D0 name image up to 2500, D1 face up to 3000, DFD1 address image up to 2500
        "name_image": _synthetic(_TIFF, 1400, 3),
        "photo": _synthetic(_JP2, 2600, 4),
        "address_image": _synthetic(_TIFF, 900, 5),
    }


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
    """Chip state machine: one instance per inserted card.

    Extension point for subclasses (e.g. a chip that also models writing):
    override ``handle(ins, command)``. ``process`` calls it first for every
    command; return the full response APDU (data + SW) to answer, or None
    for "not mine" so the built-in commands run. A subclass may read and
    change the chip state: ``current`` (selected DF AID or None for MF),
    ``verified`` (card-number VERIFY succeeded), ``ks_enc`` (session key),
    ``generation``, ``card_number``, and ``dfs[aid][sfi] = (data, access)``
    with access ``"auth"`` (plain read after VERIFY), ``"sm"`` (SM read
    after VERIFY) or ``"free"`` (plain read without authentication).
    ``reset()`` is called on power off / reset; call super() when overriding.
    """

    def __init__(
        self,
        generation: int,
        card_number: str,
        *,
        kind_code: bytes | None = None,
        address=None,
        printed: list[tuple[int, bytes]] | None = None,
        images: dict[str, bytes] | None = None,
        issuer: pki.CardIssuer | None = None,
        tamper: str | None = None,
    ):
        """Build the chip's files.

        ``address``: generation-1 address entries ``[(date, lasdec, cp932 bytes)]``.
        ``printed``: generation-2 printed entries ``[(tag, value)]`` in file order
        (default: realistic synthetic values for the kind). ``images``: override
        the synthetic images by name (``front_image``/``photo`` for generation 1,
        ``name_image``/``photo`` for generation 2). ``issuer``: the test key that
        signs (default ``pki.issuer(generation)``). ``tamper``: ``"data"`` alters
        signed data after signing, ``"signature"`` flips a bit of the signature.
        """
        if tamper not in (None, "data", "signature"):
            raise ValueError(f"unknown tamper mode {tamper!r}")
        self.generation = generation
        self.card_number = card_number
        self.key = crypto.derive_key(card_number)
        code = kind_code or (b"1" if generation == 1 else b"05")
        self.residence_card = code in (b"1", b"05", b"07")
        self.mf = {0x0B: _tlv(0xC0, b"01" if generation == 1 else b"0002"), 0x0A: _tlv(0xC1, code)}
        # df -> sfi -> (data, access); see the class docstring for access
        self.dfs: dict[bytes, dict[int, tuple[bytes, str]]] = {
            apdu.AID_DF1: {},
            apdu.AID_DF2: {},
            apdu.AID_DF3: {},
        }
        self.issuer = issuer or pki.issuer(generation)
        self.images = {**_default_images(generation), **(images or {})}
        if generation == 2:
            self.printed = printed or (
                RESIDENCE_CARD_PRINTED if self.residence_card else SPECIAL_PERMANENT_PRINTED
            )
            self._build_gen2(tamper)
        else:
            self._build_gen1(address, tamper)
        self.current: bytes | None = None
        self.rnd_icc: bytes | None = None
        self.ks_enc: bytes | None = None
        self.verified = False
        self.log: list[bytes] = []

    def _signature_file(self, signed: bytes, tamper: str | None) -> bytes:
        value = self.issuer.sign(signed)
        if tamper == "signature":
            value = value[:10] + bytes([value[10] ^ 0x01]) + value[11:]
        cert = self.issuer.certificate_der
        if self.generation == 1:  # DA 256 bytes, DB a fixed 1200-byte field padded with 00
            return _tlv(0xDA, value) + _tlv(0xDB, cert.ljust(1200, b"\x00"))
        return (_tlv(0xDC, value) + _tlv(0xDD, cert)).ljust(704, b"\x00")

    def _build_gen2(self, tamper: str | None) -> None:
        df1 = self.dfs[apdu.AID_DF1]
        df1[0x01] = (_tlv(0xC2, self.card_number.encode()), "sm")
        name, face = self.images["name_image"], self.images["photo"]
        # Signed data, built here independently of appliance.agent.card.signature:
        # printed-entry values in file order padded to 53, face padded to 3000,
        # name image padded to 2500.
        values = b"".join(value for _, value in self.printed)
        signed = values.ljust(53, b"\x00") + face.ljust(3000, b"\x00") + name.ljust(2500, b"\x00")
        printed = self.printed
        if tamper == "data":  # one digit of the date of birth changed after signing
            printed = [(t, (v[:-1] + b"9" if t == 0xC6 else v)) for t, v in printed]
        df1[0x03] = (b"".join(_tlv(t, v) for t, v in printed), "sm")
        df1[0x04] = (_tlv(0xD0, name) + _tlv(0xD1, face), "sm")
        df1[0x06] = (_tlv(0xDFD1, self.images["address_image"]), "sm")
        self.dfs[apdu.AID_DF3][0x02] = (self._signature_file(signed, tamper), "auth")

    def _build_gen1(self, address, tamper: str | None) -> None:
        entries = address or [("20240401", "131016", "東京都台東区上野1丁目1番1号".encode("cp932"))]
        block = b""
        for date, lasdec, text in entries:
            block += (
                _tlv(0xD2, date.encode())
                + _tlv(0xD3, lasdec.encode())
                + _tlv(0xD4, text.ljust(342, b"\x00"))
            )
        self.dfs[apdu.AID_DF2][0x01] = (block, "auth")
        front, photo = self.images["front_image"], self.images["photo"]
        signed = front.ljust(7000, b"\x00") + photo.ljust(3000, b"\x00")
        if tamper == "data":  # one pixel byte of the front image changed after signing
            front = front[:100] + bytes([front[100] ^ 0xFF]) + front[101:]
        self.dfs[apdu.AID_DF1][0x05] = (_tlv(0xD0, front), "sm")
        self.dfs[apdu.AID_DF1][0x06] = (_tlv(0xD1, photo), "sm")
        self.dfs[apdu.AID_DF3][0x02] = (self._signature_file(signed, tamper), "auth")

    def reset(self) -> None:
        self.current = None
        self.rnd_icc = None
        self.ks_enc = None
        self.verified = False

    def handle(self, ins: int, command: bytes) -> bytes | None:
        """Subclass hook: answer ``command`` (data + SW) or return None to fall through."""
        return None

    def process(self, command: bytes) -> bytes:
        self.log.append(command)
        cla, ins, p1, p2 = command[:4]
        answer = self.handle(ins, command)
        if answer is not None:
            return answer
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
        if access == "free":
            return (data + SW_OK) if plain else b"\x68\x82"
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
