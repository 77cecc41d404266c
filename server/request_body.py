"""Request bodies: the size limit holds for a chunked body as for one with a Content-Length.

Werkzeug enforces ``max_content_length`` on a body without Content-Length
(``Transfer-Encoding: chunked``, which gunicorn decodes and marks with
``wsgi.input_terminated``) by reading at most that many bytes — and then
stops, silently: ``get_data()`` returns the first ``max_content_length``
bytes as if they were the whole body.  The signature check then sees a body
that does not match its Content-Digest and answers ``401 sig.digest``,
counted as the terminal's failed request, for what is a body too large.

:class:`LimitedRequest` reads such a body up to one byte past the limit:
reaching that byte is ``413 request.too_large`` (Werkzeug's
:class:`~werkzeug.exceptions.RequestEntityTooLarge`, before anything checks
the signature), and a body of exactly the limit is still read whole.  A body
with a Content-Length over the limit is refused before it is read, as before.
"""

from __future__ import annotations

from typing import IO

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_content_length, get_input_stream

__all__ = ["LimitedRequest"]


class _AtMost(LimitedStream):
    """A stream of at most ``limit`` bytes whose ``limit + 1``-th byte raises 413."""

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(stream, limit + 1, is_max=True)

    def readinto(self, b: bytearray) -> int | None:  # type: ignore[override]
        size = super().readinto(b)
        if self.is_exhausted:  # a byte past the maximum arrived
            raise RequestEntityTooLarge()
        return size


class LimitedRequest(Request):
    """Flask's request whose body stream refuses a chunked body over the limit (413)."""

    @cached_property
    def stream(self) -> IO[bytes]:
        if self.shallow:
            raise RuntimeError("this request was created with shallow=True: no body may be read")
        limit = self.max_content_length
        if (
            limit is not None
            and get_content_length(self.environ) is None
            and "wsgi.input_terminated" in self.environ
        ):
            return _AtMost(self.environ["wsgi.input"], limit)  # type: ignore[return-value]
        return get_input_stream(self.environ, max_content_length=limit)
