"""Batch scoring of scan archives on Ray, resumable, with the same files as the local engine.

Design
------
* A pool of Ray actors (:class:`ScanWorker`); each loads the bundle once and scores the scans it is
  given with :meth:`AnomalyDetector.score_scan`, then writes that scan's heatmap and overlay PNGs with
  :func:`aeanomaly.io.results.write_scan_outputs` (the local engine's function) into a *work folder*
  and returns the scan's rows (:func:`aeanomaly.io.results.scan_rows`) as plain JSON values.
* The driver appends one line per finished scan to ``<work>/.aeanomaly-manifest.jsonl`` (flushed and
  fsynced), keyed by the scan's content hash (sha256 of the file; of every file for a DICOM folder;
  of the header and its data file for MetaImage) and by a fingerprint of the run's settings (bundle
  files, detector parameters, heatmap / overlay options). A re-run after a crash, a Ctrl-C or a lost
  machine reads the manifest and scores only what is not in it; nothing finished is lost.
* A killed worker is restarted by Ray (``max_restarts``) and its scan retried (``max_task_retries``).
* :func:`add_to_writer` moves the results into a :class:`aeanomaly.io.results.ResultsWriter`
  (hard links of the per-scan files, rows in input order), whose ``finish`` writes ``scores.csv``,
  ``slices.csv``, ``lesions.csv`` and ``report.html`` with the local engine's code, so the folder is
  identical to ``aeanomaly score``'s. :func:`score_folder_on_ray` does all of it.

Scans and the work folder must be visible under the same paths on every node (a shared file system)
when the cluster spans several machines.

Ray is imported only inside :func:`score_on_ray`; ``import aeanomaly.distributed.ray_engine`` works
without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import AeAnomalyError, ConfigError, ScanError

#: The manifest of finished scans in a work folder (JSON lines, append-only).
MANIFEST = ".aeanomaly-manifest.jsonl"
#: Manifest format version (a line of another version is ignored, i.e. that scan is rescored).
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def require_ray() -> None:
    """Raise :class:`ConfigError` (one line, exit 2 in the CLI) when Ray is not installed, without
    importing it (call before TensorFlow starts)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs Ray: pip install 'aeanomaly[distributed]'")


# -------------------------------------------------------------------------------------------------
# Content hashes and the run fingerprint
# -------------------------------------------------------------------------------------------------
def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)


def _metaimage_data_files(header: Path) -> list[Path]:
    """The separate data file(s) a ``.mhd`` header names (none for ``LOCAL`` / ``.mha``)."""
    try:
        text = header.read_text(encoding="latin-1", errors="replace")
    except OSError:
        return []
    m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
    if not m or m.group(1).upper() == "LOCAL":
        return []
    value = m.group(1)
    if value.upper().startswith("LIST"):
        tail = text[m.end():].split()
        return [header.parent / t for t in tail if (header.parent / t).is_file()]
    parts = value.split()
    if len(parts) == 4 and "%" in parts[0]:  # pattern: "slice%03d.raw start stop step"
        fmt, start, stop, step = parts[0], *map(int, parts[1:])
        return [header.parent / (fmt % i) for i in range(start, stop + 1, step)]
    return [header.parent / value]


def content_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of a scan's content: a file's bytes; every file of a folder (relative names and
    bytes, in sorted order, hidden files skipped); a ``.mhd`` header together with its data file(s).

    Raises
    ------
    ScanError
        The path does not exist or cannot be read (the message names it).
    """
    p = Path(path)
    h = hashlib.sha256()
    try:
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            for f in files:
                rel = f.relative_to(p).as_posix().encode("utf-8")
                h.update(len(rel).to_bytes(8, "little") + rel)
                h.update(f.stat().st_size.to_bytes(8, "little"))
                _hash_file(h, f)
        elif p.is_file():
            _hash_file(h, p)
            if p.suffix.lower() == ".mhd":
                for f in _metaimage_data_files(p):
                    if f.is_file():
                        h.update(b"\0data\0" + f.name.encode("utf-8"))
                        _hash_file(h, f)
        else:
            raise ScanError("no such file or folder", path=p)
    except OSError as err:
        raise ScanError(f"cannot read it to hash it ({err.strerror or err})", path=p) from err
    return h.hexdigest()


def run_fingerprint(bundle: str | os.PathLike, *, params: Mapping[str, Any] | None = None,
                    target_fpr: float | None = None, heatmaps: str = "nifti", overlays: int = 3) -> str:
    """sha256 (hex, 16 chars) of everything besides the scan that decides its output files: the
    bundle's files, detector parameter overrides, the run's target FPR and the output options."""
    h = hashlib.sha256()
    root = Path(bundle)
    if not root.is_dir():
        raise ConfigError("bundle folder does not exist", path=root)
    for f in sorted(f for f in root.rglob("*") if f.is_file()):
        h.update(f.relative_to(root).as_posix().encode("utf-8") + b"\0")
        _hash_file(h, f)
    opts = {"params": dict(params or {}), "target_fpr": target_fpr, "heatmaps": heatmaps,
            "overlays": int(overlays), "manifest_version": MANIFEST_VERSION}
    h.update(json.dumps(opts, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------------
# Records and the manifest
# -------------------------------------------------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """Numpy scalars / arrays, tuples, paths → plain JSON values (exact: float64 round-trips)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@dataclass
class ScanRecord:
    """What one scan produced: its rows and the files it wrote into the work folder.

    Attributes
    ----------
    index : int
        Position of the scan in the input list.
    scan : str
        The input path as given (the ``scan`` column).
    name : str
        The file-name stem of its outputs.
    key : str
        Content hash of the scan.
    fingerprint : str
        :func:`run_fingerprint` of the run that produced it.
    row, slices, lesions : dict, list of dict, list of dict
        The scores.csv row, slices.csv rows and lesions.csv rows (JSON values).
    lesion_records : list of dict
        The lesions as dicts for the report.
    overlays : list of str
        Overlay PNGs, relative to the work folder, in the local engine's order.
    files : list of str
        Every file written for the scan, relative to the work folder.
    error : str
        One line when the scan could not be scored ("" otherwise); error records are not in the
        manifest (a re-run retries them).
    reused : bool
        True when taken from the manifest of an earlier run instead of being scored now.
    seconds : float
        Time the worker spent on the scan (scoring and writing its files).
    worker : str
        ``host:pid`` of the worker process that scored it.
    attempts : int
        Times the driver submitted it (1 unless a worker was lost).
    """

    index: int
    scan: str
    name: str
    key: str
    fingerprint: str
    row: dict = field(default_factory=dict)
    slices: list = field(default_factory=list)
    lesions: list = field(default_factory=list)
    lesion_records: list = field(default_factory=list)
    overlays: list = field(default_factory=list)
    files: list = field(default_factory=list)
    error: str = ""
    reused: bool = False
    seconds: float = 0.0
    worker: str = ""
    attempts: int = 1
    finished: float = 0.0

    def manifest_line(self) -> str:
        d = asdict(self)
        for k in ("index", "reused", "attempts"):
            d.pop(k)
        return json.dumps({"v": MANIFEST_VERSION, **d}, sort_keys=True, allow_nan=True)


class Manifest:
    """The append-only manifest of finished scans of one work folder.

    ``get(key, fingerprint, name)`` returns the stored record of a scan finished by a run with the
    same settings and whose files are all still there, else None. ``append`` writes a line and
    fsyncs it, so a record exists only for a scan whose files are complete.
    """

    def __init__(self, work_dir: str | os.PathLike):
        self.work_dir = Path(work_dir)
        self.path = self.work_dir / MANIFEST
        self.entries: dict[tuple[str, str, str], dict] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        d = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line after a crash
                        continue
                    if isinstance(d, dict) and d.get("v") == MANIFEST_VERSION and not d.get("error"):
                        self.entries[(d["key"], d["fingerprint"], d["name"])] = d

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, fingerprint: str, name: str) -> dict | None:
        d = self.entries.get((key, fingerprint, name))
        if d is None or not all((self.work_dir / f).is_file() for f in d.get("files", [])):
            return None
        return d

    def append(self, record: ScanRecord) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(record.manifest_line() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[(record.key, record.fingerprint, record.name)] = json.loads(record.manifest_line())


# -------------------------------------------------------------------------------------------------
# The worker (a plain class; wrapped with ray.remote inside score_on_ray)
# -------------------------------------------------------------------------------------------------
class ScanWorker:
    """Loads a bundle once and scores scans into a work folder (run as a Ray actor).

    Parameters
    ----------
    bundle : path
        The fitted bundle.
    work_dir : path
        The folder the per-scan files go to (shared by every worker).
    params : dict, optional
        Detector parameter overrides (``det.set_params(**params)``), e.g. ``slice_fdr``.
    target_fpr : float, optional
        The run's target FPR (``det.set_threshold(target_fpr=...)``; the bundle is not changed).
    heatmaps, overlays
        As :func:`aeanomaly.io.results.write_scan_outputs`.
    """

    def __init__(self, bundle: str, work_dir: str, *, params: Mapping[str, Any] | None = None,
                 target_fpr: float | None = None, heatmaps: str = "nifti", overlays: int = 3):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from ..detector import AnomalyDetector

        det = AnomalyDetector.load(bundle)
        if params:
            det.set_params(**dict(params))
        if target_fpr is not None:
            det.set_threshold(target_fpr=target_fpr, reason="score --target-fpr")
        self.det = det
        self.work_dir = Path(work_dir)
        self.heatmaps, self.overlays = heatmaps, int(overlays)
        self.ident = f"{os.uname().nodename}:{os.getpid()}"

    def pid(self) -> int:
        """The worker's process id (tests kill it to simulate a lost worker)."""
        return os.getpid()

    def score(self, path: str, name: str) -> dict:
        """Score one scan, write its files, return its rows (JSON values) or ``{"error": line}``."""
        from ..io.results import error_text, scan_rows, write_scan_outputs

        t0 = time.perf_counter()
        try:
            res = self.det.score_scan(path)
        except (AeAnomalyError, OSError, MemoryError) as err:
            return {"error": error_text(err, path), "seconds": time.perf_counter() - t0, "worker": self.ident}
        pngs = write_scan_outputs(res, name, self.work_dir, heatmaps=self.heatmaps, overlays=self.overlays,
                                  pixel_threshold=self.det.pixel_threshold_)
        row, slices, lesions = scan_rows(str(path), res)
        files = {_rel(p, self.work_dir) for p in pngs}
        if self.heatmaps != "none":  # the name write_scan_outputs gives it
            files.add(f"heatmaps/{name}_heatmap{'.nii.gz' if self.heatmaps == 'nifti' else '.npy'}")
        files = sorted(files)
        return {
            "row": to_jsonable(row), "slices": to_jsonable(slices), "lesions": to_jsonable(lesions),
            "lesion_records": to_jsonable([les.to_dict() if hasattr(les, "to_dict") else dict(les)
                                           for les in res.lesions]),
            "overlays": [_rel(p, self.work_dir) for p in pngs], "files": files,
            "seconds": time.perf_counter() - t0, "worker": self.ident,
        }


def _rel(p: str | os.PathLike, root: Path) -> str:
    return Path(p).resolve().relative_to(root.resolve()).as_posix()


# -------------------------------------------------------------------------------------------------
# The driver
# -------------------------------------------------------------------------------------------------
def score_on_ray(
    bundle: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    names: Sequence[str],
    work_dir: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    heatmaps: str = "nifti",
    overlays: int = 3,
    params: Mapping[str, Any] | None = None,
    target_fpr: float | None = None,
    strict: bool = False,
    max_retries: int = 3,
    in_flight: int = 2,
    on_result: Callable[[ScanRecord], None] | None = None,
    ray_init: Mapping[str, Any] | None = None,
) -> list[ScanRecord]:
    """Score scans on a Ray cluster (or a local Ray instance) into ``work_dir``, resumably.

    Parameters
    ----------
    bundle : path
        The fitted bundle (readable by every worker).
    paths, names : sequences
        The scans and their output stems (:func:`aeanomaly.io.results.output_names`).
    work_dir : path
        Persistent folder for the per-scan files and the manifest. Reusing it resumes: scans whose
        content hash and run settings are in its manifest (and whose files are there) are not scored
        again.
    address : str, optional
        Ray cluster: None starts a local instance (``workers`` CPUs) unless Ray is already
        initialised in this process; ``"auto"`` joins the cluster of this machine (``ray start``);
        ``"HOST:PORT"`` (or ``ray://HOST:10001``) a remote head.
    workers : int, optional
        Actors in the pool (default: the cluster's CPUs / ``cpus_per_worker``).
    cpus_per_worker : float
        CPUs Ray reserves per actor (TensorFlow in the actor uses this many threads when Ray sets
        ``OMP_NUM_THREADS``).
    heatmaps, overlays : as :func:`aeanomaly.io.results.write_scan_outputs`.
    params : dict, optional
        Detector parameter overrides applied in each worker after loading (e.g. ``slice_fdr``,
        ``min_lesion_mm3``).
    target_fpr : float, optional
        Operating point for this run (the bundle is not changed).
    strict : bool
        Raise :class:`ScanError` at the first scan that cannot be scored (else it is an error record).
    max_retries : int
        Restarts of a lost worker and retries of its scan before the scan becomes an error record.
    in_flight : int
        Scans queued per worker (≥ 1; 2 hides the driver round trip).
    on_result : callable, optional
        Called on the driver with each :class:`ScanRecord` as it finishes (reused ones first, with
        ``reused=True``), after its manifest line is on disk. An exception from it stops the run (the
        manifest keeps what finished).
    ray_init : dict, optional
        Extra ``ray.init`` keyword arguments when this call starts Ray.

    Returns
    -------
    list of ScanRecord
        One per input, in input order.
    """
    if len(paths) != len(names):
        raise ConfigError(f"{len(paths)} paths but {len(names)} names")
    if len(set(names)) != len(names):
        raise ConfigError("output names must be unique (use aeanomaly.io.results.output_names)")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be ≥ 1, got {workers}")
    if in_flight < 1:
        raise ConfigError(f"in_flight must be ≥ 1, got {in_flight}")
    require_ray()
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    bundle = os.fspath(Path(bundle).resolve())
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fp = run_fingerprint(bundle, params=params, target_fpr=target_fpr, heatmaps=heatmaps, overlays=overlays)
    manifest = Manifest(work)

    records: list[ScanRecord | None] = [None] * len(paths)
    todo: deque[int] = deque()
    for i, (p, name) in enumerate(zip(paths, names)):
        try:
            key = content_hash(p)
        except ScanError:  # unreadable: a worker reports it with the local engine's error text
            key = ""
        old = manifest.get(key, fp, name) if key else None
        if old is not None:
            rec = ScanRecord(i, str(p), name, key, fp, reused=True, attempts=0,
                             **{k: old[k] for k in ("row", "slices", "lesions", "lesion_records", "overlays",
                                                    "files", "seconds", "worker", "finished")})
            _retarget(rec, str(p))
            records[i] = rec
        else:
            records[i] = ScanRecord(i, str(p), name, key, fp)
            todo.append(i)
    if on_result is not None:
        for rec in records:
            if rec is not None and rec.reused:
                on_result(rec)
    if not todo:
        return [r for r in records if r is not None]

    started_ray = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, **dict(ray_init or {})}
        if address is None:
            kwargs.setdefault("num_cpus", max(1, math.ceil((workers or os.cpu_count() or 1) * cpus_per_worker)))
        ray.init(address=address, **kwargs)
        started_ray = True
    actors: list = []
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        workers = min(workers, len(todo))
        Remote = ray.remote(ScanWorker).options(
            num_cpus=cpus_per_worker, max_restarts=max_retries, max_task_retries=max_retries,
            runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
        actors = [Remote.remote(bundle, os.fspath(work), params=dict(params or {}), target_fpr=target_fpr,
                                heatmaps=heatmaps, overlays=overlays) for _ in range(workers)]
        live = list(range(len(actors)))
        pending: dict = {}  # ObjectRef -> (index, actor slot)
        load = {a: 0 for a in live}

        def submit(slot: int) -> None:
            while todo and load[slot] < in_flight:
                i = todo.popleft()
                rec = records[i]
                ref = actors[slot].score.remote(rec.scan, rec.name)
                pending[ref] = (i, slot)
                load[slot] += 1

        for slot in live:
            submit(slot)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i, slot = pending.pop(ref)
            load[slot] -= 1
            rec = records[i]
            try:
                out = ray.get(ref)
            except RayActorError as err:  # the worker died for good (restarts used up)
                if slot in live:
                    live.remove(slot)
                rec.attempts += 1
                if rec.attempts <= max_retries and live:
                    todo.appendleft(i)
                else:
                    rec.error = f"{rec.scan}: the Ray worker scoring it was lost ({type(err).__name__})"
                    rec.row = {"scan": rec.scan, "label": "error", "error": rec.error}
                    if strict:
                        raise ScanError("the Ray worker scoring it was lost", path=rec.scan) from err
                    if on_result is not None:
                        on_result(rec)
                for s in (live if slot not in live else [slot]):
                    submit(s)
                if not live and todo:
                    raise AeAnomalyError("every Ray worker was lost; re-run to resume from the manifest") from err
                continue
            except RayTaskError as err:  # an unexpected exception inside score(): a bug, not bad input
                raise AeAnomalyError(f"{rec.scan}: the Ray worker failed: {err.cause!r}") from err
            rec.seconds, rec.worker = float(out["seconds"]), out["worker"]
            if "error" in out:
                rec.error = out["error"]
                rec.row = {"scan": rec.scan, "label": "error", "error": rec.error}
                if strict:
                    raise ScanError(rec.error.removeprefix(f"{rec.scan}: "), path=rec.scan)
            else:
                for k in ("row", "slices", "lesions", "lesion_records", "overlays", "files"):
                    setattr(rec, k, out[k])
                rec.finished = time.time()
                if rec.key:
                    manifest.append(rec)
            if on_result is not None:
                on_result(rec)
            submit(slot)
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        if started_ray:
            ray.shutdown()
    return [r for r in records if r is not None]


def _retarget(rec: ScanRecord, scan: str) -> None:
    """Point a reused record's ``scan`` column at the path given in this run (same content)."""
    rec.row = {**rec.row, "scan": scan}
    rec.slices = [{**r, "scan": scan} for r in rec.slices]
    rec.lesions = [{**r, "scan": scan} for r in rec.lesions]


# -------------------------------------------------------------------------------------------------
# Into a ResultsWriter (the local engine's writer)
# -------------------------------------------------------------------------------------------------
def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        shutil.copy2(src, dst)


def add_to_writer(writer, records: Iterable[ScanRecord], work_dir: str | os.PathLike) -> None:
    """Add Ray results to an open :class:`aeanomaly.io.results.ResultsWriter` as its ``add`` would:
    the per-scan files (hard-linked from ``work_dir``, so the work folder stays complete until the
    results folder is in place) and the rows, in the order given (input order)."""
    work = Path(work_dir)
    folder = Path(writer.folder)
    for rec in records:
        if rec.error:
            row = {"scan": rec.scan, "label": "error", "error": rec.error}
            writer.errors.append(rec.error)
            writer.rows.append(row)
            writer.report_items.append({**row, "scan_score": None, "p_value": None, "n_slices": None,
                                        "top_slice": None, "overlays": [], "lesions": []})
            continue
        for f in rec.files:
            _place(work / f, folder / f)
        writer.rows.append(dict(rec.row))
        writer.slice_rows.extend(dict(r) for r in rec.slices)
        writer.lesion_rows.extend(dict(r) for r in rec.lesions)
        writer.report_items.append({**rec.row, "overlays": [folder / p for p in rec.overlays],
                                    "lesions": [dict(les) for les in rec.lesion_records]})


def default_work_dir(out_dir: str | os.PathLike) -> Path:
    """The work folder kept beside a results folder while a Ray run is in progress."""
    out = Path(out_dir)
    return out.with_name(f".{out.name}.ray-work")


def score_folder_on_ray(
    bundle: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    work_dir: str | os.PathLike | None = None,
    heatmaps: str = "nifti",
    overlays: int = 3,
    pixel_threshold: float | None = None,
    report: bool = True,
    overwrite: bool = False,
    summary: Mapping[str, Any] | None = None,
    keep_work: bool = False,
    **ray_options,
):
    """Score ``paths`` on Ray and write the results folder ``out_dir`` exactly as the local engine.

    The per-scan files and the manifest live in ``work_dir`` (default :func:`default_work_dir`)
    until the results folder is complete; a re-run with the same ``work_dir`` resumes. The work
    folder is removed afterwards unless ``keep_work``.

    Parameters
    ----------
    pixel_threshold : float
        The bundle's ``det.pixel_threshold_`` (drawn on the overlays; must match what the workers
        use, which it does when it comes from the same bundle and parameters).
    summary : dict, optional
        The report header (as the local engine passes to ``ResultsWriter.finish``).
    **ray_options
        Passed to :func:`score_on_ray` (``address``, ``workers``, ``params``, ``target_fpr``,
        ``strict``, ``on_result`` ...).

    Returns
    -------
    (ResultsWriter, list of ScanRecord)
        The finished writer (counts, errors) and the records.
    """
    from ..io.results import ResultsWriter, output_names

    names = output_names(list(paths))
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_dir)
    records = score_on_ray(bundle, paths, names, work, heatmaps=heatmaps, overlays=overlays, **ray_options)
    with ResultsWriter(out_dir, heatmaps=heatmaps, overlays=overlays, pixel_threshold=pixel_threshold,
                       report=report, overwrite=overwrite) as writer:
        add_to_writer(writer, records, work)
        if writer.n_scored == 0 and records:
            from ..errors import EmptyInputError

            raise EmptyInputError(f"{writer.errors[0]} (none of the {len(records)} scans could be scored)")
        writer.finish(summary=summary)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return writer, records
