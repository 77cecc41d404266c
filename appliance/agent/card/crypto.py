"""Card-number authentication and secure messaging for the residence-card chip.

Pure functions over bytes, so the spec's appendix test vectors can be checked
without a reader. Generation 2 uses AES-128-CBC (zero IV) and AES-CMAC
truncated to 8 bytes; generation 1 uses two-key 3DES-CBC (zero IV) and the
ISO/IEC 9797-1 algorithm 3 "retail" MAC. Both derive Kenc = Kmac from the
12-character card number and a session key KSenc from K.IFD xor K.ICC.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from appliance.agent.card.apdu import CardError

__all__ = [
    "GEN1",
    "GEN2",
    "AuthenticationError",
    "MutualAuthRequest",
    "block_size",
    "check_card_number",
    "cipher_decrypt",
    "cipher_encrypt",
    "decrypt_sm_data",
    "derive_key",
    "derive_session_key",
    "encrypt_sm_data",
    "mac",
    "make_mutual_auth",
    "open_icc_response",
    "pad",
    "retail_mac",
    "unpad",
    "verify_data",
]

GEN1 = 1
GEN2 = 2
_ZERO_IV8 = bytes(8)
_ZERO_IV16 = bytes(16)


class AuthenticationError(ValueError):
    """The card's authentication answer does not check out.

    Raised when M.ICC does not match or the decrypted E.ICC does not carry our
    RND.IFD / the card's RND.ICC: the session must not go on, because the keys
    (hence the card number) are wrong or the answer was tampered with.
    """


def check_card_number(card_number: str) -> bytes:
    """Return the card number as the 12 ASCII bytes the chip expects.

    The printed number is two letters, eight digits, two letters; we
    upper-case and refuse anything that is not 12 ASCII letters/digits so a
    typo is reported before the card counts a failed attempt.
    """
    value = card_number.strip().upper()
    if len(value) != 12 or not value.isascii() or not value.isalnum():
        raise CardError(
            f"card number must be 12 letters and digits, got {card_number!r}",
            code="card.bad_card_number",
            message_ja="在留カード等番号は英数字12文字で入力してください(例: AB12345678CD)。",
        )
    return value.encode("ascii")


def derive_key(card_number: str) -> bytes:
    """Kenc = Kmac = first 16 bytes of SHA-1 over the 12-byte card number."""
    return hashlib.sha1(check_card_number(card_number)).digest()[:16]


def derive_session_key(k_ifd: bytes, k_icc: bytes) -> bytes:
    """KSenc = first 16 bytes of SHA-1((K.IFD xor K.ICC) || 00 00 00 01)."""
    if len(k_ifd) != 16 or len(k_icc) != 16:
        raise ValueError("K.IFD and K.ICC must be 16 bytes")
    seed = bytes(a ^ b for a, b in zip(k_ifd, k_icc, strict=True))
    return hashlib.sha1(seed + b"\x00\x00\x00\x01").digest()[:16]


def block_size(generation: int) -> int:
    """8 bytes for 3DES (generation 1), 16 for AES (generation 2)."""
    if generation == GEN1:
        return 8
    if generation == GEN2:
        return 16
    raise ValueError(f"unknown card generation {generation!r}")


def _ede_key(key: bytes) -> bytes:
    """Two-key 3DES as the 24-byte K1 K2 K1 key (cryptography deprecates 16-byte keys)."""
    if len(key) != 16:
        raise ValueError("2-key 3DES key must be 16 bytes")
    return key + key[:8]


def _cipher(generation: int, key: bytes) -> Cipher:
    if generation == GEN2:
        return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV16))
    block_size(generation)
    return Cipher(TripleDES(_ede_key(key)), modes.CBC(_ZERO_IV8))


def cipher_encrypt(generation: int, key: bytes, data: bytes) -> bytes:
    """CBC with zero IV, no padding (the caller pads); the spec's block cipher."""
    if len(data) % block_size(generation):
        raise ValueError("data is not a whole number of blocks")
    enc = _cipher(generation, key).encryptor()
    return enc.update(data) + enc.finalize()


def cipher_decrypt(generation: int, key: bytes, data: bytes) -> bytes:
    """Inverse of cipher_encrypt."""
    if len(data) % block_size(generation):
        raise ValueError("ciphertext is not a whole number of blocks")
    dec = _cipher(generation, key).decryptor()
    return dec.update(data) + dec.finalize()


def pad(data: bytes, size: int) -> bytes:
    """ISO/IEC 7816-4 padding: 80 then 00s up to a whole block (always adds)."""
    out = data + b"\x80"
    return out + bytes(-len(out) % size)


def unpad(data: bytes) -> bytes:
    """Remove 80 00… padding; refuse data without it (wrong key or corrupt)."""
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise AuthenticationError(
            "secure-messaging data has no 80 00… padding (wrong session key?)"
        )
    return stripped[:-1]


def _des_cbc_last(key8: bytes, data: bytes) -> bytes:
    """Single-DES CBC-MAC (last block); 3DES with K1=K2=K3 is single DES."""
    enc = Cipher(TripleDES(key8 * 3), modes.CBC(_ZERO_IV8)).encryptor()
    return (enc.update(data) + enc.finalize())[-8:]


def retail_mac(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 with padding method 2, 8-byte result.

    DES-CBC under K1 over the padded data, then decrypt with K2 and encrypt
    with K1 on the last block — equal to 3DES(K1,K2) on the last chaining
    input, which is how it is computed here.
    """
    if len(key) != 16:
        raise ValueError("retail MAC key must be 16 bytes")
    padded = pad(data, 8)
    head, last = padded[:-8], padded[-8:]
    chain = _des_cbc_last(key[:8], head) if head else _ZERO_IV8
    block = bytes(a ^ b for a, b in zip(chain, last, strict=True))
    enc = Cipher(TripleDES(_ede_key(key)), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def mac(generation: int, key: bytes, data: bytes) -> bytes:
    """The generation's 8-byte MAC: AES-CMAC[:8] (gen 2) or retail MAC (gen 1)."""
    if generation == GEN2:
        c = CMAC(algorithms.AES(key))
        c.update(data)
        return c.finalize()[:8]
    block_size(generation)
    return retail_mac(key, data)


@dataclass(frozen=True)
class MutualAuthRequest:
    """What the reader sends in MUTUAL AUTHENTICATE and must remember to check the answer."""

    generation: int
    key: bytes
    rnd_ifd: bytes
    rnd_icc: bytes
    k_ifd: bytes
    e_ifd: bytes
    m_ifd: bytes

    @property
    def data(self) -> bytes:
        """E.IFD || M.IFD, the 40 command data bytes."""
        return self.e_ifd + self.m_ifd


def make_mutual_auth(
    generation: int,
    card_number: str,
    rnd_icc: bytes,
    *,
    rnd_ifd: bytes | None = None,
    k_ifd: bytes | None = None,
) -> MutualAuthRequest:
    """Build E.IFD = ENC(Kenc, RND.IFD || RND.ICC || K.IFD) and M.IFD = MAC(Kmac, E.IFD).

    RND.IFD and K.IFD are fresh random values unless given (tests pass the
    spec's appendix values).
    """
    if len(rnd_icc) != 8:
        raise ValueError("RND.ICC must be 8 bytes")
    key = derive_key(card_number)
    rnd_ifd = os.urandom(8) if rnd_ifd is None else rnd_ifd
    k_ifd = os.urandom(16) if k_ifd is None else k_ifd
    if len(rnd_ifd) != 8 or len(k_ifd) != 16:
        raise ValueError("RND.IFD must be 8 bytes and K.IFD 16 bytes")
    e_ifd = cipher_encrypt(generation, key, rnd_ifd + rnd_icc + k_ifd)
    return MutualAuthRequest(
        generation, key, rnd_ifd, rnd_icc, k_ifd, e_ifd, mac(generation, key, e_ifd)
    )


def open_icc_response(request: MutualAuthRequest, response: bytes) -> bytes:
    """Check E.ICC || M.ICC against our request and return the session key KSenc.

    E.ICC decrypts to RND.ICC || RND.IFD || K.ICC; the MAC is checked first
    (constant-time) so a wrong key is reported as such, not as garbage.
    """
    if len(response) != 40:
        raise AuthenticationError(
            f"MUTUAL AUTHENTICATE answer is {len(response)} bytes, expected 40"
        )
    e_icc, m_icc = response[:32], response[32:]
    expected = mac(request.generation, request.key, e_icc)
    if not hmac.compare_digest(expected, m_icc):
        raise AuthenticationError("M.ICC does not match: wrong card number or not this card")
    plain = cipher_decrypt(request.generation, request.key, e_icc)
    if plain[:8] != request.rnd_icc or plain[8:16] != request.rnd_ifd:
        raise AuthenticationError("E.ICC does not carry our challenge values")
    return derive_session_key(request.k_ifd, plain[16:32])


def encrypt_sm_data(generation: int, ks_enc: bytes, data: bytes) -> bytes:
    """Pad with 80 00… and encrypt under KSenc (zero IV): SM command data."""
    return cipher_encrypt(generation, ks_enc, pad(data, block_size(generation)))


def decrypt_sm_data(generation: int, ks_enc: bytes, ciphertext: bytes) -> bytes:
    """Decrypt SM response data under KSenc (zero IV) and strip 80 00… padding."""
    return unpad(cipher_decrypt(generation, ks_enc, ciphertext))


def verify_data(generation: int, ks_enc: bytes, card_number: str) -> bytes:
    """The encrypted card number for SM VERIFY: ENC(KSenc, number || 80 00 00 00)."""
    return encrypt_sm_data(generation, ks_enc, check_card_number(card_number))
