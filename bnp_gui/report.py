"""Export of a session: the pruned model, report.json and report.html (Qt-free).

A report is evidence, so it never reuses numbers of another mask or of a subset: the export job
builds the mask from a snapshot of the decisions taken when Export was chosen, measures that
exact mask on the full evaluation set (the unpruned "before" numbers are reused only when they
were measured on the full set with the same data and trigger), fills in the trade-off curve the
figure shows, and records provenance: when, which program, sha256 of the input checkpoint and
of the exported file, the decisions, and the ``bnp defend`` command line that reproduces the
export when one exists. ``report.json`` uses the keys of ``bnp defend --report`` (``method``,
``threshold``, ``flagged``, ``pruned``, ``scores``, ``acc_before`` …) so one reader serves both.
The figures (heatmap.png, tradeoff.png) are rendered by the window once this job is done.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import html
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnp_gui.evidence import evidence_html
from core.model.methods import METHOD_NAMES

MODEL_FORMATS = {
    "seed": "seed format (.pth: state_dict + trigger + metadata)",
    "state_dict": "bare state_dict (.pth)",
    "safetensors": "safetensors (.safetensors, metadata in header)",
    "torchscript": "TorchScript (.pt: reopens a model of its own architecture as it is)",
}
HEATMAP_PNG = "heatmap.png"
CURVE_PNG = "tradeoff.png"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
SCORES_CSV = "neuron_scores.csv"
REPORT_VERSION = 2


def model_path(folder: str | Path, checkpoint: str, fmt: str) -> Path:
    """``<folder>/<checkpoint stem>_pruned<suffix>``."""
    from core.io.export import SUFFIXES

    stem = Path(checkpoint).stem if checkpoint else "model"
    return Path(folder) / f"{stem}_pruned{SUFFIXES[fmt]}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def program_version() -> str:
    """The installed bnp-inspector version (the source tree's when it is not installed)."""
    try:
        from importlib.metadata import version

        return version("bnp-inspector")
    except Exception:  # noqa: BLE001 - not installed: read pyproject.toml
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        for line in pyproject.read_text().splitlines() if pyproject.is_file() else []:
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"') + " (source tree)"
        return "unknown"


@dataclasses.dataclass
class ExportPlan:
    """Everything the export job needs, captured on the main thread at the moment of Export."""

    folder: str
    fmt: str
    checkpoint: str
    roles: dict[str, str]  # data roles actually loaded (never a path that failed to load)
    eval_role: str | None  # "test" or "clean": which role gave ACC/ASR
    test: Any  # ImageSet or None
    trigger: Any  # bnp_gui.trigger_source.ResolvedTrigger or None
    trigger_error: str
    scores: dict  # method → layer → tensor (snapshot)
    channels: dict[str, int]
    methods: dict[str, float]  # methods entering the mask, with their thresholds
    thresholds: dict[str, float]
    enabled: dict[str, bool]
    combine: str
    force_prune: list
    keep: list
    view_method: str
    baseline: Any = None  # unpruned Metrics on the full set, when already measured
    curve_method: str | None = None
    curve_ks: tuple[float, ...] = ()  # trade-off points still missing for the figure
    curve_subset: int = 256
    curve_decisions: tuple | None = None  # Session.curve_decisions(curve_method)
    spec_overrides: dict = dataclasses.field(default_factory=dict)
    evidence: Any = None  # bnp_gui.evidence.EvidencePlan: the suspect analysis, if any


@dataclasses.dataclass
class ExportResult:
    """What the job wrote and measured; ``curve`` holds the trade-off points it added."""

    model: Path
    report: dict
    before: Any
    after: Any
    curve: list = dataclasses.field(default_factory=list)  # (method, k, Metrics)


def plan_export(session, folder: str, fmt: str) -> ExportPlan:
    """A snapshot of a Session's decisions, data and numbers for the export job."""
    from bnp_gui.tradeoff import CURVE_KS, CURVE_SUBSET

    s = session
    test = s.eval_set()
    method = s.view_method if s.available(s.view_method) else None
    have = {k for k, _ in s.curves.get(method, [])} if method else set()
    return ExportPlan(
        folder=folder,
        fmt=fmt,
        checkpoint=s.checkpoint_path,
        roles={r: p for r, p in dataclasses.asdict(s.roles).items() if p},
        eval_role=("test" if "test" in s.data else "clean") if test is not None else None,
        test=test,
        trigger=s.trigger,
        trigger_error=s.trigger_error,
        scores={m: dict(v) for m, v in s.scores.items()},
        channels=dict(s.layers),
        methods=s.mask_methods(),
        thresholds=dict(s.thresholds),
        enabled=dict(s.enabled),
        combine=s.combine,
        force_prune=sorted(s.force_prune),
        keep=sorted(s.keep),
        view_method=s.view_method,
        baseline=s.baseline.get(None),
        curve_method=method,
        curve_ks=tuple(k for k in CURVE_KS if k not in have) if test is not None else (),
        curve_subset=CURVE_SUBSET,
        curve_decisions=s.curve_decisions(method) if method else None,
        spec_overrides=spec_overrides(s.inspection),
    )


def spec_overrides(inspection) -> dict:
    """Input settings that differ from the checkpoint's metadata (``--input-size`` …)."""
    meta = inspection.ckpt.metadata
    spec = inspection.spec
    changes = {}
    if spec.channels != meta.in_channels:
        changes["channels"] = spec.channels
    if tuple(spec.size) != tuple(meta.input_size):
        changes["size"] = list(spec.size)
    for name in ("mean", "std"):
        value = getattr(spec, name)
        stored = getattr(meta, name)
        if (tuple(value) if value else None) != (tuple(stored) if stored else None):
            changes[name] = list(value) if value else None
    return changes


def defend_command(
    plan: ExportPlan, arch: str, model: Path, report: Path
) -> tuple[str | None, str]:
    """The ``bnp defend`` command line that reproduces this export, or (None, why not)."""
    why = []
    if len(plan.methods) != 1:
        names = ", ".join(METHOD_NAMES[m] for m in plan.methods) or "no method"
        why.append(f"the mask combines {names} ({plan.combine}); bnp defend takes one method")
    if plan.force_prune or plan.keep:
        why.append("neurons were force-pruned or kept by hand")
    source = plan.trigger.source if plan.trigger is not None else None
    if source is not None and source.kind == "image" and source.size is not None:
        why.append("the trigger image was resized to a chosen patch size")
    if plan.trigger is None and plan.test is not None:
        why.append("ASR was switched off (bnp defend always measures it when it can)")
    if why:
        return None, "; ".join(why)
    method, k = next(iter(plan.methods.items()))
    q = shlex.quote
    parts = ["bnp", "defend", q(plan.checkpoint), "--arch", q(arch)]
    parts += ["--method", method, "--threshold", f"{k:g}"]
    if method == "bnp":
        parts += ["--clean", q(plan.roles["clean"])]
    if method == "ep":
        parts += ["--train", q(plan.roles["train"])]
    if plan.eval_role is not None:
        parts += ["--test", q(plan.roles[plan.eval_role])]
    if source is not None:
        if source.kind == "image":
            parts += ["--trigger", q(source.path), "--trigger-kind", source.placement]
            if source.placement == "blend":
                parts += ["--alpha", f"{source.alpha:g}"]
        elif source.kind == "folder":
            parts += ["--poisoned", q(source.path)]
        if source.target is not None:
            parts += ["--target", str(plan.trigger.target)]
    ov = plan.spec_overrides
    if "size" in ov:
        parts += ["--input-size", *(str(v) for v in ov["size"])]
    if "channels" in ov:
        parts += ["--channels", str(ov["channels"])]
    for name in ("mean", "std"):
        if ov.get(name):
            parts += [f"--{name}", *(f"{v:g}" for v in ov[name])]
    parts += ["--out", q(str(model)), "--format", plan.fmt, "--report", q(str(report))]
    return " ".join(parts), ""


def _measure_all(plan: ExportPlan, inspection, mask, job) -> tuple[Any, Any, list]:
    """Full-set before/after of the exact mask, then the missing curve points (progress: all)."""
    from bnp_gui.trigger_source import measure
    from core.defense.inspection import build_mask

    test = plan.test
    if test is None:
        return None, None, []
    per_pass = len(test) * 2  # clean + triggered, an upper bound for progress
    passes = (0 if plan.baseline is not None else 1) + 1
    curve_cost = min(plan.curve_subset, len(test)) * 2
    total = per_pass * passes + curve_cost * len(plan.curve_ks)
    done = [0]

    def stage(cost: int) -> Callable[[int, int], None]:
        start = done[0]

        def report(d: int, t: int) -> None:
            job.progress(start + int(cost * d / max(t, 1)), total)

        done[0] += cost
        return report

    before = plan.baseline
    if before is None:
        before = measure(
            inspection, test, plan.trigger, progress=stage(per_pass), cancel=job.cancelled
        )
    after = measure(
        inspection, test, plan.trigger, mask=mask, progress=stage(per_pass), cancel=job.cancelled
    )
    curve = []
    if plan.curve_method is not None:  # the window's curve: the other decisions as they are
        methods, combine, force, keep, _ = plan.curve_decisions
        scores = {m: plan.scores[m] for m in methods}
        for k in plan.curve_ks:
            m = build_mask(
                scores, {**methods, plan.curve_method: k}, combine, force, keep, plan.channels
            )
            metrics = measure(
                inspection,
                test,
                plan.trigger,
                mask=m,
                limit=plan.curve_subset,
                progress=stage(curve_cost),
                cancel=job.cancelled,
            )
            curve.append((plan.curve_method, k, metrics))
    job.progress(total, total)
    return before, after, curve


def export_session(inspection, plan: ExportPlan, job) -> ExportResult:
    """Measure the plan's mask on the full set, write model, report.json and report.html."""
    from core.defense.inspection import build_mask
    from core.io.export import atomic_write, export_model, write_json
    from core.safety.paths import check_output

    folder = Path(plan.folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    mask = build_mask(
        plan.scores,
        plan.methods,
        plan.combine,
        [tuple(n) for n in plan.force_prune],
        [tuple(n) for n in plan.keep],
        plan.channels,
    )
    ckpt = inspection.ckpt
    path = model_path(folder, plan.checkpoint, plan.fmt)
    # every file of the export passes the output rule before anything is measured or written
    reads = [ckpt.path, *(v for v in dict(plan.roles).values() if v)]
    for name in (path.name, REPORT_JSON, REPORT_HTML, SCORES_CSV, HEATMAP_PNG, CURVE_PNG):
        check_output(folder / name, reads, what=name)
    before, after, curve = _measure_all(plan, inspection, mask, job)
    export_model(
        inspection.model,
        path,
        mask=mask,
        fmt=plan.fmt,
        metadata=ckpt.metadata,
        trigger=ckpt.trigger,
        source=ckpt.path,
    )
    report = build_report(inspection, plan, mask, before, after, path)
    if plan.evidence is not None:  # target, estimated ASR, suggestion, suspects: `bnp defend`'s
        from bnp_gui.evidence import evidence_report

        report.update(evidence_report(plan.evidence, mask))
    write_json(folder / REPORT_JSON, report, source=ckpt.path)
    page = report_html(report).encode("utf-8")
    atomic_write(folder / REPORT_HTML, lambda tmp: tmp.write_bytes(page), source=ckpt.path)
    return ExportResult(path, report, before, after, curve)


def build_report(inspection, plan: ExportPlan, mask, before, after, path: Path) -> dict:
    """report.json's content: ``bnp defend --report``'s keys, the window's decisions, provenance."""
    from core.defense.inspection import build_mask

    ckpt = inspection.ckpt
    counts, neurons = mask.per_layer_counts(), mask.neurons()
    methods = list(plan.methods)
    single = methods[0] if len(methods) == 1 else None
    command, why = defend_command(plan, ckpt.metadata.arch, path, Path(plan.folder) / REPORT_JSON)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    flagged_by = {}
    for m in methods:
        one = build_mask({m: plan.scores[m]}, {m: plan.methods[m]}, channels=plan.channels)
        flagged_by[m] = one.neurons()
    report = {
        # the keys of `bnp defend --report`
        "method": single if single is not None else "+".join(methods) or None,
        "threshold": plan.methods[single] if single is not None else None,
        "flagged": neurons,  # what the exported mask prunes, per layer (as bnp defend)
        "pruned": mask.count(),
        "scores": plan.scores[single] if single is not None else {},
        "acc_before": before.acc if before is not None else None,
        "asr_before": before.asr if before is not None else None,
        "acc_after": after.acc if after is not None else None,
        "asr_after": after.asr if after is not None else None,
        # what the window adds
        "report_version": REPORT_VERSION,
        "methods": dict(plan.methods),
        "combine": plan.combine,
        "thresholds": dict(plan.thresholds),
        "enabled": dict(plan.enabled),
        "force_prune": [list(n) for n in plan.force_prune],
        "keep": [list(n) for n in plan.keep],
        "flagged_by_method": flagged_by,
        "scores_by_method": {m: plan.scores[m] for m in methods},
        "per_layer": {name: counts.get(name, 0) for name in plan.channels},
        "measured_on": {
            "set": plan.eval_role,
            "path": plan.roles.get(plan.eval_role) if plan.eval_role else None,
            "n_clean": after.n_clean if after is not None else 0,
            "n_triggered": after.n_poison if after is not None else 0,
            "full_set": True,
        },
        "trigger": plan.trigger.describe() if plan.trigger is not None else None,
        "asr_missing_because": plan.trigger_error if plan.trigger is None else None,
        "checkpoint": plan.checkpoint,
        "data": dict(plan.roles),
        "input_overrides": dict(plan.spec_overrides),
        "model": path.name,
        "format": plan.fmt,
        "architecture": ckpt.metadata.arch,
        "provenance": {
            "created_utc": created.isoformat(),
            "program": f"bnp-inspector {program_version()} (window)",
            "checkpoint_sha256": sha256_file(ckpt.path),
            "model_sha256": sha256_file(path),
            "defend_command": command,
            "defend_command_missing_because": why or None,
        },
    }
    return report


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f} %"


def plural(n: int, word: str) -> str:
    """ "1 neuron", "2 neurons"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def report_html(report: dict) -> str:
    """A self-contained one-page HTML report linking heatmap.png and tradeoff.png; every string
    is HTML-escaped with its control characters written out (``core.safety.paths.printable``):
    names and paths come from files."""
    from core.safety.paths import printable

    def e(value: Any) -> str:
        return html.escape(printable(value))

    used = report["methods"]
    thresholds = "".join(
        f"<tr><td>{e(METHOD_NAMES.get(m, m))}</td><td>{k:g}</td>"
        f"<td>{'yes' if m in used else 'no'}</td></tr>"
        for m, k in report["thresholds"].items()
    )
    layers = "".join(
        f"<tr><td>{e(name)}</td><td>{n}</td></tr>" for name, n in report["per_layer"].items() if n
    )
    where = report["measured_on"]
    measured = (
        f"the full {e(str(where['set']))} set ({where['n_clean']} clean samples, "
        f"{where['n_triggered']} triggered)"
        if where["set"]
        else "no data (no numbers)"
    )
    prov = report["provenance"]
    command = (
        f"<pre>{e(prov['defend_command'])}</pre>"
        if prov["defend_command"]
        else f"<p>No <code>bnp defend</code> command reproduces it: "
        f"{e(prov['defend_command_missing_because'] or '')}.</p>"
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
<tr><td>ACC</td><td>{_pct(report["acc_before"])}</td><td>{_pct(report["acc_after"])}</td></tr>
<tr><td>ASR</td><td>{_pct(report["asr_before"])}</td><td>{_pct(report["asr_after"])}</td></tr>
</table>
<p>Measured on {measured} with exactly the exported mask; trigger:
{e(str(report.get("trigger") or "none"))}.</p>
{evidence_html(report)}<h2>Decision</h2>
<p>{plural(report["pruned"], "neuron")} pruned; methods combined by {e(report["combine"])};
{len(report["force_prune"])} forced, {len(report["keep"])} kept by hand.</p>
<table><tr><th>method</th><th>k</th><th>used</th></tr>{thresholds}</table>
<h2>Heatmap</h2><img src="{HEATMAP_PNG}" style="max-width:100%" alt="neuron heatmap">
<h2>ACC / ASR versus threshold</h2>
<img src="{CURVE_PNG}" style="max-width:60%" alt="ACC and ASR versus threshold k">
<h2>Pruned neurons per layer</h2>
<p>Every neuron's scores, z-scores, flags and decision: <a href="{SCORES_CSV}">{SCORES_CSV}</a>.</p>
<table><tr><th>layer</th><th>pruned</th></tr>{layers}</table>
<h2>Provenance</h2>
<p>Written {e(prov["created_utc"])} by {e(prov["program"])}.<br>
sha256 of the input checkpoint: <code>{e(prov["checkpoint_sha256"])}</code><br>
sha256 of the exported model: <code>{e(prov["model_sha256"])}</code></p>
{command}
</body></html>
"""
