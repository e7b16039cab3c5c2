"""Upload storage: generated names, format by extension, safe zip extraction."""

from __future__ import annotations

import io
import zipfile

import pytest

from aeanomaly.review.uploads import UploadError, display_name, store_upload, upload_suffix


def zip_bytes(members: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def test_client_name_never_reaches_the_path(tmp_path, abnormal_phantom):
    root = tmp_path / "uploads"
    with open(abnormal_phantom, "rb") as fh:
        path, sha, folder = store_upload(fh, "../../../etc/evil.nii.gz", root, 10 << 20)
    assert folder.parent == root and path.parent == folder and path.name == "upload.nii.gz"
    assert not (tmp_path / "etc").exists()
    assert len(sha) == 64
    assert display_name("../../etc/<script>x.nii.gz") == "_script_x.nii.gz"
    assert display_name("C:\\Users\\me\\scan.mha") == "scan.mha"


def test_unsupported_empty_and_oversized_refused(tmp_path):
    root = tmp_path / "u"
    with pytest.raises(UploadError, match="unsupported upload 'notes.txt'"):
        store_upload(io.BytesIO(b"x"), "notes.txt", root, 100)
    with pytest.raises(UploadError, match="empty"):
        store_upload(io.BytesIO(b""), "a.nii", root, 100)
    with pytest.raises(UploadError, match="larger than the limit"):
        store_upload(io.BytesIO(b"x" * (3 << 20)), "a.nii", root, 2 << 20)
    assert list(root.iterdir()) == []  # nothing left behind
    assert upload_suffix("A.NII.GZ") == ".nii.gz"


def test_zip_traversal_and_bombs_refused(tmp_path):
    root = tmp_path / "u"
    with pytest.raises(UploadError, match="unsafe path"):
        store_upload(zip_bytes({"../../escape.dcm": b"x"}), "s.zip", root, 1 << 20)
    with pytest.raises(UploadError, match="unsafe path"):
        store_upload(zip_bytes({"/abs/escape.dcm": b"x"}), "s.zip", root, 1 << 20)
    with pytest.raises(UploadError, match="expands to more than"):
        store_upload(zip_bytes({"big.raw": b"\0" * (9 << 20)}), "s.zip", root, 1 << 20)
    with pytest.raises(UploadError, match="not a readable zip"):
        store_upload(io.BytesIO(b"PK not really"), "s.zip", root, 1 << 20)
    with pytest.raises(UploadError, match="exactly one scan"):
        store_upload(zip_bytes({"readme.txt": b"hello"}), "s.zip", root, 1 << 20)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "escape.dcm").exists()


def test_zipped_nifti_accepted(tmp_path, abnormal_phantom):
    path, sha, folder = store_upload(zip_bytes({"series/scan.nii.gz": abnormal_phantom.read_bytes()}), "s.zip",
                                     tmp_path / "u", 10 << 20)
    assert path.name == "scan.nii.gz" and folder in path.parents
