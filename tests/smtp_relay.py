"""A recording SMTP relay handler for aiosmtpd, shared by the agent's and the server's mail tests.

Both send real mail to a real aiosmtpd server; this handler keeps what it
accepted (with whether STARTTLS was used and who logged in), refuses one
address at RCPT, and accepts one user/password pair.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field

from aiosmtpd.smtp import AuthResult, LoginPassword

REFUSED = "nobody@city.example.lg.jp"


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: bytes | None

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Recorder:
    """aiosmtpd handler: refuses :data:`REFUSED` at RCPT, keeps every message it accepts."""

    user: str
    password: str
    messages: list[Delivered] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address == REFUSED:
            return f"550 5.1.1 <{REFUSED}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(
            Delivered(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
                login,
            )
        )
        return "250 2.0.0 accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        assert isinstance(auth_data, LoginPassword)
        self.logins.append(auth_data.login)
        ok = auth_data.login == self.user.encode() and auth_data.password == self.password.encode()
        # handled=False: aiosmtpd then answers 535 itself (True means "already answered").
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
