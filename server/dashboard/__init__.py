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

from flask import Flask

__all__ = ["register_dashboard"]


def register_dashboard(app: Flask) -> None:
    from server.dashboard import fleet, login, municipality

    for module in (login, fleet, municipality):
        app.register_blueprint(module.bp)
