"""Fixtures of the review app tests: the lead's tiny fitted bundle on phantoms, a fresh app per test
(or one scored app per module), and CSRF-aware request helpers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def normal_phantoms(phantom_test) -> list[Path]:
    return sorted((phantom_test / "normal").glob("*.nii.gz"))


@pytest.fixture(scope="session")
def loaded_detector(fitted_bundle):
    """The tiny bundle loaded once (create_app takes it, saving a model load per test)."""
    from aeanomaly.detector import AnomalyDetector

    return AnomalyDetector.load(fitted_bundle)


@pytest.fixture
def make_app(fitted_bundle, loaded_detector, tmp_path):
    """``make_app(**kwargs)``: a review app on the tiny bundle with its database in ``tmp_path``."""
    pytest.importorskip("flask")
    from aeanomaly.review.app import create_app

    def make(**kwargs):
        kwargs.setdefault("detector", loaded_detector)
        return create_app(fitted_bundle, kwargs.pop("db_path", tmp_path / "review.sqlite"), **kwargs)

    return make


def csrf_of(client, path: str = "/") -> str:
    """The CSRF token of the client's session (GET a page, read its meta tag)."""
    html = client.get(path).get_data(as_text=True)
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def upload(client, path: Path, token: str, name: str | None = None):
    with open(path, "rb") as fh:
        return client.post("/upload", data={"csrf_token": token, "scan": (fh, name or path.name)},
                           content_type="multipart/form-data")


def wait_scored(app, timeout: float = 120.0) -> None:
    assert app.extensions["aeanomaly_review"].scorer.wait_idle(timeout), "scoring did not finish"


def dicom_zip(scan_hu, spacing):
    """A zipped DICOM CT series (one file per slice) of a ``(z, y, x)`` HU volume."""
    import io
    import zipfile

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    buf = io.BytesIO()
    uid = generate_uid()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, sl in enumerate(scan_hu):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", uid, k + 1
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
            ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
            ds.SliceThickness = float(spacing[0])
            ds.Rows, ds.Columns = sl.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit, ds.PixelRepresentation = 15, 0
            ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
            ds.PixelData = np.clip(sl + 1024, 0, 65535).astype(np.uint16).tobytes()
            f = io.BytesIO()
            ds.save_as(f, enforce_file_format=True)
            zf.writestr(f"series/IM{k:04d}.dcm", f.getvalue())
    buf.seek(0)
    return buf


@pytest.fixture(scope="session")
def rv(abnormal_phantom):
    """The helpers above as one object (test modules cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(csrf=csrf_of, upload=upload, wait=wait_scored, abnormal_name=abnormal_phantom.name,
                           dicom_zip=dicom_zip)
