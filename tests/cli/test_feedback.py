"""`aeanomaly feedback export|stats` as commands (no Flask needed: the feedback database is sqlite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aeanomaly.cli.feedback import feedback
from aeanomaly.review.db import FeedbackDB


def test_feedback_export_and_stats(tmp_path, fitted_bundle, abnormal_phantom):
    db = FeedbackDB(tmp_path / "r.sqlite")
    sid, _ = db.add_scan("a" * 64, abnormal_phantom, "v1")
    db.record_result(sid, scan_score=0.5, p_value=0.01, label="abnormal", threshold=0.1, n_slices=8, lesions=[])
    db.add_missed(sid, 2, 30, 30, "dr a", "nodule")
    db.add_review(sid, "confirm", "dr a")
    db.close()
    runner = CliRunner()
    res = runner.invoke(feedback, ["export", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "1 abnormal" in res.output and (tmp_path / "out" / "masks" / abnormal_phantom.name.replace(".nii.gz", "_mask.nii.gz")).is_file()
    res = runner.invoke(feedback, ["export", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(feedback, ["stats", "--db", str(tmp_path / "r.sqlite")])
    assert res.exit_code == 0 and "sensitivity 1.000" in res.output and "1 missed" in res.output
    res = runner.invoke(feedback, ["stats", "--db", str(tmp_path / "r.sqlite"), "--bundle", str(fitted_bundle),
                                   "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["threshold"] is not None and s["n_reviewed"] == 1
    res = runner.invoke(feedback, ["stats", "--db", str(tmp_path / "missing.sqlite")])
    assert res.exit_code == 2 and "feedback database does not exist" in res.output
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"junk" * 1000)
    res = runner.invoke(feedback, ["stats", "--db", str(junk)])
    assert res.exit_code == 2 and "not a usable feedback database" in res.output
