"""The feedback loop: reviewer labels → exported dataset that evaluate/fit-head read, confirmed
normals → recalibration, agreement statistics."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("flask")

from aeanomaly.review.feedback import (  # noqa: E402
    agreement_stats, confirmed_normal_reviews, confirmed_normals, export_dataset, reviewer_labels)


@pytest.fixture(scope="module")
def reviewed(fitted_bundle, loaded_detector, abnormal_phantom, phantom_test, tmp_path_factory, rv):
    """A database with the abnormal phantom (two lesions judged, one missed point, confirmed), four
    normal phantoms confirmed normal, one rejected, one normal verdict that conflicts with a point."""
    from aeanomaly.review.app import create_app

    root = tmp_path_factory.mktemp("fb")
    app = create_app(fitted_bundle, root / "review.sqlite", scans_dir=phantom_test / "normal", detector=loaded_detector)
    client = app.test_client()
    token = rv.csrf(client)
    rv.upload(client, abnormal_phantom, token)
    rv.wait(app)
    db = app.extensions["aeanomaly_review"].db
    rows = {r["name"]: r for r in db.scans()}
    abn = rows[rv.abnormal_name]["id"]
    assert len(db.lesions(abn)) >= 2
    db.add_lesion_verdict(abn, 1, "confirm", "dr a")
    db.add_lesion_verdict(abn, 2, "reject", "dr a")
    db.add_missed(abn, 1, 20.0, 40.0, "dr a", "missed nodule")
    db.add_review(abn, "confirm", "dr a", "two findings")
    normals = sorted(n for n in rows if n != rv.abnormal_name)
    for n in normals[:4]:
        db.add_review(rows[n]["id"], "normal", "dr b", "clean")
    db.add_review(rows[normals[4]]["id"], "reject", "dr b")
    db.add_review(rows[normals[5]]["id"], "normal", "dr c")
    db.add_missed(rows[normals[5]]["id"], 3, 30.0, 30.0, "dr c", "hmm")
    return app, db, rows, normals, abn


def test_reviewer_labels_and_confirmed_normals(reviewed, phantom_test, rv):
    _, db, rows, normals, _ = reviewed
    labels = {r["name"]: r["label"] for r in reviewer_labels(db)}
    assert labels == {**{n: "normal" for n in normals[:5]}, normals[5]: "conflict", rv.abnormal_name: "abnormal"}
    paths = confirmed_normals(db.path)  # a path works as well as the object
    assert [p.name for p in paths] == normals[:4]
    assert all(p.is_file() for p in paths)
    recs = confirmed_normal_reviews(db)
    assert {r["reviewer"] for r in recs} == {"dr b"} and all(r["review_id"] > 0 for r in recs)


def test_export_round_trip_is_read_by_the_label_reader(reviewed, tmp_path, rv):
    from aeanomaly.io import load_label, load_scan

    _, db, rows, normals, abn = reviewed
    out = tmp_path / "export"
    summary = export_dataset(db, out)
    assert (summary["n_normal"], summary["n_abnormal"], summary["n_masks"]) == (5, 1, 1)
    assert [x["scan"] for x in summary["left_out"]] == [normals[5]]
    assert json.loads((out / "export.json").read_text())["n_abnormal"] == 1
    from aeanomaly.io.labels import read_labels_csv

    items = read_labels_csv(out / "labels.csv")
    assert sorted(it.label for it in items) == [0, 0, 0, 0, 0, 1]
    (abn_item,) = [it for it in items if it.label == 1]
    assert all(it.mask is None for it in items if it.label == 0)
    scan = load_scan(abn_item.scan)
    mask = load_label(abn_item.mask, like=scan) > 0  # in the scan's own geometry
    assert mask[1, 20, 40]  # the missed point's disc
    cached = np.load(rows[rv.abnormal_name]["cache_dir"] + "/labels.npy")
    assert mask[cached == 1].all()  # the confirmed lesion
    assert not mask[cached == 2].all()  # the rejected lesion is not in the mask
    with open(out / "points.csv", newline="") as fh:
        pts = list(csv.DictReader(fh))
    assert {(p["scan"], p["slice"], p["note"]) for p in pts} == {(rv.abnormal_name, "1", "missed nodule"),
                                                                 (normals[5], "3", "hmm")}
    with open(out / "lesion_verdicts.csv", newline="") as fh:
        assert sorted(r["verdict"] for r in csv.DictReader(fh)) == ["confirm", "reject"]
    with open(out / "notes.csv", newline="") as fh:
        assert "two findings" in {r["note"] for r in csv.DictReader(fh)}
    with pytest.raises(FileExistsError):
        export_dataset(db, out)
    copied = export_dataset(db, tmp_path / "copied", copy_scans=True)
    assert copied["n_abnormal"] == 1
    assert all((tmp_path / "copied" / it.scan).is_file() for it in read_labels_csv(tmp_path / "copied" / "labels.csv"))


def test_evaluate_reads_the_export(reviewed, fitted_bundle, tmp_path):
    from click.testing import CliRunner

    from aeanomaly.cli import main

    _, db, *_ = reviewed
    export_dataset(db, tmp_path / "export")
    res = CliRunner().invoke(main, ["evaluate", str(fitted_bundle), "--labels", str(tmp_path / "export" / "labels.csv"),
                                    "--out", str(tmp_path / "eval"), "--overlays", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_agreement_stats(reviewed):
    _, db, rows, normals, abn = reviewed
    s = agreement_stats(db)
    n_les = len(db.lesions(abn))
    assert s["n_scans"] == 7 and s["n_reviewed"] == 6 and s["n_conflict"] == 1
    assert s["tp"] == 1 and s["fn"] == 0 and s["tp"] + s["fp"] + s["fn"] + s["tn"] == 6
    assert s["lesions_confirmed"] == 1 and s["missed_findings"] == 1
    assert s["lesions_unreviewed"] == n_les - 2
    normal_lesions = sum(len(db.lesions(rows[n]["id"])) for n in normals[:5])
    assert s["lesions_false"] == 1 + normal_lesions
    assert s["lesion_sensitivity"] == 0.5
    assert s["false_lesions_per_scan"] == pytest.approx((1 + normal_lesions) / 6)
    strict = agreement_stats(db, threshold=1e9)  # nothing is flagged at an unreachable threshold
    assert strict["tp"] == 0 and strict["fn"] == 1 and strict["fp"] == 0 and strict["sensitivity"] == 0.0
    assert agreement_stats(db, bundle_version="no such bundle")["n_scans"] == 0


def test_recalibrating_on_confirmed_normals_changes_the_threshold(reviewed, fitted_bundle):
    from aeanomaly.detector import AnomalyDetector

    _, db, *_ = reviewed
    det = AnomalyDetector.load(fitted_bundle)
    before = det.calibrator_.threshold_
    n_log = len(det.calibration_log_)
    det.recalibrate(confirmed_normals(db), method="empirical", note="from feedback")
    assert det.calibrator_.threshold_ != before
    assert len(det.calibration_log_) > n_log and "feedback" in json.dumps(det.calibration_log_[-1])


def test_exported_mask_of_a_dicom_upload_is_in_the_series_geometry(make_app, abnormal_phantom, tmp_path, rv):
    from aeanomaly.io import load_label, load_scan
    from aeanomaly.io.labels import read_labels_csv

    scan = load_scan(abnormal_phantom)
    app = make_app()
    client = app.test_client()
    token = rv.csrf(client)
    resp = client.post("/upload", data={"csrf_token": token, "scan": (rv.dicom_zip(scan.hu, scan.spacing), "s.zip")},
                       content_type="multipart/form-data")
    assert resp.status_code == 303
    rv.wait(app)
    db = app.extensions["aeanomaly_review"].db
    db.add_missed(1, 5, 12.0, 50.0, "dr d", "far right")
    db.add_review(1, "confirm", "dr d")
    export_dataset(db, tmp_path / "out", point_radius_mm=3.0)
    (item,) = read_labels_csv(tmp_path / "out" / "labels.csv")
    series = load_scan(item.scan)
    assert item.scan.is_dir() and series.n_slices == scan.n_slices
    mask = load_label(item.mask, like=series) > 0
    assert mask[5, 12, 50] and mask.sum() == mask[5].sum()  # one disc, on the marked slice


def test_feedback_round_trip_through_the_cli(reviewed, fitted_bundle, tmp_path):
    """export → calibrate --from-feedback → a changed threshold, logged with the reviews that went in."""
    from click.testing import CliRunner

    from aeanomaly.cli import main

    _, db, *_ = reviewed
    bundle = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, bundle)
    before = json.loads((bundle / "calibration.json").read_text())
    r = CliRunner().invoke(main, ["feedback", "export", "--db", str(db.path), "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["calibrate", str(bundle), "--from-feedback", str(db.path), "--method", "empirical",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    after = json.loads((bundle / "calibration.json").read_text())
    added = [str(p) for p in confirmed_normals(db)]
    assert set(added) <= set(after["calibration_scans"])
    assert set(before["calibration_scans"]) <= set(after["calibration_scans"])  # the bundle's own ones stay
    assert after["scan"]["threshold"] != before["scan"]["threshold"]
    entry = after["log"][-1]
    assert "from feedback" in entry["what"] and str(confirmed_normal_reviews(db)[0]["review_id"]) in entry["what"]
    r = CliRunner().invoke(main, ["calibrate", str(bundle)])
    assert r.exit_code == 2 and "--from-feedback" in r.output


@pytest.mark.slow
def test_fine_tune_from_feedback_warm_starts_and_records_the_reviews(reviewed, fitted_bundle, tmp_path):
    from click.testing import CliRunner

    from aeanomaly.cli import main
    from aeanomaly.detector import AnomalyDetector

    _, db, *_ = reviewed
    bundle = tmp_path / "bundle"
    shutil.copytree(fitted_bundle, bundle)
    old = AnomalyDetector.load(bundle)
    r = CliRunner().invoke(main, ["fine-tune", str(bundle), "--from-feedback", str(db.path), "--epochs", "2",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    new = AnomalyDetector.load(bundle)
    (entry,) = new.train_state_["fine_tuned"]
    assert sorted(entry["added"]) == sorted(str(p) for p in confirmed_normals(db))
    assert "reviews" in entry["note"] and entry["epochs"] == 2
    assert set(entry["added"]) <= set(new.split_["train"]) and not set(entry["added"]) & set(new.calibration_sources_)
    assert new.calibration_log_[-1]["what"].startswith("fine-tune from feedback")
    # warm start: the fine-tuned weights stay close to the bundle's (a fresh model would not)
    w_old, w_new = old.model_.get_weights(), new.model_.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(w_old, w_new))
    rel = np.mean([np.abs(a - b).mean() / (np.abs(a).mean() + 1e-8) for a, b in zip(w_old, w_new) if a.size > 100])
    assert rel < 0.5
