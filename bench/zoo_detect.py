"""Detection over whole registries, signature level: every torchvision classification builder,
every timm model with BatchNorm, BackdoorBench's model names, a GroupNorm ResNet-18 and the
research-code models of bench/research_models.py — what `detect_architecture` makes of each
one's state_dict (1000 classes, 3 channels; the research models 10), built on `meta`.

Two steps, so that the same state_dicts are judged by two versions of the engine:
  python bench/zoo_detect.py dump shapes.json          # the state_dicts' keys and shapes
  PYTHONPATH=<checkout> python bench/zoo_detect.py judge shapes.json [--out rows.json]
`judge` prints one row per model (opened right / look-alike named / GroupNorm / refused /
wrong) and the counts; docs/models.md shows them for main before issue 21 and after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils._device import DeviceContext

ROOT = Path(__file__).resolve().parent.parent
# timm's models that compute as torchvision's of the same name (tests/test_library_models.py)
SAME = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
        "densenet121", "densenet161", "densenet169", "densenet201", "inception_v3"}  # fmt: skip


class _Meta(DeviceContext):
    """Build on meta without running initialisation (as core.model.library_models.FastMeta)."""

    def __init__(self) -> None:
        super().__init__(torch.device("meta"))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args:
            if isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return args[0]
        return super().__torch_function__(func, types, args, kwargs)


def _shapes(build) -> dict[str, list[int]] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attempt in (_Meta, None):
            try:
                if attempt is None:
                    model = build()  # builders that compute with tensors: for real
                else:
                    with attempt():
                        model = build()
                return {k: list(v.shape) for k, v in model.state_dict().items()}
            except Exception:  # noqa: BLE001 - tried for real next, else left out
                continue
    return None


def dump(out: Path, only: list[str] | None = None) -> None:
    import timm
    import torchvision

    sys.path.insert(0, str(ROOT))
    from bench import research_models
    from core.io.backdoorbench import ARCHITECTURE

    entries: dict[str, dict] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        entries[f"torchvision:{name}"] = {"expected": name, "build": ("torchvision", name)}
    from core.model.library_models import descriptions

    described = descriptions("timm")  # built once on meta: the norm layers of every model
    timm_bn = sorted(n[5:] for n, d in described.items() if d.batchnorm)
    for name in timm_bn:
        entries[f"timm:{name}"] = {"expected": f"timm/{name}", "build": ("timm", name)}
    for bb, arch in ARCHITECTURE.items():
        entries[f"backdoorbench:{bb}"] = {"expected": arch, "build": ("registry", arch)}
    for row, (project, fn) in research_models.CASES.items():
        entries[f"{project}:{row}"] = {"expected": f"--model-code {fn}", "build": ("ours", fn)}
    entries["torchvision:resnet18 with GroupNorm(32)"] = {
        "expected": "resnet18+groupnorm", "build": ("gn", "resnet18")}  # fmt: skip
    if only:  # rebuild these entries of an earlier dump, keep the others
        with gzip.open(out, "rt") as f:
            earlier = json.load(f)["entries"]
        entries = {k: (v if k in only else earlier[k]) for k, v in entries.items()}
    start = time.monotonic()
    for i, (key, entry) in enumerate(entries.items()):
        if "shapes" in entry:
            continue
        kind, name = entry["build"]
        if kind == "torchvision":
            build = lambda n=name: torchvision.models.get_model(n, weights=None)  # noqa: E731
        elif kind == "timm":  # a classifier: feature extractors (CLIP trunks) get 1000 classes
            build = lambda n=name: timm.create_model(n, num_classes=1000)  # noqa: E731
        elif kind == "registry":
            from core.model.architectures import build_model

            build = lambda n=name: build_model(n, 1000, 3)  # noqa: E731
        elif kind == "gn":
            build = lambda: torchvision.models.resnet18(  # noqa: E731
                norm_layer=lambda c: nn.GroupNorm(32, c)
            )
        else:
            build = getattr(research_models, name)
        entry["shapes"] = _shapes(build)
        print(f"\r{i + 1}/{len(entries)} {key:<60}", end="", file=sys.stderr, flush=True)
    print(f"\n{len(entries)} state_dicts in {time.monotonic() - start:.0f} s", file=sys.stderr)
    with gzip.open(out, "wt") as f:
        json.dump({"timm_batchnorm": len(timm_bn), "entries": entries}, f)


def _verdict(entry: dict, arch: str | None, notices: list[str]) -> str:
    expected = entry["expected"]
    if arch is None:
        return "refused"
    base = arch.removesuffix("_aux").removesuffix("_noaux")
    if arch == expected or base == expected.removesuffix("_aux"):
        return "opened right"
    if expected.startswith("timm/") and base == expected[5:] and base in SAME:
        return "opened right"  # timm's ResNets compute as torchvision's
    if expected == "googlenet_aux" and arch == "googlenet_aux":
        return "opened right"
    text = " ".join(notices)
    if expected in text:
        return "look-alike chosen, the right one named (--arch)"
    return "wrong"


def judge(path: Path, out: Path | None) -> None:
    sys.path.insert(0, str(Path.cwd()))
    from core.errors import BnpError
    from core.model.detect import detect_architecture

    with gzip.open(path, "rt") as f:
        data = json.load(f)
    rows, counts = {}, {}
    start = time.monotonic()
    for key, entry in data["entries"].items():
        group = key.split(":")[0]
        if entry["shapes"] is None:
            continue
        state_dict = {k: torch.empty(s, device="meta") for k, s in entry["shapes"].items()}
        arch, notices, why = None, [], ""
        try:
            detection = detect_architecture(state_dict)
            arch, notices = detection.arch, list(getattr(detection, "notices", ()))
        except BnpError as e:
            why = str(e).splitlines()[0][:100]
        verdict = _verdict(entry, arch, notices)
        rows[key] = {"verdict": verdict, "detected": arch, "why": why, "notices": notices}
        counts.setdefault(group, Counter())[verdict] += 1
        print(f"{key:<50} {verdict:<48} {arch or why}", flush=True)
    print(f"\n{len(rows)} state_dicts judged in {time.monotonic() - start:.0f} s; "
          f"timm models with BatchNorm: {data['timm_batchnorm']}")  # fmt: skip
    for group, counter in counts.items():
        print(f"{group:<18} " + ", ".join(f"{v} {k}" for k, v in counter.most_common()))
    if out:
        out.write_text(json.dumps({"rows": rows, "counts": counts}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("dump", "judge"))
    parser.add_argument("shapes", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", help="dump: rebuild only these entries")
    args = parser.parse_args()
    if args.step == "dump":
        dump(args.shapes, args.only)
    else:
        judge(args.shapes, args.out)


if __name__ == "__main__":
    main()
