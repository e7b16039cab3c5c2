"""aeanomaly.review.server: which bind needs a token, the bundle's version stamp, and refusing an address
that cannot be bound (without starting a server)."""

from __future__ import annotations

import errno
import json
import socket

import pytest

from aeanomaly.errors import ConfigError
from aeanomaly.review.server import LOCAL_HOSTS, bundle_version, check_bind, check_listen, run_server


def test_check_bind_requires_a_token_off_localhost():
    assert check_bind("127.0.0.1", None) == (None, False)
    assert check_bind("localhost", None) == (None, False)
    token, generated = check_bind("0.0.0.0", None)
    assert generated and len(token) >= 16
    assert check_bind("192.168.1.5", "x" * 16) == ("x" * 16, False)
    with pytest.raises(ConfigError, match="at least 16"):
        check_bind("0.0.0.0", "short")


def test_check_bind_enforces_a_given_token_on_localhost_and_generates_fresh_ones():
    assert set(LOCAL_HOSTS) == {"127.0.0.1", "localhost", "::1"}
    assert check_bind("::1", "y" * 20) == ("y" * 20, False)
    with pytest.raises(ConfigError, match="--token must be at least 16 characters"):
        check_bind("localhost", "short")
    a, b = check_bind("10.0.0.1", None)[0], check_bind("10.0.0.1", None)[0]
    assert a != b and a.replace("-", "").replace("_", "").isalnum()  # URL-safe, random


def _bundle(d, created="2024-01-01T00:00:00", threshold=0.5):
    d.mkdir(exist_ok=True)
    (d / "bundle.json").write_text(json.dumps({"created": created, "format_version": 1}))
    (d / "calibration.json").write_text(json.dumps({"threshold": threshold}))
    return d


def test_bundle_version_changes_with_a_refit_or_a_recalibration(tmp_path):
    b = _bundle(tmp_path / "b")
    v = bundle_version(b)
    created, digest = v.split("+")
    assert created == "2024-01-01T00:00:00" and len(digest) == 12 and int(digest, 16) >= 0
    assert bundle_version(b) == v  # stable
    assert bundle_version(_bundle(tmp_path / "c")) == v  # content, not location
    _bundle(b, threshold=0.6)
    recal = bundle_version(b)
    assert recal.startswith("2024-01-01T00:00:00+") and recal != v
    _bundle(b, created="2025-02-02T00:00:00", threshold=0.6)
    assert bundle_version(b).startswith("2025-02-02T00:00:00+")
    (b / "calibration.json").unlink()
    with pytest.raises(FileNotFoundError):
        bundle_version(b)


def test_check_listen_refuses_a_port_in_use_and_an_unknown_host():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", 0)  # a free port passes
    with pytest.raises(ConfigError, match="cannot resolve host 'no-such-host.invalid'"):
        check_listen("no-such-host.invalid", 8000)


def test_run_server_turns_a_taken_port_into_an_oserror():
    pytest.importorskip("werkzeug")
    ready = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OSError) as err:
            run_server(lambda environ, start: [], "127.0.0.1", port, on_ready=ready.append)
    assert err.value.errno == errno.EADDRINUSE or "in use" in str(err.value)
    assert ready == []  # never reported as listening
