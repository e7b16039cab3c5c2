"""Tests of aeanomaly.report_html: the self-contained HTML report (sorted, escaped, PNGs embedded, written
atomically) and its number formatting."""

from __future__ import annotations

import base64
import html
import re

import imageio.v3 as iio
import numpy as np
import pytest

from aeanomaly import report, report_html
from aeanomaly.errors import AeAnomalyError, ConfigError
from aeanomaly.report_html import DISCLAIMER, format_float, format_p_value


def _png(tmp_path, name, colour):
    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = colour
    p = tmp_path / name
    iio.imwrite(p, img)
    return p


def _scans(tmp_path):
    a, b = _png(tmp_path, "a.png", (255, 0, 0)), _png(tmp_path, "b.png", (0, 255, 0))
    lesion = {"id": 1, "slice_start": 10, "slice_end": 14, "centroid_ras_mm": (-12.5, 30.25, 101.0),
              "area_mm2": 52.3, "volume_mm3": 12345.6, "max_residual": 0.31, "p_value": 2.5e-6,
              "severity": "high", "organ": "liver"}
    return [
        {"scan": "low.nii.gz", "scan_score": 0.1, "p_value": 0.42, "label": "normal", "error": "",
         "n_slices": 30, "top_slice": 3, "overlays": [], "lesions": []},
        {"scan": "broken.dcm", "scan_score": None, "p_value": None, "label": "error",
         "error": "broken.dcm: not CT (no HU rescale)", "n_slices": 0, "top_slice": None, "overlays": [],
         "lesions": []},
        {"scan": "<script>alert(1)</script>.nii", "scan_score": 0.9, "p_value": 2.5e-5, "label": "abnormal",
         "error": "", "n_slices": 40, "top_slice": 12, "overlays": [a, b], "lesions": [lesion]},
        {"scan": "mid & co.nii", "scan_score": 0.5, "p_value": 0.004, "label": "abnormal", "error": "",
         "n_slices": 20, "top_slice": 7, "overlays": [str(a)], "lesions": []},
    ]


def test_write_report_is_self_contained_sorted_and_escaped(tmp_path):
    summary = {"bundle": "chest-v1", "calibration_method": "empirical", "target_fpr": 0.05,
               "threshold": np.float32(0.4321), "n_normal": np.int64(25), "created": "2024-01-02T03:04:05", "version": "0.1.0"}
    out = report_html.write_report(tmp_path / "r" / "report.html", _scans(tmp_path), title="My <run>", summary=summary)
    assert out == tmp_path / "r" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;.nii" in text
    assert "mid &amp; co.nii" in text and "My &lt;run&gt;" in text
    names = ["&lt;script&gt;alert(1)&lt;/script&gt;.nii", "mid &amp; co.nii", "low.nii.gz", "broken.dcm"]
    first = [text.index(n) for n in names]
    assert first == sorted(first)  # score descending, the failed scan last
    assert text.count("data:image/png;base64,") == 3
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert base64.b64decode(embedded[0]) == (tmp_path / "a.png").read_bytes()
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert html.escape(DISCLAIMER) in text
    assert "not a diagnostic device" in text
    for anchor in ("scan-1", "scan-2", "scan-3", "scan-4"):
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text
    assert "2.50e-05" in text and "2.50e-06" in text and "0.004" in text  # p-values
    assert "12,346" in text and "-12.5, 30.2, 101.0" in text and "liver" in text  # lesion row
    assert "not CT (no HU rescale)" in text
    for value in ("chest-v1", "empirical", "0.05", "0.4321", "25", "2024-01-02T03:04:05", "target FPR"):
        assert value in text


def test_write_report_missing_overlay_fails_cleanly(tmp_path):
    scans = _scans(tmp_path)
    scans[3]["overlays"] = [tmp_path / "gone.png"]
    target = tmp_path / "report.html"
    with pytest.raises(AeAnomalyError, match=r"gone\.png: overlay PNG not found \(for scan mid & co\.nii\)"):
        report_html.write_report(target, scans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no report, no temp file


def test_write_report_rejects_non_png_and_nameless_scans(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    scans = [{"scan": "x.nii", "scan_score": 1.0, "label": "normal", "overlays": [fake]}]
    with pytest.raises(AeAnomalyError, match=r"fake\.png: overlay is not a PNG file"):
        report_html.write_report(tmp_path / "r.html", scans)
    with pytest.raises(ConfigError, match=r"r\.html: scan entry #0 has no 'scan' name"):
        report_html.write_report(tmp_path / "r.html", [{"scan_score": 1.0}])
    assert not (tmp_path / "r.html").exists()


def test_write_report_replaces_an_old_report_only_on_success(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(AeAnomalyError):
        report_html.write_report(target, [{"scan": "a", "overlays": [tmp_path / "missing.png"]}])
    assert target.read_text() == "old"
    report_html.write_report(target, [{"scan": "a", "scan_score": 1.0, "label": "normal"}])
    assert "a</a>" in target.read_text()


def test_number_formatting():
    assert format_p_value(2.5e-5) == "2.50e-05"
    assert format_p_value(0.0123) == "0.012"
    assert format_p_value(None) == "—" and format_p_value(float("nan")) == "—"
    assert format_float(12345.6) == "12,346"
    assert format_float(0.31) == "0.31" and format_float(3.14159) == "3.142"
    assert format_float(0.00012) == "1.20e-04" and format_float(0) == "0"
    assert format_float(None) == "—" and format_float(float("inf")) == "—" and format_float(np.float32("nan")) == "—"



def test_report_module_re_exports_the_writer():
    assert report.write_report is report_html.write_report
