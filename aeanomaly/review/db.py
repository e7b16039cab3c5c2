"""The review feedback database: SQLite (standard library), versioned schema, one writer.

Tables
------
``scans``
    One row per scan and bundle version: content hash (sha256), path, the tool's scan score,
    p-value, label and threshold, scoring status, and where the viewer cache lives.
``lesions``
    The tool's lesions of a scan (geometry in mm on the scan's own slice grid, severity).
``reviews``
    Scan verdicts (``confirm`` = abnormal, ``reject`` = the tool's findings are false alarms,
    ``normal`` = the reviewer confirms the scan normal), append-only; the latest counts.
``lesion_verdicts``
    ``confirm`` / ``reject`` per tool lesion, append-only; the latest per lesion counts.
``missed_findings``
    Points a reviewer marked as findings the tool missed: slice ``z`` and pixel ``y, x`` on the scan's
    internal ``(z, y, x)`` grid (the grid of :func:`aeanomaly.io.load_scan`), with a note.

Safety: WAL journal, ``synchronous=FULL`` (a committed write survives a crash of the process or of
the machine), every write in one ``BEGIN IMMEDIATE`` transaction under a process-wide lock, so
concurrent request threads (and other processes, through SQLite's own lock) never interleave writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

from ..errors import AeAnomalyError

#: Scan-level verdicts a reviewer can give.
SCAN_VERDICTS = ("confirm", "reject", "normal")
#: Verdicts on one of the tool's lesions.
LESION_VERDICTS = ("confirm", "reject")
#: Scoring states of a scan row.
STATUSES = ("queued", "scoring", "done", "error")

_MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", """
CREATE TABLE scans (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'scoring', 'done', 'error')),
    error TEXT,
    scan_score REAL,
    p_value REAL,
    label TEXT,
    threshold REAL,
    n_slices INTEGER,
    n_lesions INTEGER,
    note TEXT,
    cache_dir TEXT,
    uploaded INTEGER NOT NULL DEFAULT 0,
    added_at TEXT NOT NULL,
    scored_at TEXT,
    UNIQUE (sha256, bundle_version)
);
CREATE TABLE lesions (
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    lesion_id INTEGER NOT NULL,
    slice_start INTEGER NOT NULL,
    slice_end INTEGER NOT NULL,
    z REAL NOT NULL, y REAL NOT NULL, x REAL NOT NULL,
    area_mm2 REAL, volume_mm3 REAL, diameter_mm REAL,
    max_residual REAL, p_value REAL, severity TEXT,
    PRIMARY KEY (scan_id, lesion_id)
);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirm', 'reject', 'normal')),
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE lesion_verdicts (
    id INTEGER PRIMARY KEY,
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    lesion_id INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('confirm', 'reject')),
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE missed_findings (
    id INTEGER PRIMARY KEY,
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    slice INTEGER NOT NULL,
    y REAL NOT NULL,
    x REAL NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE INDEX reviews_scan ON reviews(scan_id, id);
CREATE INDEX lesion_verdicts_scan ON lesion_verdicts(scan_id, lesion_id, id);
CREATE INDEX missed_scan ON missed_findings(scan_id);
"""),
]

#: Rows holding the same content as the scan row ``?`` (reviews and missed findings follow the content).
_SAME_CONTENT = "SELECT id FROM scans WHERE sha256 = (SELECT sha256 FROM scans WHERE id = ?)"

#: The schema version this code writes.
SCHEMA_VERSION = _MIGRATIONS[-1][0]


class FeedbackError(AeAnomalyError):
    """The feedback database cannot be opened or a write was refused (bad verdict, unknown scan)."""


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean_text(value: Any, what: str, limit: int, required: bool = False) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise FeedbackError(f"{what} is required")
    if len(text) > limit:
        raise FeedbackError(f"{what} is longer than {limit} characters")
    return text


class FeedbackDB:
    """The feedback database at ``path`` (created, or migrated to :data:`SCHEMA_VERSION`).

    Thread-safe: each thread reads through its own connection; writes go through one lock and one
    ``BEGIN IMMEDIATE`` transaction each.

    Parameters
    ----------
    path : str or PathLike
        SQLite file; its folder is created.
    timeout : float
        Seconds to wait for another process's write lock.

    Raises
    ------
    FeedbackError
        The file is not a SQLite database, or holds a newer schema than this code knows.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate()
        except sqlite3.DatabaseError as err:
            self.close()
            raise FeedbackError(f"not a usable feedback database ({err})", self.path) from None

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened."""
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> "FeedbackDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        """Rows of a read-only query as dicts."""
        return [dict(r) for r in self._conn().execute(sql, params).fetchall()]

    # -- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.write() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                      "applied_at TEXT NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                c.execute("INSERT INTO schema_version (version) VALUES (0)")
                current = 0
            else:
                current = int(row[0])
            if current > SCHEMA_VERSION:
                raise FeedbackError(f"schema version {current} is newer than this aeanomaly reads ({SCHEMA_VERSION})",
                                    self.path)
            for version, name, sql in _MIGRATIONS:
                if version <= current:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    c.execute(statement)
                c.execute("INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                          (version, name, now_iso()))
                c.execute("UPDATE schema_version SET version = ?", (version,))

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("SELECT version FROM schema_version").fetchone()[0])

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- scans ----------------------------------------------------------------------------------
    def add_scan(self, sha256: str, path: str | os.PathLike, bundle_version: str, *, name: str | None = None,
                 uploaded: bool = False) -> tuple[int, bool]:
        """The id of the scan row for ``(sha256, bundle_version)``, created (status ``queued``) if new.

        Returns
        -------
        (int, bool)
            The row id and whether it was created now.
        """
        path = os.fspath(path)
        with self.write() as c:
            row = c.execute("SELECT id FROM scans WHERE sha256 = ? AND bundle_version = ?",
                            (sha256, bundle_version)).fetchone()
            if row is not None:
                return int(row[0]), False
            cur = c.execute("INSERT INTO scans (sha256, path, name, bundle_version, uploaded, added_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (sha256, path, name or Path(path).name, bundle_version, int(uploaded), now_iso()))
            return int(cur.lastrowid), True

    def set_status(self, scan_id: int, status: str, error: str | None = None) -> None:
        """Move a scan to ``queued``/``scoring``/``error`` (``done`` comes with :meth:`record_result`)."""
        if status not in STATUSES:
            raise FeedbackError(f"unknown status {status!r}")
        with self.write() as c:
            c.execute("UPDATE scans SET status = ?, error = ? WHERE id = ?", (status, error, scan_id))

    def record_result(self, scan_id: int, *, scan_score: float, p_value: float, label: str, threshold: float | None,
                      n_slices: int, lesions: list[dict], note: str = "", cache_dir: str | None = None) -> None:
        """Store the tool's result of a scan and its lesions (replacing earlier ones), status ``done``.

        ``lesions`` are dicts with ``id, slice_start, slice_end, z, y, x`` (the scan's own slice grid),
        ``area_mm2, volume_mm3, diameter_mm, max_residual, p_value, severity``.
        """
        def num(v):
            return None if v is None or v != v else float(v)

        with self.write() as c:
            c.execute("UPDATE scans SET status = 'done', error = NULL, scan_score = ?, p_value = ?, label = ?, "
                      "threshold = ?, n_slices = ?, n_lesions = ?, note = ?, cache_dir = ?, scored_at = ? WHERE id = ?",
                      (num(scan_score), num(p_value), label, num(threshold), int(n_slices), len(lesions), note,
                       cache_dir, now_iso(), scan_id))
            c.execute("DELETE FROM lesions WHERE scan_id = ?", (scan_id,))
            c.executemany(
                "INSERT INTO lesions (scan_id, lesion_id, slice_start, slice_end, z, y, x, area_mm2, volume_mm3, "
                "diameter_mm, max_residual, p_value, severity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(scan_id, int(d["id"]), int(d["slice_start"]), int(d["slice_end"]), float(d["z"]), float(d["y"]),
                  float(d["x"]), num(d.get("area_mm2")), num(d.get("volume_mm3")), num(d.get("diameter_mm")),
                  num(d.get("max_residual")), num(d.get("p_value")), d.get("severity")) for d in lesions])

    def scan(self, scan_id: int) -> dict | None:
        """One scan row with its review state (see :meth:`scans`), or None."""
        rows = self.scans(where="s.id = ?", params=(scan_id,))
        return rows[0] if rows else None

    def scans(self, bundle_version: str | None = None, *, where: str = "", params: tuple = ()) -> list[dict]:
        """Scan rows, highest score first (unscored last), each with ``verdict``, ``reviewer``,
        ``reviewed_at`` and ``review_note`` of the latest review of the same content (under any bundle
        version; None when unreviewed), and ``n_missed`` (missed findings not withdrawn)."""
        clauses, args = [], []
        if bundle_version is not None:
            clauses.append("s.bundle_version = ?")
            args.append(bundle_version)
        if where:
            clauses.append(where)
            args.extend(params)
        sql = ("SELECT s.*, r.verdict AS verdict, r.reviewer AS reviewer, r.created_at AS reviewed_at, "
               "r.note AS review_note, "
               "(SELECT COUNT(*) FROM missed_findings m JOIN scans s3 ON s3.id = m.scan_id "
               "WHERE s3.sha256 = s.sha256 AND m.deleted_at IS NULL) AS n_missed "
               "FROM scans s LEFT JOIN reviews r ON r.id = "
               "(SELECT MAX(r2.id) FROM reviews r2 JOIN scans s2 ON s2.id = r2.scan_id WHERE s2.sha256 = s.sha256)"
               + (" WHERE " + " AND ".join(clauses) if clauses else "")
               + " ORDER BY s.scan_score IS NULL, s.scan_score DESC, s.id")
        return self.query(sql, tuple(args))

    def lesions(self, scan_id: int) -> list[dict]:
        """The tool's lesions of a scan with the latest verdict on each (``verdict``, ``reviewer``)."""
        return self.query(
            "SELECT l.*, v.verdict AS verdict, v.reviewer AS reviewer, v.created_at AS reviewed_at "
            "FROM lesions l LEFT JOIN lesion_verdicts v ON v.id = (SELECT MAX(id) FROM lesion_verdicts "
            "WHERE scan_id = l.scan_id AND lesion_id = l.lesion_id) WHERE l.scan_id = ? ORDER BY l.lesion_id",
            (scan_id,))

    # -- reviews --------------------------------------------------------------------------------
    def _require_scan(self, c: sqlite3.Connection, scan_id: int) -> None:
        if c.execute("SELECT 1 FROM scans WHERE id = ?", (scan_id,)).fetchone() is None:
            raise FeedbackError(f"no scan with id {scan_id}")

    def add_review(self, scan_id: int, verdict: str, reviewer: str, note: str = "") -> int:
        """Record a scan verdict (``confirm``, ``reject`` or ``normal``); returns its id."""
        if verdict not in SCAN_VERDICTS:
            raise FeedbackError(f"verdict {verdict!r} is none of {', '.join(SCAN_VERDICTS)}")
        reviewer = _clean_text(reviewer, "reviewer name", 100, required=True)
        note = _clean_text(note, "note", 2000)
        with self.write() as c:
            self._require_scan(c, scan_id)
            cur = c.execute("INSERT INTO reviews (scan_id, verdict, reviewer, created_at, note) VALUES (?, ?, ?, ?, ?)",
                            (scan_id, verdict, reviewer, now_iso(), note))
            return int(cur.lastrowid)

    def add_lesion_verdict(self, scan_id: int, lesion_id: int, verdict: str, reviewer: str, note: str = "") -> int:
        """Record ``confirm`` / ``reject`` on one of the tool's lesions; returns its id."""
        if verdict not in LESION_VERDICTS:
            raise FeedbackError(f"lesion verdict {verdict!r} is none of {', '.join(LESION_VERDICTS)}")
        reviewer = _clean_text(reviewer, "reviewer name", 100, required=True)
        note = _clean_text(note, "note", 2000)
        with self.write() as c:
            if c.execute("SELECT 1 FROM lesions WHERE scan_id = ? AND lesion_id = ?",
                         (scan_id, lesion_id)).fetchone() is None:
                raise FeedbackError(f"scan {scan_id} has no lesion {lesion_id}")
            cur = c.execute("INSERT INTO lesion_verdicts (scan_id, lesion_id, verdict, reviewer, created_at, note) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (scan_id, lesion_id, verdict, reviewer, now_iso(), note))
            return int(cur.lastrowid)

    def add_missed(self, scan_id: int, z: int, y: float, x: float, reviewer: str, note: str = "") -> int:
        """Record a finding the tool missed at slice ``z``, pixel ``(y, x)`` of the scan's grid."""
        reviewer = _clean_text(reviewer, "reviewer name", 100, required=True)
        note = _clean_text(note, "note", 2000)
        with self.write() as c:
            row = c.execute("SELECT n_slices FROM scans WHERE id = ?", (scan_id,)).fetchone()
            if row is None:
                raise FeedbackError(f"no scan with id {scan_id}")
            if row[0] is not None and not 0 <= int(z) < int(row[0]):
                raise FeedbackError(f"slice {z} is outside the scan's {row[0]} slices")
            cur = c.execute("INSERT INTO missed_findings (scan_id, slice, y, x, note, reviewer, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (scan_id, int(z), float(y), float(x), note, reviewer,
                                                             now_iso()))
            return int(cur.lastrowid)

    def delete_missed(self, scan_id: int, missed_id: int) -> None:
        """Withdraw a missed finding (kept in the table with ``deleted_at`` set)."""
        with self.write() as c:
            cur = c.execute("UPDATE missed_findings SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL AND "
                            f"scan_id IN ({_SAME_CONTENT})", (now_iso(), missed_id, scan_id))
            if cur.rowcount == 0:
                raise FeedbackError(f"scan {scan_id} has no missed finding {missed_id}")

    def missed(self, scan_id: int) -> list[dict]:
        """Missed findings on a scan's content (under any bundle version) that were not withdrawn."""
        return self.query(f"SELECT * FROM missed_findings WHERE scan_id IN ({_SAME_CONTENT}) AND deleted_at IS NULL "
                          "ORDER BY id", (scan_id,))

    def reviews(self, scan_id: int) -> list[dict]:
        """Every scan verdict on a scan's content (under any bundle version), oldest first."""
        return self.query(f"SELECT * FROM reviews WHERE scan_id IN ({_SAME_CONTENT}) ORDER BY id", (scan_id,))

    def carried_over(self, bundle_version: str) -> list[dict]:
        """The latest row (``sha256, path, name, uploaded``) of every content with no row for
        ``bundle_version`` yet: scans to score again after a refit or recalibration."""
        return self.query(
            "SELECT s.sha256, s.path, s.name, s.uploaded FROM scans s WHERE s.id = (SELECT MAX(id) FROM scans "
            "WHERE sha256 = s.sha256) AND NOT EXISTS (SELECT 1 FROM scans o WHERE o.sha256 = s.sha256 AND "
            "o.bundle_version = ?) ORDER BY s.id", (bundle_version,))


def open_db(db: "FeedbackDB | str | os.PathLike", must_exist: bool = True) -> FeedbackDB:
    """``db`` itself, or the database at that path (which must exist unless ``must_exist`` is False)."""
    if isinstance(db, FeedbackDB):
        return db
    if must_exist and not Path(db).is_file():
        raise FeedbackError("feedback database does not exist", db)
    return FeedbackDB(db)
