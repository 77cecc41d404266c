"""Key providers for the address write: who holds the keys, and the MODEL write session.

The ministry does not publish the commands or keys that let a municipality
write the address into the chip. What is here is a **model** of how such a
write is authenticated, shaped the way an HSM or a SAM (secure access
module) works, so that a real device can take its place without changing
the write flow: it is *not* the ministry's protocol (docs/card-write.md).

The keys never leave the provider. The write flow hands the provider the
card number and the card's challenge and gets back a :class:`WriteSession`
that answers for one card session: it produces the terminal's
authentication cryptogram, checks the card's, and wraps every write command
(encrypt + MAC) and checks the card's answer (response MAC). The model's
cryptography (AES-128, AES-CMAC; SP 800-108 counter-mode KDF in the
GlobalPlatform SCP03 data layout), with ``derive(K, c, ctx) =
CMAC(K, 00×11 ‖ c ‖ 00 ‖ 0080 ‖ 01 ‖ ctx)``:

* card key ``K_card = derive(K_master, 40, card number as 12 ASCII bytes)``;
* session keys ``S-ENC/S-MAC/S-RMAC = derive(K_card, 04/06/07, RND.IFD ‖ RND.ICC)``;
* card cryptogram ``derive(S-MAC, 00, RND.IFD ‖ RND.ICC)[:8]``, terminal
  cryptogram the same with ``01``;
* command n (from 1): ``IV = AES-ECB(S-ENC, n as 16 bytes)``, data
  ``87 L 01 ‖ AES-CBC(S-ENC, IV, data ‖ 80 00…)``, MAC chain
  ``C = CMAC(S-MAC, C_prev ‖ CLA INS P1 P2 ‖ DO87)`` (``C_0`` = 16 zero bytes),
  ``8E 08 ‖ C[:8]``; the card answers ``8E 08 ‖ CMAC(S-RMAC, C ‖ SW1 SW2)[:8]``.

Implementations: :class:`TestKeyProvider` (a test master key from a file —
tests and development only) and :class:`DeviceKeyProvider`, the production
placeholder that says what a deployment must supply and refuses to write.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from appliance.agent.card import crypto
from appliance.agent.card.apdu import CardError

__all__ = [
    "KIND_NONE",
    "KIND_PKCS11",
    "KIND_SAM",
    "KIND_TEST",
    "DeviceKeyProvider",
    "KeyProvider",
    "KeyProviderError",
    "KeyProviderSettings",
    "TestKeyProvider",
    "WriteSession",
    "make_key_provider",
]

KIND_NONE = "none"
KIND_TEST = "test"
KIND_PKCS11 = "pkcs11"
KIND_SAM = "sam"

# Derivation constants of the model (one byte each, see the module docstring).
DC_CARD_CRYPTOGRAM = 0x00
DC_TERMINAL_CRYPTOGRAM = 0x01
DC_S_ENC = 0x04
DC_S_MAC = 0x06
DC_S_RMAC = 0x07
DC_CARD_KEY = 0x40

CHALLENGE_BYTES = 8
CRYPTOGRAM_BYTES = 8
MAC_BYTES = 8


class KeyProviderError(CardError):
    """The key provider is missing, misconfigured or cannot be used.

    Codes: ``card.no_key_provider`` (nothing configured, or a production
    device this build cannot drive), ``card.key_file`` (the test key file is
    missing, unreadable, malformed or readable by others). These are
    configuration problems: the CLI exits 2.
    """

    code = "card.no_key_provider"


class WriteSession(Protocol):
    """One authenticated write session with one card; the keys stay inside.

    Use in this order: :meth:`terminal_cryptogram` (send it to the card),
    :meth:`check_card_cryptogram` (the card's answer), then for every write
    :meth:`wrap_command` and :meth:`check_response`. Raises ``CardError``
    ``card.write_auth_failed`` when the card's cryptogram or response MAC
    does not check out. :meth:`close` forgets the session keys.
    """

    def terminal_cryptogram(self) -> bytes:
        """RND.IFD (8 bytes) ‖ the terminal's cryptogram (8 bytes)."""
        ...

    def check_card_cryptogram(self, cryptogram: bytes) -> None: ...

    def wrap_command(self, header: bytes, data: bytes) -> bytes:
        """The secure-messaging data field (``87…`` ‖ ``8E 08…``) for CLA INS P1 P2 ``header``."""
        ...

    def check_response(self, data: bytes) -> None:
        """Check the card's ``8E 08 <R-MAC>`` answer to the last wrapped command (SW 90 00)."""
        ...

    def close(self) -> None: ...


class KeyProvider(Protocol):
    """Where the write keys live (an HSM, a SAM, or the test key)."""

    #: Short English description for logs and ``--json`` (never a key).
    description: str
    #: True only for the test provider: the CLI says so to staff.
    for_tests_only: bool

    def ensure_ready(self) -> None:
        """Raise KeyProviderError now if no session can be opened (checked before the card is touched)."""
        ...

    def open_write_session(self, card_number: str, card_challenge: bytes) -> WriteSession:
        """Start a write session for this card number and the card's 8-byte challenge."""
        ...


# --- the model's cryptography (pure) ----------------------------------------------------------


def _cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def derive(key: bytes, constant: int, context: bytes) -> bytes:
    """The model KDF: one 128-bit block of SP 800-108 counter mode with AES-CMAC."""
    return _cmac(key, bytes(11) + bytes([constant, 0x00, 0x00, 0x80, 0x01]) + context)


def _ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return b"\x82" + n.to_bytes(2, "big")


def _aes_ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _aes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _auth_failed(message: str) -> CardError:
    return CardError(
        message,
        code="card.write_auth_failed",
        message_ja=(
            "書込み用の認証に失敗しました。鍵がこのカードに合っていません"
            "(試験用の鍵で本物のカードに書き込もうとしていないか確認してください)。"
        ),
    )


class _ModelWriteSession:
    """The model write session over AES keys held in this object (the test provider's)."""

    def __init__(self, card_key: bytes, card_challenge: bytes, terminal_challenge: bytes):
        if len(card_challenge) != CHALLENGE_BYTES:
            raise CardError(
                f"the card's write challenge is {len(card_challenge)} bytes, expected 8",
                code="card.bad_response",
            )
        self._context = terminal_challenge + card_challenge
        self._rnd_ifd = terminal_challenge
        self._s_enc = derive(card_key, DC_S_ENC, self._context)
        self._s_mac = derive(card_key, DC_S_MAC, self._context)
        self._s_rmac = derive(card_key, DC_S_RMAC, self._context)
        self._counter = 0
        self._chain = bytes(16)
        self._authenticated = False
        self._closed = False

    def _live(self) -> None:
        if self._closed:
            raise CardError("the write session is closed", code="card.write_session")

    def terminal_cryptogram(self) -> bytes:
        self._live()
        return self._rnd_ifd + derive(self._s_mac, DC_TERMINAL_CRYPTOGRAM, self._context)[:8]

    def check_card_cryptogram(self, cryptogram: bytes) -> None:
        self._live()
        expected = derive(self._s_mac, DC_CARD_CRYPTOGRAM, self._context)[:CRYPTOGRAM_BYTES]
        if not hmac.compare_digest(expected, bytes(cryptogram)):
            raise _auth_failed("the card's write cryptogram does not match the provider's key")
        self._authenticated = True

    def wrap_command(self, header: bytes, data: bytes) -> bytes:
        self._live()
        if not self._authenticated:
            raise CardError(
                "wrap_command before the card's cryptogram was checked", code="card.write_session"
            )
        if len(header) != 4:
            raise ValueError("header must be CLA INS P1 P2")
        self._counter += 1
        iv = _aes_ecb(self._s_enc, self._counter.to_bytes(16, "big"))
        body = b"\x01" + _aes_cbc(self._s_enc, iv, crypto.pad(data, 16))
        do87 = b"\x87" + _ber_length(len(body)) + body
        self._chain = _cmac(self._s_mac, self._chain + header + do87)
        return do87 + b"\x8e\x08" + self._chain[:MAC_BYTES]

    def check_response(self, data: bytes) -> None:
        self._live()
        expected = b"\x8e\x08" + _cmac(self._s_rmac, self._chain + b"\x90\x00")[:MAC_BYTES]
        if not hmac.compare_digest(expected, bytes(data)):
            raise _auth_failed("the card's answer to the write carries a wrong response MAC")

    def close(self) -> None:
        self._s_enc = self._s_mac = self._s_rmac = b""
        self._closed = True


# --- providers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyProviderSettings:
    """What ``[card]`` in agent.toml says about the key provider (see config.CardConfig)."""

    kind: str = KIND_NONE
    test_key_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_slot: int | None = None
    pkcs11_key_label: str | None = None
    sam_reader: str | None = None


def _key_file_error(path: Path, why: str, why_ja: str) -> KeyProviderError:
    return KeyProviderError(
        f"test key file {path}: {why}",
        code="card.key_file",
        message_ja=f"試験用の鍵ファイル {path} を使えません({why_ja})。システム管理者に連絡してください。",
    )


class TestKeyProvider:
    """FOR TESTS AND DEVELOPMENT ONLY: a test master key from a file, per-card keys derived here.

    Never configure it on a counter terminal that writes real cards: the key
    is an ordinary file, and the model it drives is not the ministry's
    protocol. The file holds the 16-byte AES master key as 32 hex digits
    (lines starting with ``#`` are comments); it must be readable by its
    owner only (mode 0600 or 0400), else it is refused, because a key that
    others can read is no longer a secret.
    """

    __test__ = False  # not a pytest test class, despite the name
    description = "test key provider (tests/development only)"
    for_tests_only = True

    def __init__(self, key_file: Path):
        self.key_file = Path(key_file)
        self._master = self._load(self.key_file)

    @staticmethod
    def _load(path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise _key_file_error(path, "no such file", "ファイルがありません") from None
        except OSError as exc:
            raise _key_file_error(path, exc.strerror or str(exc), "読み込めません") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _key_file_error(path, "not a regular file", "通常のファイルではありません")
            if info.st_mode & 0o077:
                raise _key_file_error(
                    path,
                    f"mode {stat.S_IMODE(info.st_mode):04o} lets others read or change it; "
                    f"run: chmod 600 {path}",
                    f"他のユーザーが読み書きできる権限です。chmod 600 {path} で所有者だけにしてください",
                )
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
        lines = [
            line.strip()
            for line in raw.decode("ascii", errors="replace").splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        text = "".join(lines)
        if len(text) != 32 or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise _key_file_error(
                path, "must hold one AES-128 key as 32 hex digits", "16進数32桁の鍵が1つ必要です"
            )
        return bytes.fromhex(text)

    def ensure_ready(self) -> None:
        """The key was loaded and checked when the provider was made."""

    def open_write_session(self, card_number: str, card_challenge: bytes) -> WriteSession:
        card_key = derive(self._master, DC_CARD_KEY, crypto.check_card_number(card_number))
        return _ModelWriteSession(card_key, bytes(card_challenge), os.urandom(CHALLENGE_BYTES))


_NEEDS = (
    "a deployment must supply the ministry's write key in a hardware device and its driver: "
    'either a PKCS#11 HSM ([card] key_provider = "pkcs11" with pkcs11_module = the vendor\'s '
    "PKCS#11 library, pkcs11_slot and pkcs11_key_label) or a SAM in a second card reader "
    '([card] key_provider = "sam" with sam_reader), together with the ministry\'s real '
    "write command set (see docs/card-write.md)"
)


class DeviceKeyProvider:
    """Production placeholder: the HSM (PKCS#11) or SAM that a deployment must supply.

    This build contains no driver for either, because the ministry publishes
    neither the write keys nor the write commands. Opening a session always
    raises :class:`KeyProviderError` ``card.no_key_provider`` naming what is
    missing: nothing configured, or a configured device this build cannot use.
    """

    for_tests_only = False

    def __init__(self, settings: KeyProviderSettings):
        self.settings = settings
        self.description = {
            KIND_PKCS11: f"PKCS#11 HSM (module {settings.pkcs11_module}, slot "
            f"{settings.pkcs11_slot}, key {settings.pkcs11_key_label!r})",
            KIND_SAM: f"SAM in reader {settings.sam_reader!r}",
        }.get(settings.kind, "no key provider configured")

    def open_write_session(self, card_number: str, card_challenge: bytes) -> WriteSession:
        self.ensure_ready()
        raise AssertionError("unreachable: ensure_ready always raises")

    def ensure_ready(self) -> None:
        if self.settings.kind in (KIND_PKCS11, KIND_SAM):
            raise KeyProviderError(
                f"{self.description} is configured, but this build has no driver for it: {_NEEDS}",
                message_ja=(
                    "書込み用の鍵装置(HSM/SAM)のドライバがこのシステムにありません。"
                    "書込みには法務省が提供する鍵装置と書込み仕様が必要です。システム管理者に連絡してください。"
                ),
            )
        raise KeyProviderError(
            f"no key provider is configured for writing the address: {_NEEDS}",
            message_ja=(
                "書込み用の鍵装置(HSM/SAM)が設定されていません。住居地の書込みはできません。"
                "システム管理者に連絡してください。"
            ),
        )


def make_key_provider(settings: KeyProviderSettings) -> KeyProvider:
    """The provider the settings name; the test provider loads (and checks) its key file now."""
    if settings.kind == KIND_TEST:
        if settings.test_key_file is None:
            raise KeyProviderError(
                'key_provider = "test" needs test_key_file',
                code="card.key_file",
                message_ja="試験用の鍵ファイル(test_key_file)が設定されていません。",
            )
        return TestKeyProvider(settings.test_key_file)
    return DeviceKeyProvider(settings)
