"""aeanomaly/cli/info.py: `aeanomaly info` prints what a bundle holds, from its JSON files only."""

import json
import shutil


def test_info_prints_the_bundle(cli, fitted_bundle):
    r = cli("info", fitted_bundle)
    assert r.exit_code == 0, r.output
    for key in ("bundle", "format        1", "input         window", "model", "training", "calibration",
                "scoring", "target FPR 0.2", "with 90 % probability"):
        assert key in r.output, key
    assert "head" not in r.output.replace("bundle", "")
    sigma = json.loads((fitted_bundle / "bundle.json").read_text())["params"]["sigma_mm"]
    assert f"heatmap σ {sigma:g} mm in-plane," in r.output and "across slices" not in r.output


def test_info_names_the_blob_gate_and_the_smoothing_across_slices(cli, fitted_bundle, tmp_path):
    copy = tmp_path / "z"
    shutil.copytree(fitted_bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["params"]["sigma_z_mm"] = 2.5
    meta["params"]["blob_gate"] = 2.0
    (copy / "bundle.json").write_text(json.dumps(meta))
    r = cli("info", copy)
    assert r.exit_code == 0, r.output
    assert "residual × blobness^2, heatmap σ" in r.output and "mm in-plane, 2.5 mm across slices" in r.output
    meta["params"]["blob_gate_3d"] = 1.0
    (copy / "bundle.json").write_text(json.dumps(meta))
    r = cli("info", copy)
    assert r.exit_code == 0, r.output
    assert "residual × blobness^2 × 3-D blobness^1, heatmap σ" in r.output


def test_info_bad_bundles_exit_2_with_one_line(cli, one_error_line, fitted_bundle, tmp_path):
    one_error_line(cli("info", tmp_path / "none"), str(tmp_path / "none"))
    b = tmp_path / "b"
    shutil.copytree(fitted_bundle, b)
    (b / "calibration.json").write_text("{not json")
    one_error_line(cli("info", b), "calibration.json is unreadable")
    (b / "calibration.json").write_text(json.dumps({"scan": {}}))
    one_error_line(cli("info", b), "lacks")
