"""Folders as users have them: a folder of several DICOM series is several scans, one per series."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from aeanomaly.errors import ScanError
from aeanomaly.io import DicomSeriesRef, find_scans, load_scan, resolve_scan, scan_stem
from aeanomaly.io.results import output_names


@pytest.fixture
def mixed_folder(tmp_path, write_dicom_series):
    """A PACS-style export: two multi-file series, one single-file series, in one folder."""
    folder = tmp_path / "export"
    lung = write_dicom_series(folder, 4, description="Chest 5.0 B20s", prefix="a")
    bone = write_dicom_series(folder, 3, description="Bone/Window", prefix="b", seed=1)
    single = write_dicom_series(folder, 1, description="", prefix="c", seed=2)
    return folder, {"lung": lung, "bone": bone, "single": single}


def test_a_folder_of_several_series_is_one_scan_per_series(mixed_folder):
    folder, uids = mixed_folder
    found = find_scans(folder)
    assert len(found) == 3
    refs = [p for p in found if isinstance(p, DicomSeriesRef)]
    assert {r.series_uid for r in refs} == {uids["lung"], uids["bone"]}
    assert folder / "c000.dcm" in found  # a single-file series is its file
    by_uid = {r.series_uid: r for r in refs}
    lung, bone = by_uid[uids["lung"]], by_uid[uids["bone"]]
    assert load_scan(lung).shape == (4, 40, 40) and load_scan(bone).shape == (3, 40, 40)
    assert load_scan(lung).meta["series_uid"] == uids["lung"]
    assert load_scan(folder / "c000.dcm").shape == (1, 40, 40)
    assert [os.fspath(p) for p in found] == sorted(os.fspath(p) for p in found)


def test_series_ref_reads_like_a_path(mixed_folder):
    folder, uids = mixed_folder
    ref = next(p for p in find_scans(folder) if isinstance(p, DicomSeriesRef) and p.series_uid == uids["lung"])
    desc, tail = ref.name.split("_")
    assert desc == "Chest-5-0-B20s" and len(tail) >= 8 and uids["lung"].replace(".", "-").endswith(tail)
    assert os.fspath(ref) == str(ref) == os.path.join(str(folder), ref.name)
    assert Path(ref).name == ref.name and Path(ref).parent == folder == ref.parent
    assert ref.stem == ref.name and ref.suffix == "" and scan_stem(ref) == ref.name
    assert ref.relative_to(folder.parent).as_posix() == f"export/{ref.name}"
    assert folder in ref.parents and ref.resolve().parent == folder.resolve()
    assert ref.exists() and not ref.is_file() and not ref.is_dir()
    assert "\n" not in repr(ref) and ref.series_uid in repr(ref)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert len(ref.files) == 4


def test_the_name_of_a_series_loads_it_again(mixed_folder):
    folder, uids = mixed_folder
    refs = [p for p in find_scans(folder) if isinstance(p, DicomSeriesRef)]
    for ref in refs:
        for spelled in (str(ref), Path(ref), os.fspath(ref)):
            assert resolve_scan(spelled) == ref
            assert load_scan(spelled).meta["series_uid"] == ref.series_uid
            assert find_scans(spelled) == [ref]
    names = output_names(find_scans(folder))
    assert len(set(names)) == 3 and all("/" not in n for n in names)


def test_series_uid_still_picks_one_and_the_folder_error_is_short(mixed_folder):
    folder, uids = mixed_folder
    assert load_scan(folder, series_uid=uids["bone"]).shape == (3, 40, 40)
    with pytest.raises(ScanError) as err:
        load_scan(folder)
    msg = str(err.value)
    assert "3 DICOM series" in msg and "find_scans" in msg and "\n" not in msg and len(msg) < 600
    ref = next(p for p in find_scans(folder) if isinstance(p, DicomSeriesRef))
    with pytest.raises(ScanError, match="not"):
        load_scan(ref, series_uid="1.2.3")


def test_an_unknown_series_name_is_no_such_file(mixed_folder):
    folder, _ = mixed_folder
    with pytest.raises(ScanError, match="no such file or folder"):
        load_scan(folder / "Chest-5-0-B20s_99999999")
    with pytest.raises(ScanError, match="no such file or folder"):
        load_scan(folder / "nothing")


def test_names_stay_unique_when_uid_tails_collide(tmp_path, write_dicom_series):
    folder = tmp_path / "twins"
    write_dicom_series(folder, 2, description="ct", series_uid="1.2.826.0.1.3680043.1.12345678", prefix="a")
    write_dicom_series(folder, 2, description="ct", series_uid="1.2.826.0.1.3680043.2.12345678", prefix="b")
    refs = find_scans(folder)
    assert len({r.name for r in refs}) == 2
    assert {load_scan(str(r)).meta["series_uid"] for r in refs} == {r.series_uid for r in refs}


def test_an_outdated_series_name_still_finds_its_series(mixed_folder):
    folder, uids = mixed_folder
    ref = next(p for p in find_scans(folder) if isinstance(p, DicomSeriesRef) and p.series_uid == uids["bone"])
    desc, tail = ref.name.split("_")
    old = folder / f"{desc}_{tail[-5:]}"  # a shorter UID tail, as before the folder gained series
    assert resolve_scan(old) == ref and load_scan(old).meta["series_uid"] == uids["bone"]


def test_one_series_folder_is_still_the_folder(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "ct", 3)
    assert find_scans(tmp_path) == [tmp_path / "ct"]


def test_duplicate_files_of_one_instance_count_once(tmp_path, write_dicom_series):
    folder = tmp_path / "dups"
    write_dicom_series(folder, 3, prefix="a")
    write_dicom_series(folder, 1, prefix="z", seed=3)
    shutil.copy(folder / "a001.dcm", folder / "a001_copy.dcm")
    ref = next(p for p in find_scans(folder) if isinstance(p, DicomSeriesRef))
    assert len(ref.files) == 3 and load_scan(ref).shape == (3, 40, 40)
    by_hand = DicomSeriesRef(folder, ref.series_uid, files=sorted(folder.glob("a*.dcm")))
    assert len(by_hand.files) == 4
    scan = load_scan(by_hand)
    assert scan.shape == (3, 40, 40) and any("duplicate" in w for w in scan.meta["warnings"])


def test_inconsistent_series_keeps_its_error(tmp_path, write_dicom_series):
    folder = tmp_path / "gap"
    write_dicom_series(folder, 4, description="uneven", prefix="a", z_positions=[0.0, 2.0, 4.0, 10.0])
    write_dicom_series(folder, 2, description="fine", prefix="b")
    found = find_scans(folder)
    bad = next(p for p in found if p.name.startswith("uneven_"))
    with pytest.raises(ScanError) as err:
        load_scan(bad)
    assert str(err.value).startswith(f"{bad}: inconsistent slice spacing")
    assert load_scan(next(p for p in found if p.name.startswith("fine_"))).n_slices == 2


@pytest.mark.realdata
def test_tcga_folder_of_single_slice_series_is_95_scans(shared_data):
    folder = shared_data / "tcga-luad-slices" / "dicom"
    found = find_scans(folder)
    assert len(found) == 95  # 100 files: 95 series, 5 of them exported twice (same SOPInstanceUID)
    names = output_names(found)
    assert len(set(names)) == len(found)
    shapes = {load_scan(p).shape for p in found[:10]}
    assert shapes == {(1, 512, 512)}
    assert len(find_scans(shared_data / "tcga-luad-slices")) == 95
