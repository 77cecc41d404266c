"""``GET /_renkei/precheck``: the front asks whether an upload's request head may go on.

nginx (server/front/) sends this subrequest, without the body, before it
reads a large body; the location is internal to nginx, so no client reaches
it.  The answer is in nginx's ``auth_request`` terms: 204 go on; 401 the
signature's head is refused (``Renkei-Error``/``Renkei-Message`` say why,
and nginx answers the client 401 with them); 403 this address is locked out
for this key (nginx answers 429 with ``Retry-After``).  Anything else makes
nginx answer 503.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response

from server.api import ApiError
from server.auth import check_head

bp = Blueprint("precheck", __name__)

PRECHECK_PATH = "/_renkei/precheck"
#: What nginx writes into a JSON string without escaping it: printable ASCII, no quote or
#: backslash.  Anything else in a message is replaced, so the client's answer stays JSON.
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def _header_text(text: str) -> str:
    return _UNSAFE.sub("?", text)[:300]


@bp.get(PRECHECK_PATH)
def precheck() -> Response:
    try:
        check_head()
    except ApiError as error:
        status = 403 if error.status == 429 else 401
        headers = {
            "Renkei-Error": _header_text(error.code),
            "Renkei-Message": _header_text(error.message),
            **error.headers,
        }
        return Response(status=status, headers=headers)
    return Response(status=204)
