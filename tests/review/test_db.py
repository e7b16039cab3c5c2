"""The feedback database: schema and migrations, validation, concurrent writers, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from aeanomaly.review.db import SCHEMA_VERSION, FeedbackDB, FeedbackError

LESION = {"id": 1, "slice_start": 2, "slice_end": 3, "z": 2.5, "y": 30.0, "x": 20.0, "area_mm2": 50.0,
          "volume_mm3": 300.0, "diameter_mm": 8.0, "max_residual": 0.3, "p_value": 0.01, "severity": "high"}


def scored(db: FeedbackDB, sha: str = "a" * 64, path: str = "/scans/a.nii.gz", lesions=(LESION,)) -> int:
    sid, created = db.add_scan(sha, path, "v1")
    assert created
    db.record_result(sid, scan_score=0.2, p_value=0.01, label="abnormal", threshold=0.1, n_slices=8,
                     lesions=list(lesions))
    return sid


def test_schema_created_with_version_wal_and_migration_log(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    assert db.schema_version == SCHEMA_VERSION
    assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    mig = db.query("SELECT version, name FROM migrations")
    assert [m["version"] for m in mig] == list(range(1, SCHEMA_VERSION + 1))
    db.close()
    again = FeedbackDB(tmp_path / "f.sqlite")  # re-opening applies nothing twice
    assert len(again.query("SELECT * FROM migrations")) == SCHEMA_VERSION
    assert again.integrity_ok()


def test_newer_schema_and_non_database_refused(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    with db.write() as c:
        c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    db.close()
    with pytest.raises(FeedbackError, match="newer than this aeanomaly reads"):
        FeedbackDB(tmp_path / "f.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FeedbackError, match="not a usable feedback database"):
        FeedbackDB(junk)


def test_scan_rows_dedupe_by_hash_and_bundle_and_sort_by_score(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    a = scored(db)
    assert db.add_scan("a" * 64, "/elsewhere.nii.gz", "v1") == (a, False)
    b, created = db.add_scan("a" * 64, "/scans/a.nii.gz", "v2")  # another bundle state: its own row
    assert created and b != a
    c = scored(db, "c" * 64, "/scans/c.nii.gz", lesions=())
    db.record_result(c, scan_score=0.5, p_value=0.001, label="abnormal", threshold=0.1, n_slices=8, lesions=[])
    order = [s["id"] for s in db.scans("v1")]
    assert order == [c, a]
    assert db.scans("v2")[0]["status"] == "queued"
    assert db.lesions(a)[0]["severity"] == "high"


def test_verdicts_validated_and_latest_wins(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    sid = scored(db)
    with pytest.raises(FeedbackError, match="none of confirm, reject, normal"):
        db.add_review(sid, "maybe", "dr a")
    with pytest.raises(FeedbackError, match="reviewer name is required"):
        db.add_review(sid, "confirm", "  ")
    with pytest.raises(FeedbackError, match="no scan with id"):
        db.add_review(999, "confirm", "dr a")
    with pytest.raises(FeedbackError, match="has no lesion 7"):
        db.add_lesion_verdict(sid, 7, "confirm", "dr a")
    with pytest.raises(FeedbackError, match="outside the scan's 8 slices"):
        db.add_missed(sid, 8, 1, 1, "dr a")
    db.add_review(sid, "reject", "dr a", "first look")
    db.add_review(sid, "confirm", "dr b", "second look")
    db.add_lesion_verdict(sid, 1, "reject", "dr a")
    db.add_lesion_verdict(sid, 1, "confirm", "dr b")
    row = db.scan(sid)
    assert (row["verdict"], row["reviewer"], row["review_note"]) == ("confirm", "dr b", "second look")
    assert db.lesions(sid)[0]["verdict"] == "confirm"
    mid = db.add_missed(sid, 3, 10.5, 12.0, "dr b", "small nodule")
    assert db.scan(sid)["n_missed"] == 1
    db.delete_missed(sid, mid)
    assert db.missed(sid) == [] and db.scan(sid)["n_missed"] == 0
    with pytest.raises(FeedbackError):
        db.delete_missed(sid, mid)
    assert len(db.reviews(sid)) == 2  # the history is kept


def test_concurrent_writers_never_corrupt(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    sid = scored(db)
    errors = []

    def work(k):
        try:
            for i in range(25):
                db.add_review(sid, ("confirm", "reject", "normal")[i % 3], f"r{k}", f"{k}-{i}")
                db.add_missed(sid, i % 8, i, k, f"r{k}")
                db.scans("v1")
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(db.reviews(sid)) == 200 and len(db.missed(sid)) == 200
    assert db.integrity_ok()
    # a second process writing at the same time goes through SQLite's lock, not around it
    other = FeedbackDB(tmp_path / "f.sqlite")
    t = threading.Thread(target=lambda: [other.add_review(sid, "normal", "other") for _ in range(20)])
    t.start()
    for _ in range(20):
        db.add_review(sid, "confirm", "main")
    t.join()
    assert len(db.reviews(sid)) == 240


def test_failed_write_rolls_back_whole_transaction(tmp_path):
    db = FeedbackDB(tmp_path / "f.sqlite")
    sid = scored(db)
    with pytest.raises(sqlite3.IntegrityError):
        with db.write() as c:
            c.execute("INSERT INTO reviews (scan_id, verdict, reviewer, created_at) VALUES (?, 'confirm', 'x', 't')",
                      (sid,))
            c.execute("INSERT INTO reviews (scan_id, verdict, reviewer, created_at) VALUES (?, 'bogus', 'x', 't')",
                      (sid,))
    assert db.reviews(sid) == []


CHILD = textwrap.dedent("""
    import sys, time
    from aeanomaly.review.db import FeedbackDB
    db = FeedbackDB(sys.argv[1])
    sid, _ = db.add_scan("b" * 64, "/scans/b.nii.gz", "v1")
    db.add_review(sid, "normal", "dr kill", "committed before the crash")
    print("committed", flush=True)
    with db.write() as c:   # an open transaction the kill interrupts
        for i in range(100000):
            c.execute("INSERT INTO reviews (scan_id, verdict, reviewer, created_at) VALUES (?, 'confirm', 'x', 't')", (sid,))
        print("in transaction", flush=True)
        time.sleep(60)
""")


def test_committed_review_survives_process_kill(tmp_path):
    path = tmp_path / "f.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "committed"
        assert proc.stdout.readline().strip() == "in transaction"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    db = FeedbackDB(path)
    assert db.integrity_ok()
    reviews = db.query("SELECT verdict, reviewer, note FROM reviews")
    assert reviews == [{"verdict": "normal", "reviewer": "dr kill", "note": "committed before the crash"}]
