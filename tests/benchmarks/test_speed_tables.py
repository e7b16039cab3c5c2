"""The speed benchmark's README table shows a bfloat16 row beside float32, against its own GEMM reference."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import tables  # noqa: E402


def _net(prec, rate, frac, bf=None, train=None):
    return {"precision": prec, "gflop_per_slice": 2.0, "infer_slices_per_s": rate, "infer_fraction_of_sgemm": frac,
            **({"bf16_gemm_fraction": bf} if bf is not None else {}),
            **({"train_slices_per_s": train, "train_fraction_of_sgemm": 0.5} if train else {})}


def test_speed_table_has_the_bfloat16_rows_and_reference():
    d = {"numpy_sgemm": {"gflops_median": 100.0}, "bf16_gemm": {"gflops_median": 220.0},
         "networks": {"256px batch": _net("float32", 40.0, 0.8, train=12.0),
                      "256px batch, bfloat16": _net("bfloat16", 70.0, 1.4, bf=0.64)},
         "pipelines": {"batch": {"total_s": 10.0, "stages_s": {"infer": 6.0}, "ratio_to_bare_infer": 0.5},
                       "batch, bfloat16": {"total_s": 7.0, "stages_s": {"infer": 3.5}, "ratio_to_bare_infer": 0.6}}}
    md = tables.speed(d)
    assert "TensorFlow bfloat16 GEMM 220.0 GFLOP/s" in md and "| of bf16 GEMM |" in md
    assert "| 256px batch, bfloat16 | 2.00 | 70.0 | 1.40 | 0.64 | — | — |" in md
    assert "| 256px batch | 2.00 | 40.0 | 0.80 | — | 12.0 | 0.50 |" in md
    assert "| batch, bfloat16 | 7.00 | 3.50 |" in md


def test_speed_table_of_a_float32_only_run_has_no_bfloat16_column():
    d = {"numpy_sgemm": {"gflops_median": 100.0}, "networks": {"256px batch": _net("float32", 40.0, 0.8, train=12.0)}}
    md = tables.speed(d)
    assert "bf16" not in md and "| 256px batch | 2.00 | 40.0 | 0.80 | 12.0 | 0.50 |" in md


def test_speed_table_shows_the_batch_with_and_without_prefetch():
    batch = {"scans": 3, "serial_s_per_scan": 11.0, "prefetch_s_per_scan": 10.0, "prefetch_speedup": 1.1,
             "serial_ratio_to_bare_infer": 0.55, "prefetch_ratio_to_bare_infer": 0.6, "cli_score": {"peak_rss_mib": 2400.0}}
    d = {"numpy_sgemm": {"gflops_median": 100.0}, "networks": {"256px batch": _net("float32", 40.0, 0.8, train=12.0)},
         "pipelines": {"batch": {"total_s": 10.0, "stages_s": {"infer": 6.0}, "ratio_to_bare_infer": 0.5, "batch": batch},
                       "none": {"total_s": 9.0, "stages_s": {"infer": 6.0}, "ratio_to_bare_infer": 0.5}}}
    md = tables.speed(d)
    assert "A batch of 3 such scans" in md
    assert "| batch | 11.00 | 10.00 | 1.10 | 0.55 | 0.60 | 2400 |" in md
    assert "| none | 11" not in md  # a pipeline without a batch run has no batch row


def test_speed_table_names_each_pipeline_grid_and_the_peer_per_grid():
    d = {"config": {"scan_shape_zyx": [300, 512, 512], "pipeline_sizes_px": [128, 256]},
         "numpy_sgemm": {"gflops_median": 100.0}, "networks": {"128px batch": _net("float32", 160.0, 0.8, train=40.0)},
         "pipelines": {"128px batch": {"total_s": 4.0, "stages_s": {"infer": 1.6}, "ratio_to_bare_infer": 0.45},
                       "256px batch": {"total_s": 9.0, "stages_s": {"infer": 6.0}, "ratio_to_bare_infer": 0.7}},
         "pytorch_peer_by_size": {
             "128px": {"torch": "2.5", "threads": 2, "best_slices_per_s": 70.0, "package_infer_slices_per_s": 180.0,
                       "package_infer_over_torch": 2.57, "pipeline_over_torch_infer": 1.07,
                       "fastest_pipeline": "bfloat16", "fastest_pipeline_over_torch_infer": 1.3},
             "256px": {"skipped": True}}}
    md = tables.speed(d)
    assert "NIfTI at the grid in each row's name (128 px, 256 px; the first is `fit`'s default)" in md
    assert "| 128px batch | 4.00 | 1.60 | 0.45 |" in md and "| 256px batch | 9.00 | 6.00 | 0.70 |" in md
    assert "| 128px | 70.0 | 180.0 | 2.57 | 1.07 | 1.30 (bfloat16) |" in md
    assert "| 256px |" not in md  # a skipped peer has no row


def test_fit_table_shows_the_fit_memory_at_n_and_10n_scans():
    d = {"config": {"slices": 400, "epochs": 3, "batch_size": 16}, "numpy_sgemm": {"gflops_median": 200.0},
         "runs": {}, "fit_memory": {"slices_per_scan": 20, "slice_px": 512, "epochs": 1, "ratio_10x_data": 1.05,
                                    "30_scans": {"scans": 30, "wall_s": 80.0, "peak_rss_mib": 1260.0},
                                    "3_scans": {"scans": 3, "wall_s": 20.0, "peak_rss_mib": 1200.0}},
         "targets": {"aeanomaly fit": {"peak_rss_30_over_3_scans_le_1.2": {"value": 1.05, "met": True}}}}
    md = tables.fit(d)
    assert "on 3 and 30 normal chest phantoms of 20 slices of 512 × 512 px" in md
    assert md.index("| 3 | 60 | 20.0 | 1200 |") < md.index("| 30 | 600 | 80.0 | 1260 |")  # N first
    assert "| target aeanomaly fit: peak_rss_30_over_3_scans_le_1.2 | 1.050 (met: yes) |" in md


def test_fit_table_of_a_memory_only_run_has_no_throughput_table():
    d = {"config": {"sizes": []}, "runs": {}, "fit_memory": {
        "slices_per_scan": 10, "slice_px": 128, "10_scans": {"scans": 10, "wall_s": 16.0, "peak_rss_mib": 1300.0},
        "100_scans": {"scans": 100, "wall_s": 40.0, "peak_rss_mib": 1310.0},
        "400_scans": {"scans": 400, "wall_s": 120.0, "peak_rss_mib": 1350.0}}}
    md = tables.fit(d)
    assert md.startswith("`aeanomaly fit --epochs 1 --quiet` on 10, 100 and 400 normal chest phantoms")
    assert "bare training step" not in md and "| 400 | 4000 | 120.0 | 1350 |" in md


def test_heatmap_write_benchmark_compares_float32_and_int16_and_its_table_shows_it(tmp_path):
    import json

    import heatmap_write

    heatmap_write.main(["--slices", "6", "--repeats", "1", "--out", str(tmp_path / "hw")])
    d = json.loads((tmp_path / "hw.json").read_text())
    assert d["complete"] is True and set(d["heatmaps"]) == {"dense", "sparse"}
    for r in d["heatmaps"].values():
        assert r["seconds"]["float32"] > 0 and r["seconds"]["int16"] > 0
        assert r["bytes"]["int16"] < r["bytes"]["float32"]  # half the bytes before compression, fewer after
        assert r["max_diff_steps"] < 0.502  # the writer's promised tolerance
    assert d["heatmaps"]["dense"]["nonzero_fraction"] > d["heatmaps"]["sparse"]["nonzero_fraction"]
    md = tables.heatmap_write(d)
    assert "512×512×6 scan" in md and "| dense |" in md and "| sparse |" in md
