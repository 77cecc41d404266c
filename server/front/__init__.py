"""The front: nginx between the network and gunicorn (TLS, deadlines, limits, buffering).

``renkei-server front`` renders ``nginx.conf`` from the server's configuration
(:func:`nginx_config`), prepares the run folder and replaces itself with nginx
(:func:`prepare_front`, :func:`nginx_argv`).  gunicorn listens only on a
socket in that folder; the app trusts the client address nginx reports
because nothing else can reach that socket.
"""

from server.front.nginx import TLS12_CIPHERS, nginx_config
from server.front.run import (
    front_config_text,
    nginx_argv,
    prepare_front,
    prepare_run_dir,
)

__all__ = [
    "TLS12_CIPHERS",
    "front_config_text",
    "nginx_argv",
    "nginx_config",
    "prepare_front",
    "prepare_run_dir",
]
