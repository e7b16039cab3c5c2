"""Shared fixtures. Real CT lives in ../shared/data (env AEANOMALY_SHARED_DATA); tests skip without it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("AEANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real CT folder; skips the test with a clear reason when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real CT not available: {root} is absent (set AEANOMALY_SHARED_DATA)")
    return root


#: Lines tests hand to the terminal summary through their reports' ``user_properties`` (name → lines),
#: collected on the process that prints the summary: pytest's own, or pytest-xdist's controller.
_SUMMARY_SECTIONS = {"fuzz_summary": "reader fuzz"}
_summary_lines: dict[str, list[str]] = {}


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        for name, lines in report.user_properties:
            if name in _SUMMARY_SECTIONS:
                _summary_lines.setdefault(name, []).extend(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for name, title in _SUMMARY_SECTIONS.items():
        if _summary_lines.get(name):
            terminalreporter.section(title)
            for line in _summary_lines[name]:
                terminalreporter.write_line(line)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Phantom data and one tiny fitted bundle, shared by the detector, CLI and notebook tests.
# ---------------------------------------------------------------------------------------------

#: Small phantoms: fast to write and to fit on 2 cores.
PHANTOM_SHAPE = (8, 64, 64)
PHANTOM_SPACING = (6.0, 5.5, 5.5)
#: The tiny model used everywhere in tests.
# norm="group": at this size (20 phantoms, 8 epochs) the BatchNorm default ranks scans but its lesions miss the
# injected ones (Dice 0 in test_scoring_ranks_abnormal_above_normal_and_localizes); the GroupNorm model
# localizes. The BatchNorm default is exercised by the tests that fit with defaults and by `make demo`.
# The phantoms' lesions are 15-40 mm on 5.5 mm pixels, the real nodules the defaults were chosen on 3-30 mm on
# 2.7 mm pixels: coarse noise 0.2 @ 16 (in 8 epochs the tiny model learns the default 0.5 @ 64 less well:
# reconstruction MAE 0.6 of the mean-image baseline's instead of < 0.5) and σ 6 mm (with the default 3 mm,
# about half a pixel here, its lesions miss the injected ones: Dice 0) and no blob gate (its scales are for
# nodules; these lesions are plateaus wider than them).
TINY = dict(size=64, depth=3, base_filters=8, latent_dim=16, epochs=8, batch_size=8, learning_rate=3e-3, patience=10,
            val_fraction=0.15, calib_fraction=0.4, target_fpr=0.2, seed=0, norm="group", noise_std=0.2,
            noise_resolution=16, sigma_mm=6.0, blob_gate=0.0, slice_norm="area",  # the demo's phantom settings
            precision="float32")  # the same arithmetic on every machine


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)`` once per test run, its result kept in ``folder``: under pytest-xdist the
    workers share one (the first that asks builds it, the others wait on a file lock) instead of each
    building its own. Returns what ``build`` returned."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above the workers' own
    done = base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(base / name, ignore_errors=True)
            (base / name).mkdir()
            done.write_text(str(build(base / name / "out")))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def phantom_train(tmp_path_factory) -> Path:
    """20 normal chest phantoms (seed 1)."""
    from aeanomaly.datasets.synthetic import write_phantom_set

    def build(out: Path) -> Path:
        write_phantom_set(out, 20, 0, region="chest", seed=1, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
        return out

    return built_once(tmp_path_factory, "phantom_train", build)


@pytest.fixture(scope="session")
def phantom_test(tmp_path_factory) -> Path:
    """6 normal and 6 abnormal chest phantoms of other subjects (seed 2), lesions 15-30 mm."""
    from aeanomaly.datasets.synthetic import write_phantom_set

    def build(out: Path) -> Path:
        write_phantom_set(out, 6, 6, region="chest", seed=2, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING,
                          lesions_per_scan=(2, 3), size_mm=(15, 30))
        return out

    return built_once(tmp_path_factory, "phantom_test", build)


@pytest.fixture(scope="session")
def fitted_bundle(phantom_train, tmp_path_factory) -> Path:
    """A tiny detector fitted on ``phantom_train`` and saved; tests must not modify it (copy it)."""

    def build(out: Path) -> Path:
        from aeanomaly.detector import AnomalyDetector
        from aeanomaly.io import find_scans

        det = AnomalyDetector(window="lung", **TINY).fit(find_scans(phantom_train / "normal"), verbose=0)
        return det.save(out)

    return built_once(tmp_path_factory, "fitted_bundle", build)


@pytest.fixture(scope="session")
def abnormal_phantom(phantom_test, fitted_bundle) -> Path:
    """The abnormal test phantom that the tiny bundle labels abnormal with the most lesions (the review
    and feedback tests need a scan it finds; which one depends on the model, so it is looked up)."""
    from aeanomaly.detector import AnomalyDetector
    from aeanomaly.io import find_scans

    det = AnomalyDetector.load(fitted_bundle)
    found = [(len(r.lesions), p) for p in find_scans(phantom_test / "abnormal")
             for r in [det.score_scan(p)] if r.label == "abnormal" and r.lesions]
    assert found, "the tiny bundle flags none of the abnormal test phantoms"
    return max(found, key=lambda t: (t[0], -int(t[1].name.split("_")[-1].split(".")[0])))[1]


def _write_mhd(path, data_zyx, spacing_xyz=(0.7, 0.7, 2.5), offset_xyz=(-180.0, -200.0, -300.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), dtype="<i2", local=False, compressed=False, extra=""):
    """Write a MetaImage as LUNA16 does (.mhd + .raw, LPS world frame); ``data_zyx`` is z-slowest."""
    import zlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(np.asarray(data_zyx).astype(dtype))
    blob = arr.tobytes()
    if compressed:
        blob = zlib.compress(blob)
    etype = {"<i2": "MET_SHORT", ">i2": "MET_SHORT", "<f4": "MET_FLOAT", "|u1": "MET_UCHAR", "<u2": "MET_USHORT"}[
        np.dtype(dtype).str]
    nd = arr.ndim
    head = (f"ObjectType = Image\nNDims = {nd}\nBinaryData = True\n"
            f"BinaryDataByteOrderMSB = {'True' if np.dtype(dtype).str.startswith('>') else 'False'}\n"
            f"CompressedData = {'True' if compressed else 'False'}\n"
            f"TransformMatrix = {' '.join(map(str, direction))}\nOffset = {' '.join(map(str, offset_xyz))}\n"
            f"AnatomicalOrientation = RAI\nElementSpacing = {' '.join(map(str, spacing_xyz))}\n"
            f"DimSize = {' '.join(str(s) for s in arr.shape[::-1])}\nElementType = {etype}\n{extra}")
    if local:
        path.write_bytes((head + "ElementDataFile = LOCAL\n").encode() + blob)
    else:
        raw = path.with_suffix(".raw")
        raw.write_bytes(blob)
        path.write_text(head + f"ElementDataFile = {raw.name}\n")
    return path


@pytest.fixture
def write_mhd():
    """A function writing MetaImage test files (see ``_write_mhd``)."""
    return _write_mhd


def _blob_tube_edge_volume(spacing=(2.5, 1.0, 1.0)) -> np.ndarray:
    """One slice (64 x 96 px) of residual: a round blob (σ 3 mm) at (20, 20), a tube (σ 2 mm across, 50 px
    long) along row 45, and a step edge at column 80, all of height 1."""
    yy = np.arange(64)[:, None] * spacing[1]
    xx = np.arange(96)[None, :] * spacing[2]
    blob = np.exp(-((yy - 20 * spacing[1]) ** 2 + (xx - 20 * spacing[2]) ** 2) / (2 * 3.0**2))
    tube = np.exp(-((yy - 45 * spacing[1]) ** 2) / (2 * 2.0**2)) * ((xx >= 10 * spacing[2]) & (xx < 60 * spacing[2]))
    edge = (xx >= 80 * spacing[2]) * np.ones_like(yy)
    return (blob + tube + edge).astype(np.float32)[None]


@pytest.fixture
def blob_tube_edge() -> Callable[..., np.ndarray]:
    """Residual shapes of the blob gates' tests (:func:`_blob_tube_edge_volume`): call with a spacing."""
    return _blob_tube_edge_volume


def _ball_and_tubes_volume(spacing=(2.5, 1.0, 1.0), shape=(24, 48, 72)):
    """Gaussian residual shapes in mm: a ball (a nodule), a tube along z (a vessel cut across: a round
    spot on every slice) and a tube along x (a vessel in the slice), each of height 0.3."""
    z, y, x = (np.arange(n, dtype=np.float32) * d for n, d in zip(shape, spacing))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    c = [n // 2 * d for n, d in zip(shape, spacing)]
    ball = np.exp(-((zz - c[0]) ** 2 + (yy - 12 * spacing[1]) ** 2 + (xx - 12 * spacing[2]) ** 2) / (2 * 4.0 ** 2))
    tube_z = np.exp(-((yy - 36 * spacing[1]) ** 2 + (xx - 12 * spacing[2]) ** 2) / (2 * 2.0 ** 2))
    tube_x = np.exp(-((zz - c[0]) ** 2 + (yy - 36 * spacing[1]) ** 2) / (2 * 2.0 ** 2)) * (xx > 24 * spacing[2])
    return (0.3 * (ball + tube_z + tube_x)).astype(np.float32)


@pytest.fixture
def ball_and_tubes() -> Callable[..., np.ndarray]:
    """Residual shapes of the 3-D blob gate's tests (:func:`_ball_and_tubes_volume`): call with a spacing, a shape."""
    return _ball_and_tubes_volume
