"""The front's nginx configuration, rendered from the server's own configuration.

Pure: a :class:`~server.config.ServerConfig` in, the text of ``nginx.conf``
out (the template is ``nginx.conf.in`` next to this module).  Rendering from
the one configuration the app and gunicorn read means the front cannot
disagree with them about the socket, the certificate or the upload limit.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from server.config import APP_SOCKET, ConfigError, ServerConfig

__all__ = ["TLS12_CIPHERS", "nginx_config"]

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher, nothing else.
#: TLS 1.3's suites are all AEAD with forward secrecy; OpenSSL's defaults are kept for it.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
_PLACEHOLDER = re.compile(r"@([A-Z0-9_]+)@")
#: What may stand in a quoted nginx string taken from the configuration: no quote, backslash,
#: ``$`` (nginx would read a variable), braces, semicolons or control characters.
_SAFE_TEXT = re.compile(r"[^\"\\$;{}\x00-\x1f\x7f]+")
#: Text inside a single-quoted nginx string: printable ASCII but the quote, backslash and ``$``.
_SINGLE_QUOTED = re.compile(r"[\x20-\x23\x25\x26\x28-\x5b\x5d-\x7e]+")
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
#: The JSON error pages the front answers itself; the upload location repeats them.
_ERROR_PAGES = (
    ("400", "@bad_request"),
    ("404", "@not_found"),
    ("408", "@timeout"),
    ("413", "@too_large"),
    ("414 494", "@head_too_large"),
    ("429", "@busy"),
    ("500 502 503 504", "@unavailable"),
)


def _quoted(key: str, value: str | Path) -> str:
    text = str(value)
    if not _SAFE_TEXT.fullmatch(text):
        raise ConfigError(
            f"{key}: {text!r} cannot be written into the front's configuration "
            "(no quotes, backslashes, $, braces, semicolons or control characters)"
        )
    return f'"{text}"'


def _access_log(value: str) -> str:
    if value == "off":
        return "off"
    if value == "syslog":
        return "syslog:server=unix:/dev/log,tag=renkei_front,nohostname renkei"
    if not value.startswith("/"):
        raise ConfigError(
            f'front.access_log: {value!r} must be "syslog", "off" or an absolute path'
        )
    return _quoted("front.access_log", value) + " renkei"


def _real_ip(trusted: tuple[str, ...]) -> str:
    if not trusted:
        return ""
    lines = [f"    set_real_ip_from {network};" for network in trusted]
    lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
    return "\n".join(lines) + "\n"


def nginx_config(
    config: ServerConfig,
    *,
    upload_path: str,
    json_body_limit: int,
    accept_signature: str,
    root_user: str | None = None,
) -> str:
    """The text of ``nginx.conf`` for ``config``; raises ConfigError for what cannot be served.

    ``upload_path`` is the one location with a large body (``max_upload_bytes``)
    whose request head the app checks before nginx reads it;
    ``json_body_limit`` bounds every other body; ``accept_signature`` is what
    a refused signature's answer tells the client (RFC 9421 §5.1).
    ``root_user``: nginx started as root (a test machine) keeps its workers
    as this user, who owns the run folder; as any other user, nginx and its
    workers simply stay that user, as in the documented deployment.
    """
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError(
            "tls_cert and tls_key are not set: the front serves terminals over HTTPS only "
            "(renkei-server init --dev-tls makes a demo certificate)"
        )
    front = config.front
    run_dir = _quoted("run_dir", config.run_dir).strip('"')
    if not _SINGLE_QUOTED.fullmatch(accept_signature):
        raise ConfigError(
            f"accept_signature: {accept_signature!r} cannot be written into nginx.conf"
        )
    if not _PATH.fullmatch(upload_path):
        raise ConfigError(f"upload_path: {upload_path!r} cannot be written into nginx.conf")
    error_pages = "\n".join(
        f"        error_page {codes} {target};" for codes, target in _ERROR_PAGES
    )
    values = {
        "USER": f"user {root_user};\n" if root_user else "",
        "WORKERS": str(front.workers) if front.workers else "auto",
        "WORKER_CONNECTIONS": str(front.worker_connections),
        "RUN_DIR": run_dir,
        "ACCESS_LOG": _access_log(front.access_log),
        "HEADER_TIMEOUT": str(front.header_timeout),
        "BODY_TIMEOUT": str(front.body_timeout),
        "SEND_TIMEOUT": str(front.send_timeout),
        "KEEPALIVE_TIMEOUT": str(front.keepalive_timeout),
        "CONNECTIONS_PER_ADDRESS": str(front.connections_per_address),
        "JSON_BODY_LIMIT": str(json_body_limit),
        "MAX_UPLOAD": str(config.max_upload_bytes),
        "REAL_IP": _real_ip(front.trusted_proxies),
        "TLS12_CIPHERS": ":".join(TLS12_CIPHERS),
        "BIND": config.bind,
        "TLS_CERT": _quoted("tls_cert", config.tls_cert),
        "TLS_KEY": _quoted("tls_key", config.tls_key),
        "UPLOAD_PATH": upload_path,
        "ACCEPT_SIGNATURE": accept_signature,
        "ERROR_PAGES": error_pages,
    }
    template = resources.files(__package__).joinpath("nginx.conf.in").read_text(encoding="utf-8")
    text = _PLACEHOLDER.sub(lambda match: values[match[1]], template)
    if f'"unix:{run_dir}/{APP_SOCKET}";' not in text:  # the template and config.app_socket agree
        raise AssertionError("the template's upstream socket is not config.app_socket")
    return text
