"""``aeanomaly data``: list, verify (exit 0 / 1 with the report / 2 with one line), prepare."""

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from aeanomaly.cli.data import data


def run(*args):
    return CliRunner().invoke(data, [str(a) for a in args], catch_exceptions=False)


def one_error_line(r, text):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], r.output


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from aeanomaly.datasets.synthetic import write_phantom_set

    out = tmp_path_factory.mktemp("cli_data") / "ph"
    write_phantom_set(out, 3, 3, region="chest", seed=7, shape=(4, 48, 48), spacing=(6.0, 7.0, 7.0))
    return out


def test_list_shows_every_manifest():
    r = run("list")
    assert r.exit_code == 0, r.output
    for mid in ("luna16", "lidc-idri", "lits", "kits23", "btcv", "flare22", "msd-task03-liver", "msd-task06-lung",
                "msd-task09-spleen", "msd-task10-colon", "kmader-lungs", "aeanomaly-phantoms"):
        assert f"\n{mid} " in r.output
    assert "(12 manifests in " in r.output
    r = run("list", "-v")
    assert "license:  CC-BY-SA 4.0" in r.output and "homepage: https://luna16.grand-challenge.org/Data/" in r.output


def test_verify_ok_exits_0(phantoms):
    r = run("verify", "aeanomaly-phantoms", phantoms, "--deep", "--quiet")
    assert r.exit_code == 0, r.output
    assert "layout: phantoms" in r.output and r.output.rstrip().endswith("result: OK")
    assert "  pairs        found      3" in r.output


def test_verify_problems_exit_1_with_the_report(phantoms, tmp_path):
    broken = tmp_path / "ph"
    shutil.copytree(phantoms, broken)
    (broken / "masks" / "phantom_0004_mask.nii.gz").unlink()
    (broken / "masks" / "phantom_0099_mask.nii.gz").write_bytes(b"stray")
    (broken / "labels.csv").unlink()
    r = run("verify", "aeanomaly-phantoms", broken, "--quiet")
    assert r.exit_code == 1
    assert ("missing files (2):\n  masks/phantom_0004_mask.nii.gz (label of abnormal/phantom_0004.nii.gz)\n"
            "  labels.csv (required file)\n") in r.output
    assert "unpaired labels (no image) (1):\n  masks/phantom_0099_mask.nii.gz\n" in r.output
    assert r.output.rstrip().endswith("result: FAILED (3 problems)")


def test_verify_bad_input_exits_2_with_one_line(phantoms, tmp_path):
    one_error_line(run("verify", "aeanomaly-phantoms", tmp_path / "nope"), "nope: dataset folder does not exist")
    one_error_line(run("verify", "no-such-set", phantoms), "unknown manifest 'no-such-set'; known: aeanomaly-phantoms")
    bad = tmp_path / "bad.json"
    m = json.loads(open(__import__("aeanomaly.datasets.manifests", fromlist=["x"]).manifest_dir() / "lits.json").read())
    m["layouts"][0]["images"] = "volume-*.nii"
    bad.write_text(json.dumps(m))
    one_error_line(run("verify", bad, phantoms), "invalid manifest: $.layouts[0].images: expected array, got str")
    bad.write_text("[1, 2")
    one_error_line(run("verify", bad, phantoms), "bad.json: not valid JSON")
    one_error_line(run("verify", "aeanomaly-phantoms", phantoms, "--layout", "flat"), "has no layout 'flat'")


def test_prepare_writes_split_and_refuses_to_overwrite(phantoms, tmp_path):
    out = tmp_path / "prep"
    r = run("prepare", "aeanomaly-phantoms", phantoms, "--out", out, "--val-fraction", "0.34", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert f"prepared {out}: train: 2 normal, 2 abnormal (4 patients); val: 1 normal, 1 abnormal (2 patients)" in r.output
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert len(rows) == 6 and all((out / r["scan"]).is_file() for r in rows)
    assert json.loads((out / "prepare.json").read_text())["seed"] == 3
    one_error_line(run("prepare", "aeanomaly-phantoms", phantoms, "--out", out), "exists and is not empty; pass --overwrite")
    r = run("prepare", "aeanomaly-phantoms", phantoms, "--out", out, "--overwrite", "--unit", "slice", "--no-masks", "--quiet")
    assert r.exit_code == 0 and r.output == ""
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert len(rows) == 24 and not (out / "masks").exists() and all(r["split"] == "train" for r in rows)


def test_prepare_bad_input_exits_2_with_one_line(phantoms, tmp_path):
    one_error_line(run("prepare", "lidc-idri", phantoms, "--out", tmp_path / "o"), "normal/abnormal cannot be derived")
    one_error_line(run("prepare", "btcv", phantoms, "--out", tmp_path / "o"), "--assume-normal")
    one_error_line(run("prepare", "aeanomaly-phantoms", tmp_path / "none", "--out", tmp_path / "o"),
                   "dataset folder does not exist")
    one_error_line(run("prepare", "aeanomaly-phantoms", phantoms, "--out", tmp_path / "o", "--val-fraction", "1.5"),
                   "val-fraction must be in [0, 1)")
    one_error_line(run("prepare", "msd-task03-liver", phantoms, "--out", tmp_path / "o"), "no images of msd-task03-liver")
    assert not (tmp_path / "o").exists()


def test_data_group_is_registered_in_main():
    from aeanomaly.cli import main

    r = CliRunner().invoke(main, ["data", "--help"])
    assert r.exit_code == 0 and "verify" in r.output and "prepare" in r.output


@pytest.mark.slow
def test_prepared_split_is_accepted_by_fit_and_evaluate(tmp_path):
    """The issue's done-when: `data prepare` output goes straight into `fit` and `evaluate`."""
    from aeanomaly.cli import main
    from aeanomaly.datasets.synthetic import write_phantom_set

    write_phantom_set(tmp_path / "ph", 8, 4, region="chest", seed=5, shape=(4, 64, 64), spacing=(6.0, 5.5, 5.5),
                      size_mm=(15, 30))
    prep = tmp_path / "prep"
    assert run("prepare", "aeanomaly-phantoms", tmp_path / "ph", "--out", prep, "--val-fraction", "0.4",
               "--quiet").exit_code == 0
    invoke = CliRunner().invoke
    r = invoke(main, ["fit", "--normal-dir", str(prep / "normal" / "train"), "--out", str(tmp_path / "b"), "--size", "64",
                      "--depth", "3", "--base-filters", "8", "--latent-dim", "16", "--epochs", "1", "--calib-fraction", "0.4",
                      "--target-fpr", "0.2", "--quiet"])
    assert r.exit_code == 0, r.output
    r = invoke(main, ["evaluate", str(tmp_path / "b"), "--labels", str(prep / "labels_val.csv"), "--out",
                      str(tmp_path / "ev"), "--overlays", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_scans"] == 5 and metrics["n_errors"] == 0 and "pixel" in metrics


def test_prepare_on_read_only_or_full_disk_output_exits_2_and_writes_nothing(phantoms, tmp_path, monkeypatch,
                                                                             read_only_fs):
    import errno
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    read_only_fs(ro)
    one_error_line(run("prepare", "aeanomaly-phantoms", phantoms, "--out", ro / "o", "--quiet"), "Read-only file system")
    assert list(ro.iterdir()) == []

    def replace(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(dst))

    monkeypatch.setattr(os, "replace", replace)
    full = tmp_path / "full"
    full.mkdir()
    one_error_line(run("prepare", "aeanomaly-phantoms", phantoms, "--out", full / "o", "--quiet"),
                   "No space left on device")
    assert list(full.iterdir()) == []
