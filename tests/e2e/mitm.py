"""A man in the middle on the LGWAN router: terminates TLS, forwards to the server, forges answers.

The strongest attacker short of the server's signing key: it holds a TLS
certificate the terminal trusts (the e2e tests mint one from the server's
own dev CA — a mis-issued certificate, a compromised CA, a TLS-terminating
device on the path) and the router redirects the terminal's HTTPS to it.
It passes every request on unchanged (the terminal's signatures stay
valid) and changes answers according to ``--forge``:

``manifest``  the batch manifest's signed statement (a byte of it): the signature breaks;
``file``      the batch file's bytes (same length): the hash no longer matches;
``receipt``   the upload receipt's statement: the signature breaks;
``none``      nothing: only listen (and record, for a replay).

Every request it saw is appended to ``--record`` (JSON lines: method, path,
headers, body in base64) — what a replay attacker would have.

Run in the router's namespace::

    python -m tests.e2e.mitm --listen 10.1.1.1:8443 --cert C --key K \\
        --upstream 10.20.0.10:443 --name renkei.test --ca CA --forge manifest --record F

Prints ``ready`` when it listens; runs until killed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import re
import socket
import ssl
import sys
import threading

__all__ = ["forge", "main"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def forge(mode: str, method: str, path: str, body: bytes) -> bytes:
    """The answer body as the attacker changes it (unchanged when the mode does not apply)."""
    if mode == "manifest" and method == "GET" and path.endswith("/manifest"):
        signed = json.loads(body)
        signed["statement"]["records"] = int(signed["statement"].get("records", 0)) + 1
        return json.dumps(signed).encode()
    if mode == "file" and method == "GET" and re.fullmatch(r"/api/v1/batches/[^/]+", path):
        if not body:
            return body
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]
    if mode == "receipt" and method == "POST" and path == "/api/v1/uploads":
        signed = json.loads(body)
        signed["statement"]["records"] = int(signed["statement"].get("records", 0)) + 1
        return json.dumps(signed).encode()
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.mitm")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--forge", choices=["manifest", "file", "receipt", "none"], default="none")
    parser.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    upstream_host, upstream_port = args.upstream.rsplit(":", 1)
    client_tls = ssl.create_default_context(cafile=args.ca)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:  # type: ignore[no-untyped-def]
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            with lock, open(args.record, "a", encoding="utf-8") as out:
                out.write(
                    json.dumps(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": headers,
                            "body": base64.b64encode(body).decode(),
                        }
                    )
                    + "\n"
                )
            raw = socket.create_connection((upstream_host, int(upstream_port)), timeout=30)
            conn = http.client.HTTPSConnection(args.name, int(upstream_port), timeout=30)
            conn.sock = client_tls.wrap_socket(raw, server_hostname=args.name)
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = forge(args.forge, self.command, self.path.split("?")[0], answer.read())
            conn.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        do_GET = do_POST = _relay

    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(args.cert, args.key)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
