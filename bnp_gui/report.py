"""Export of a session: the pruned model (engine formats), report.json and report.html (Qt-free).

The model and JSON are written by ``core.export`` (atomic, never over the input checkpoint);
the heatmap PNG is rendered by the window beforehand and only linked here.
"""

from __future__ import annotations

import html
from pathlib import Path

from core.export import SUFFIXES, export_model, write_json

MODEL_FORMATS = {
    "seed": "seed format (.pth: state_dict + trigger + metadata)",
    "state_dict": "bare state_dict (.pth)",
    "safetensors": "safetensors (.safetensors, metadata in header)",
}
HEATMAP_PNG = "heatmap.png"
CURVE_PNG = "tradeoff.png"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def model_path(folder: str | Path, checkpoint: str, fmt: str) -> Path:
    """``<folder>/<checkpoint stem>_pruned<suffix>``."""
    stem = Path(checkpoint).stem if checkpoint else "model"
    return Path(folder) / f"{stem}_pruned{SUFFIXES[fmt]}"


def export_session(inspection, snapshot: dict, folder: str | Path, *, fmt: str = "seed") -> Path:
    """Write the pruned model, report.json and report.html into ``folder``; returns the model."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    mask = inspection.mask(
        snapshot["methods"],
        snapshot["combine"],
        [tuple(n) for n in snapshot["force_prune"]],
        [tuple(n) for n in snapshot["keep"]],
    )
    ckpt = inspection.ckpt
    path = model_path(folder, snapshot["checkpoint"], fmt)
    export_model(
        inspection.model,
        path,
        mask=mask,
        fmt=fmt,
        metadata=ckpt.metadata,
        trigger=ckpt.trigger,
        source=ckpt.path,
    )
    counts, neurons = mask.per_layer_counts(), mask.neurons()
    report = {
        **snapshot,
        "model": path.name,
        "format": fmt,
        "architecture": ckpt.metadata.arch,
        "pruned": mask.count(),
        # data-flow order, every layer listed
        "per_layer": {name: counts.get(name, 0) for name in inspection.channels},
        "pruned_neurons": {n: neurons[n] for n in inspection.channels if n in neurons},
    }
    write_json(folder / REPORT_JSON, report, source=ckpt.path)
    (folder / REPORT_HTML).write_text(report_html(report), encoding="utf-8")
    return path


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f} %"


def report_html(report: dict) -> str:
    """A self-contained one-page HTML report linking heatmap.png."""
    e = html.escape
    before, after = report.get("before") or {}, report.get("after") or {}
    thresholds = "".join(
        f"<tr><td>{e(m.upper())}</td><td>{k:g}</td>"
        f"<td>{'yes' if m in report['methods'] else 'no'}</td></tr>"
        for m, k in report["thresholds"].items()
    )
    layers = "".join(
        f"<tr><td>{e(name)}</td><td>{n}</td></tr>" for name, n in report["per_layer"].items() if n
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>BNP Inspector report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.2em .6em}}</style></head>
<body><h1>Backdoor neuron pruning report</h1>
<p>Checkpoint <code>{e(str(report["checkpoint"]))}</code> ({e(report["architecture"])}),
exported as <code>{e(report["model"])}</code> ({e(report["format"])} format).</p>
<h2>Numbers</h2>
<table><tr><th></th><th>before</th><th>after</th></tr>
<tr><td>ACC</td><td>{_pct(before.get("acc"))}</td><td>{_pct(after.get("acc"))}</td></tr>
<tr><td>ASR</td><td>{_pct(before.get("asr"))}</td><td>{_pct(after.get("asr"))}</td></tr></table>
<p>Measured on {e(str(report.get("preview_stage") or "–"))} set; trigger:
{e(str(report.get("trigger") or "none"))}.</p>
<h2>Decision</h2>
<p>{report["pruned"]} neurons pruned; methods combined by {e(report["combine"])};
{len(report["force_prune"])} forced, {len(report["keep"])} kept by hand.</p>
<table><tr><th>method</th><th>k</th><th>used</th></tr>{thresholds}</table>
<h2>Heatmap</h2><img src="{HEATMAP_PNG}" style="max-width:100%" alt="neuron heatmap">
<h2>ACC / ASR versus threshold</h2>
<img src="{CURVE_PNG}" style="max-width:60%" alt="ACC and ASR versus threshold k">
<h2>Pruned neurons per layer</h2><table><tr><th>layer</th><th>pruned</th></tr>{layers}</table>
</body></html>
"""
