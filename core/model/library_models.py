"""Candidates from the libraries' own registries: every torchvision classification builder and
every timm model name, described once by a build on the `meta` device and cached.

A description holds what detection compares, so that a file is matched without importing the
library or building anything: the hash of the parameter key names (`key_signature`), the hash
of their shapes with the class count and input channels left open (`shape_sig`), the hash of
the BatchNorm modules that keep running statistics (`stats_sig`), the keys the class count and
channels are read from, the native input size and the norm layers the model has.

Descriptions are keyed by the library's version: the ones for the pinned versions ship in
`core/model/nets/library_signatures.json` (written by `python -m core.model.library_models`); any
other version is described once, on first use, into the user's cache folder
(`$XDG_CACHE_HOME/bnp-inspector/library-<lib>-<version>.json`), so a new timm release needs no
change here. Nothing is ever written into the package at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._device import DeviceContext

STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
SHIPPED_FILE = Path(__file__).parent / "nets" / "library_signatures.json"
LIBRARIES = ("torchvision", "timm")
TIMM_PREFIX = "timm/"
FORMAT = 1  # bump when the description changes


@dataclass(frozen=True)
class Described:
    """One library model as detection sees it (see the module's docstring)."""

    name: str  # the registry name: "maxvit_t", "timm/resnet50"
    n_keys: int
    key_sig: str
    shape_sig: str
    stats_sig: str
    n_stats: int  # BatchNorm modules with running statistics
    stem: str  # weight key whose dim 1 is the input channels ("" when none)
    heads: tuple[str, ...]  # classifier modules: weight/bias dim 0 is the class count
    input_size: int
    batchnorm: int  # BatchNorm layers (timm's BatchNormAct2d among them)
    groupnorm: int  # GroupNorm layers (timm's GroupNormAct among them)

    def to_json(self) -> list:
        """The description as one compact JSON row (the shipped file's layout)."""
        return [
            *(self.n_keys, self.key_sig, self.shape_sig, self.stats_sig, self.n_stats),
            *(self.stem, list(self.heads), self.input_size, self.batchnorm, self.groupnorm),
        ]

    @classmethod
    def from_json(cls, name: str, row: list) -> Described:
        """A description read back from its JSON row."""
        n, key, shape, stats, n_stats, stem, heads, size, bn, gn = row
        return cls(name, int(n), str(key), str(shape), str(stats), int(n_stats), str(stem),
                   tuple(str(h) for h in heads), int(size), int(bn), int(gn))  # fmt: skip


# ---- hashing what a state_dict holds ------------------------------------------------------


def _hash(lines: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]


def parameter_keys(keys: Iterable[str]) -> list[str]:
    """The key names that are not BatchNorm statistics, sorted."""
    return sorted(k for k in keys if not k.endswith(STAT_SUFFIXES))


def key_signature(keys: Iterable[str]) -> str:
    """Hash of the key names that are not BatchNorm statistics (which a file may lack)."""
    return _hash(parameter_keys(keys))


def stats_signature(keys: Iterable[str]) -> tuple[str, int]:
    """Hash and number of the modules that keep a running mean."""
    modules = sorted(k[: -len(".running_mean")] for k in keys if k.endswith(".running_mean"))
    return _hash(modules), len(modules)


def shape_signature(
    shapes: Mapping[str, tuple[int, ...]], stem: str, heads: Iterable[str]
) -> str | None:
    """Hash of every parameter key's shape, the stem's dim 1 and the heads' dim 0 left open;
    None when a stem or head shape is not there to be left open."""
    open_dims: dict[str, int] = {}
    if stem:
        open_dims[stem] = 1
    for head in heads:
        open_dims[f"{head}.weight"] = 0
        open_dims[f"{head}.bias"] = 0
    lines = []
    for key in parameter_keys(shapes):
        shape = list(shapes[key])
        dim = open_dims.get(key)
        if dim is not None:
            if len(shape) <= dim:
                return None
            shape[dim] = -1
        lines.append(f"{key}:{shape}")
    return _hash(lines)


# ---- building on `meta` quickly -----------------------------------------------------------


class FastMeta(DeviceContext):
    """Build on `meta`, skipping in-place initialisation (trunc_normal_, uniform_, clamp_...)
    of meta tensors: shapes are all a description needs, and meta kernels of those operations
    run through Python references (a ConvNeXt took 0.75 s, 0.08 s without)."""

    def __init__(self) -> None:
        super().__init__(torch.device("meta"))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (
            name.endswith("_")
            and not name.endswith("__")
            and args
            and isinstance(args[0], Tensor)
            and args[0].is_meta
        ):
            return args[0]
        return super().__torch_function__(func, types, args, kwargs)


def timm_available() -> bool:
    """Whether timm is installed (and not switched off by BNP_NO_TIMM)."""
    if os.environ.get("BNP_NO_TIMM"):
        return False
    return importlib.util.find_spec("timm") is not None


def library_version(library: str) -> str | None:
    """The installed version of a library (local build suffix dropped); None if absent."""
    if library == "timm" and not timm_available():
        return None
    try:
        return importlib.metadata.version(library).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def library_names(library: str) -> list[str]:
    """The registry names a library offers (without our prefix)."""
    if library == "timm":
        import timm

        return list(timm.list_models())
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_library_model(
    library: str, name: str, num_classes: int = 10, in_channels: int = 3
) -> nn.Module:
    """A freshly initialised model from the library's own builder (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "timm":
            import timm

            return timm.create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_channels
            )
        import torchvision

        from core.model.meta import replace_stem

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return replace_stem(model, in_channels)


def _norm_counts(model: nn.Module) -> tuple[int, int]:
    bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    gn = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    return bn, gn


def _stem_and_heads(library: str, name: str, model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """The first convolution's weight key and the classifier modules."""
    modules = dict(model.named_modules())
    if library == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        first, classifier = cfg.get("first_conv"), cfg.get("classifier")
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        heads = tuple(h for h in heads if isinstance(modules.get(h), (nn.Linear, nn.Conv2d)))
        stem = f"{first}.weight" if isinstance(first, str) and first in modules else ""
        if stem and heads:
            return stem, heads
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else (convs[-1] if convs else None)
    return (f"{convs[0]}.weight" if convs else ""), ((head,) if head else ())


def _input_size(library: str, model: nn.Module) -> int:
    if library == "timm":
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if isinstance(size, (list, tuple)) and len(size) == 3:
            return int(size[-1])
        return 224
    side = getattr(model, "image_size", None) or (
        299 if "Inception3" in type(model).__name__ else 224
    )
    return int(side[0] if isinstance(side, (list, tuple)) else side)


def describe(library: str, name: str) -> Described | None:
    """Build once on `meta` (10 classes, 3 channels) and describe; None when it cannot be
    built (a builder that needs a download or arguments we do not give)."""
    try:
        with FastMeta():
            model = build_library_model(library, name)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors
        from core.model.meta import _empty_weights

        try:
            with _empty_weights():
                model = build_library_model(library, name)
        except Exception:  # noqa: BLE001 - a model we cannot build is no candidate
            return None
    except Exception:  # noqa: BLE001 - same
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stem, heads = _stem_and_heads(library, name, model)
    shape_sig = shape_signature(shapes, stem, heads)
    if shape_sig is None:
        return None
    stats, n_stats = stats_signature(shapes)
    registry = TIMM_PREFIX + name if library == "timm" else name
    return Described(
        registry, len(parameter_keys(shapes)), key_signature(shapes), shape_sig, stats, n_stats,
        stem, heads, _input_size(library, model), *_norm_counts(model),
    )  # fmt: skip


# ---- the cache ----------------------------------------------------------------------------


def user_cache_file(library: str, version: str) -> Path:
    """Where descriptions of a library version not shipped with the package are cached."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnp-inspector" / f"library-{library}-{version}.json"


def _read(path: Path, library: str, version: str) -> dict[str, Described] | None:
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "libraries" in data:
            data = data["libraries"][library]
        if data.get("version") != version or data.get("format") != FORMAT:
            return None
        return {name: Described.from_json(name, row) for name, row in data["archs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: described again


def _library_json(version: str, found: Mapping[str, Described]) -> dict:
    archs = {name: d.to_json() for name, d in sorted(found.items())}
    return {"version": version, "format": FORMAT, "archs": archs}


def compute(
    library: str,
    names: Iterable[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Described]:
    """Describe every model of the library (or ``names``) by building each on `meta`."""
    names = list(library_names(library) if names is None else names)
    found = {}
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), name)
        described = describe(library, name)
        if described is not None:
            found[described.name] = described
    return found


@cache
def descriptions(library: str) -> dict[str, Described]:
    """Every model of an installed library, described: shipped, cached, or computed once."""
    version = library_version(library)
    if version is None:
        return {}
    known = _read(SHIPPED_FILE, library, version)
    if known is not None:
        return known
    cache_file = user_cache_file(library, version)
    known = _read(cache_file, library, version)
    if known is not None:
        return known
    print(
        f"bnp: describing every {library} {version} model once (cached in {cache_file})…",
        file=sys.stderr,
    )
    start = time.monotonic()
    known = compute(library)
    _write(cache_file, {**_library_json(version, known)})
    print(f"bnp: {len(known)} {library} models described in {time.monotonic() - start:.0f} s",
          file=sys.stderr)  # fmt: skip
    return known


def known_descriptions(library: str) -> dict[str, Described]:
    """The descriptions already shipped or cached, never computed (for a list in the window)."""
    version = library_version(library)
    if version is None:
        return {}
    for path in (SHIPPED_FILE, user_cache_file(library, version)):
        known = _read(path, library, version)
        if known is not None:
            return known
    return {}


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache folder: described again next time


def library_of(name: str) -> str:
    """ "timm" for a `timm/` name, else "torchvision"."""
    return "timm" if name.startswith(TIMM_PREFIX) else "torchvision"


def find(name: str) -> Described | None:
    """The description of a library model by its registry name, if its library has it."""
    return descriptions(library_of(name)).get(name)


# ---- matching a state_dict without building -------------------------------------------------


@dataclass(frozen=True)
class QuickFit:
    """A library model whose description fits a file, before any model is built."""

    name: str
    num_classes: int
    in_channels: int
    exact_stats: bool  # the file keeps running statistics exactly where the model does


def quick_fits(
    state_dict: Mapping[str, Tensor], excluded: Iterable[str] = ()
) -> tuple[list[QuickFit], list[str]]:
    """(library models whose keys and shapes fit, those whose key names fit but that need a
    full comparison: the file lacks running statistics, or a shape outside stem and head
    depends on the class count). Nothing is imported or built."""
    wanted = key_signature(state_dict.keys())
    stats, _ = stats_signature(state_dict.keys())
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, Tensor)}
    skip = set(excluded)
    fits, others = [], []
    for library in LIBRARIES:
        for name, d in descriptions(library).items():
            if d.key_sig != wanted or name in skip:
                continue
            nc = _dim(shapes.get(f"{d.heads[0]}.weight") if d.heads else None, 0, 10)
            ic = _dim(shapes.get(d.stem), 1, 3)
            if d.stats_sig == stats and shape_signature(shapes, d.stem, d.heads) == d.shape_sig:
                fits.append(QuickFit(name, nc, ic, True))
            else:
                others.append(name)
    return fits, others


def _dim(shape: tuple[int, ...] | None, dim: int, default: int) -> int:
    return shape[dim] if shape is not None and len(shape) > dim else default


def main() -> None:
    """`python -m core.model.library_models`: describe the installed libraries into the shipped
    file."""
    data = {"libraries": {}}
    for library in LIBRARIES:
        version = library_version(library)
        if version is None:
            print(f"{library} is not installed: left out", file=sys.stderr)
            continue
        start = time.monotonic()
        found = compute(library, progress=lambda i, n, name: print(
            f"\r{i + 1}/{n} {name:<50}", end="", file=sys.stderr, flush=True))  # fmt: skip
        print(f"\n{library} {version}: {len(found)} models described in "
              f"{time.monotonic() - start:.0f} s", file=sys.stderr)  # fmt: skip
        data["libraries"][library] = _library_json(version, found)
    SHIPPED_FILE.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
    print(f"written to {SHIPPED_FILE}")


if __name__ == "__main__":
    main()
