"""The self-contained HTML report: one file, inline CSS, PNGs embedded as base64, no JS, no URL."""

from __future__ import annotations

import base64
import html
import math
import numbers
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import __version__
from .errors import AeAnomalyError, ConfigError
from .io.writers import atomic_path

__all__ = ["write_report", "format_float", "format_p_value"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DISCLAIMER = ("Research tool — not a diagnostic device. These results have not been validated for clinical "
              "use and must not be used to diagnose, treat or triage patients.")

_BADGE = {"abnormal": "#c62828", "normal": "#2e7d32", "error": "#616161"}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#212121;background:#fff;line-height:1.4}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-size:.85em;font-weight:600}
.disclaimer{border:2px solid #e65100;background:#fff3e0;color:#bf360c;padding:.6em 1em;font-weight:600;
margin:1em 0}
.error{color:#b71c1c;font-family:monospace;white-space:pre-wrap}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#757575}
footer{margin-top:3em;font-size:.85em;color:#757575;border-top:1px solid #ddd;padding-top:.6em}
""".strip()

_SUMMARY_LABELS = {
    "bundle": "bundle", "bundle_name": "bundle", "calibration_method": "calibration method",
    "method": "calibration method", "target_fpr": "target FPR", "threshold": "threshold",
    "n_normal": "normal calibration scans", "n_calibration": "normal calibration scans",
    "created": "created", "version": "aeanomaly version", "aeanomaly_version": "aeanomaly version",
}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def format_float(value: Any) -> str:
    """A number for a table: ``"—"`` when missing or not finite; thousands grouped at ≥ 1000;
    4 significant digits down to 0.01; scientific notation below."""
    x = _to_float(value)
    if x is None:
        return "—" if value is None or isinstance(value, numbers.Real) else _esc(value)
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 0.01:
        return f"{x:.4g}"
    return f"{x:.2e}"


def format_p_value(value: Any) -> str:
    """A p-value: 3 decimals from 1e-3 up, scientific notation (``"3.20e-05"``) below."""
    x = _to_float(value)
    if x is None:
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2e}" if x < 1e-3 else f"{x:.3f}"


def _is_error(scan: Mapping[str, Any]) -> bool:
    return str(scan.get("label", "")).lower() == "error" or bool(scan.get("error"))


def _sort_key(item: tuple[int, Mapping[str, Any]]):
    i, scan = item
    score = _to_float(scan.get("scan_score"))
    return (_is_error(scan), score is None, -(score or 0.0), i)


def _badge(label: Any) -> str:
    text = str(label or "—")
    colour = _BADGE.get(text.lower(), "#1565c0")
    return f'<span class="badge" style="background:{colour}">{_esc(text)}</span>'


def _embed_png(png: Any, scan_name: str) -> str:
    p = Path(os.fspath(png))
    try:
        data = p.read_bytes()
    except FileNotFoundError as err:
        raise AeAnomalyError(f"overlay PNG not found (for scan {scan_name})", path=p) from err
    except OSError as err:
        raise AeAnomalyError(f"cannot read overlay PNG ({err.strerror or err})", path=p) from err
    if not data.startswith(PNG_SIGNATURE):
        raise AeAnomalyError(f"overlay is not a PNG file (for scan {scan_name})", path=p)
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(p.name)}">'
            f"<figcaption>{_esc(p.name)}</figcaption></figure>")


def _lesion_table(lesions: Sequence[Mapping[str, Any]]) -> str:
    if not lesions:
        return "<p>No lesion found.</p>"
    has_organ = any(les.get("organ") not in (None, "") for les in lesions)
    head = ["id", "slices", "centroid RAS (mm)", "area (mm²)", "volume (mm³)", "max residual", "p-value",
            "severity"] + (["organ"] if has_organ else [])
    rows = []
    for les in lesions:
        start, end = les.get("slice_start"), les.get("slice_end")
        slices = "—" if start is None else (_esc(start) if end in (None, start) else f"{_esc(start)}–{_esc(end)}")
        c = les.get("centroid_ras_mm")
        centroid = "—" if c is None else ", ".join(f"{float(v):.1f}" for v in c)
        cells = [f"<td>{_esc(les.get('id', '—'))}</td>", f"<td>{slices}</td>", f"<td class=num>{centroid}</td>",
                 f"<td class=num>{format_float(les.get('area_mm2'))}</td>",
                 f"<td class=num>{format_float(les.get('volume_mm3'))}</td>",
                 f"<td class=num>{format_float(les.get('max_residual'))}</td>",
                 f"<td class=num>{format_p_value(les.get('p_value'))}</td>",
                 f"<td>{_esc(les.get('severity', '—'))}</td>"]
        if has_organ:
            cells.append(f"<td>{_esc(les.get('organ') or '—')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _summary_header(summary: Mapping[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        label = _SUMMARY_LABELS.get(str(key), str(key).replace("_", " "))
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, numbers.Real):
            # run settings are shown exactly enough to reproduce them (0.05 stays "0.05")
            text = f"{float(value):.6g}" if math.isfinite(value) else "—"
        else:
            text = _esc(value)
        rows.append(f"<tr><th>{_esc(label)}</th><td>{text}</td></tr>")
    return "<table class=meta><tbody>" + "".join(rows) + "</tbody></table>"


#: Optional per-scan values of a CNN head: shown (scan facts and summary columns) only when present.
_HEAD_FIELDS = (("head_proba", "classifier P(abnormal)"), ("fused_proba", "fused P(abnormal)"))


def _scan_section(anchor: str, scan: Mapping[str, Any]) -> str:
    name = str(scan["scan"])
    parts = [f'<section id="{anchor}"><h2>{_esc(name)} {_badge(scan.get("label"))}</h2>']
    facts = [("scan score", format_float(scan.get("scan_score"))), ("p-value", format_p_value(scan.get("p_value"))),
             ("slices", _esc(scan.get("n_slices", "—"))),
             ("most anomalous slice", _esc(scan.get("top_slice") if scan.get("top_slice") is not None else "—"))]
    facts += [(label, format_float(scan.get(key))) for key, label in _HEAD_FIELDS if scan.get(key) is not None]
    parts.append("<table><tbody>" + "".join(f"<tr><th>{k}</th><td class=num>{v}</td></tr>" for k, v in facts)
                 + "</tbody></table>")
    if scan.get("error"):
        parts.append(f'<p class="error">{_esc(scan["error"])}</p>')
    parts.extend(_embed_png(png, name) for png in scan.get("overlays") or [])
    if not _is_error(scan):
        parts.append("<h3>Lesions</h3>" + _lesion_table(scan.get("lesions") or []))
    parts.append('<p><a href="#top">back to the summary</a></p></section>')
    return "\n".join(parts)


def _report_html(scans: Sequence[Mapping[str, Any]], title: str, summary: Mapping[str, Any] | None) -> str:
    ordered = [s for _, s in sorted(enumerate(scans), key=_sort_key)]
    extra = [(k, label) for k, label in _HEAD_FIELDS if any(_to_float(s.get(k)) is not None for s in ordered)]
    rows, sections = [], []
    for i, scan in enumerate(ordered, start=1):
        anchor = f"scan-{i}"
        name = str(scan["scan"])
        n_les = "—" if _is_error(scan) else str(len(scan.get("lesions") or []))
        rows.append(f'<tr><td class=num>{i}</td><td><a href="#{anchor}">{_esc(name)}</a></td>'
                    f"<td class=num>{format_float(scan.get('scan_score'))}</td>"
                    f"<td class=num>{format_p_value(scan.get('p_value'))}</td><td>{_badge(scan.get('label'))}</td>"
                    f"<td class=num>{n_les}</td>"
                    + "".join(f"<td class=num>{format_float(scan.get(k))}</td>" for k, _ in extra) + "</tr>")
        sections.append(_scan_section(anchor, scan))
    counts = {k: sum(str(s.get("label", "")).lower() == k for s in ordered) for k in ("abnormal", "normal", "error")}
    overview = (f"<p>{len(ordered)} scans: {counts['abnormal']} abnormal, {counts['normal']} normal, "
                f"{counts['error']} failed. Sorted by scan score, most anomalous first.</p>")
    table = ("<table><thead><tr><th>#</th><th>scan</th><th>score</th><th>p-value</th><th>label</th>"
             "<th>lesions</th>" + "".join(f"<th>{_esc(label)}</th>" for _, label in extra)
             + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1 id="top">{_esc(title)}</h1>', f'<p class="disclaimer">{_esc(DISCLAIMER)}</p>',
        _summary_header(summary) if summary else "",
        "<h2>Summary</h2>", overview, table, *sections,
        f"<footer>Generated {created} by aeanomaly {_esc(__version__)}. {_esc(DISCLAIMER)}</footer>",
        "</body></html>", ""])


def write_report(path: str | os.PathLike, scans: Sequence[Mapping[str, Any]], *, title: str = "aeanomaly report",
                 summary: Mapping[str, Any] | None = None) -> Path:
    """Write one self-contained HTML report (inline CSS, base64 PNGs, no script, no external URL).

    Parameters
    ----------
    path : str or PathLike
        Output ``.html``; written atomically, so a failure leaves nothing behind.
    scans : sequence of dict
        One dict per scan with keys ``scan`` (name or path, required), ``scan_score``, ``p_value``,
        ``label`` ("abnormal" / "normal" / "error"), ``error`` (message or ""), ``n_slices``,
        ``top_slice``, optionally ``head_proba`` and ``fused_proba`` (a CNN head's probability of
        abnormal and its fusion with the p-value; shown when given), ``overlays`` (PNG paths to
        embed) and ``lesions`` (dicts with ``id``,
        ``slice_start``, ``slice_end``, ``centroid_ras_mm`` (3 floats, mm), ``area_mm2``,
        ``volume_mm3``, ``max_residual``, ``p_value``, ``severity`` and optionally ``organ``).
        Scans are listed by ``scan_score`` descending; failed scans come last.
    title : str
        Page title and heading.
    summary : dict, optional
        Run facts printed as a header table (bundle, calibration method, target FPR, threshold,
        number of normal calibration scans, created time, aeanomaly version ...), in the given order.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        A scan dict has no ``scan`` key.
    AeAnomalyError
        An overlay PNG is missing, unreadable or not a PNG (the message names that file).
    """
    for i, scan in enumerate(scans):
        if not isinstance(scan, Mapping) or scan.get("scan") in (None, ""):
            raise ConfigError(f"scan entry #{i} has no 'scan' name", path=path)
    text = _report_html(scans, title, summary)
    try:
        with atomic_path(path, suffix=".html") as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    except OSError as err:
        raise AeAnomalyError(f"cannot write report ({err.strerror or err})", path=path) from err
    return Path(path)
