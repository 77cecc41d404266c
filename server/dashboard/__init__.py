"""The ministry operator's dashboard: server-rendered pages inside the Flask app.

One blueprint per resource — the login (``login.py``), the fleet of ~1,900
receiving units (``fleet.py``) and one municipality (``municipality.py``) —
all under ``/dashboard``, with Jinja templates and one style sheet in this
package: no front-end build, no JavaScript.  ``guard.py`` holds what every
page passes (network allow-list, login, CSRF, headers); ``states.py`` the one
state of a municipality; ``volume.py`` and ``chart.py`` the volume chart.

The blueprint modules are imported inside :func:`register_dashboard`, as
``server.api`` does, because they use ``server.app`` which imports this.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from markupsafe import Markup

from common.printable import printable

__all__ = ["register_dashboard"]


def shown(value: Any) -> Any:
    """Jinja's ``finalize``: every ``{{ value }}`` a page prints, with control, format and
    bidirectional characters written as escapes (``common.printable``).

    HTML escaping stops markup; it does not stop a bidirectional override in
    a file name or a C1 control in an agent version from making one string
    look like another on the operator's screen.  Applied to every printed
    value, so no template can forget it; markup the templates made
    themselves (``Markup``) is theirs and passes as it is.
    """
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, keep="\n\t")
    return value


def register_dashboard(app: Flask) -> None:
    from server.dashboard import fleet, login, municipality

    # Templates compile on first use, with the environment's finalize of that moment.
    app.jinja_env.finalize = shown
    for module in (login, fleet, municipality):
        app.register_blueprint(module.bp)
