"""``aeanomaly serve``: the review web app (Flask, the ``[web]`` extra) on one bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..errors import ConfigError
from .common import check_bundle, fail, handles_errors, say, start_tensorflow


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any other than 127.0.0.1/localhost/::1 requires an access token.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db", "db_path", default="review.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="Feedback database (created if absent); uploads and caches go beside it.")
@click.option("--scans", "scans_dir", type=click.Path(), help="Folder of scans to put on the worklist.")
@click.option("--token", default=None, help="Access token (at least 16 characters); generated and printed "
                                            "when binding another host without one.")
@click.option("--upload-dir", type=click.Path(file_okay=False), help="Server-owned folder for uploads.")
@click.option("--max-upload-mb", default=1024.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--quiet", is_flag=True, help="No start-up lines (the address is still printed).")
@handles_errors
def serve(bundle, host, port, db_path, scans_dir, token, upload_dir, max_upload_mb, quiet):
    """Serve the review viewer for BUNDLE: a worklist, uploads, the slice viewer, and verdicts.

    \b
    aeanomaly serve BUNDLE                       # http://127.0.0.1:8050
    aeanomaly serve BUNDLE --scans DIR --db review.sqlite
    aeanomaly serve BUNDLE --host 0.0.0.0        # prints a generated access token
    """
    from ..review import server

    check_bundle(bundle)
    token, generated = server.check_bind(host, token)
    server.check_listen(host, port)
    if scans_dir is not None and not Path(scans_dir).exists():
        raise ConfigError("scans folder does not exist", scans_dir)
    import importlib.util

    if importlib.util.find_spec("flask") is None:
        fail("aeanomaly serve needs Flask: pip install 'aeanomaly[web]'")
    say(quiet, f"loading bundle {bundle} …")
    start_tensorflow()
    from ..review.app import create_app

    app = create_app(bundle, db_path, scans_dir=scans_dir, upload_dir=upload_dir, token=token,
                     max_upload_mb=max_upload_mb)
    logging.getLogger("werkzeug").setLevel(logging.WARNING if quiet else logging.INFO)
    def ready(bound_port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound_port}/" + (f"?token={token}" if token else "")
        if generated:
            click.echo(f"access token (generated): {token}")
        click.echo(f"review server on {url} (database {db_path}); Ctrl-C stops it")

    server.run_server(app, host, port, on_ready=ready)
