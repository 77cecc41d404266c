"""The image's signing key: Ed25519 over ``SHA256SUMS``, a dev key when none is configured.

Why Ed25519 and a raw detached signature: deterministic (the same
``SHA256SUMS`` signed twice gives the same bytes, so signed builds stay
byte-identical), small, and checkable without our code:
``openssl pkeyutl -verify -pubin -inkey key.pub.pem -rawin -in SHA256SUMS
-sigfile SHA256SUMS.sig``.

Which key: ``--key`` or ``RENKEI_IMAGE_KEY`` (a PKCS#8 PEM private key, kept
off the build machine's repository — for a release, on the signing host);
otherwise a **development key** made on first use outside the repository
(``$XDG_CONFIG_HOME/renkei/image-dev-key.pem``, or ``RENKEI_IMAGE_DEV_KEY``).
An image signed with it says so in its manifest and in the build's output.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.atomicwrite import atomic_write
from common.ed25519 import Ed25519Error, check_public_key

from .errors import EXIT_USAGE, BuildError, VerifyError

__all__ = [
    "SigningKey",
    "dev_key_path",
    "fingerprint",
    "load_public_key",
    "load_signing_key",
    "public_pem",
    "signature_valid",
]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    path: Path
    dev: bool

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def dev_key_path() -> Path:
    if os.environ.get("RENKEI_IMAGE_DEV_KEY"):
        return Path(os.environ["RENKEI_IMAGE_DEV_KEY"])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "renkei" / "image-dev-key.pem"


def fingerprint(public: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key: what people compare by eye."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise BuildError(
            f"cannot read the signing key {path}: {exc.strerror}",
            code="build.key",
            exit_status=EXIT_USAGE,
        ) from None
    except (ValueError, TypeError) as exc:
        raise BuildError(
            f"{path} is not an unencrypted PEM private key: {exc}",
            code="build.key",
            exit_status=EXIT_USAGE,
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BuildError(
            f"{path} is a {type(key).__name__}, not an Ed25519 key",
            code="build.key",
            exit_status=EXIT_USAGE,
        )
    return key


def load_signing_key(path: Path | None = None) -> tuple[SigningKey, bool]:
    """The configured key, or the dev key (made now if missing). Returns ``(key, created)``."""
    configured = path or (
        Path(os.environ["RENKEI_IMAGE_KEY"]) if os.environ.get("RENKEI_IMAGE_KEY") else None
    )
    if configured is not None:
        return SigningKey(_read_private(configured), configured, dev=False), False
    dev = dev_key_path()
    if dev.exists():
        return SigningKey(_read_private(dev), dev, dev=True), False
    dev.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    with atomic_write(dev, mode=0o600) as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with atomic_write(dev.with_suffix(".pub.pem"), mode=0o644) as handle:
        handle.write(public_pem(private.public_key()))
    return SigningKey(private, dev, dev=True), True


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM public key (or, for convenience on the build machine, the private key's public half)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerifyError(
            f"cannot read the public key {path}: {exc.strerror}", code="verify.key"
        ) from None
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise VerifyError(f"{path} is not a PEM key: {exc}", code="verify.key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError(f"{path} is not an Ed25519 key", code="verify.key")
    try:  # a point of small order would let a fixed signature pass for any SHA256SUMS
        check_public_key(key)
    except Ed25519Error as exc:
        raise VerifyError(f"{path}: {exc.message}", code="verify.key") from None
    return key


def signature_valid(public: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
