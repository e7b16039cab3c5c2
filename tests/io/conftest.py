"""Writers of small synthetic scans in every format, for the series, bounded-reading and fuzz tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def dicom_slice(pixels, z, *, series_uid, description="series", number=1, sop_uid=None):
    """One CT slice as a pydicom Dataset (uint16 stored, intercept −1024) at LPS z = ``z``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [-10.0, 20.0, float(z)]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024.0
    ds.RescaleSlope = 1.0
    ds.PixelData = np.asarray(pixels).astype(np.uint16).tobytes()
    return ds


def _write_series(folder, n_slices, *, description="series", series_uid=None, prefix="s", shape=(40, 40), seed=0,
                  z_positions=None):
    """``n_slices`` slices 2 mm apart (or at ``z_positions``) in ``folder``; returns the SeriesInstanceUID."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    for k in range(n_slices):
        pixels = rng.integers(0, 2000, size=shape)
        z = 2.0 * k if z_positions is None else z_positions[k]
        dicom_slice(pixels, z, series_uid=uid, description=description, number=k + 1).save_as(
            folder / f"{prefix}{k:03d}.dcm", enforce_file_format=True)
    return uid


@pytest.fixture
def write_dicom_series():
    """``write(folder, n_slices, description=..., series_uid=..., prefix=..., z_positions=...)`` → series UID."""
    return _write_series


def _volume(shape=(4, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(-500, 300, size=shape)).astype(np.int16)


@pytest.fixture(scope="session")
def synthetic_scans(tmp_path_factory) -> dict[str, Path]:
    """One small valid scan per reader: ``nii``, ``nii.gz``, ``mha``, ``mhd`` (+ raw), ``mha_z`` (zlib),
    ``npy``, ``png``, ``tif``, ``dcm`` (a single slice) and ``dicom_dir`` (a 3-slice series)."""
    root = tmp_path_factory.mktemp("synthetic_scans")
    vol = _volume()
    files: dict[str, Path] = {}
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), np.diag([0.7, 0.7, 2.5, 1.0]))
    for key, name in (("nii", "ct.nii"), ("nii.gz", "ct.nii.gz")):
        nib.save(img, str(root / name))
        files[key] = root / name

    def mhd_header(dtype_name="MET_SHORT", compressed=False, local=True, raw=""):
        return (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                f"CompressedData = {compressed}\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                f"ElementSpacing = 0.7 0.7 2.5\nDimSize = {vol.shape[2]} {vol.shape[1]} {vol.shape[0]}\n"
                f"ElementType = {dtype_name}\nElementDataFile = {'LOCAL' if local else raw}\n").encode()

    blob = vol.astype("<i2").tobytes()
    (root / "ct.mha").write_bytes(mhd_header() + blob)
    files["mha"] = root / "ct.mha"
    (root / "ctz.mha").write_bytes(mhd_header(compressed=True) + zlib.compress(blob))
    files["mha_z"] = root / "ctz.mha"
    (root / "ct.raw").write_bytes(blob)
    (root / "ct.mhd").write_bytes(mhd_header(local=False, raw="ct.raw"))
    files["mhd"] = root / "ct.mhd"
    np.save(root / "ct.npy", vol)
    files["npy"] = root / "ct.npy"
    iio.imwrite(root / "slice.png", (vol[0] + 1024).clip(0, 65535).astype(np.uint16))
    files["png"] = root / "slice.png"
    tifffile.imwrite(root / "slice.tif", vol[0])
    files["tif"] = root / "slice.tif"
    dicom_slice((vol[0] + 1024).clip(0), 0.0, series_uid=generate_uid()).save_as(root / "slice.dcm",
                                                                                 enforce_file_format=True)
    files["dcm"] = root / "slice.dcm"
    _write_series(root / "series", 3)
    files["dicom_dir"] = root / "series"
    return files


@pytest.fixture
def fuzz_summary(request):
    """A list whose lines are printed in the terminal summary (``reader fuzz`` section, see
    ``tests/conftest.py``): they travel in the test's report, so they also reach the summary from a
    pytest-xdist worker."""
    lines: list[str] = []
    yield lines
    request.node.user_properties.append(("fuzz_summary", list(lines)))


#: Python source of ``peak_rss_mb()`` for a child process: the peak resident memory of the process's
#: own address space (``VmHWM``). ``ru_maxrss`` is not used: Linux carries the parent's peak into a
#: child across ``exec``, so a child started from a large pytest process would report the parent's.
PEAK_RSS_SOURCE = '''
def peak_rss_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
'''


@pytest.fixture
def peak_rss_source() -> str:
    """Source defining ``peak_rss_mb()`` for the memory-measuring child processes (see PEAK_RSS_SOURCE)."""
    return PEAK_RSS_SOURCE
