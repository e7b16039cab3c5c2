"""Storing uploaded scans under a server-owned folder with generated names.

The client's file name is used only to pick the format (by its extension) and as a display name;
nothing it says reaches a path. A zip (a DICOM series, or a MetaImage header with its data file) is
extracted member by member after checking each name, the member count and the total size.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import AeAnomalyError
from ..io import SCAN_SUFFIXES

#: Upload extensions accepted, longest first, with the suffix the stored file gets: every single-file scan
#: format (an .mhd needs its data file and a DICOM series several files: those come zipped).
UPLOAD_SUFFIXES = tuple(s for s in SCAN_SUFFIXES if s not in (".mhd", ".dcm")) + (".zip",)
#: Limits of a zip's content.
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_RATIO = 8  # uncompressed total at most this many times the upload limit


class UploadError(AeAnomalyError):
    """An upload was refused (unsupported type, unsafe or oversized zip, no scan inside)."""

    http_status = 400


class UploadTooLarge(UploadError):
    """An upload is over the size limit."""

    http_status = 413


def display_name(filename: str | None) -> str:
    """A short, harmless display name from a client's file name (the last path part, plain chars)."""
    base = re.split(r"[\\/]", str(filename or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .") or "upload"
    return base[:120]


def upload_suffix(filename: str | None) -> str:
    """The accepted suffix the file name ends with; UploadError otherwise."""
    low = str(filename or "").lower()
    for suf in UPLOAD_SUFFIXES:
        if low.endswith(suf):
            return suf
    raise UploadError(f"unsupported upload {display_name(filename)!r}: send a NIfTI (.nii, .nii.gz), MetaImage "
                      ".mha, PNG/TIFF slice, .npy, or a .zip of a DICOM series (or of an .mhd with its data file)")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or ":" in name:
        raise UploadError(f"zip member {name!r} has an unsafe path")
    return p


def extract_zip(archive: Path, out: Path, max_total_bytes: int) -> None:
    """Extract ``archive`` into ``out`` after checking every member name and the sizes."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if not infos:
                raise UploadError("the zip is empty")
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UploadError(f"the zip holds {len(infos)} files (at most {MAX_ZIP_MEMBERS})")
            if sum(i.file_size for i in infos) > max_total_bytes:
                raise UploadError(f"the zip expands to more than {max_total_bytes // (1 << 20)} MB")
            for info in infos:
                rel = _safe_member(info.filename)
                if any(part.startswith(".") or part == "__MACOSX" for part in rel.parts):
                    continue
                target = out.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > info.file_size:
                            raise UploadError(f"zip member {info.filename!r} is larger than it claims")
                        dst.write(chunk)
    except zipfile.BadZipFile as err:
        raise UploadError(f"not a readable zip file ({err})") from None
    except (RuntimeError, NotImplementedError) as err:  # encrypted or unsupported compression
        raise UploadError(f"cannot extract the zip ({err})") from None


def store_upload(stream: BinaryIO, filename: str | None, upload_root: str | os.PathLike,
                 max_bytes: int) -> tuple[Path, str, Path]:
    """Save an uploaded file under ``upload_root/<random id>/`` and return ``(scan path, sha256, folder)``.

    A zip is extracted there and must hold exactly one scan (a DICOM series folder counts as one).
    The folder is removed again when anything is refused.
    """
    from ..io import find_scans

    suffix = upload_suffix(filename)
    folder = Path(upload_root) / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=False)
    try:
        stored = folder / f"upload{suffix}"
        h = hashlib.sha256()
        size = 0
        with open(stored, "wb") as fh:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(f"the upload is larger than the limit of {max_bytes / (1 << 20):g} MB")
                h.update(chunk)
                fh.write(chunk)
        if size == 0:
            raise UploadError("the uploaded file is empty")
        if suffix != ".zip":
            return stored, h.hexdigest(), folder
        extract_zip(stored, folder / "series", max_bytes * MAX_ZIP_RATIO)
        stored.unlink()
        try:
            scans = find_scans(folder / "series")
        except AeAnomalyError:
            scans = []
        scans = [s for s in scans if not s.name.lower().endswith(".raw")]
        if len(scans) != 1:
            raise UploadError(f"the zip must hold exactly one scan (one DICOM series or one image), found {len(scans)}")
        from .jobs import content_sha256

        return scans[0], content_sha256(scans[0]), folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
