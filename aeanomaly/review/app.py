"""The review web app (Flask): a worklist, uploads scored in the background, a slice viewer, and
reviewer verdicts stored in the feedback database.

Security: the CLI binds 127.0.0.1 unless told otherwise and then requires an access token
(:func:`aeanomaly.review.server.check_bind`); every POST carries a per-session CSRF token; uploads have a size limit and are
stored under a server-owned folder with generated names; only rendered PNGs and reports are served,
never files by path; errors render a one-line page, never a stack trace.
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import os
import secrets
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import AeAnomalyError, BundleError, ConfigError
from .cache import VIEWER_WINDOWS, ScanCache
from .db import FeedbackDB, FeedbackError
from .jobs import Scorer
from .server import bundle_version
from .templates import SCRIPTS, TEMPLATES
from .uploads import UploadError, display_name, store_upload

log = logging.getLogger("aeanomaly.review")

DEFAULT_MAX_UPLOAD_MB = 1024


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float)) and digits <= 1:
        return f"{float(v):.{digits}f}"
    return f"{float(v):.{digits}g}"


class ReviewState:
    """What the app holds: the detector, the database, the scorer and the open viewer caches."""

    def __init__(self, detector, db: FeedbackDB, scorer: Scorer, bundle_dir: Path, version: str,
                 upload_root: Path, max_bytes: int, token: str | None):
        self.detector, self.db, self.scorer = detector, db, scorer
        self.bundle_dir, self.bundle_version = bundle_dir, version
        self.upload_root, self.max_bytes, self.token = upload_root, max_bytes, token
        self._caches: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def cache(self, row: dict) -> ScanCache | None:
        """The viewer cache of a scored scan row (kept open for the 8 most recent scans)."""
        if row.get("status") != "done" or not row.get("cache_dir") or not Path(row["cache_dir"]).is_dir():
            return None
        with self._lock:
            c = self._caches.get(row["id"])
            if c is None or c.dir != Path(row["cache_dir"]):
                c = ScanCache(row["cache_dir"])
                self._caches[row["id"]] = c
            self._caches.move_to_end(row["id"])
            while len(self._caches) > 8:
                self._caches.popitem(last=False)
            return c


def create_app(bundle_dir: str | os.PathLike, db_path: str | os.PathLike, scans_dir: str | os.PathLike | None = None,
               upload_dir: str | os.PathLike | None = None, token: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, detector=None):
    """The review app for one bundle.

    Parameters
    ----------
    bundle_dir : path
        A fitted bundle; loaded now (BundleError when it cannot be).
    db_path : path
        Feedback database (created if absent). Uploads and viewer caches go in
        ``<db folder>/<db stem>_files/`` unless ``upload_dir`` is given.
    scans_dir : path, optional
        Folder whose scans are added to the worklist and scored in the background.
    upload_dir : path, optional
        Server-owned folder for uploads.
    token : str, optional
        Access token every request must carry (``?token=``, once, sets a session cookie; or an
        ``Authorization: Bearer`` header). None: no token (only for a local bind; see :func:`check_bind`).
    max_upload_mb : float
        Largest upload accepted (413 beyond).
    detector : AnomalyDetector, optional
        Already loaded from ``bundle_dir`` (saves loading it twice).

    Returns
    -------
    flask.Flask
        ``app.extensions["aeanomaly_review"]`` is the :class:`ReviewState`.
    """
    import flask
    from jinja2 import DictLoader
    from werkzeug.exceptions import HTTPException

    bundle_dir = Path(bundle_dir)
    if detector is None:
        from ..detector import AnomalyDetector

        try:
            detector = AnomalyDetector.load(bundle_dir)
        except AeAnomalyError:
            raise
        except Exception as err:  # keras/h5 errors of a damaged bundle
            raise BundleError(f"cannot load the bundle ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                              bundle_dir) from None
    try:
        version = bundle_version(bundle_dir)
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read bundle.json/calibration.json: {err}", bundle_dir) from None
    db_path = Path(db_path)
    db = FeedbackDB(db_path)
    work = db_path.parent / f"{db_path.stem}_files"
    upload_root = Path(upload_dir) if upload_dir else work / "uploads"
    upload_root.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(detector, db, work / "cache", version)
    if not (max_upload_mb > 0):
        raise ConfigError(f"max upload size must be positive, got {max_upload_mb}")
    state = ReviewState(detector, db, scorer, bundle_dir, version, upload_root, int(max_upload_mb * (1 << 20)), token)

    # rows a previous server left unfinished, scans reviewed under an earlier bundle state, then --scans
    for row in db.scans(version, where="s.status IN ('queued', 'scoring')"):
        if Path(row["path"]).exists():
            scorer.submit(row["id"], Path(row["path"]))
    for old in db.carried_over(version):
        if Path(old["path"]).exists():
            scan_id, _ = db.add_scan(old["sha256"], old["path"], version, name=old["name"],
                                     uploaded=bool(old["uploaded"]))
            scorer.submit(scan_id, Path(old["path"]))
    if scans_dir is not None:
        from ..io import find_scans

        for p in find_scans(scans_dir):
            scorer.submit_path(p)

    app = flask.Flask("aeanomaly.review")
    app.secret_key = secrets.token_bytes(32)
    app.config.update(MAX_CONTENT_LENGTH=state.max_bytes + (64 << 10), SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", PROPAGATE_EXCEPTIONS=False, TRAP_HTTP_EXCEPTIONS=False)
    app.jinja_loader = DictLoader(TEMPLATES)
    app.jinja_env.autoescape = True  # the templates are named without .html: escape every one of them
    app.extensions["aeanomaly_review"] = state

    def csrf_token() -> str:
        if "csrf" not in flask.session:
            flask.session["csrf"] = secrets.token_urlsafe(32)
        return flask.session["csrf"]

    @app.context_processor
    def globals_():
        return {"csrf_token": csrf_token, "fmt": _fmt, "reviewer": flask.session.get("reviewer", ""),
                "bundle_name": bundle_dir.name, "max_upload_mb": max_upload_mb}

    def wants_json() -> bool:
        r = flask.request
        return r.path.startswith("/api/") or r.is_json or (
            r.accept_mimetypes.best_match(["application/json", "text/html"]) == "application/json")

    def fail(code: int, message: str, title: str | None = None):
        titles = {400: "Bad request", 401: "Access token required", 403: "Forbidden", 404: "Not found",
                  405: "Method not allowed", 413: "Upload too large", 500: "Server error"}
        if wants_json():
            return flask.jsonify(error=message), code
        return flask.render_template("error.html", code=code, title=title or titles.get(code, "Error"),
                                     message=message), code

    @app.errorhandler(HTTPException)
    def http_error(err):
        messages = {413: f"the upload is larger than the limit of {state.max_bytes / (1 << 20):g} MB",
                    404: "no such page or scan", 405: "that method is not allowed here"}
        return fail(err.code or 500, messages.get(err.code, err.description or err.name))

    @app.errorhandler(Exception)
    def unexpected(err):
        log.exception("internal error on %s", flask.request.path)
        return fail(500, "internal error; the server log has the details")

    @app.before_request
    def guard():
        r = flask.request
        if state.token is not None:
            given = r.args.get("token") or ""
            auth = r.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[7:]
            if given and hmac.compare_digest(given.encode(), state.token.encode()):
                flask.session["auth"] = True
                if r.method == "GET" and "token" in r.args:  # drop it from the address bar
                    args = {k: v for k, v in r.args.items() if k != "token"}
                    return flask.redirect(flask.url_for(r.endpoint, **(r.view_args or {}), **args)
                                          if r.endpoint else "/", code=303)
            elif not flask.session.get("auth"):
                return fail(401, "this server needs its access token: open the address with ?token=… that was "
                                 "printed when it started")
        if r.method == "POST":
            sent = r.headers.get("X-CSRF-Token") or r.form.get("csrf_token") or ""
            expected = flask.session.get("csrf")
            if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                return fail(400, "missing or invalid CSRF token: reload the page and try again",
                            "Form expired")

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        return resp

    def payload() -> dict:
        r = flask.request
        data = r.get_json(silent=True) if r.is_json else r.form.to_dict()
        return data if isinstance(data, dict) else {}

    def reviewer_from(data: dict) -> str:
        name = str(data.get("reviewer") or flask.session.get("reviewer") or "").strip()
        if not name:
            raise FeedbackError("enter your name in the Reviewer field first")
        flask.session["reviewer"] = name[:100]
        return name

    def scan_or_404(scan_id: int) -> dict:
        row = db.scan(scan_id)
        if row is None:
            flask.abort(404)
        return row

    @app.errorhandler(AeAnomalyError)
    def refused(err):
        return fail(int(getattr(err, "http_status", 400)), err.reason)

    # -- pages ---------------------------------------------------------------------------------
    @app.get("/")
    def worklist():
        scans = db.scans(version)
        return flask.render_template("worklist.html", scans=scans,
                                     pending=any(s["status"] in ("queued", "scoring") for s in scans))

    @app.get("/healthz")
    def healthz():
        return flask.jsonify(ok=True, bundle_version=version, idle=scorer.idle())

    @app.get("/static/<name>")
    def script(name: str):
        if name not in SCRIPTS:
            flask.abort(404)
        return flask.Response(SCRIPTS[name], mimetype="text/javascript")

    @app.get("/api/scans")
    def api_scans():
        return flask.jsonify(scans=[{k: s[k] for k in ("id", "name", "sha256", "status", "error", "scan_score",
                                                       "p_value", "label", "n_lesions", "verdict", "reviewer",
                                                       "reviewed_at", "n_missed")} for s in db.scans(version)])

    @app.post("/reviewer")
    def set_reviewer():
        data = payload()
        reviewer_from(data)
        nxt = str(data.get("next") or "/")
        return flask.redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/", code=303)

    @app.post("/upload")
    def upload():
        from ..io import load_scan

        f = flask.request.files.get("scan")
        if f is None or not f.filename:
            raise UploadError("choose a scan file to upload")
        name = display_name(f.filename)
        path, sha, folder = store_upload(f.stream, f.filename, state.upload_root, state.max_bytes)
        try:
            scan = load_scan(path)
        except (AeAnomalyError, OSError, ValueError, MemoryError) as err:
            shutil.rmtree(folder, ignore_errors=True)
            reason = err.reason if isinstance(err, AeAnomalyError) else (str(err).splitlines()[0] or type(err).__name__)
            raise UploadError(f"{name}: cannot be read as CT ({reason.replace(str(folder), '')})") from None
        scan_id, created = db.add_scan(sha, path, version, name=name, uploaded=True)
        if created:
            scorer.submit(scan_id, scan)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        if wants_json():
            return flask.jsonify(id=scan_id, created=created, url=flask.url_for("viewer", scan_id=scan_id))
        return flask.redirect(flask.url_for("viewer", scan_id=scan_id), code=303)

    @app.get("/api/scan/<int:scan_id>/status")
    def scan_status(scan_id: int):
        row = scan_or_404(scan_id)
        prog = scorer.progress(scan_id)
        if row["status"] in ("done", "error"):
            prog = {"stage": row["status"], "progress": 1.0}
        return flask.jsonify(id=scan_id, status=row["status"], error=row["error"], label=row["label"],
                             scan_score=row["scan_score"], p_value=row["p_value"], **prog)

    @app.get("/scan/<int:scan_id>")
    def viewer(scan_id: int):
        row = scan_or_404(scan_id)
        cache = state.cache(row)
        if row["status"] == "done" and cache is None:
            row = dict(row, status="error", error="the viewer cache of this scan is gone; upload it again")
        ctx = {"scan": row, "lesions": db.lesions(scan_id), "reviews": db.reviews(scan_id),
               "windows": list(VIEWER_WINDOWS)}
        if cache is not None:
            meta = cache.meta
            nz, ny, nx = meta["shape"]
            sz, sy, sx = meta["spacing"]
            view_w = 512
            ctx.update(meta=meta, view_w=view_w, view_h=int(round(view_w * (ny * sy) / (nx * sx))), data={
                "id": scan_id, "n": nz, "ny": ny, "nx": nx, "slice_scores": meta["slice_scores"],
                "lesions": [{"id": l["lesion_id"], "z": l["z"]} for l in ctx["lesions"]],
                "missed": db.missed(scan_id),
                "slice_url": flask.url_for("slice_png", scan_id=scan_id, z=999999),
                "lesion_url": flask.url_for("lesion_verdict", scan_id=scan_id, lesion_id=999999),
                "missed_url": flask.url_for("add_missed", scan_id=scan_id)})
        return flask.render_template("viewer.html", **ctx)

    @app.get("/scan/<int:scan_id>/slice/<int:z>.png")
    def slice_png(scan_id: int, z: int):
        cache = state.cache(scan_or_404(scan_id))
        layer = flask.request.args.get("layer", "ct")
        window = flask.request.args.get("window", "")
        if cache is None or not 0 <= z < cache.n_slices:
            flask.abort(404)
        if layer not in ("ct", "heat", "contour") or (window and window not in VIEWER_WINDOWS):
            raise FeedbackError(f"unknown layer {layer!r} or window {window!r}")
        resp = flask.Response(cache.png(z, layer, window), mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    @app.get("/scan/<int:scan_id>/report.html")
    def report(scan_id: int):
        row = scan_or_404(scan_id)
        cache = state.cache(row)
        if cache is None:
            raise FeedbackError("this scan has no result to report yet")
        lesions = db.lesions(scan_id)
        zs = [int(cache.meta["top_slice"])] + [int(round(l["z"])) for l in lesions]
        zs = [z for i, z in enumerate(zs) if z not in zs[:i] and 0 <= z < cache.n_slices][:8]
        images = [(z, base64.b64encode(cache.composite_png(z)).decode("ascii")) for z in zs]
        html = flask.render_template("report.html", scan=row, lesions=lesions, reviews=db.reviews(scan_id),
                                     missed=db.missed(scan_id), images=images)
        stem = display_name(row["name"]).split(".")[0] or "scan"
        return flask.Response(html, mimetype="text/html",
                              headers={"Content-Disposition": f'attachment; filename="{stem}_report.html"'})

    # -- verdicts ------------------------------------------------------------------------------
    @app.post("/scan/<int:scan_id>/review")
    def review_scan(scan_id: int):
        scan_or_404(scan_id)
        data = payload()
        rid = db.add_review(scan_id, str(data.get("verdict", "")), reviewer_from(data), str(data.get("note", "")))
        if wants_json():
            return flask.jsonify(id=rid, verdict=data.get("verdict"))
        return flask.redirect(flask.url_for("viewer", scan_id=scan_id), code=303)

    @app.post("/scan/<int:scan_id>/lesion/<int:lesion_id>/verdict")
    def lesion_verdict(scan_id: int, lesion_id: int):
        scan_or_404(scan_id)
        data = payload()
        vid = db.add_lesion_verdict(scan_id, lesion_id, str(data.get("verdict", "")), reviewer_from(data),
                                    str(data.get("note", "")))
        if wants_json():
            return flask.jsonify(id=vid, lesion_id=lesion_id, verdict=data.get("verdict"))
        return flask.redirect(flask.url_for("viewer", scan_id=scan_id), code=303)

    @app.post("/scan/<int:scan_id>/missed")
    def add_missed(scan_id: int):
        row = scan_or_404(scan_id)
        data = payload()
        try:
            z, y, x = int(data["slice"]), float(data["y"]), float(data["x"])
        except (KeyError, TypeError, ValueError):
            raise FeedbackError("a missed finding needs numeric slice, y and x") from None
        cache = state.cache(row)
        if cache is not None:
            _, ny, nx = cache.meta["shape"]
            if not (0 <= y < ny and 0 <= x < nx and math.isfinite(y) and math.isfinite(x)):
                raise FeedbackError(f"point (y {y:g}, x {x:g}) is outside the {ny}×{nx} slice")
        mid = db.add_missed(scan_id, z, y, x, reviewer_from(data), str(data.get("note", "")))
        m = next(m for m in db.missed(scan_id) if m["id"] == mid)
        if wants_json():
            return flask.jsonify(m)
        return flask.redirect(flask.url_for("viewer", scan_id=scan_id), code=303)

    @app.post("/scan/<int:scan_id>/missed/<int:missed_id>/delete")
    def delete_missed(scan_id: int, missed_id: int):
        scan_or_404(scan_id)
        db.delete_missed(scan_id, missed_id)
        if wants_json():
            return flask.jsonify(ok=True)
        return flask.redirect(flask.url_for("viewer", scan_id=scan_id), code=303)

    @app.get("/api/scan/<int:scan_id>/feedback")
    def feedback(scan_id: int):
        scan_or_404(scan_id)
        return flask.jsonify(reviews=db.reviews(scan_id), lesions=db.lesions(scan_id), missed=db.missed(scan_id))

    return app

