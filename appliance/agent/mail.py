"""The notice to staff after a run failed past the retry window (spec §2.2.1 ④).

One function, :func:`send_failure_notice`, hands one message to the
configured SMTP relay (``[smtp]`` in agent.toml, :class:`SmtpConfig`) and
either returns — the relay accepted it for every recipient — or raises
:class:`MailError` with a stable ``code`` saying what went wrong:

==================  ===============================================================
``mail.config``     nothing to send to, or a password would cross the network in clear
``mail.password``   the password file cannot be read or is empty
``mail.dns``        the relay's name does not resolve
``mail.connect``    the relay refused or cannot be reached (down, wrong port, firewall,
                    or the service's ``IPAddressAllow=`` list)
``mail.timeout``    the relay stopped answering for ``timeout`` seconds
``mail.tls``        STARTTLS not offered, or the relay's certificate did not verify
``mail.auth``       the relay refused the user name and password, or offers no AUTH
``mail.refused``    the relay refused the sender, every recipient, or the message
``mail.partial``    some recipients were refused (the others got the message)
``mail.protocol``   any other SMTP error (a 4xx/5xx the relay gave, a dropped line)
==================  ===============================================================

Why it is shaped this way:

* The agent runs unattended and sandboxed; the caller logs the error and
  goes on, so every failure is one exception type, never a hang: each
  network operation is bounded by ``timeout`` seconds.
* The password is read from ``password_file`` at send time (so rotating it
  needs no restart and it is never held in the configuration object), is
  sent only after STARTTLS, and appears in no message, log line or
  exception.
* STARTTLS verifies the relay's certificate and name against the system CA
  store, or against ``ca_file`` when the caller gives one (LGWAN relays are
  often signed by a private CA).  ``SmtpConfig`` has no ``ca_file`` key yet:
  the caller passes it explicitly.
* Japanese subject and body: :class:`email.message.EmailMessage` encodes the
  subject as an RFC 2047 UTF-8 encoded-word and the body as UTF-8 (base64),
  so the message is 7-bit clean and any relay carries it.
* No DNS on the agent's side beyond the relay's own name: the EHLO name is
  the machine's host name and the Message-ID domain is the sender's, because
  ``socket.getfqdn()`` (smtplib's default) may wait on a resolver the LGWAN
  appliance cannot reach.
"""

from __future__ import annotations

import email.utils
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

from .config import SmtpConfig
from .errors import AgentError

__all__ = ["MailError", "build_message", "send_failure_notice"]

#: Longest password file read; a password is short, anything longer is the wrong file.
_MAX_PASSWORD_BYTES = 4096


class MailError(AgentError):
    """The notice was not (or not wholly) delivered to the relay; ``code`` says why (module doc).

    ``refused`` maps each refused recipient to the relay's ``(code, text)``
    (``mail.refused`` and ``mail.partial`` only; empty otherwise).
    """

    code = "mail.error"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        refused: dict[str, tuple[int, str]] | None = None,
    ):
        super().__init__(message, code=code)
        self.refused = dict(refused or {})


def build_message(smtp: SmtpConfig, *, subject: str, body: str) -> EmailMessage:
    """The notice as a UTF-8 MIME message (From, To, Subject, Date, Message-ID, Auto-Submitted)."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.recipients)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=True)
    domain = smtp.sender.rpartition("@")[2] or "localhost"
    message["Message-ID"] = email.utils.make_msgid("renkei-agent", domain=domain)
    # RFC 3834: an automatic notice; vacation responders must not answer it.
    message["Auto-Submitted"] = "auto-generated"
    # base64, not 8bit: the message stays 7-bit clean for relays without 8BITMIME.
    message.set_content(body, charset="utf-8", cte="base64")
    return message


def _password(path: Path) -> str:
    """The password alone: the file's text without its final line break."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_PASSWORD_BYTES + 1)
    except OSError as exc:
        raise MailError(
            "mail.password", f"{path}: the SMTP password file cannot be read: {exc.strerror}"
        ) from None
    if len(data) > _MAX_PASSWORD_BYTES:
        raise MailError(
            "mail.password",
            f"{path}: longer than {_MAX_PASSWORD_BYTES} bytes; it must hold the password alone",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MailError("mail.password", f"{path}: the SMTP password file is not UTF-8") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise MailError("mail.password", f"{path}: the SMTP password file is empty")
    if not text.isascii():
        # smtplib encodes AUTH as ASCII; say so here rather than fail mid-conversation.
        raise MailError(
            "mail.password",
            f"{path}: the SMTP password has characters outside ASCII, which SMTP AUTH "
            "cannot send here; choose an ASCII password",
        )
    return text


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise MailError(
            "mail.tls", f"{ca_file}: cannot be used as CA bundle for the SMTP relay: {exc}"
        ) from None


def _smtp_text(response: bytes | str) -> str:
    text = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
    return " ".join(text.split())


def send_failure_notice(
    smtp: SmtpConfig,
    *,
    subject: str,
    body: str,
    timeout: float = 30,
    ca_file: Path | None = None,
) -> None:
    """Send one notice to ``smtp.recipients`` through the relay; raise :class:`MailError` if not.

    ``timeout`` bounds each network operation (connect, each command), in
    seconds.  With ``smtp.starttls`` the connection is upgraded before
    anything else is sent, verifying the relay's certificate against
    ``ca_file`` or the system store.  With ``smtp.username`` the password is
    read from ``smtp.password_file`` now and sent only over TLS.
    """
    if not smtp.recipients:
        raise MailError("mail.config", "smtp.recipients is empty: there is no one to notify")
    if smtp.username is not None and not smtp.starttls:
        raise MailError(
            "mail.config",
            "smtp.username is set but smtp.starttls is false: the password would cross the "
            "network in clear; set starttls = true (or drop username and password_file)",
        )
    credentials = None
    if smtp.username is not None:
        if smtp.password_file is None:
            raise MailError("mail.config", "smtp.username is set without smtp.password_file")
        credentials = (smtp.username, _password(smtp.password_file))
    context = _tls_context(ca_file) if smtp.starttls else None
    message = build_message(smtp, subject=subject, body=body)
    relay = f"SMTP relay {smtp.host}:{smtp.port}"
    try:
        with smtplib.SMTP(
            smtp.host, smtp.port, local_hostname=socket.gethostname(), timeout=timeout
        ) as client:
            client.ehlo()
            if context is not None:
                if not client.has_extn("starttls"):
                    raise MailError("mail.tls", f"{relay} does not offer STARTTLS")
                client.starttls(context=context)
                client.ehlo()
            if credentials is not None:
                try:
                    client.login(*credentials)
                except (smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected):
                    raise  # mapped below, like the same errors elsewhere
                except smtplib.SMTPException as exc:  # no AUTH offered, no common mechanism
                    raise MailError(
                        "mail.auth",
                        f"{relay} cannot log in ({exc}); check whether it needs "
                        "smtp.username and smtp.password_file at all",
                    ) from None
            refused = client.send_message(
                message, from_addr=smtp.sender, to_addrs=list(smtp.recipients)
            )
    except MailError:
        raise
    except smtplib.SMTPRecipientsRefused as exc:
        details = {rcpt: (code, _smtp_text(text)) for rcpt, (code, text) in exc.recipients.items()}
        listing = "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in details.items())
        raise MailError(
            "mail.refused", f"{relay} refused every recipient ({listing})", refused=details
        ) from None
    except smtplib.SMTPSenderRefused as exc:
        raise MailError(
            "mail.refused",
            f"{relay} refused the sender {smtp.sender}: {exc.smtp_code} {_smtp_text(exc.smtp_error)}",
        ) from None
    except smtplib.SMTPDataError as exc:
        raise MailError(
            "mail.refused",
            f"{relay} refused the message: {exc.smtp_code} {_smtp_text(exc.smtp_error)}",
        ) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(
            "mail.auth",
            f"{relay} refused the login of {smtp.username!r}: {exc.smtp_code} "
            f"{_smtp_text(exc.smtp_error)}; check smtp.username and the password file",
        ) from None
    except smtplib.SMTPServerDisconnected as exc:
        # smtplib turns a timeout while reading a reply into "disconnected"; the cause is kept.
        if isinstance(exc.__context__, TimeoutError):
            raise MailError(
                "mail.timeout", f"{relay} did not answer within {timeout:g} s"
            ) from None
        raise MailError("mail.protocol", f"{relay}: {exc}") from None
    except smtplib.SMTPException as exc:
        code = getattr(exc, "smtp_code", None)
        text = _smtp_text(getattr(exc, "smtp_error", b"")) or str(exc)
        raise MailError(
            "mail.protocol", f"{relay}: {code} {text}" if code else f"{relay}: {text}"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise MailError(
            "mail.tls",
            f"{relay}: its certificate did not verify ({exc.verify_message}); check the relay's "
            "name and the CA bundle",
        ) from None
    except ssl.SSLError as exc:
        raise MailError("mail.tls", f"{relay}: TLS failed ({exc.reason or exc})") from None
    except socket.gaierror as exc:
        raise MailError(
            "mail.dns", f"{relay}: the name does not resolve ({exc.strerror})"
        ) from None
    except TimeoutError:
        raise MailError("mail.timeout", f"{relay} did not answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise MailError(
            "mail.connect", f"{relay} refused the connection: is the relay down, or the port wrong?"
        ) from None
    except PermissionError:
        # A socket connect() the cgroup firewall (IPAddressDeny=) drops fails with EPERM.
        raise MailError(
            "mail.connect",
            f"{relay}: connection not permitted; add the relay's address to IPAddressAllow= in "
            "/etc/systemd/system/renkei-agent.service.d/network.conf",
        ) from None
    except OSError as exc:
        raise MailError(
            "mail.connect", f"{relay} cannot be reached: {exc.strerror or exc}"
        ) from None
    if refused:
        details = {rcpt: (code, _smtp_text(text)) for rcpt, (code, text) in refused.items()}
        listing = "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in details.items())
        raise MailError(
            "mail.partial",
            f"{relay} delivered the notice but refused some recipients ({listing})",
            refused=details,
        )
