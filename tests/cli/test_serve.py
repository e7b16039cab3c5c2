"""`aeanomaly serve` as a command: bundle refusals, localhost vs token binds, a port in use, option errors
(the blocking server loop is replaced; the app itself is tested in tests/review/)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

pytest.importorskip("flask")

from aeanomaly.cli.serve import serve  # noqa: E402
from aeanomaly.review import server  # noqa: E402


@pytest.fixture
def served(monkeypatch):
    """Replace the blocking server loop; record what it was asked to serve."""
    calls = []

    def fake(app, host, port, on_ready=None):
        calls.append((app, host, port))
        on_ready(port)

    monkeypatch.setattr(server, "run_server", fake)
    return calls


def test_serve_refuses_a_bundle_it_cannot_load(fitted_bundle, tmp_path, served):
    broken = tmp_path / "broken"
    shutil.copytree(fitted_bundle, broken)
    (broken / "model.keras").write_bytes(b"garbage")
    res = CliRunner().invoke(serve, [str(broken), "--db", str(tmp_path / "r.sqlite"), "--quiet"])
    assert res.exit_code == 2 and not served
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.keras" in lines[0]
    res = CliRunner().invoke(serve, [str(tmp_path / "nothing"), "--quiet"])
    assert res.exit_code == 2 and "not a bundle directory" in res.output


def test_serve_binds_localhost_without_token(fitted_bundle, tmp_path, served):
    res = CliRunner().invoke(serve, [str(fitted_bundle), "--db", str(tmp_path / "r.sqlite"), "--port", "8123",
                                     "--quiet"])
    assert res.exit_code == 0, res.output
    (app, host, port), = served
    assert (host, port) == ("127.0.0.1", 8123) and "http://127.0.0.1:8123/" in res.output and "token" not in res.output
    assert app.test_client().get("/").status_code == 200


def test_serve_off_localhost_generates_and_requires_a_token(fitted_bundle, tmp_path, served):
    res = CliRunner().invoke(serve, [str(fitted_bundle), "--db", str(tmp_path / "r.sqlite"), "--host", "0.0.0.0",
                                     "--quiet"])
    assert res.exit_code == 0, res.output
    token = res.output.split("access token (generated): ")[1].split()[0]
    (app, host, _), = served
    assert host == "0.0.0.0" and f"?token={token}" in res.output
    client = app.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_serve_refuses_a_port_in_use(fitted_bundle, tmp_path, served):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        res = CliRunner().invoke(serve, [str(fitted_bundle), "--port", str(port), "--db", str(tmp_path / "r.sqlite")])
    assert res.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in res.output and not served


def test_serve_option_errors(fitted_bundle, tmp_path, served):
    r = CliRunner().invoke(serve, [str(fitted_bundle), "--host", "0.0.0.0", "--token", "short", "--quiet"])
    assert r.exit_code == 2 and "at least 16" in r.output
    r = CliRunner().invoke(serve, [str(fitted_bundle), "--scans", str(tmp_path / "none"), "--quiet"])
    assert r.exit_code == 2 and "scans folder does not exist" in r.output
    assert not served
