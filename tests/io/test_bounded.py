"""Bounded reading: a header that lies about its size is a ScanError naming the file, before allocating."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from aeanomaly.errors import ConfigError, ScanError
from aeanomaly.io import load_label, load_scan
from aeanomaly.io import validate
from aeanomaly.io.validate import MAX_VOXELS, MAX_VOXELS_ENV, check_declared_size, max_voxels

REPO = Path(__file__).resolve().parents[2]
#: Peak resident memory allowed for a process that imports aeanomaly.io and refuses the file.
RSS_LIMIT_MB = 300


def _nifti_header(shape, version=1, dtype=np.int16) -> bytes:
    hdr = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), 1)
    buf = io.BytesIO()
    hdr.write_to(buf)
    raw = buf.getvalue()
    return raw + b"\0" * (int(hdr["vox_offset"]) - len(raw))


def _set_tiff_tag(path: Path, tag_name: str, value: int) -> None:
    with tifffile.TiffFile(str(path)) as tif:
        tag = tif.pages[0].tags[tag_name]
        offset, fmt = tag.valueoffset, {3: "<H", 4: "<I"}[int(tag.dtype)]
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def _png_with_ihdr(path: Path, width: int, height: int, body: bytes = b"") -> Path:
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Files whose headers declare far more data than they hold (the issue's probes and kin)."""
    root = tmp_path_factory.mktemp("hostile")
    f: dict[str, Path] = {}
    # the probes: a ~100-byte .nii.gz declaring 20000×20000×10 int16, NIfTI-2 100000²×1000,
    # NIfTI-1 32767²×1000
    (root / "probe_20000.nii.gz").write_bytes(gzip.compress(_nifti_header((20000, 20000, 10)) + b"\0" * 64))
    (root / "probe_nifti2.nii").write_bytes(_nifti_header((100000, 100000, 1000), version=2))
    (root / "probe_32767.nii").write_bytes(_nifti_header((32767, 32767, 1000)))
    # within the voxel limit, but not in the file
    (root / "lie_small.nii.gz").write_bytes(gzip.compress(_nifti_header((1024, 1024, 500)) + b"\1" * 5000))
    (root / "lie_small.nii").write_bytes(_nifti_header((1024, 1024, 500)) + b"\1" * 5000)
    # a gzip that holds more than it looks but still less than declared (streams, then refuses)
    noise = np.random.default_rng(0).bytes(200_000)  # incompressible: the size bound lets it through
    (root / "lie_stream.nii.gz").write_bytes(gzip.compress(_nifti_header((512, 512, 400)) + noise + b"\0" * (40 << 20)))
    head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nElementSpacing = 1 1 1\n"
            "DimSize = {}\nElementType = MET_SHORT\n{}ElementDataFile = LOCAL\n")
    (root / "probe.mha").write_bytes(head.format("100000 100000 1000", "").encode() + b"\0" * 100)
    (root / "lie.mha").write_bytes(head.format("1024 1024 500", "").encode() + b"\0" * 100)
    (root / "lie_z.mha").write_bytes(head.format("1024 1024 500", "CompressedData = True\n").encode()
                                     + zlib.compress(b"\0" * 1000))
    for name, shape in (("probe.npy", (100000, 100000, 10)), ("lie.npy", (500, 1024, 1024))):
        hdr = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1), np.int16))
        hdr["shape"] = shape
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, hdr)
        (root / name).write_bytes(buf.getvalue() + b"\0" * 128)
    _png_with_ihdr(root / "probe.png", 60000, 60000)
    _png_with_ihdr(root / "lie.png", 40000, 40000, b"\0" * 1000)
    for name, size in (("probe.tif", 60000), ("lie.tif", 20000)):
        tifffile.imwrite(root / name, np.zeros((64, 64), np.int16))
        _set_tiff_tag(root / name, "ImageWidth", size)
        _set_tiff_tag(root / name, "ImageLength", size)
    for p in root.iterdir():
        f[p.name] = p
    f.update(_dicom_files(root))
    return f


def _dicom_files(root: Path) -> dict[str, Path]:
    import pydicom
    from pydicom.uid import generate_uid

    out = {}
    for name, rows in (("probe.dcm", 60000), ("lie.dcm", 20000)):
        ds = _small_ct(generate_uid())
        ds.Rows = ds.Columns = rows
        path = root / name
        ds.save_as(path, enforce_file_format=True)
        out[name] = path
        assert pydicom.dcmread(path).Rows == rows
    return out


def _small_ct(uid):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.Modality = CTImageStorage, uid, uid, "CT"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.PixelData = np.zeros((64, 64), np.int16).tobytes()
    return ds


REASONS = {
    "probe_20000.nii.gz": "more than the limit", "probe_nifti2.nii": "more than the limit",
    "probe_32767.nii": "more than the limit", "lie_small.nii.gz": "compressed bytes can hold",
    "lie_small.nii": "but the file holds", "lie_stream.nii.gz": "data ends after",
    "probe.mha": "more than the limit", "lie.mha": "truncated MetaImage data",
    "lie_z.mha": "cannot hold", "probe.npy": "more than the limit", "lie.npy": "but the file holds",
    "probe.png": "more than the limit", "lie.png": "cannot hold", "probe.tif": "more than the limit",
    "lie.tif": "cannot hold", "probe.dcm": "more than the limit", "lie.dcm": "but the file holds",
}


@pytest.mark.parametrize("name", sorted(REASONS))
def test_a_lying_header_is_one_scan_error_naming_the_file(hostile, name):
    path = hostile[name]
    with pytest.raises(ScanError) as err:
        load_scan(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    assert REASONS[name] in msg, msg


@pytest.mark.parametrize("name", ["lie_small.nii", "lie.mha", "lie.npy", "lie.png", "lie.tif"])
def test_label_readers_are_bounded_too(hostile, name):
    with pytest.raises(ScanError, match=REASONS[name]):
        load_label(hostile[name])


@pytest.mark.parametrize("name", ["probe_20000.nii.gz", "probe_32767.nii", "probe.mha", "probe.npy", "probe.png",
                                  "probe.dcm"])
def test_without_the_voxel_limit_the_file_size_still_refuses(hostile, name, monkeypatch):
    monkeypatch.setenv(MAX_VOXELS_ENV, str(10 ** 16))
    with pytest.raises(ScanError) as err:
        load_scan(hostile[name])
    msg = str(err.value)
    assert "more than the limit" not in msg and "truncated" in msg, msg


def test_the_voxel_limit_passes_a_large_ct_and_is_configurable(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_VOXELS_ENV, raising=False)
    assert max_voxels() == MAX_VOXELS >= 1024 * 1024 * 2000
    assert check_declared_size((1024, 1024, 2000), 2, tmp_path / "x") == 1024 * 1024 * 2000 * 2
    monkeypatch.setenv(MAX_VOXELS_ENV, "1e6")
    assert max_voxels() == 10 ** 6
    with pytest.raises(ScanError, match=f"limit of 1,000,000 .*{MAX_VOXELS_ENV}"):
        check_declared_size((100, 100, 101), 2, tmp_path / "x")
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_VOXELS_ENV):
        max_voxels()
    monkeypatch.delenv(MAX_VOXELS_ENV)
    monkeypatch.setattr(validate, "MAX_VOXELS", 1000)
    assert max_voxels() == 1000


def test_the_limit_applies_to_a_real_file(synthetic_scans, monkeypatch):
    monkeypatch.setenv(MAX_VOXELS_ENV, "4000")  # the synthetic volumes are 4×40×40, the series 3×40×40
    for key in ("nii", "nii.gz", "mha", "mha_z", "mhd", "npy", "dicom_dir"):
        with pytest.raises(ScanError, match="limit of 4,000"):
            load_scan(synthetic_scans[key])
    monkeypatch.setenv(MAX_VOXELS_ENV, "6400")
    assert load_scan(synthetic_scans["nii.gz"]).shape == (4, 40, 40)


def test_memory_error_inside_a_reader_is_a_scan_error(synthetic_scans, monkeypatch):
    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(nib, "load", no_memory)
    with pytest.raises(ScanError, match="out of memory") as err:
        load_scan(synthetic_scans["nii"])
    assert str(err.value).startswith(str(synthetic_scans["nii"]))
    monkeypatch.setattr(np.lib.format, "read_magic", no_memory)
    with pytest.raises(ScanError, match="out of memory"):
        load_label(synthetic_scans["npy"])


_CHILD = """
import json, sys
from aeanomaly.errors import ScanError
from aeanomaly.io import load_scan
{PEAK}
out = {}
for p in sys.argv[1:]:
    try:
        load_scan(p)
        out[p] = "loaded"
    except ScanError as e:
        out[p] = "ScanError"
    except BaseException as e:
        out[p] = type(e).__name__
print(json.dumps({"rss_mb": peak_rss_mb(), "out": out}))
"""


@pytest.mark.parametrize("limit", [None, 10 ** 16], ids=["default-limit", "no-voxel-limit"])
def test_peak_memory_while_refusing_stays_bounded(hostile, limit, peak_rss_source):
    import os

    env = dict(os.environ)
    env.pop(MAX_VOXELS_ENV, None)
    if limit is not None:
        env[MAX_VOXELS_ENV] = str(limit)
    files = [str(hostile[n]) for n in sorted(REASONS)]
    child = _CHILD.replace("{PEAK}", peak_rss_source)
    proc = subprocess.run([sys.executable, "-c", child, *files], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["out"].values()) == {"ScanError"}, report["out"]
    print(f"peak RSS refusing {len(files)} hostile files: {report['rss_mb']:.0f} MB")
    assert report["rss_mb"] < RSS_LIMIT_MB
