"""Background scoring for the review server: one worker thread, a queue, and progress per scan."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AeAnomalyError
from .cache import lesion_rows, write_cache
from .db import FeedbackDB

log = logging.getLogger("aeanomaly.review")


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of a scan's content: a file's bytes (a MetaImage header with its data file), or every
    file of a folder (DICOM series) by relative path and bytes."""
    p = Path(path)
    h = hashlib.sha256()

    def feed(f: Path, rel: str | None) -> None:
        if rel is not None:
            h.update(rel.encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)

    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
            feed(f, f.relative_to(p).as_posix())
    else:
        feed(p, None)  # a file's hash is its bytes' (as an upload's), whatever its name
        if p.suffix.lower() == ".mhd":
            from ..io.metaimage import metaimage_data_file

            data = metaimage_data_file(p)
            if data is not None and data.is_file():
                feed(data, None)
    return h.hexdigest()


@dataclass
class Progress:
    """What the page polls: a stage name and a fraction in [0, 1]."""

    stage: str = "queued"
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)
    expected_s: float | None = None


class Scorer:
    """Scores scans one at a time in a daemon thread and stores results in the feedback database.

    Parameters
    ----------
    detector : AnomalyDetector
        Fitted (loaded from the bundle).
    db : FeedbackDB
    cache_root : path
        Per-scan caches go in ``cache_root/<scan id>``.
    bundle_version : str
    """

    def __init__(self, detector, db: FeedbackDB, cache_root: str | os.PathLike, bundle_version: str):
        self.det = detector
        self.db = db
        self.cache_root = Path(cache_root)
        self.bundle_version = bundle_version
        self._queue: queue.Queue = queue.Queue()
        self._progress: dict[int, Progress] = {}
        self._lock = threading.Lock()
        self._sec_per_slice: float | None = None
        self._thread = threading.Thread(target=self._run, name="aeanomaly-scorer", daemon=True)
        self._thread.start()

    # -- public ----------------------------------------------------------------------------------
    def submit(self, scan_id: int, scan_or_path) -> None:
        """Queue a scan row for scoring (``scan_or_path``: a loaded Scan or its path)."""
        with self._lock:
            self._progress[scan_id] = Progress()
        self._queue.put((scan_id, scan_or_path))

    def submit_path(self, path: str | os.PathLike) -> None:
        """Hash a scan found on disk, add it to the database, and queue it unless already scored."""
        self._queue.put((None, Path(path)))

    def progress(self, scan_id: int) -> dict:
        """``{"stage", "progress"}`` of a scan queued in this process (time-based while scoring)."""
        with self._lock:
            p = self._progress.get(scan_id)
            if p is None:
                return {"stage": "unknown", "progress": 0.0}
            frac = p.fraction
            if p.stage == "scoring" and p.expected_s:
                frac = min(0.9, 0.2 + 0.7 * (time.monotonic() - p.started) / p.expected_s)
            return {"stage": p.stage, "progress": round(float(frac), 3)}

    def idle(self) -> bool:
        """True when nothing is queued or running."""
        return self._queue.unfinished_tasks == 0

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is empty (tests, CLI); False on timeout."""
        end = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    # -- worker ----------------------------------------------------------------------------------
    def _set(self, scan_id: int, stage: str, fraction: float, expected_s: float | None = None) -> None:
        with self._lock:
            p = self._progress.setdefault(scan_id, Progress())
            p.stage, p.fraction, p.started = stage, fraction, time.monotonic()
            p.expected_s = expected_s

    def _run(self) -> None:
        while True:
            scan_id, item = self._queue.get()
            try:
                if scan_id is None:
                    self._discover(item)
                else:
                    self._score(scan_id, item)
            except Exception:  # never let the worker die; the row says what happened
                log.exception("scoring worker failed")
            finally:
                self._queue.task_done()

    def _discover(self, path: Path) -> None:
        try:
            sha = content_sha256(path)
        except OSError as err:
            log.warning("cannot read %s: %s", path, err)
            return
        scan_id, created = self.db.add_scan(sha, path.resolve(), self.bundle_version, name=path.name)
        row = self.db.scan(scan_id)
        if created or row["status"] in ("queued", "scoring") or (
                row["status"] == "done" and not (row["cache_dir"] and Path(row["cache_dir"]).is_dir())):
            self._set(scan_id, "queued", 0.0)
            self._score(scan_id, path)

    def _score(self, scan_id: int, item) -> None:
        from ..io import load_scan

        try:
            self.db.set_status(scan_id, "scoring")
            if not hasattr(item, "hu"):
                self._set(scan_id, "loading", 0.05)
                item = load_scan(item)
            expected = self._sec_per_slice * item.n_slices if self._sec_per_slice else None
            self._set(scan_id, "scoring", 0.2, expected)
            t0 = time.monotonic()
            res = self.det.score_scan(item)
            dt = time.monotonic() - t0
            per = dt / max(1, item.n_slices)
            self._sec_per_slice = per if self._sec_per_slice is None else 0.5 * (self._sec_per_slice + per)
            self._set(scan_id, "rendering", 0.92)
            cache_dir = self.cache_root / str(scan_id)
            write_cache(cache_dir, res, float(self.det.pixel_threshold_), self.det.window_.to_spec())
            threshold = getattr(self.det.calibrator_, "threshold_", None)
            self.db.record_result(scan_id, scan_score=res.scan_score, p_value=res.p_value, label=res.label,
                                  threshold=threshold, n_slices=res.n_slices, lesions=lesion_rows(res),
                                  note=res.note, cache_dir=str(cache_dir.resolve()))
            self._set(scan_id, "done", 1.0)
        except (AeAnomalyError, OSError, MemoryError, ValueError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.db.set_status(scan_id, "error", msg)
            self._set(scan_id, "error", 1.0)
        except Exception as err:
            log.exception("unexpected error scoring scan %s", scan_id)
            self.db.set_status(scan_id, "error", f"internal error while scoring ({type(err).__name__})")
            self._set(scan_id, "error", 1.0)
