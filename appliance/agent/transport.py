"""The agent's only way to the linkage server: signed HTTPS requests over one kept-alive connection.

Why it looks the way it does:

* **The server's name is resolved through the LGWAN DNS servers** the
  technician configured (``resolve``, normally
  :func:`appliance.agent.preflight.make_resolver`), not the appliance's
  system resolver, which may point elsewhere — once per transport (one run),
  again only after connecting to the address failed.  The socket goes to that
  address, but TLS still sends the *name* (SNI) and checks the certificate
  against it, so a wrong DNS answer cannot impersonate the server.
* **TLS trusts only ``ca_file``** when given (the CA that signs the server's
  certificate), TLS 1.2 at least, the host name always checked.
* **Every request is signed** (``common.httpsig``, RFC 9421): key id = the
  terminal id, ``created`` from the injected clock, a fresh nonce per
  attempt.  A retry after a connection the server closed is signed again,
  never replayed.  ``Host`` is set from ``server_url`` exactly as it goes into
  the signed ``@authority``, so the two cannot differ.
* **Errors come out as one type**, :class:`TransportError`, with a stable
  ``code`` and a ``retryable`` verdict the sync loop can act on without
  knowing HTTP: a refused connection or a 503 is worth retrying later; an
  untrusted certificate, a revoked terminal or a stale clock is not, until a
  person fixes something.  The server's own error code (``sig.stale``,
  ``auth.revoked``, ``batch.not_found`` …) is kept as ``code``.
* **Downloads stream** into the caller's file in chunks and resume with
  ``Range``/``If-Range``.  A 200 answer to a ranged request means the server
  sent the whole file: nothing is written and :class:`TransportError` with
  ``restart=True`` tells the caller to truncate its partial file and start
  from byte 0.

* **The update repository** (``update_fetch.py``) goes through the same
  signed requests: :meth:`HttpsTransport.stream` sends a signed GET and hands
  back the body as chunks (python-tuf's fetcher checks lengths and hashes),
  :meth:`HttpsTransport.get_json` serves the self-test's ping.

Only ``http.client`` and ``ssl`` from the standard library; the connection
is reused between requests (keep-alive) and reopened when the server closed
it.  Not thread-safe: one transport per sync run.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.httpsig import new_nonce, sign_request

__all__ = [
    "AGENT_HEADER",
    "API_PREFIX",
    "FILE_NAME_HEADER",
    "HttpsTransport",
    "Transport",
    "TransportError",
    "load_private_key",
]

API_PREFIX = "/api/v1"
AGENT_HEADER = "Renkei-Agent-Version"
FILE_NAME_HEADER = "Renkei-File-Name"
#: Bytes per read and write while downloading (the server writes 256 KiB blocks).
CHUNK = 256 * 1024
#: Bytes per send while uploading.
SEND_CHUNK = 64 * 1024
#: An error answer larger than this is not read (the connection is dropped instead).
MAX_ERROR_BODY = 64 * 1024

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
#: Exceptions that mean "the kept-alive connection was closed by the server meanwhile".
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)

#: Server error codes worth retrying later as they are (everything 5xx is, too).
_RETRYABLE_CODES = frozenset({"auth.replay", "auth.too_many_failures", "upload.concurrent"})
_RETRYABLE_STATUS = frozenset({408, 425, 429})


class TransportError(Exception):
    """The request did not get the answer it needed.

    ``code`` is stable: ``net.*`` for the network (``net.dns``,
    ``net.refused``, ``net.reset``, ``net.timeout``, ``net.tls``,
    ``net.unreachable``, ``net.interrupted``), ``http.protocol`` for an answer
    that breaks HTTP, the server's own code when it sent one (``sig.stale``,
    ``auth.revoked``, ``batch.not_found``, ``request.too_large`` …),
    ``http.<status>`` when it did not, and ``download.restart`` when a resumed
    download must start again from byte 0.

    ``retryable``: trying again later, unchanged, can succeed.  ``status``:
    the HTTP status, if an answer came.  ``retry_after``: seconds the server
    asked to wait (a hint, from ``Retry-After``).  ``restart``: the partial
    download is useless; truncate it and download from 0.  ``written``: bytes
    already written to the destination before a download broke off (they are
    good; resume after them).
    """

    def __init__(
        self,
        code: str,
        message: str,
        retryable: bool,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        restart: bool = False,
        written: int = 0,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.restart = restart
        self.written = written

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Transport(Protocol):
    """What the sync needs from the server; :class:`HttpsTransport` is the real one."""

    def server_time(self) -> float: ...

    def list_batches(self, *, include_acknowledged: bool = False) -> list[dict]: ...

    def manifest(self, batch_id: str) -> dict: ...

    def download(self, batch_id: str, dest: BinaryIO, *, offset: int = 0) -> int: ...

    def acknowledge(self, batch_id: str, sha256: str) -> dict: ...

    def upload(self, data: bytes, *, file_name: str) -> tuple[int, dict]: ...


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The terminal's Ed25519 key from its PEM file (PKCS#8, unencrypted); ValueError otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the terminal key must be Ed25519")
    return key


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection to ``address`` that still speaks TLS to, and checks, ``host``."""

    def __init__(
        self, host: str, port: int, address: str | None, *, context: ssl.SSLContext, timeout: float
    ):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address or self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class HttpsTransport(Transport):
    """The real :class:`Transport`: ``http.client`` + ``ssl``, every request signed.

    ``base_url``: ``https://name[:port][/prefix]`` (the API is under
    ``<prefix>/api/v1``).  ``key``: the terminal's Ed25519 private key
    (:func:`load_private_key`).  ``ca_file``: the CA bundle to trust, or
    None for the system store.  ``resolve(name) -> address``: how the
    server's name becomes an address (None: the system resolver; an IP
    address in ``base_url`` is used as it is).  ``timeout``: seconds for
    connecting and for each read or write.  ``clock``: Unix seconds, for
    the signature's ``created``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        terminal_id: str,
        key: Ed25519PrivateKey,
        ca_file: Path | str | None,
        resolve: Callable[[str], str] | None = None,
        timeout: float = 60.0,
        agent_version: str = "renkei-agent",
        clock: Callable[[], float] = time.time,
    ):
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"server_url must be https://name[:port]: {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"server_url must not carry a query, fragment or user: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        shown = f"[{self.host}]" if ":" in self.host else self.host
        #: Host header and the signature's @authority: identical by construction.
        self.authority = shown if self.port == 443 else f"{shown}:{self.port}"
        self.origin = f"https://{self.authority}"
        self.prefix = parts.path.rstrip("/") + API_PREFIX
        self.terminal_id = terminal_id
        self.key = key
        self.resolve = resolve
        self.timeout = timeout
        self.agent_version = agent_version
        self.clock = clock
        self.context = self._context(ca_file)
        self._conn: _Connection | None = None
        #: The server's address as ``resolve`` last gave it, kept for this transport's life
        #: (one run): a connection opened again after a reset needs no new DNS answer, which on
        #: a lossy line may not come.  Forgotten when connecting to it fails.
        self._resolved: str | None = None
        #: batch id -> SHA-256 seen in a listing or manifest: the ETag for If-Range.
        self._etags: dict[str, str] = {}

    @staticmethod
    def _context(ca_file: Path | str | None) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                "net.tls", f"cannot load the CA file {ca_file}: {exc}", False
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- the API ------------------------------------------------------------------------------------

    def server_time(self) -> float:
        """The server's clock (Unix seconds); unsigned, so it works while the clock is wrong."""
        body = self._json("GET", "/time", sign=False)
        try:
            return float(body["epoch"])
        except (KeyError, TypeError, ValueError):
            raise TransportError("http.protocol", "the time answer has no epoch", True) from None

    def list_batches(self, *, include_acknowledged: bool = False) -> list[dict]:
        """Batches for this municipality, oldest first; pending only unless asked for all."""
        body = self._json("GET", "/batches?all=1" if include_acknowledged else "/batches")
        batches = body.get("batches") if isinstance(body, dict) else None
        if not isinstance(batches, list):
            raise TransportError("http.protocol", "the batch list has no 'batches' array", True)
        for batch in batches:
            if isinstance(batch, dict) and "batch_id" in batch and "sha256" in batch:
                self._etags[str(batch["batch_id"])] = str(batch["sha256"])
        return batches

    def manifest(self, batch_id: str) -> dict:
        """The signed statement for the batch, as the server sent it (the caller verifies it)."""
        body = self._json("GET", f"/batches/{quote(batch_id, safe='')}/manifest")
        statement = body.get("statement") if isinstance(body, dict) else None
        if isinstance(statement, dict) and "sha256" in statement:
            self._etags[batch_id] = str(statement["sha256"])
        return body

    def download(
        self, batch_id: str, dest: BinaryIO, *, offset: int = 0, etag: str | None = None
    ) -> int:
        """Write the batch file, from byte ``offset`` on, to ``dest``; return the bytes written.

        With ``offset > 0`` the request carries ``Range: bytes=<offset>-`` and
        ``If-Range: "<etag>"`` (``etag`` defaults to the SHA-256 seen for this
        batch in :meth:`list_batches` or :meth:`manifest`).  A ``206`` is
        appended to ``dest``.  A ``416`` whose ``Content-Range: bytes */<size>``
        says ``size == offset`` returns 0: ``dest`` is complete already.  A
        ``200`` to a ranged request, or any other ``416`` (the renkei server
        sends no ``Content-Range`` with it, so "complete" cannot be told
        from "too long"; compare with the manifest's size first), raises ``TransportError("download.restart", restart=True)`` without
        writing: truncate the partial file and call again with offset 0.  A
        line that drops mid-file raises ``net.interrupted`` (or
        ``net.timeout``) with ``written`` set: those bytes are in ``dest``.
        Errors writing ``dest`` (disk full) are the caller's ``OSError``.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        headers = {"Accept": "application/octet-stream"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            tag = etag or self._etags.get(batch_id)
            if tag:
                headers["If-Range"] = f'"{tag}"'
        path = f"/batches/{quote(batch_id, safe='')}"
        response = self._exchange("GET", path, b"", headers=headers)
        if response.status == 416:
            complete = _UNSATISFIED_RANGE.fullmatch(
                (response.getheader("Content-Range") or "").strip()
            )
            if offset > 0 and complete and int(complete.group(1)) == offset:
                self._read_all(response, MAX_ERROR_BODY)
                return 0  # the partial file already holds the whole file
        if response.status == 416 or (response.status == 200 and offset > 0):
            self._drop()  # do not read a whole file only to throw it away
            said = "range not satisfiable" if response.status == 416 else "the whole file"
            raise TransportError(
                "download.restart",
                f"asked for batch {batch_id} from byte {offset}, the server answered "
                f"{response.status} ({said}): truncate the partial file and download it again "
                "from the start",
                True,
                status=response.status,
                restart=True,
            )
        if response.status == 206:
            self._check_range(response, batch_id, offset)
        elif response.status != 200:
            raise self._answer_error(response)
        return self._stream(response, dest)

    def acknowledge(self, batch_id: str, sha256: str) -> dict:
        """Tell the server the batch is safely in the inbox; harmless to repeat."""
        body = json.dumps({"sha256": sha256}).encode("utf-8")
        return self._json(
            "POST",
            f"/batches/{quote(batch_id, safe='')}/ack",
            body,
            headers={"Content-Type": "application/json"},
        )

    def upload(self, data: bytes, *, file_name: str) -> tuple[int, dict]:
        """Send a municipality notice file; ``(201, receipt)`` when new, ``(200, receipt)`` again."""
        headers = {
            "Content-Type": "application/octet-stream",
            FILE_NAME_HEADER: quote(file_name, safe=""),
        }
        response = self._exchange("POST", "/uploads", bytes(data), headers=headers)
        if response.status not in (200, 201):
            raise self._answer_error(response)
        return response.status, self._read_json(response)

    def receipt(self, upload_id: str) -> dict:
        """A receipt the server gave before, again."""
        return self._json("GET", f"/uploads/{quote(upload_id, safe='')}/receipt")

    def get_json(self, path: str) -> Any:
        """A signed GET of ``<prefix>/api/v1<path>`` answered with JSON (e.g. ``/updates/ping``)."""
        return self._json("GET", path)

    def stream(self, path: str) -> Iterator[bytes]:
        """A signed GET of ``<prefix>/api/v1<path>``; the body as an iterator of chunks.

        The request is sent and its status checked *before* this returns, so
        a refusal (404, 401 …) raises :class:`TransportError` here, with
        ``status`` set; errors while reading the body are raised by the
        iterator (``net.interrupted`` when the body ends short of its
        ``Content-Length``).  A caller that stops iterating early (a size limit)
        drops the connection instead of reading the rest.  For the update
        repository's metadata and targets (``update_fetch.py``).
        """
        response = self._exchange(
            "GET", path, b"", headers={"Accept": "application/octet-stream, application/json"}
        )
        if response.status != 200:
            raise self._answer_error(response)
        return self._chunks(response)

    def _chunks(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        finished = False
        try:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except Exception as exc:
                    raise self._network_error(exc) from None
                if not chunk:
                    break
                yield chunk
            if response.length:
                raise TransportError(
                    "net.interrupted",
                    f"the connection to {self.host}:{self.port} broke off, "
                    f"{response.length} bytes short",
                    True,
                )
            finished = True
        finally:
            if not finished or response.will_close:
                self._drop()  # unread rest, a broken line, or the server closes: not reusable

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> HttpsTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------------

    def _json(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        sign: bool = True,
    ) -> Any:
        response = self._exchange(method, path, body, headers=headers, sign=sign)
        if not 200 <= response.status < 300:
            raise self._answer_error(response)
        return self._read_json(response)

    def _headers(
        self, method: str, target: str, body: bytes, extra: Mapping[str, str], sign: bool
    ) -> dict[str, str]:
        headers = {"Host": self.authority, AGENT_HEADER: self.agent_version}
        headers["Accept"] = "application/json"
        headers.update(extra)
        if body or method in {"POST", "PUT"}:
            headers["Content-Length"] = str(len(body))
        if sign:
            headers.update(
                sign_request(
                    method,
                    self.origin + target,
                    {},
                    body,
                    key_id=self.terminal_id,
                    private_key=self.key,
                    created=int(self.clock()),
                    nonce=new_nonce(),
                )
            )
        return headers

    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        sign: bool = True,
    ) -> http.client.HTTPResponse:
        """Send one request and return the response with its body unread.

        A kept-alive connection the server closed meanwhile (keep-alive
        timeout, restart) fails on first use; then the request is signed
        again and sent once more on a new connection.  Every operation of
        the API is idempotent, so this is safe even if the first one arrived.
        """
        target = self.prefix + path
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            sent = self._headers(method, target, body, headers or {}, sign)
            try:
                early = self._send(conn, method, target, body, sent)
                response = conn.getresponse()
            except _STALE as exc:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise self._network_error(exc) from None
            except Exception as exc:
                self._drop()
                raise self._network_error(exc) from None
            except BaseException:
                self._drop()
                raise
            if early or response.status == 413:
                # The server answered before reading the whole body (a 413): it will
                # close the connection whatever its headers say; do not reuse it.
                response.will_close = True
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _send(
        conn: _Connection, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> bool:
        """Send the request; True if the server stopped reading the body early."""
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        view = memoryview(body)
        try:
            for start in range(0, len(view), SEND_CHUNK):
                conn.send(view[start : start + SEND_CHUNK])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            if not view:
                raise
            return True  # the server answered early (413) and closed its side: read the answer
        return False

    def _connection(self) -> _Connection:
        if self._conn is None:
            conn = _Connection(
                self.host, self.port, self._address(), context=self.context, timeout=self.timeout
            )
            try:
                conn.connect()
            except Exception as exc:
                conn.close()
                self._resolved = None  # perhaps the name moved: ask the DNS again next time
                raise self._network_error(exc) from None
            self._conn = conn
        return self._conn

    def _address(self) -> str | None:
        """The address to connect to: resolved through ``resolve`` (LGWAN DNS) when given."""
        if self.resolve is None or _is_ip(self.host):
            return None
        if self._resolved is not None:
            return self._resolved
        try:
            address = self.resolve(self.host)
        except TransportError:
            raise
        except Exception as exc:  # an injected resolver: whatever it raises means "no address"
            raise TransportError(
                "net.dns", f"cannot resolve the server name {self.host}: {exc}", True
            ) from None
        if not address or not _is_ip(address):
            raise TransportError(
                "net.dns", f"the server name {self.host} resolved to {address!r}", True
            )
        self._resolved = address
        return address

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- answers --------------------------------------------------------------------------------

    def _read_json(self, response: http.client.HTTPResponse) -> Any:
        data = self._read_all(response)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise TransportError(
                "http.protocol",
                f"the server's answer ({response.status}) is not JSON",
                True,
                status=response.status,
            ) from None

    def _read_all(self, response: http.client.HTTPResponse, limit: int | None = None) -> bytes:
        try:
            data = response.read() if limit is None else response.read(limit)
        except Exception as exc:
            self._drop()
            raise self._network_error(exc) from None
        if limit is not None and not response.isclosed():
            self._drop()  # more than we want to read: drop the connection, not the rest
        elif response.will_close:
            self._drop()
        return data

    def _stream(self, response: http.client.HTTPResponse, dest: BinaryIO) -> int:
        written = 0
        while True:
            try:
                chunk = response.read(CHUNK)
            except Exception as exc:
                self._drop()
                error = self._network_error(exc)
                error.written = written
                raise error from None
            if not chunk:
                break
            try:
                dest.write(chunk)
            except BaseException:
                self._drop()  # the rest of the body is unread
                raise
            written += len(chunk)
        if response.length:
            # http.client's read(amt) returns b"" at a premature end instead of raising:
            # bytes the Content-Length promised are missing.
            self._drop()
            raise TransportError(
                "net.interrupted",
                f"the connection to {self.host}:{self.port} broke off after {written} bytes, "
                f"{response.length} short",
                True,
                written=written,
            )
        if response.will_close:
            self._drop()
        return written

    def _check_range(self, response: http.client.HTTPResponse, batch_id: str, offset: int) -> None:
        found = _CONTENT_RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
        if offset > 0 and found and int(found.group(1)) == offset:
            return
        self._drop()
        raise TransportError(
            "download.restart",
            f"asked for batch {batch_id} from byte {offset}, the server sent "
            f"Content-Range {response.getheader('Content-Range')!r}: download it again "
            "from the start",
            True,
            status=206,
            restart=True,
        )

    def _answer_error(self, response: http.client.HTTPResponse) -> TransportError:
        """A non-success answer as a :class:`TransportError` (reads and closes the response)."""
        status = response.status
        data = self._read_all(response, MAX_ERROR_BODY)
        code, message = f"http.{status}", response.reason or "error"
        try:
            error = json.loads(data.decode("utf-8"))["error"]
            code, message = str(error["code"]), str(error.get("message") or message)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            pass
        retryable = status >= 500 or status in _RETRYABLE_STATUS or code in _RETRYABLE_CODES
        return TransportError(
            code,
            f"the server answered {status}: {message}",
            retryable,
            status=status,
            retry_after=_retry_after(response.getheader("Retry-After"), self.clock()),
        )

    def _network_error(self, exc: BaseException) -> TransportError:
        """Map what ``socket``, ``ssl`` and ``http.client`` raise to a stable code.

        Anything else is a bug, not the network: it is raised again as it is.
        """
        where = f"{self.host}:{self.port}"
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            return TransportError(
                "net.tls",
                f"the server {where} did not prove its identity: {exc.verify_message or exc} "
                "(check ca_file and server_url)",
                False,
            )
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
            return TransportError(
                "net.timeout", f"{where} did not answer in {self.timeout:g} s", True
            )
        if isinstance(exc, ConnectionRefusedError):
            return TransportError("net.refused", f"{where} refused the connection", True)
        if isinstance(exc, socket.gaierror):
            return TransportError("net.dns", f"cannot resolve {self.host}: {exc.strerror}", True)
        if isinstance(exc, http.client.IncompleteRead):
            return TransportError(
                "net.interrupted", f"the connection to {where} broke off mid-answer", True
            )
        if isinstance(exc, _STALE):
            return TransportError("net.reset", f"{where} closed the connection ({exc!r})", True)
        if isinstance(exc, ssl.SSLError):
            return TransportError("net.tls", f"TLS with {where} failed: {exc}", True)
        if isinstance(exc, http.client.HTTPException):
            return TransportError("http.protocol", f"{where} broke HTTP: {exc!r}", True)
        if isinstance(exc, OSError):
            reason = exc.strerror or repr(exc)
            return TransportError("net.unreachable", f"cannot reach {where}: {reason}", True)
        raise exc
