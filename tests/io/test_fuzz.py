"""Fuzz the readers: seeded truncations, bit flips and header edits of real and synthetic scans.

Every case must end in a loaded :class:`~aeanomaly.io.Scan` or a ``ScanError`` (an ``AeAnomalyError``)
whose one-line message starts with the file, never another exception, and the process that loads
them all stays under the memory bound. The cases are written here and loaded in a child process
that imports only ``aeanomaly.io`` (so its peak RSS is the readers', not the test session's).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RSS_LIMIT_MB = 300
#: Seed and size of the run; ``AEANOMALY_FUZZ_SEED`` / ``AEANOMALY_FUZZ_SCALE`` make a longer run by hand.
SEED = int(os.environ.get("AEANOMALY_FUZZ_SEED", "20261202"))
_SCALE = float(os.environ.get("AEANOMALY_FUZZ_SCALE", "1"))
#: Cases per source file (synthetic sources); real files from ../shared/data get fewer.
PER_SOURCE = int(36 * _SCALE)
PER_SHARED = int(16 * _SCALE)

_INTERESTING_INT = [0, 1, -1, 2, 3, 7, 255, 32767, -32768, 65535, 2 ** 31 - 1, -(2 ** 31), 40000, 100000]
_INTERESTING_FLOAT = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 3.0]
_INTERESTING_TEXT = ["0", "-1", "1", "abc", "", "1e400", "nan", "100000 100000 100000", "1 1", "4 40 40 40",
                     "MET_FLOAT", "MET_DOUBLE", "MET_UNKNOWN", "True", "False", "LOCAL", "missing.raw", "2", "4"]


# ----------------------------------------------------------------------------- mutations


def truncate(data: bytes, rng) -> bytes:
    cut = int(rng.integers(0, min(len(data), 1024))) if rng.random() < 0.5 else int(rng.integers(0, len(data)))
    return data[:cut]


def flip_bits(data: bytes, rng, header: int = 512) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        span = min(len(out), header) if rng.random() < 0.6 else len(out)
        pos = int(rng.integers(0, max(span, 1)))
        if pos < len(out):
            out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _put(out: bytearray, offset: int, fmt: str, value) -> None:
    try:
        packed = struct.pack(fmt, value)
    except (struct.error, OverflowError):
        packed = struct.pack(fmt, 0) if fmt[-1] not in "fd" else struct.pack(fmt, float("nan"))
    if offset + len(packed) <= len(out):
        out[offset:offset + len(packed)] = packed


def edit_nifti(data: bytes, rng) -> bytes:
    """Set one NIfTI-1 header field (dims, datatype, bitpix, vox_offset, scaling, pixdim, codes) to an odd value."""
    out = bytearray(data)
    field = rng.choice(["dim", "datatype", "bitpix", "vox_offset", "scl", "pixdim", "codes", "srow", "magic"])
    if field == "dim":
        _put(out, 40 + 2 * int(rng.integers(0, 8)), "<h", int(rng.choice(_INTERESTING_INT)))
    elif field == "datatype":
        _put(out, 70, "<h", int(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2304, 7])))
    elif field == "bitpix":
        _put(out, 72, "<h", int(rng.choice(_INTERESTING_INT)))
    elif field == "vox_offset":
        _put(out, 108, "<f", float(rng.choice([0.0, 100.0, 352.0, 353.0, 1e9, -5.0, float("nan"), 4e5])))
    elif field == "scl":
        _put(out, 112 + 4 * int(rng.integers(0, 2)), "<f", float(rng.choice(_INTERESTING_FLOAT)))
    elif field == "pixdim":
        _put(out, 76 + 4 * int(rng.integers(0, 8)), "<f", float(rng.choice(_INTERESTING_FLOAT)))
    elif field == "codes":
        _put(out, 252 + 2 * int(rng.integers(0, 2)), "<h", int(rng.choice([0, 1, 2, 3, 4, 5, -1, 999])))
    elif field == "srow":
        _put(out, 280 + 4 * int(rng.integers(0, 12)), "<f", float(rng.choice(_INTERESTING_FLOAT)))
    else:
        out[344:348] = rng.choice([b"ni1\0", b"n+2\0", b"xxxx"])
    return bytes(out)


def edit_metaimage(data: bytes, rng) -> bytes:
    """Replace the value of one ``Key = Value`` header line (or drop the line)."""
    end = data.find(b"ElementDataFile")
    end = data.find(b"\n", end) + 1 if end >= 0 else min(len(data), 400)
    head, body = data[:end].decode("latin-1").splitlines(), data[end:]
    n = int(rng.integers(0, len(head)))
    key = head[n].split("=")[0].strip()
    if rng.random() < 0.15:
        del head[n]
    else:
        head[n] = f"{key} = {rng.choice(_INTERESTING_TEXT)}"
    return ("\n".join(head) + "\n").encode("latin-1") + body


def edit_png(data: bytes, rng) -> bytes:
    """Change IHDR width, height, bit depth, colour type or a flag; fix the CRC half the time."""
    out = bytearray(data)
    which = rng.choice(["width", "height", "depth", "colour", "flags"])
    if which in ("width", "height"):
        _put(out, 16 if which == "width" else 20, ">I", int(rng.choice([0, 1, 63, 64, 65, 1000, 40000, 2 ** 31 - 1,
                                                                        2 ** 32 - 1])))
    elif which == "depth":
        out[24] = int(rng.choice([0, 1, 2, 4, 8, 16, 3, 255]))
    elif which == "colour":
        out[25] = int(rng.choice([0, 2, 3, 4, 6, 1, 7]))
    else:
        out[26 + int(rng.integers(0, 3))] = int(rng.choice([0, 1, 255]))
    if rng.random() < 0.5:
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    return bytes(out)


def edit_npy(data: bytes, rng) -> bytes:
    """Rewrite the header dict (shape, dtype, order) with a correct or a stale length field."""
    hlen = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + hlen].decode("latin-1")
    d = eval(header, {"__builtins__": {}}, {"True": True, "False": False})  # noqa: S307 - our own test file
    which = rng.choice(["shape", "descr", "order"])
    if which == "shape":
        d["shape"] = [(100000, 100000, 100), (-1, 40, 40), (40,), (), (4, 40, 40, 2), (400, 40, 40), (4, 40, 4000),
                      (0, 40, 40)][int(rng.integers(0, 8))]
    elif which == "descr":
        d["descr"] = str(rng.choice(["|O", "<f16", "<c8", "|b1", "<U4", "|V8", ">i2", "<i8", "<f2"]))
    else:
        d["fortran_order"] = not d["fortran_order"]
    text = repr(d)
    new = text + " " * (max(hlen - len(text) - 1, 0)) + "\n"
    keep_len = rng.random() < 0.3
    length = hlen if keep_len else len(new)
    return data[:8] + struct.pack("<H", length) + new.encode("latin-1") + data[10 + hlen:]


def edit_tiff(path: Path, data: bytes, rng) -> bytes:
    """Set one baseline TIFF tag (size, samples, bits, compression, strips) to an odd value."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tags = tif.pages[0].tags
        names = [n for n in ("ImageWidth", "ImageLength", "BitsPerSample", "SamplesPerPixel", "Compression",
                             "StripOffsets", "StripByteCounts", "RowsPerStrip", "SampleFormat",
                             "PhotometricInterpretation")
                 if n in tags]
        tag = tags[str(rng.choice(names))]
        offset, dtype, count = tag.valueoffset, int(tag.dtype), int(tag.count)
    out = bytearray(data)
    fmt = {3: "<H", 4: "<I", 16: "<Q"}.get(dtype)
    if fmt is None or count > 1 and struct.calcsize(fmt) * count > 4:
        return flip_bits(data, rng)
    _put(out, offset, fmt, int(rng.choice([0, 1, 2, 5, 7, 8, 16, 32, 64, 65535, 40000, 2 ** 31, 50000, 7])) %
         (1 << (8 * struct.calcsize(fmt))))
    return bytes(out)


def edit_dicom(data: bytes, rng) -> bytes | None:
    """Change one image-geometry / pixel element through pydicom and write the file again."""
    import warnings

    import pydicom
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    warnings.simplefilter("ignore")  # pydicom warns about the invalid values this writes on purpose
    ds = pydicom.dcmread(io.BytesIO(data))
    which = rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                        "RescaleSlope", "PixelSpacing", "ImageOrientationPatient", "NumberOfFrames", "Syntax",
                        "PixelData", "Modality", "ImagePositionPatient"])
    try:
        if which in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"):
            setattr(ds, which, int(rng.choice([0, 1, 3, 8, 16, 32, 64, 65535, 20000])))
        elif which == "RescaleSlope":
            ds.RescaleSlope = str(rng.choice(["nan", "1e308", "-1", "0", "inf"]))
        elif which == "PixelSpacing":
            ds.PixelSpacing = [str(v) for v in rng.choice([["0", "0"], ["-1", "1"], ["nan", "1"], ["1e300", "1"]])]
        elif which == "ImageOrientationPatient":
            ds.ImageOrientationPatient = [str(v) for v in rng.choice([["0"] * 6, ["1", "0", "0", "1", "0", "0"],
                                                                      ["nan"] * 6])]
        elif which == "ImagePositionPatient":
            ds.ImagePositionPatient = ["nan", "0", "0"]
        elif which == "NumberOfFrames":
            ds.NumberOfFrames = int(rng.choice([0, 2, 1000]))
        elif which == "Syntax":
            ds.file_meta.TransferSyntaxUID = rng.choice([JPEGBaseline8Bit, RLELossless, "1.2.3.4"])
        elif which == "Modality":
            ds.Modality = str(rng.choice(["MR", "", "ct"]))
        else:
            ds.PixelData = ds.PixelData[: int(rng.integers(0, len(ds.PixelData)))]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - pydicom refused to write the edit: no case
        return None


# ----------------------------------------------------------------------------- sources and cases


def _sources(synthetic: dict[str, Path]) -> list[tuple[str, Path, int]]:
    """``(format, path, n_cases)`` for every source file: synthetic, pydicom's CT_small, shared data."""
    from pydicom.data import get_testdata_file

    out = [("nifti", synthetic["nii"], PER_SOURCE), ("nifti_gz", synthetic["nii.gz"], PER_SOURCE),
           ("metaimage", synthetic["mha"], PER_SOURCE), ("metaimage", synthetic["mha_z"], PER_SOURCE),
           ("mhd", synthetic["mhd"], PER_SOURCE // 2), ("npy", synthetic["npy"], PER_SOURCE),
           ("png", synthetic["png"], PER_SOURCE), ("tiff", synthetic["tif"], PER_SOURCE),
           ("dicom", synthetic["dcm"], PER_SOURCE), ("dicom_dir", synthetic["dicom_dir"], PER_SOURCE // 3)]
    ct_small = get_testdata_file("CT_small.dcm")
    if ct_small:
        out.append(("dicom", Path(ct_small), PER_SOURCE))
    shared = Path(os.environ.get("AEANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))
    for fmt, rel in (("nifti_gz", "totalseg-examples/example_ct_sm.nii.gz"),
                     ("dicom", "tcga-luad-slices/dicom/ID_0000_AGE_0060_CONTRAST_1_CT.dcm"),
                     ("png", "kmader-lungs-64/images/lung_train_000.png"),
                     ("tiff", "kmader-lungs-512/images/ID_0000_Z_0142.tif")):
        if (shared / rel).is_file():
            out.append((fmt, shared / rel, PER_SHARED))
    dicom_dir = shared / "totalseg-examples" / "example_ct_dicom"
    if dicom_dir.is_dir():
        first = sorted(dicom_dir.iterdir())[0]
        out.append(("dicom", first, PER_SHARED))
    return out


_SUFFIX = {"nifti": ".nii", "nifti_gz": ".nii.gz", "npy": ".npy", "png": ".png", "tiff": ".tif", "dicom": ".dcm"}
_EDIT = {"nifti": edit_nifti, "nifti_gz": edit_nifti, "metaimage": edit_metaimage, "npy": edit_npy,
         "png": edit_png, "dicom": edit_dicom}


def _mutant(fmt: str, path: Path, data: bytes, rng) -> tuple[str, bytes | None]:
    kind = str(rng.choice(["truncate", "flip", "edit"], p=[0.3, 0.3, 0.4]))
    if fmt == "nifti_gz":
        if rng.random() < 0.3:  # damage the gzip stream itself
            return f"gz-{kind}", truncate(data, rng) if kind == "truncate" else flip_bits(data, rng, 64)
        plain = gzip.decompress(data)
        plain = truncate(plain, rng) if kind == "truncate" else flip_bits(plain, rng, 348) if kind == "flip" \
            else edit_nifti(plain, rng)
        return kind, gzip.compress(plain, compresslevel=1)
    if kind == "truncate":
        return kind, truncate(data, rng)
    if kind == "flip":
        return kind, flip_bits(data, rng, 400)
    if fmt == "tiff":
        return kind, edit_tiff(path, data, rng)
    return kind, _EDIT[fmt](data, rng)


def _make_cases(root: Path, synthetic: dict[str, Path]) -> list[dict]:
    rng = np.random.default_rng(SEED)
    cases: list[dict] = []
    made = 0
    for fmt, src, n in _sources(synthetic):
        for _ in range(n):
            made += 1
            case_dir = root / f"{made:04d}"
            case_dir.mkdir()
            if fmt == "mhd":  # header edits and flips on the .mhd, truncations of its .raw
                raw = src.with_suffix(".raw")
                kind = str(rng.choice(["truncate-raw", "edit", "flip"]))
                shutil.copy(raw, case_dir / raw.name)
                header = src.read_bytes()
                if kind == "truncate-raw":
                    (case_dir / raw.name).write_bytes(truncate(raw.read_bytes(), rng))
                else:
                    header = edit_metaimage(header, rng) if kind == "edit" else flip_bits(header, rng)
                target = case_dir / src.name
                target.write_bytes(header)
            elif fmt == "dicom_dir":  # one slice of a series damaged
                target = case_dir / "series"
                shutil.copytree(src, target)
                victim = sorted(target.iterdir())[int(rng.integers(0, 3))]
                kind, data = _mutant("dicom", victim, victim.read_bytes(), rng)
                if data is None:
                    continue
                victim.write_bytes(data)
            else:
                kind, data = _mutant(fmt if fmt != "metaimage" else "metaimage", src, src.read_bytes(), rng)
                if data is None:
                    continue
                suffix = _SUFFIX.get(fmt, src.suffix)
                target = case_dir / f"case{suffix}"
                target.write_bytes(data)
            cases.append({"path": str(target), "format": fmt, "kind": kind, "source": src.name})
    return cases


_CHILD = r"""
import json, os, sys, traceback, warnings
warnings.simplefilter("ignore")
from aeanomaly.errors import AeAnomalyError, ScanError
from aeanomaly.io import load_scan
{PEAK}
cases = json.load(open(sys.argv[1]))
for case in cases:
    p = case["path"]
    try:
        scan = load_scan(p)
        assert scan.hu.ndim == 3 and scan.hu.dtype.name == "float32"
        case["outcome"] = "loaded"
    except ScanError as e:
        msg = str(e)
        ok = msg.startswith(p) and "\n" not in msg and isinstance(e, AeAnomalyError)
        case["outcome"] = "ScanError" if ok else "bad message: " + msg[:200]
        case["reason"] = e.reason.split(":")[0][:60]
        cause = e.__cause__
        wrapped = e.reason.startswith("corrupt or truncated") and cause is not None
        if wrapped and type(cause).__module__ == "builtins" and not isinstance(cause, (MemoryError, OSError)):
            frames = traceback.extract_tb(cause.__traceback__)
            if frames and "/aeanomaly/" in frames[-1].filename.replace(os.sep, "/"):
                # a builtin error of our own code that only the readers' safety net caught: a bug
                case["outcome"] = f"masked {type(cause).__name__} at {frames[-1].name}: {str(cause)[:150]}"
    except BaseException as e:
        case["outcome"] = f"{type(e).__name__}: {str(e)[:200]}"
json.dump({"rss_mb": peak_rss_mb(), "cases": cases},
          open(sys.argv[2], "w"))
"""


def test_fuzzed_files_load_or_raise_scan_error_within_the_memory_bound(synthetic_scans, tmp_path, fuzz_summary,
                                                                      peak_rss_source):
    (tmp_path / "cases").mkdir()
    cases = _make_cases(tmp_path / "cases", synthetic_scans)
    spec, result = tmp_path / "cases.json", tmp_path / "result.json"
    spec.write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if k != "AEANOMALY_MAX_VOXELS"}
    child = _CHILD.replace("{PEAK}", peak_rss_source)
    proc = subprocess.run([sys.executable, "-c", child, str(spec), str(result)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(result.read_text())
    done = report["cases"]
    outcomes = Counter(c["outcome"] for c in done)
    by_format = Counter((c["format"], c["outcome"]) for c in done)
    reasons = Counter(c.get("reason", "") for c in done if c["outcome"] == "ScanError")
    lines = [f"fuzz: {len(done)} cases from {len({c['source'] for c in done})} source files (seed {SEED}): "
             + ", ".join(f"{n} {o}" for o, n in outcomes.most_common()) + f"; peak RSS {report['rss_mb']:.0f} MB",
             "fuzz by format: " + ", ".join(f"{f}/{o}={n}" for (f, o), n in sorted(by_format.items())),
             "fuzz top reasons: " + "; ".join(f"{r} ({n})" for r, n in reasons.most_common(8))]
    print("\n" + "\n".join(lines))
    fuzz_summary.extend(lines)
    bad = [c for c in done if c["outcome"] not in ("loaded", "ScanError")]
    assert not bad, json.dumps(bad[:5], indent=1)
    assert len(done) >= 300 * min(_SCALE, 1)
    assert outcomes["ScanError"] >= 100 and outcomes["loaded"] >= 20
    assert report["rss_mb"] < RSS_LIMIT_MB
