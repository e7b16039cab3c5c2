"""Serving the review app: which bind needs a token, the bundle's version stamp, the server loop."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from ..errors import ConfigError

#: Hosts that count as this machine only (no token needed).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, token: str | None) -> tuple[str | None, bool]:
    """The token a server bound to ``host`` must require, and whether it was generated now.

    A local host needs none (a given token is still enforced); any other host needs one, and one is
    generated when none was given. A given token must be at least 16 characters.
    """
    if token is not None:
        if len(token) < 16:
            raise ConfigError("--token must be at least 16 characters")
        return token, False
    if host in LOCAL_HOSTS:
        return None, False
    return secrets.token_urlsafe(24), True


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """``<created>+<sha256[:12] of bundle.json and calibration.json>``: changes with every refit or
    recalibration, so results of another bundle state are never mixed with this one's."""
    d = Path(bundle_dir)
    h = hashlib.sha256()
    created = ""
    for name in ("bundle.json", "calibration.json"):
        raw = (d / name).read_bytes()
        h.update(raw)
        if name == "bundle.json":
            created = str(json.loads(raw).get("created", ""))
    return f"{created}+{h.hexdigest()[:12]}"


def run_server(app, host: str, port: int, on_ready=None) -> None:
    """Serve ``app`` with Werkzeug's threaded server until interrupted (Ctrl-C).

    ``on_ready(port)`` is called once the socket listens (with the bound port, useful for port 0).
    A port that cannot be bound raises OSError (Werkzeug itself would print and exit).
    """
    import errno

    from werkzeug.serving import make_server

    try:
        server = make_server(host, port, app, threaded=True)
    except SystemExit:
        raise OSError(errno.EADDRINUSE, f"cannot listen on {host}:{port}: the address is in use") from None
    try:
        if on_ready is not None:
            on_ready(server.server_port)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def check_listen(host: str, port: int) -> None:
    """Fail early (before the bundle loads) when ``host:port`` cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"cannot resolve host {host!r}: {err.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
