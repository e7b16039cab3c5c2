"""The review app through Flask's test client: every route, and every error a user can cause."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest

pytest.importorskip("flask")

from aeanomaly.errors import BundleError  # noqa: E402
from aeanomaly.review.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def scored(fitted_bundle, loaded_detector, abnormal_phantom, tmp_path_factory, rv):
    """One app with the abnormal phantom uploaded and scored (shared by the read-only route tests)."""
    app = create_app(fitted_bundle, tmp_path_factory.mktemp("review") / "review.sqlite", detector=loaded_detector)
    client = app.test_client()
    token = rv.csrf(client)
    resp = rv.upload(client, abnormal_phantom, token)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/scan/1")
    rv.wait(app)
    return app, client, token


def test_upload_is_scored_in_background_and_listed(scored, rv):
    app, client, _ = scored
    status = client.get("/api/scan/1/status").get_json()
    assert status["status"] == "done" and status["progress"] == 1.0 and status["label"] == "abnormal"
    listing = client.get("/api/scans").get_json()["scans"]
    assert [s["id"] for s in listing] == [1] and listing[0]["n_lesions"] > 0 and listing[0]["verdict"] is None
    page = client.get("/").get_data(as_text=True)
    assert rv.abnormal_name in page and "unreviewed" in page and "abnormal" in page
    assert client.get("/healthz").get_json()["idle"] is True


def test_viewer_page_and_slice_layers(scored):
    app, client, _ = scored
    page = client.get("/scan/1").get_data(as_text=True)
    assert 'id="scan-data"' in page and 'id="lesions"' in page and "Download report" in page
    n = app.extensions["aeanomaly_review"].db.scan(1)["n_slices"]
    for layer, window in [("ct", "lung"), ("ct", "abdomen"), ("ct", ""), ("heat", ""), ("contour", "")]:
        resp = client.get(f"/scan/1/slice/{n - 1}.png?layer={layer}&window={window}")
        assert resp.status_code == 200 and resp.mimetype == "image/png"
        assert resp.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/scan/1/slice/{n}.png").status_code == 404
    assert client.get("/scan/1/slice/0.png?layer=secret").status_code == 400
    assert client.get("/scan/1/slice/0.png?window=../../etc").status_code == 400
    assert client.get("/scan/99").status_code == 404
    # the lung and abdomen windows differ on the same slice
    a = client.get("/scan/1/slice/3.png?layer=ct&window=lung").data
    b = client.get("/scan/1/slice/3.png?layer=ct&window=bone").data
    assert a != b


def test_heat_and_contour_layers_mark_the_lesions(scored):
    from PIL import Image

    app, client, _ = scored
    les = app.extensions["aeanomaly_review"].db.lesions(1)[0]
    z = int(round(les["z"]))
    heat = np.asarray(Image.open(io.BytesIO(client.get(f"/scan/1/slice/{z}.png?layer=heat").data)))
    cont = np.asarray(Image.open(io.BytesIO(client.get(f"/scan/1/slice/{z}.png?layer=contour").data)))
    assert heat.shape[-1] == 4 and heat[..., 3].max() == 255 and (heat[..., 3] == 0).mean() > 0.5
    assert cont[..., 3].any()


def test_report_download(scored, rv):
    _, client, _ = scored
    resp = client.get("/scan/1/report.html")
    assert resp.status_code == 200 and "attachment" in resp.headers["Content-Disposition"]
    html = resp.get_data(as_text=True)
    assert "Lesions" in html and "data:image/png;base64," in html and rv.abnormal_name.split(".")[0] in html


def test_verdict_routes_record_reviewer_and_time(scored):
    app, client, token = scored
    db = app.extensions["aeanomaly_review"].db
    h = {"X-CSRF-Token": token}
    resp = client.post("/scan/1/lesion/1/verdict", json={"verdict": "confirm", "reviewer": "Dr Ana"}, headers=h)
    assert resp.status_code == 200 and resp.get_json()["verdict"] == "confirm"
    les = db.lesions(1)[0]
    assert (les["verdict"], les["reviewer"]) == ("confirm", "Dr Ana") and les["reviewed_at"].startswith("20")
    resp = client.post("/scan/1/missed", json={"slice": 2, "y": 30, "x": 20, "note": "small nodule"}, headers=h)
    assert resp.status_code == 200  # reviewer remembered from the session
    mid = resp.get_json()["id"]
    assert db.missed(1)[0]["reviewer"] == "Dr Ana"
    resp = client.post("/scan/1/review", data={"csrf_token": token, "verdict": "confirm", "note": "agree"})
    assert resp.status_code == 303
    assert db.scan(1)["verdict"] == "confirm"
    fb = client.get("/api/scan/1/feedback").get_json()
    assert fb["reviews"][-1]["note"] == "agree" and len(fb["missed"]) == 1
    assert client.post(f"/scan/1/missed/{mid}/delete", headers=h, json={}).status_code == 200
    assert db.missed(1) == []
    # the page shows the verdict
    assert "confirm" in client.get("/").get_data(as_text=True)


def test_verdict_errors_are_one_line_400s(scored):
    _, client, token = scored
    h = {"X-CSRF-Token": token}
    bad = client.post("/scan/1/review", json={"verdict": "perhaps", "reviewer": "x"}, headers=h)
    assert bad.status_code == 400 and "none of confirm, reject, normal" in bad.get_json()["error"]
    assert client.post("/scan/1/lesion/99/verdict", json={"verdict": "confirm"}, headers=h).status_code == 400
    out = client.post("/scan/1/missed", json={"slice": 1, "y": 5000, "x": 1}, headers=h)
    assert out.status_code == 400 and "outside" in out.get_json()["error"]
    assert client.post("/scan/1/missed", json={"slice": "a"}, headers=h).status_code == 400
    assert client.post("/scan/42/review", json={"verdict": "normal"}, headers=h).status_code == 404
    assert client.post("/scan/1/missed/999/delete", json={}, headers=h).status_code == 400
    assert client.get("/scan/1/review").status_code == 405


def test_reviewer_name_is_required(make_app, abnormal_phantom, rv):
    app = make_app()
    client = app.test_client()
    token = rv.csrf(client)
    rv.upload(client, abnormal_phantom, token)
    rv.wait(app)
    resp = client.post("/scan/1/review", data={"csrf_token": token, "verdict": "normal"})
    assert resp.status_code == 400 and "enter your name" in resp.get_data(as_text=True)
    resp = client.post("/reviewer", data={"csrf_token": token, "reviewer": "Dr B", "next": "//evil.example"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    assert client.post("/scan/1/review", data={"csrf_token": token, "verdict": "normal"}).status_code == 303
    assert app.extensions["aeanomaly_review"].db.scan(1)["reviewer"] == "Dr B"


def test_posts_without_csrf_token_are_refused(scored, fitted_bundle):
    app, client, token = scored
    for kwargs in ({"data": {"verdict": "normal", "reviewer": "x"}},
                   {"data": {"verdict": "normal", "reviewer": "x", "csrf_token": "forged"}},
                   {"json": {"verdict": "normal", "reviewer": "x"}}):
        resp = client.post("/scan/1/review", **kwargs)
        assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    fresh = app.test_client()  # a session that never got a token
    assert fresh.post("/upload", data={"csrf_token": token}).status_code == 400
    assert all(r["note"] != "forged" for r in app.extensions["aeanomaly_review"].db.reviews(1))


def test_malformed_uploads_get_a_clear_error_page(make_app, tmp_path, rv):
    app = make_app()
    client = app.test_client()
    token = rv.csrf(client)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    resp = rv.upload(client, corrupt, token)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "corrupt.nii.gz: cannot be read as CT" in text
    assert "Traceback" not in text and str(tmp_path) not in text and "uploads" not in text
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    resp = rv.upload(client, junk, token)
    assert resp.status_code == 400 and "unsupported upload" in resp.get_data(as_text=True)
    resp = client.post("/upload", data={"csrf_token": token}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "choose a scan file" in resp.get_data(as_text=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escape.dcm", b"x")
    buf.seek(0)
    resp = client.post("/upload", data={"csrf_token": token, "scan": (buf, "series.zip")},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and "unsafe path" in resp.get_data(as_text=True)
    uploads = app.extensions["aeanomaly_review"].upload_root
    assert list(uploads.iterdir()) == [] and not (tmp_path / "escape.dcm").exists()
    assert app.extensions["aeanomaly_review"].db.scans() == []


def test_traversal_names_are_stored_under_generated_names(make_app, abnormal_phantom, tmp_path, rv):
    app = make_app()
    client = app.test_client()
    resp = rv.upload(client, abnormal_phantom, rv.csrf(client), name="../../../../tmp/pwned.nii.gz")
    assert resp.status_code == 303
    row = app.extensions["aeanomaly_review"].db.scan(1)
    root = app.extensions["aeanomaly_review"].upload_root.resolve()
    assert root in __import__("pathlib").Path(row["path"]).resolve().parents
    assert row["name"] == "pwned.nii.gz"
    for url in ("/../../etc/passwd", "/scan/1/slice/..%2F..%2Fetc%2Fpasswd", "/static/../app.py",
                "/static/viewer.js/../../x"):
        assert client.get(url).status_code == 404
    assert client.get("/static/viewer.js").mimetype == "text/javascript"


def test_upload_size_limit(make_app, abnormal_phantom, rv):
    app = make_app(max_upload_mb=0.001)
    client = app.test_client()
    resp = rv.upload(client, abnormal_phantom, rv.csrf(client))
    assert resp.status_code == 413 and "larger than the limit" in resp.get_data(as_text=True)


def test_duplicate_upload_reuses_the_scored_row(make_app, abnormal_phantom, rv):
    app = make_app()
    client = app.test_client()
    token = rv.csrf(client)
    rv.upload(client, abnormal_phantom, token)
    rv.wait(app)
    resp = rv.upload(client, abnormal_phantom, token, name="again.nii.gz")
    assert resp.headers["Location"].endswith("/scan/1")
    assert len(list(app.extensions["aeanomaly_review"].upload_root.iterdir())) == 1


@pytest.mark.parametrize("fmt", ["mha", "dicom-zip", "png"])
def test_other_formats_are_scored(fmt, make_app, abnormal_phantom, write_mhd, tmp_path, rv):
    from PIL import Image

    from aeanomaly.io import load_scan

    scan = load_scan(abnormal_phantom)
    if fmt == "mha":
        path = write_mhd(tmp_path / "scan.mha", scan.hu, spacing_xyz=scan.spacing[::-1], local=True)
        payload = (open(path, "rb"), "scan.mha")
    elif fmt == "dicom-zip":
        payload = (rv.dicom_zip(scan.hu, scan.spacing), "series.zip")
    else:
        sl = np.clip((scan.hu[4] + 1000) / 1400 * 255, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(sl).save(buf, format="PNG")
        buf.seek(0)
        payload = (buf, "slice.png")
    app = make_app()
    client = app.test_client()
    resp = client.post("/upload", data={"csrf_token": rv.csrf(client), "scan": payload},
                       content_type="multipart/form-data")
    assert resp.status_code == 303, resp.get_data(as_text=True)
    rv.wait(app)
    row = app.extensions["aeanomaly_review"].db.scan(1)
    assert row["status"] == "done", row["error"]
    assert row["n_slices"] == (1 if fmt == "png" else scan.n_slices)
    assert client.get("/scan/1/slice/0.png?layer=ct").status_code == 200


def test_scans_folder_fills_the_worklist_sorted_by_score(make_app, phantom_test, rv):
    app = make_app(scans_dir=phantom_test / "normal")
    rv.wait(app)
    rows = app.extensions["aeanomaly_review"].db.scans()
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    scores = [r["scan_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    names = [s["name"] for s in app.test_client().get("/api/scans").get_json()["scans"]]
    assert names == [r["name"] for r in rows]


def test_unexpected_errors_show_no_stack_trace(make_app, monkeypatch):
    app = make_app()
    state = app.extensions["aeanomaly_review"]

    def boom(*a, **k):
        raise RuntimeError("secret internals /srv/private")

    monkeypatch.setattr(state.db, "scans", boom)
    resp = app.test_client().get("/")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 500 and "internal error" in text
    assert "Traceback" not in text and "secret internals" not in text


def test_security_headers(scored):
    _, client, _ = scored
    h = client.get("/").headers
    assert "script-src 'self'" in h["Content-Security-Policy"] and h["X-Frame-Options"] == "DENY"
    assert h["X-Content-Type-Options"] == "nosniff"


def test_token_required_when_configured(make_app):
    app = make_app(token="t" * 20)
    client = app.test_client()
    resp = client.get("/")
    assert resp.status_code == 401 and "access token" in resp.get_data(as_text=True)
    assert client.get("/api/scans").status_code == 401
    assert client.get("/?token=wrong-token-wrong").status_code == 401
    resp = client.get("/?token=" + "t" * 20)
    assert resp.status_code == 303 and "token" not in resp.headers["Location"]
    assert client.get("/").status_code == 200  # the session remembers
    other = app.test_client()
    assert other.get("/api/scans", headers={"Authorization": "Bearer " + "t" * 20}).status_code == 200


def test_bundle_that_cannot_load_is_refused(fitted_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fitted_bundle, broken)
    (broken / "model.keras").write_bytes(b"not a keras archive")
    with pytest.raises(BundleError, match="model.keras"):
        create_app(broken, tmp_path / "r.sqlite")
    with pytest.raises(BundleError):
        create_app(tmp_path / "missing", tmp_path / "r.sqlite")


def test_reviews_carry_over_to_a_recalibrated_bundle(fitted_bundle, loaded_detector, abnormal_phantom, tmp_path, rv):
    import json

    db_path = tmp_path / "review.sqlite"
    app = create_app(fitted_bundle, db_path, detector=loaded_detector)
    client = app.test_client()
    token = rv.csrf(client)
    rv.upload(client, abnormal_phantom, token)
    rv.wait(app)
    client.post("/scan/1/review", data={"csrf_token": token, "verdict": "confirm", "reviewer": "dr a"})
    client.post("/scan/1/missed", json={"slice": 1, "y": 3, "x": 4, "reviewer": "dr a"}, headers={"X-CSRF-Token": token})
    recal = tmp_path / "recalibrated"
    shutil.copytree(fitted_bundle, recal)
    cal = json.loads((recal / "calibration.json").read_text())
    cal["log"] = list(cal.get("log", [])) + [{"note": "from feedback"}]
    (recal / "calibration.json").write_text(json.dumps(cal))
    app2 = create_app(recal, db_path, detector=loaded_detector)
    rv.wait(app2)
    state = app2.extensions["aeanomaly_review"]
    assert state.bundle_version != app.extensions["aeanomaly_review"].bundle_version
    (row,) = state.db.scans(state.bundle_version)
    assert row["id"] != 1 and row["status"] == "done"
    assert (row["verdict"], row["reviewer"], row["n_missed"]) == ("confirm", "dr a", 1)
    page = app2.test_client().get(f"/scan/{row['id']}").get_data(as_text=True)
    assert "dr a" in page


def test_concurrent_requests_keep_every_write(scored):
    app, _, _ = scored
    db = app.extensions["aeanomaly_review"].db
    before = len(db.reviews(1))
    errors = []

    def reviewer(k):
        client = app.test_client()
        token = __import__("re").search(r'name="csrf-token" content="([^"]+)"',
                                        client.get("/").get_data(as_text=True)).group(1)
        for i in range(10):
            r = client.post("/scan/1/review", json={"verdict": "reject", "reviewer": f"r{k}", "note": str(i)},
                            headers={"X-CSRF-Token": token})
            if r.status_code != 200:
                errors.append(r.status_code)
            client.get("/api/scans")

    import threading

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(db.reviews(1)) == before + 60 and db.integrity_ok()


class _Gated:
    """A detector whose scoring waits for a gate (or fails), to look at the app meanwhile."""

    def __init__(self, det, fail: Exception | None = None):
        self.det, self.fail = det, fail
        self.gate = __import__("threading").Event()

    def __getattr__(self, name):
        return getattr(self.det, name)

    def score_scan(self, scan):
        assert self.gate.wait(60)
        if self.fail is not None:
            raise self.fail
        return self.det.score_scan(scan)


def test_pages_answer_while_scoring_runs(make_app, loaded_detector, abnormal_phantom, rv):
    app = make_app()
    state = app.extensions["aeanomaly_review"]
    gated = _Gated(loaded_detector)
    state.scorer.det = gated
    client = app.test_client()
    assert rv.upload(client, abnormal_phantom, rv.csrf(client)).status_code == 303
    import time

    deadline = time.monotonic() + 30
    while client.get("/api/scan/1/status").get_json()["status"] != "scoring" and time.monotonic() < deadline:
        time.sleep(0.02)
    status = client.get("/api/scan/1/status").get_json()
    assert status["status"] == "scoring" and 0 < status["progress"] < 1
    page = client.get("/scan/1").get_data(as_text=True)
    assert 'id="progress"' in page and "progress.js" in page
    assert "scoring" in client.get("/").get_data(as_text=True)
    gated.gate.set()
    rv.wait(app)
    assert client.get("/api/scan/1/status").get_json()["status"] == "done"
    assert 'id="scan-data"' in client.get("/scan/1").get_data(as_text=True)


def test_scoring_failure_is_shown_on_the_page(make_app, loaded_detector, abnormal_phantom, rv):
    from aeanomaly.errors import ScanError

    app = make_app()
    gated = _Gated(loaded_detector, fail=ScanError("no body found in any slice"))
    gated.gate.set()
    app.extensions["aeanomaly_review"].scorer.det = gated
    client = app.test_client()
    rv.upload(client, abnormal_phantom, rv.csrf(client))
    rv.wait(app)
    status = client.get("/api/scan/1/status").get_json()
    assert status["status"] == "error" and "no body found" in status["error"]
    page = client.get("/scan/1").get_data(as_text=True)
    assert "Could not score this scan: no body found" in page and "Traceback" not in page
    assert client.get("/scan/1/slice/0.png").status_code == 404
    assert client.get("/scan/1/report.html").status_code == 400
