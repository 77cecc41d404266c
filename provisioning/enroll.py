"""Enrollment: make the terminal key here, prove possession to the server, pin what it answers.

Why in this order: the key pair is made in memory and written only after
the server accepted it, so a wrong or used token leaves nothing behind (no
orphan key, no half-written agent configuration).  The request is signed
with the new key under the key id ``"enroll"`` (docs/api.md): the server
checks it with the public key in the body.  The private key is never
printed and never sent; the technician sees only its fingerprint.

The server's name is resolved through the LGWAN DNS servers from the
settings (as the agent does), and TLS trusts only ``ca_file`` when given —
that CA is copied to ``/etc/renkei/server-ca.pem`` and named in the agent
configuration, so the agent trusts exactly what enrollment trusted.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.preflight import make_resolver
from common import statement
from common.atomicwrite import write_bytes
from common.httpsig import new_nonce, sign_request

from . import apply as applying
from .render import CA_PATH, KEY_PATH, Enrollment, render_all
from .settings import Settings

__all__ = ["AGENT_USER", "EnrollError", "EnrollResult", "enroll"]

AGENT_USER = "renkei-agent"
ENROLL_KEY_ID = "enroll"
_TERMINAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_HINTS = {
    "token.invalid": "トークンが正しくありません。入力を確認するか、運用担当に新しいトークンを依頼してください。",
    "token.used": "このトークンは使用済みです。運用担当に新しいトークンを依頼してください。",
    "token.expired": "トークンの有効期限が切れています。運用担当に新しいトークンを依頼してください。",
    "sig.stale": "端末の時刻がずれています。NTP設定を確認し、時刻を合わせてから再実行してください。",
    "net.tls": "サーバ証明書を検証できません。CAファイルとサーバ名を確認してください。",
    "net.dns": "DNSサーバから連携サーバの名前を引けません。DNS設定を確認してください。",
    "net.connect": "連携サーバに接続できません。ネットワークとファイアウォールを確認してください。",
}


class EnrollError(ValueError):
    """Enrollment failed; ``code`` is the server's error code or ``net.*`` / ``enroll.*``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.hint = _HINTS.get(code, "")


@dataclass(frozen=True)
class EnrollResult:
    terminal_id: str
    lasdec: str
    municipality: str | None
    key_fingerprint: str
    server_key_id: str


class _Connection(http.client.HTTPSConnection):
    """HTTPS to ``address`` while TLS (SNI, certificate check) uses the server's name."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _post(
    settings: Settings,
    body: bytes,
    key: Ed25519PrivateKey,
    *,
    ca_file: Path | None,
    resolve: Callable[[str], str] | None,
    timeout: float,
    clock: Callable[[], float],
) -> tuple[int, dict]:
    host, port = settings.server_name, settings.server_port
    authority = host if port == 443 else f"{host}:{port}"
    url = f"https://{authority}/api/v1/enroll"
    headers = {"Host": authority, "Content-Type": "application/json", "Accept": "application/json"}
    headers.update(
        sign_request(
            "POST",
            url,
            {},
            body,
            key_id=ENROLL_KEY_ID,
            private_key=key,
            created=int(clock()),
            nonce=new_nonce(),
        )
    )
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollError("net.tls", f"cannot load the CA file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        address = resolve(host) if resolve else host
    except OSError as exc:
        raise EnrollError("net.dns", f"cannot resolve {host}: {exc}") from None
    conn = _Connection(host, port, address, context, timeout)
    try:
        conn.request("POST", "/api/v1/enroll", body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read(64 * 1024)
    except ssl.SSLError as exc:
        raise EnrollError("net.tls", f"TLS to {host} ({address}) failed: {exc}") from None
    except OSError as exc:
        raise EnrollError(
            "net.connect", f"cannot reach {host} ({address}:{port}): {exc.strerror or exc}"
        ) from None
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {}
    return response.status, answer if isinstance(answer, dict) else {}


def _chown_to_agent(path: Path) -> None:
    try:
        user = pwd.getpwnam(AGENT_USER)
    except KeyError:
        return
    os.chown(path, user.pw_uid, user.pw_gid)


def enroll(
    settings: Settings,
    root: Path,
    token: str,
    *,
    ca_file: Path | None = None,
    agent_version: str = "renkei-provision",
    timeout: float = 15.0,
    clock: Callable[[], float] = time.time,
    resolve: Callable[[str], str] | None = None,
) -> EnrollResult:
    """Enroll with the server; on success write the key, the CA copy and the agent configuration.

    ``resolve`` defaults to asking the LGWAN DNS servers of ``settings``.
    Raises :class:`EnrollError` (nothing written) when the server refuses
    or cannot be reached.
    """
    if resolve is None:
        resolve = make_resolver([s.text(53) for s in settings.dns_servers], timeout=3.0)
    key = Ed25519PrivateKey.generate()
    public_text = statement.public_key_to_text(key.public_key())
    body = json.dumps(
        {"token": token.strip(), "public_key": public_text, "agent_version": agent_version}
    ).encode()
    status, answer = _post(
        settings, body, key, ca_file=ca_file, resolve=resolve, timeout=timeout, clock=clock
    )
    if status != 201:
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        raise EnrollError(
            str(error.get("code") or f"http.{status}"),
            str(error.get("message") or f"the server answered {status}"),
        )
    terminal_id = answer.get("terminal_id")
    server_key = (answer.get("server_key") or {}).get("public_key")
    if not isinstance(terminal_id, str) or not _TERMINAL_ID.fullmatch(terminal_id):
        raise EnrollError("enroll.answer", f"the server sent no usable terminal id: {answer!r}")
    try:
        pinned = statement.public_key_from_text(str(server_key))
    except statement.StatementError:
        raise EnrollError("enroll.answer", "the server sent no usable signing key") from None
    if answer.get("lasdec") != settings.lasdec:
        raise EnrollError(
            "enroll.lasdec",
            f"the token belongs to {answer.get('lasdec')} {answer.get('municipality') or ''}, "
            f"not to {settings.lasdec} {settings.municipality}: ask the operator to revoke "
            f"{terminal_id} and issue a token for {settings.lasdec}",
        )
    key_file = applying.under(root, KEY_PATH)
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_bytes(key_file, pem, mode=0o600)
    real = Path(root).resolve() == Path("/")
    if real:
        _chown_to_agent(key_file)
    ca_text = None
    if ca_file is not None:
        ca_copy = applying.under(root, CA_PATH)
        ca_copy.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(ca_copy, Path(ca_file).read_bytes(), mode=0o644)
        ca_text = CA_PATH
    enrollment = Enrollment(terminal_id, statement.public_key_to_text(pinned), KEY_PATH, ca_text)
    applying.apply(root, render_all(settings, enrollment))
    return EnrollResult(
        terminal_id=terminal_id,
        lasdec=settings.lasdec,
        municipality=answer.get("municipality"),
        key_fingerprint=statement.key_id(key.public_key()),
        server_key_id=statement.key_id(pinned),
    )
