"""The `bnp` command line: info, defend, train, demo.

Every user-facing failure is a `BnpError`, printed as one line on stderr with exit code 2;
warnings (a damaged model, NaN outputs on some samples) are printed as `bnp: warning: ...` lines
and written into the report. Nothing heavy is imported before a command runs: `bnp -h` and
`bnp <command> -h` answer without loading torch.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from pathlib import Path

from core.errors import BnpError
from core.safety.paths import printable

# Set before torch loads OpenMP (nothing above imports torch): idle OpenMP threads sleep
# instead of spinning. On a busy 2-core machine spinning made 2 threads ~25× slower than 1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TRUST_HELP = (
    "allow full unpickling of a checkpoint that needs it; this can run arbitrary code, so "
    "only use it for files you trust"
)


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="model file (.pth/.pt, .safetensors, TorchScript)")
    p.add_argument(
        "--arch",
        help="architecture name, when detection is ambiguous or fails: a registered one, "
        "timm/<name> for any timm model, any torchvision classification model, "
        "<arch>+groupnorm for its GroupNorm variant",
    )
    p.add_argument(
        "--model-code",
        metavar="FILE.py:CALLABLE",
        help="build the model with your own code: FILE.py is run and CALLABLE() must return "
        "the torch.nn.Module the weights load into (strictly); only for code you trust",
    )
    p.add_argument(
        "--weights",
        choices=("model", "ema"),
        help="where the file holds the model's weights and an EMA copy: which to use "
        "(default: the model's)",
    )
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "model input (default: the checkpoint's metadata, else the architecture's)",
        "Images are converted to these channels (1→3 repeats, 3→1 takes BT.601 luma) and "
        "size (bilinear, antialiased), then normalised: (x − mean) / std.",
    )
    g.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    g.add_argument("--channels", type=int, choices=(1, 3))
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean (1 or C values)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std (1 or C values)")


def _input_overrides(args) -> dict:
    changes = {
        "size": tuple(args.input_size) if args.input_size else None,
        "channels": args.channels,
        "mean": tuple(args.mean) if args.mean else None,
        "std": tuple(args.std) if args.std else None,
    }
    return {key: value for key, value in changes.items() if value is not None}


def _load(args, mapped: bool = False):
    from core.io.checkpoint import load_checkpoint

    return load_checkpoint(
        args.checkpoint,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        inputs=_input_overrides(args),
        weights=args.weights,
        model_code=args.model_code,
        mapped=mapped,
    )


# ---- bnp info ----------------------------------------------------------------------------


def warn(message: str) -> None:
    """A warning line on stderr (the report gets the same text)."""
    print(f"bnp: warning: {printable(message)}", file=sys.stderr)


def _say(text: str) -> None:
    """One line of output that quotes a file, its control characters escaped (core.safety.paths)."""
    print(printable(text))


def cmd_info(args) -> int:
    """`bnp info`: what a checkpoint holds (format, architecture, input, layers)."""
    import torch

    from core.defense.checks import model_warnings
    from core.defense.inspection import checkpoint_trigger, input_spec
    from core.model import described
    from core.model.graph import discover_layers, method_availability

    ckpt = _load(args, mapped=True)  # read, shown, and the process ends: no copy needed
    overrides = _input_overrides(args)
    spec = input_spec(ckpt, overrides)
    told = described.recall(ckpt, spec)  # a layout described before: the model is not built
    if told is None:
        warnings = model_warnings(ckpt.model, spec)
        example = torch.zeros(1, spec.channels, *spec.size)
        found = discover_layers(ckpt.model.eval(), example)
        lines = described.layer_lines(found, method_availability(ckpt.model, found))
        described.remember(ckpt, spec, lines)
    else:
        warnings, lines = told
    for message in warnings:
        warn(message)
    meta = ckpt.metadata
    # a model without usable BatchNorms still gets its file, skipped layers and methods listed
    _say(f"file          {ckpt.path}")
    _say(f"format        {ckpt.format}")
    _say(f"architecture  {meta.arch}")
    _say(f"classes       {meta.num_classes}")
    _say(f"input         {spec.channels}×{spec.size[0]}×{spec.size[1]}")
    if meta.mean is not None:
        _say(f"normalisation mean={list(meta.mean)} std={list(meta.std or [])}")
    if meta.dataset:
        _say(f"dataset       {meta.dataset}")
    if meta.attack:
        _say(f"attack        {meta.attack.get('kind', '?')}")
    if meta.target_label is not None:
        _say(f"target label  {meta.target_label}")
    trigger = checkpoint_trigger(ckpt)
    _say(f"trigger       {trigger!r}" if trigger is not None else "trigger       none stored")
    if ckpt.poisoned_test is not None:
        _say(f"poisoned test {len(ckpt.poisoned_test)} backdoored samples in the file (ASR)")
    for notice in ckpt.notices:
        _say(f"notice        {notice}")
    print()
    for line in lines:
        _say(line)
    return 0


# ---- bnp defend --------------------------------------------------------------------------


def _metrics_row(label: str, k, pruned, metrics) -> str:
    k_text = "-" if k is None else f"{k:g}"
    acc = f"{metrics.acc:6.2f}" if metrics else "     -"
    asr = f"{metrics.asr:6.2f}" if metrics and metrics.asr is not None else "     -"
    return f"{label:<8} {k_text:>9} {pruned:>7}  {acc}  {asr}"


TABLE_HEADER = f"{'method':<8} {'threshold':>9} {'pruned':>7}  {'ACC %':>6}  {'ASR %':>6}"


def _load_data(path: Path | None, role: str):
    """One data set of the command line; a folder holding both splits gives its test split to
    --test and its training split to the other roles."""
    from core.data.limited import read_images  # the isolated reader: time and memory limits
    from core.progress import ProgressBar

    if path is None:
        return None
    try:  # a bar appears once reading a folder tree takes longer than 0.25 s
        bar = ProgressBar(label=f"{role} data")
        return read_images(path, split="test" if role == "test" else None, progress=bar)
    except BnpError as exc:
        raise BnpError(f"{role} data ({path}): {exc}") from None


def _trigger_arg(args, inspection):
    from core.data.triggers import trigger_from_image

    if args.trigger is not None:
        return trigger_from_image(args.trigger, kind=args.trigger_kind, alpha=args.alpha)
    return inspection.trigger


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _in_data_flow_order(inspection, neurons: dict) -> dict:
    """Layer → channels in the order the model's forward pass reaches the layers (a union of
    methods lists its layers method by method)."""
    order = {layer.name: i for i, layer in enumerate(inspection.layers)}
    return dict(sorted(neurons.items(), key=lambda item: order.get(item[0], len(order))))


def _check_defend_args(args) -> None:
    """The argument errors of `bnp defend` that need no engine: raised before torch loads, so a
    forgotten option is said at once, not after the model has loaded (a minute when busy)."""
    if args.no_recovery and not args.auto:
        raise BnpError("--no-recovery only applies to --auto: add --auto or drop it.")
    if args.seed is not None and not args.auto:
        raise BnpError("--seed only applies to --auto (its held-out split and recovery).")
    if args.seed is not None and args.seed < 0:
        raise BnpError(f"--seed must be ≥ 0, got {args.seed}.")
    if args.out is not None and args.report is not None and _same_path(args.out, args.report):
        raise BnpError(
            f"--out and --report both name {args.out}: the report would replace the pruned "
            "model; give two different files"
        )
    if args.auto and args.method is not None:
        raise BnpError("--auto chooses the methods itself: drop --method (or drop --auto).")
    if not args.auto and args.method is None:
        raise BnpError("Choose --method ep|bnp|clp, or --auto to let bnp choose.")
    if args.auto and args.train is None:
        raise BnpError(
            "--auto needs the suspect samples: pass the suspect training set with --train DIR."
        )
    if args.auto and args.clean is None:
        raise BnpError("--auto checks the clean accuracy it costs: pass --clean DIR.")
    if args.suspects is not None and args.train is None:
        raise BnpError("Suspect samples need the suspect training set: pass --train DIR.")
    if args.poisoned is not None and args.trigger is not None:
        raise BnpError("Measure the ASR with --trigger or with --poisoned, not both.")
    if args.poisoned is not None and args.test is None:
        raise BnpError("--poisoned gives the ASR beside the ACC on --test: pass --test DIR too.")
    if args.method == "bnp" and args.clean is None:
        raise BnpError("BNP needs clean labelled samples: pass --clean DIR.")
    if args.method == "ep" and args.train is None:
        raise BnpError("EP needs samples of the suspect training set: pass --train DIR.")


def cmd_defend(args) -> int:
    """`bnp defend`: score, prune, evaluate and export with one method or --auto."""
    _check_defend_args(args)  # before the heavy imports below
    from core.defense.checks import check_threshold
    from core.defense.inspection import Inspection
    from core.evidence.repair import check_acc_budget, run_repair, write_suspects
    from core.io.export import (
        export_model,
        format_for_path,
        method_report,
        session_metadata,
        write_json,
    )
    from core.progress import ProgressBar

    check_threshold(args.threshold)
    acc_budget = check_acc_budget(args.acc_budget)
    ckpt = _load(args)
    inspection = Inspection(ckpt, device=args.device, overrides=_input_overrides(args))
    if args.method == "bnp":  # said before any statistics are computed
        from core.model.graph import method_availability

        applies, why = method_availability(inspection.model, inspection.discovery)["bnp"]
        if not applies:
            raise BnpError(f"BNP cannot run on this model: {why}.")
    warnings = list(inspection.warnings)
    for message in warnings:
        warn(message)
    spec = inspection.spec
    print(
        f"{ckpt.metadata.arch} on {inspection.device_name}, input {spec.channels}×"
        f"{spec.size[0]}×{spec.size[1]}"
        + (f", mean {spec.mean} std {spec.std}" if spec.mean else ""),
        file=sys.stderr,
    )
    # suspect samples (--train) are scored against the clean samples' statistics
    use_clean = args.method == "bnp" or args.train is not None
    clean = _load_data(args.clean, "clean") if use_clean else None
    train = _load_data(args.train, "training")
    test = _load_data(args.test, "test")
    if clean is not None or train is not None:
        inspection.collect(clean, train, progress=ProgressBar(label="statistics"))
    repair = None
    if train is not None:
        repair = run_repair(
            inspection,
            train,
            clean,
            auto=args.auto,
            acc_budget=acc_budget,
            recovery=not args.no_recovery,
            seed=args.seed or 0,
            progress=ProgressBar(label="repair") if args.auto else None,
            warn=lambda message: print(f"bnp: warning: {message}", file=sys.stderr),
        )
        print(f"target estimate: {repair.analysis.reason}", file=sys.stderr)
    model = None  # the loaded model; --auto: the repaired copy
    if args.auto:
        outcome = repair.outcome
        mask, model = outcome.mask, outcome.model
        report = {"method": "auto", "pruned": mask.count()}
        report["flagged"] = _in_data_flow_order(inspection, mask.neurons())
    else:
        mask = inspection.mask({args.method: args.threshold})
        report = method_report(inspection, args.method, args.threshold, mask)
    if repair is not None:
        report.update(repair.report(mask))
        print(report["estimate"]["describe"], file=sys.stderr)
        if args.suspects is not None:
            write_suspects(args.suspects, report["suspect_samples"])
            print(f"suspect list written to {args.suspects}", file=sys.stderr)

    before = after = None
    if test is not None:
        poisoned = _load_data(args.poisoned, "poisoned")
        if poisoned is None and args.trigger is None:
            poisoned = ckpt.poisoned_test  # backdoored test samples the file holds, if any
        trigger = None if poisoned is not None else _trigger_arg(args, inspection)
        # the real ASR: --target, else the inferred target, else the checkpoint's
        target, source = args.target, "--target"
        if target is None and repair is not None and repair.target is not None:
            target, source = repair.target, "inferred from the suspect samples"
        if target is None:
            target, source = inspection.target, "checkpoint metadata"
        if target is not None:
            print(f"real ASR measured for target {target} ({source})", file=sys.stderr)
        report["asr_target"] = {"label": target, "source": source if target is not None else None}
        if (trigger is None and poisoned is None) or target is None:
            missing = "--target LABEL" if target is None else "a trigger (--trigger FILE)"
            print(f"ASR not computed: the checkpoint does not say {missing}.", file=sys.stderr)
        attack = dict(trigger=trigger, target=target, poisoned=poisoned)
        before = inspection.evaluate(test, **attack, progress=ProgressBar(label="before"))
        after = inspection.evaluate(
            test, mask=mask, model=model, **attack, progress=ProgressBar(label="after")
        )
        report.update(acc_before=before.acc, asr_before=before.asr)
        report.update(acc_after=after.acc, asr_after=after.asr)
        for message in dict.fromkeys(before.warnings + after.warnings):
            warn(message)
            warnings.append(message)
    report["warnings"] = warnings

    print(TABLE_HEADER)
    print(_metrics_row("none", None, 0, before))
    if args.auto:
        print(_metrics_row("auto", None, mask.count(), after))
        print(f"  auto = {'; '.join(outcome.steps) or 'nothing applied'}")
        verdict, why = outcome.verdict.verdict, outcome.why
        if why.lower().startswith(f"{verdict}: "):  # said once
            why = why[len(verdict) + 2 :]
        print(f"  verdict: {verdict} — {why}")
    else:
        print(_metrics_row(args.method, args.threshold, mask.count(), after))
    for layer, channels in _in_data_flow_order(inspection, mask.neurons()).items():
        print(f"  {layer}: {channels}")

    if args.out is not None:
        fmt = args.format or format_for_path(args.out)
        metadata = session_metadata(inspection)  # input overrides, target, trigger
        if args.auto:
            metadata.extra = {**metadata.extra, "repair": list(repair.outcome.steps)}
        export_model(
            inspection.model if model is None else model,
            args.out,
            mask=mask,
            fmt=fmt,
            metadata=metadata,
            trigger=ckpt.trigger,
            source=args.checkpoint,
        )
        what = "repaired" if args.auto else "pruned"
        print(f"{what} model written to {args.out} ({fmt})", file=sys.stderr)
    if args.report is not None:
        write_json(args.report, report, source=args.checkpoint)
        print(f"report written to {args.report}", file=sys.stderr)
    return 0


# ---- parser ------------------------------------------------------------------------------


# Commands whose arguments live in their own module (imported only for that command) and
# whose run (with torch) is imported only when it runs
LAZY_COMMANDS = {
    "train": (
        "core.attack.options",
        "core.attack.train",
        "train a backdoored (or clean) classifier",
    ),
    "demo": ("core.demo", "core.demo", "run all three defenses on the bundled demo model"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `bnp` parser. The arguments of `train` and `demo` are added only for ``command``
    (all of them when None), so that `bnp -h` imports neither module."""
    parser = argparse.ArgumentParser(
        prog="bnp", description="Find and prune backdoor neurons with EP, BNP and CLP."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="what a checkpoint holds: architecture, layers, neurons")
    _add_checkpoint_args(p)
    _add_input_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "defend",
        help="score, prune and evaluate with one method, or let --auto choose",
        description="Score neurons with one method (or let --auto choose methods and thresholds "
        "from the suspect samples), prune the flagged ones, and measure ACC/ASR. "
        "Data each method needs: EP --train DIR, BNP --clean DIR, CLP none.",
    )
    _add_checkpoint_args(p)
    p.add_argument("--method", choices=("ep", "bnp", "clp"), help="one method (or --auto)")
    p.add_argument(
        "--auto",
        action="store_true",
        help="repair without the trigger: choose the pruning (methods, thresholds, "
        "union/intersection) and a recovery fine-tuning from the suspect samples (--train) "
        "and the clean samples (--clean), judged on held-out parts of them; --out writes the "
        "repaired model",
    )
    p.add_argument(
        "--acc-budget",
        type=float,
        metavar="POINTS",
        help="--auto: clean accuracy the repair may cost, in points (default 2)",
    )
    p.add_argument(
        "--no-recovery",
        action="store_true",
        help="--auto: prune only (no fine-tuning that unlearns the suspected samples)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="--auto: seed of the held-out split and of the recovery (default 0)",
    )
    p.add_argument(
        "--suspects",
        type=Path,
        metavar="FILE",
        help="write the suspect samples, most suspicious first, to FILE (.csv or .json)",
    )
    p.add_argument("--threshold", "-k", type=float, default=3.0, help="k (or u), default 3")
    p.add_argument("--clean", type=Path, help="clean labelled samples (BNP statistics)")
    p.add_argument("--train", type=Path, help="samples of the suspect training set (EP)")
    p.add_argument("--test", type=Path, help="labelled clean test set (ACC, and ASR)")
    p.add_argument("--target", type=int, help="attack target label (default: from metadata)")
    p.add_argument("--trigger", type=Path, help="trigger image (default: the checkpoint's)")
    p.add_argument(
        "--poisoned",
        type=Path,
        help="samples that already carry the trigger, for the ASR instead of a trigger",
    )
    p.add_argument(
        "--trigger-kind", default="patch", help="patch, blend, corner-blend or four-corner"
    )
    p.add_argument("--alpha", type=float, default=0.2, help="blend weight of a trigger image")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument("--out", type=Path, help="write the pruned (--auto: repaired) model here")
    p.add_argument("--format", choices=("seed", "state_dict", "safetensors", "torchscript"))
    p.add_argument("--report", type=Path, help="write a JSON report here")
    _add_input_args(p)
    p.set_defaults(func=cmd_defend)

    for name, (args_module, run_module, text) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if command is None or command == name:
            importlib.import_module(args_module).add_arguments(p)
            p.set_defaults(func=functools.partial(_run_lazily, run_module))
    return parser


def _run_lazily(module_name: str, args: argparse.Namespace) -> int:
    """Run a lazily imported command: its module's ``run(args)``."""
    return importlib.import_module(module_name).run(args)


def _command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """The `bnp` entry point: run one command; the exit status (2 for a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    from core.safety.paths import EscapingStream, forget_reads

    forget_reads()  # a new run: its outputs may not replace what it reads (core.safety.paths)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(sys.stdout), EscapingStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str]) -> int:
    try:
        args = build_parser(_command(argv) or "").parse_args(argv)
        _note_reads(args)
        # the reader child imports torch meanwhile; `bnp info` reads a plain torch.save
        # zip in-process (core.io.torch_zip) and starts the child only for other files
        if args.command == "defend":
            from core.safety.isolation import prestart

            prestart()
        return int(args.func(args) or 0)
    except BnpError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("\nbnp: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return _fail("out of memory: use fewer samples or a smaller input size")
    except OSError as exc:  # a file the engine did not expect to fail (one line, not a trace)
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the trace only when asked for
        if os.environ.get("BNP_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"bnp: internal error ({type(exc).__name__}: {first}); this is a bug in bnp — "
            "run again with BNP_DEBUG=1 for the traceback and report it",
            file=sys.stderr,
        )
        return 1


# Arguments naming what a command reads: no output of the same run may replace them
READ_ARGUMENTS = ("checkpoint", "clean", "train", "test", "poisoned", "trigger", "data")


def _note_reads(args) -> None:
    from core.safety.paths import note_read

    for name in READ_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, (str, Path)):
            note_read(value)
            if name == "checkpoint":
                note_read(Path(value).with_name(Path(value).name + ".bnp.json"))  # its sidecar


def _fail(message: str) -> int:
    """Print one error line (any line breaks in the message joined) and return exit code 2."""
    print(f"bnp: error: {printable(' '.join(message.split()))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
