"""Dataset manifests: what a public CT dataset is, how its files are laid out, and whether a folder matches.

A manifest (``data_manifests/<id>.json``, described by ``data_manifests/schema.json``) names the
dataset's source, licence and citation, the accepted folder layouts (image globs, how an image
pairs with its label), the label map, the published counts, the patient-id pattern and the rule
that makes a scan or slice normal or abnormal. Nothing is ever downloaded.

:func:`aeanomaly.datasets.verify.verify` checks a folder against a manifest (file tree only; pixel
data only with ``deep=True``); :func:`aeanomaly.datasets.prepare.prepare` turns it into
normal/abnormal sets.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path


import aeanomaly
from ..io import SCAN_SUFFIXES
from ..errors import DataManifestError

#: Formats the aeanomaly.io loaders read.
READABLE_FORMATS = ("nifti", "dicom", "metaimage", "tiff", "png", "npy")
_EXTS = (*SCAN_SUFFIXES, ".raw", ".csv", ".json")
SHOW_PATHS = 10  # paths listed per problem kind in a report


def manifest_dir() -> Path:
    """Folder of the manifests: ``$AEANOMALY_MANIFESTS``, else ``data_manifests/`` beside the package
    (a source checkout or editable install), else ``<prefix>/share/aeanomaly/data_manifests`` (a wheel
    install, where setup.cfg's data_files put them)."""
    env = os.environ.get("AEANOMALY_MANIFESTS")
    if env:
        return Path(env)
    beside = Path(aeanomaly.__file__).resolve().parents[1] / "data_manifests"
    installed = Path(sys.prefix) / "share" / "aeanomaly" / "data_manifests"
    return installed if not beside.is_dir() and installed.is_dir() else beside


# ------------------------------------------------------------------------------------------------
# JSON Schema subset
# ------------------------------------------------------------------------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(instance, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Errors of ``instance`` against a JSON Schema, as ``"<json path>: <reason>"`` lines.

    Supports the subset the manifests use: ``type``, ``required``, ``properties``, ``items``,
    ``enum``, ``additionalProperties``, ``pattern``, ``minItems``, ``minLength``, ``minimum`` and
    ``$ref`` to ``#/$defs/<name>``.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise DataManifestError(f"unsupported $ref {ref!r} in the schema")
        schema = root["$defs"][ref[len("#/$defs/"):]]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(instance, t) for t in types):
            return [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    errors: list[str] = []
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: {instance!r} does not match {schema['pattern']!r}")
    if _is_type(instance, "number") and "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items, has {len(instance)}")
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += schema_errors(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(instance, dict):
        errors += [f"{path}: missing required key {k!r}" for k in schema.get("required", []) if k not in instance]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                errors += schema_errors(value, props[key], root, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unknown key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(value, extra, root, f"{path}.{key}")
    return errors


def _template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _semantic_errors(m: dict) -> list[str]:
    """Checks JSON Schema cannot express: regexes compile, template fields exist, rule keys present."""
    errs: list[str] = []

    def regex(value: str, where: str):
        try:
            return re.compile(value)
        except re.error as e:
            errs.append(f"{where}: invalid regex ({e})")
            return None

    regex(m["patient_id"]["regex"], "$.patient_id.regex")
    for key in m.get("label_map", {}):
        if not re.fullmatch(r"\d+", key):
            errs.append(f"$.label_map: key {key!r} is not a non-negative integer")
    names = [lay["name"] for lay in m["layouts"]]
    if len(set(names)) != len(names):
        errs.append("$.layouts: layout names are not unique")
    ids = m.get("expected_ids")
    for i, lay in enumerate(m["layouts"]):
        where = f"$.layouts[{i}]"
        rx = regex(lay.get("image_regex", ""), f"{where}.image_regex")
        groups = set(rx.groupindex) if rx else set()
        allowed = groups | {"name", "stem", "ext", "dir"}
        templates = [(f"{where}.labels.template", lay["labels"]["template"])] if "labels" in lay else []
        templates += [(f"{where}.companions[{j}]", t) for j, t in enumerate(lay.get("companions", []))]
        for w, t in templates:
            try:
                unknown = _template_fields(t) - allowed
            except ValueError as e:
                errs.append(f"{w}: invalid template ({e})")
                continue
            if unknown:
                errs.append(f"{w}: unknown placeholder(s) {sorted(unknown)}; known: {sorted(allowed)}")
        if "labels" in lay and "required_for" in lay["labels"]:
            regex(lay["labels"]["required_for"], f"{where}.labels.required_for")
        if ids and rx is not None and ids["group"] not in groups:
            errs.append(f"{where}.image_regex: has no group {ids['group']!r} named by $.expected_ids")
    for j, r in enumerate((ids or {}).get("ranges", [])):
        if len(r) != 2 or r[0] > r[1]:
            errs.append(f"$.expected_ids.ranges[{j}]: expected [first, last] with first <= last")
    rule = m["normal_abnormal"]
    kind, where = rule["rule"], "$.normal_abnormal"
    if kind == "label_values":
        if not rule.get("abnormal_labels") and not rule.get("any_nonzero"):
            errs.append(f"{where}: rule label_values needs abnormal_labels or any_nonzero: true")
        if not all("labels" in lay for lay in m["layouts"]):
            errs.append(f"{where}: rule label_values needs a labels template in every layout")
        lm = m.get("label_map")
        for v in rule.get("abnormal_labels", []):
            if lm is not None and str(v) not in lm:
                errs.append(f"{where}.abnormal_labels: {v} is not in $.label_map")
    if kind == "annotations_csv":
        errs += [f"{where}: rule annotations_csv needs {k!r}" for k in ("csv", "key_column") if k not in rule]
        if "slice" in rule.get("units", []):
            errs.append(f"{where}.units: rule annotations_csv labels whole scans only")
    if kind == "external" and rule.get("units"):
        errs.append(f"{where}.units: rule external cannot label anything")
    return errs


def _schema() -> dict:
    path = manifest_dir() / "schema.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataManifestError(f"cannot read the manifest schema: {e}", path) from None


def validate_manifest(m, source: str | os.PathLike = "manifest") -> dict:
    """Return ``m`` if it is a valid manifest, else raise DataManifestError naming the JSON path."""
    errors = schema_errors(m, _schema())
    if not errors:
        errors = _semantic_errors(m)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataManifestError(f"invalid manifest: {errors[0]}{more}", source)
    return m


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataManifestError(f"cannot read manifest: {e.strerror or e}", path) from None
    except ValueError as e:
        raise DataManifestError(f"not valid JSON: {e}", path) from None


def _manifest_files() -> list[Path]:
    folder = manifest_dir()
    if not folder.is_dir():
        raise DataManifestError("manifest folder does not exist (set AEANOMALY_MANIFESTS)", folder)
    return sorted(p for p in folder.glob("*.json") if p.name != "schema.json")


def list_manifests() -> list[dict]:
    """Every manifest in :func:`manifest_dir`, validated, sorted by id (each with ``_path``)."""
    out = []
    for p in _manifest_files():
        m = validate_manifest(_read_json(p), p)
        out.append({**m, "_path": str(p)})
    return sorted(out, key=lambda m: m["id"])


def load_manifest(name_or_path) -> dict:
    """A validated manifest from a file path, or by id / file stem from :func:`manifest_dir`.

    A dict is validated and returned as is. Raises DataManifestError for an unknown name or an
    invalid manifest (the message names the JSON path of the first problem).
    """
    if isinstance(name_or_path, dict):
        return validate_manifest(name_or_path)
    text = os.fspath(name_or_path)
    p = Path(text)
    if p.suffix == ".json" and not p.is_file() and p.name == text and (manifest_dir() / p.name).is_file():
        p = manifest_dir() / p.name  # "lits.json": the bundled file
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise DataManifestError("manifest file does not exist", p)
        return {**validate_manifest(_read_json(p), p), "_path": str(p)}
    known = []
    for f in _manifest_files():
        data = _read_json(f)
        known.append(data.get("id", f.stem))
        if text.lower() in (str(data.get("id", "")).lower(), f.stem.lower()):
            return {**validate_manifest(data, f), "_path": str(f)}
    raise DataManifestError(f"unknown manifest {text!r}; known: {', '.join(sorted(map(str, known)))}")


# ------------------------------------------------------------------------------------------------
# File-tree discovery
# ------------------------------------------------------------------------------------------------

def glob_regex(pattern: str) -> re.Pattern:
    """Compile a path glob (``*``, ``?``, ``[..]``, ``**/``) to a regex over relative posix paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            j = pattern.index("]", i + 2)
            body = pattern[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def split_name(rel: str) -> tuple[str, str]:
    """``(stem, ext)`` of a file name, knowing double extensions such as ``.nii.gz``."""
    name = posixpath.basename(rel.rstrip("/"))
    for ext in _EXTS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = posixpath.splitext(name)
    return stem, ext


def _tree(root: Path) -> tuple[set[str], set[str]]:
    """Relative posix paths of every file and folder under ``root`` (hidden ones skipped).

    Symlinked folders are followed (datasets are often linked together), each real folder once.
    """
    files, dirs, seen = set(), set(), set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        dirs.update(prefix + d for d in dirnames)
        files.update(prefix + f for f in filenames if not f.startswith("."))
    return files, dirs


@dataclass
class Item:
    """One image of a dataset tree, with its label and patient id (paths relative to the root)."""

    image: str
    label: str | None = None
    expected_label: str | None = None
    label_required: bool = False
    patient: str | None = None
    groups: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return split_name(self.image)[0]


@dataclass
class Discovery:
    """What a layout finds in a tree."""

    layout: str | None
    items: list[Item]
    label_files: list[str]
    unpaired_labels: list[str]
    missing_companions: list[str]
    missing_files: list[str]


def _fill(template: str, item_rel: str, groups: dict) -> str:
    stem, ext = split_name(item_rel)
    d = posixpath.dirname(item_rel.rstrip("/")) or "."
    values = {"name": posixpath.basename(item_rel.rstrip("/")), "stem": stem, "ext": ext, "dir": d,
              **{k: (v or "") for k, v in groups.items()}}
    return posixpath.normpath(template.format_map(values)).lstrip("/")


def patient_of(m: dict, rel: str) -> str | None:
    """Patient id of an image path by the manifest's pattern (None when it does not match)."""
    hit = re.search(m["patient_id"]["regex"], rel)
    if hit is None:
        return None
    if "patient" in hit.re.groupindex:
        return hit.group("patient")
    return hit.group(1) if hit.re.groups else hit.group(0)


def _discover_layout(m: dict, lay: dict, files: set[str], dirs: set[str]) -> Discovery:
    rx = re.compile(lay.get("image_regex", ""))
    images = set()
    for pat in lay["images"]:
        pool = dirs if pat.endswith("/") else files
        g = glob_regex(pat.rstrip("/"))
        images.update(p for p in pool if g.match(p) and rx.search(p))
    labels = lay.get("labels")
    label_files = sorted({p for pat in (labels or {}).get("glob", []) for p in files if glob_regex(pat).match(p)})
    need = re.compile(labels.get("required_for", "")) if labels else None
    items, referenced, companions = [], set(), []
    for rel in sorted(images):
        groups = rx.search(rel).groupdict()
        item = Item(rel, patient=patient_of(m, rel), groups=groups)
        if labels:
            item.expected_label = _fill(labels["template"], rel, groups)
            referenced.add(item.expected_label)
            item.label = item.expected_label if item.expected_label in files else None
            item.label_required = bool(need.search(rel))
        companions += [c for c in (_fill(t, rel, groups) for t in lay.get("companions", [])) if c not in files]
        items.append(item)
    missing = [f for f in lay.get("required_files", []) if f not in files]
    unpaired = [p for p in label_files if p not in referenced]
    return Discovery(lay["name"], items, label_files, unpaired, sorted(set(companions)), missing)


def discover(m: dict, root: str | os.PathLike, layout: str | None = None) -> Discovery:
    """Images, labels and patients of ``root`` by the layout that finds the most images.

    Raises DataManifestError when ``root`` is not a folder or ``layout`` is not in the manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataManifestError("dataset folder does not exist" if not root.exists() else "not a folder", root)
    layouts = m["layouts"]
    if layout is not None:
        layouts = [lay for lay in layouts if lay["name"] == layout]
        if not layouts:
            names = ", ".join(lay["name"] for lay in m["layouts"])
            raise DataManifestError(f"manifest {m['id']} has no layout {layout!r}; it has: {names}")
    files, dirs = _tree(root)
    found = [_discover_layout(m, lay, files, dirs) for lay in layouts]
    best = max(found, key=lambda d: len(d.items))  # first of equals wins
    return best if best.items else Discovery(None, [], [], [], [], [])


# ------------------------------------------------------------------------------------------------
# Verification
# ------------------------------------------------------------------------------------------------

def find_csv(m: dict, root: Path) -> Path | None:
    """The annotations CSV of an ``annotations_csv`` rule, or None when absent."""
    for cand in m["normal_abnormal"].get("csv", []):
        if (root / cand).is_file():
            return root / cand
    return None


def read_csv_keys(m: dict, path: Path) -> list[str]:
    """Key column of the annotations CSV, one entry per row (DataManifestError when unreadable)."""
    col = m["normal_abnormal"]["key_column"]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if col not in (reader.fieldnames or []):
                raise DataManifestError(f"annotations file has no column {col!r} (columns: {reader.fieldnames})", path)
            return [row[col].strip() for row in reader]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataManifestError(f"cannot read annotations: {e}", path) from None


def expected_id_set(m: dict) -> set[int]:
    ids = m.get("expected_ids")
    return {i for a, b in ids["ranges"] for i in range(a, b + 1)} if ids else set()
