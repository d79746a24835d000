"""Detection of an architecture from a state_dict: key signatures, shapes compared on the meta
device, look-alikes and GroupNorm notices."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from torch import Tensor

from core.errors import ArchitectureMismatch, BnpError
from core.model import library_models
from core.model.architectures import (
    ARCHITECTURES,
    GROUPNORM_TAIL,
    HAND_REGISTERED,
    STAT_SUFFIXES,
    Detection,
    _build_stem_and_head,
    _known,
    _meta_template,
    _two_keys,
    _valid_shapes,
)
from core.model.described import memo
from core.model.meta import _SHAPES_10_3


@lru_cache(maxsize=64)
def _expected_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the architecture and its shape, from a build on `meta`."""
    if (num_classes, in_channels) == (10, 3) and arch in _SHAPES_10_3:
        return _SHAPES_10_3[arch]

    def build() -> dict[str, list[int]]:
        model = _meta_template(arch, num_classes, in_channels)
        return {key: list(value.shape) for key, value in model.state_dict().items()}

    shapes = memo("shapes", (arch, num_classes, in_channels), build, _valid_shapes)  # on disk
    return {key: tuple(shape) for key, shape in shapes.items()}


@cache
def _stem_and_head(arch: str) -> tuple[str | None, str | None]:
    """Weight keys of the first convolution and of the classifier (the last Linear layer,
    else the last convolution, as in heads made of a 1×1 conv) of an architecture."""
    described = None if arch in HAND_REGISTERED else library_models.find(arch)
    if described is not None and described.heads:
        return described.stem or None, f"{described.heads[0]}.weight"
    stem, head = memo("stem-head", (arch,), lambda: list(_build_stem_and_head(arch)), _two_keys)
    return stem, head


# ---- signatures ---------------------------------------------------------------------------

SIGNATURE_FILE = Path(__file__).parent / "nets" / "signatures.json"


def _parameter_keys(keys) -> list[str]:
    return sorted(k for k in keys if not k.endswith(STAT_SUFFIXES))


def key_signature(keys) -> str:
    """Hash of the key names that are not BatchNorm statistics (which a file may lack)."""
    text = "\n".join(_parameter_keys(keys))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _library_versions() -> dict[str, str]:
    """Versions of the library whose builders the hand registry's signatures depend on."""
    return {"torchvision": importlib.metadata.version("torchvision").split("+")[0]}


def _library(arch: str) -> str:
    return "torchvision"


def _user_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnp-inspector" / "signatures.json"


def _read_signatures(path: Path, versions: dict[str, str]) -> dict[str, tuple[int, str]]:
    """{arch: (number of parameter keys, signature)} from a file, for the architectures whose
    library (torchvision or timm) has the version the file was written with."""
    try:
        data = json.loads(path.read_text())
        written = data["versions"]
        return {
            arch: (int(n), str(sig))
            for arch, (n, sig) in data["archs"].items()
            if arch in HAND_REGISTERED
            and written.get(_library(arch)) == versions.get(_library(arch))
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a missing or damaged cache is recomputed


def compute_signature(arch: str) -> tuple[int, str]:
    """(number of parameter keys, key signature) of one architecture, from a meta build."""
    keys = _expected_shapes(arch, 10, 3).keys()
    return len(_parameter_keys(keys)), key_signature(keys)


@cache
def signatures() -> dict[str, tuple[int, str]]:
    """Signatures of every architecture registered by hand: shipped, cached, or computed once
    (the libraries' models: `core.model.library_models`)."""
    versions = _library_versions()
    known = _read_signatures(SIGNATURE_FILE, versions)
    if not set(HAND_REGISTERED) <= set(known):
        known.update(_read_signatures(_user_cache_file(), versions))
    missing = [arch for arch in HAND_REGISTERED if arch not in known]
    if missing:
        known.update({arch: compute_signature(arch) for arch in missing})
        write_signatures(_user_cache_file(), known, versions, quiet=True)
    return {arch: known[arch] for arch in HAND_REGISTERED}


def write_signatures(
    path: Path,
    sigs: Mapping[str, tuple[int, str]] | None = None,
    versions: dict[str, str] | None = None,
    *,
    quiet: bool = False,
) -> None:
    """Write signatures (all registered ones by default) with the library versions they hold for."""
    if sigs is None:
        sigs = {arch: compute_signature(arch) for arch in HAND_REGISTERED}
    data = {"versions": versions or _library_versions(), "archs": dict(sigs)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        if not quiet:
            raise


# ---- comparing a state_dict with a candidate ------------------------------------------------


@dataclass
class _Fit:
    """How one candidate compares with a state_dict."""

    arch: str
    num_classes: int
    in_channels: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    no_stats: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    def describe(self, examples: int = 3) -> str:
        def some(items: list[str]) -> str:
            more = f", … (+{len(items) - examples})" if len(items) > examples else ""
            return ", ".join(items[:examples]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {some(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {some(self.unexpected)}")
        if self.shapes:
            shown = [
                f"{key} (file {list(got)}, model {list(want)})" for key, got, want in self.shapes
            ]
            parts.append(f"{len(self.shapes)} shape mismatch(es): {some(shown)}")
        head = f"{self.arch} ({self.num_classes} classes, {self.in_channels} input channels)"
        return f"{head}: " + "; ".join(parts)


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _file_classes_and_channels(state_dict: Mapping[str, Tensor]) -> tuple[int, int]:
    """The class count and input channels a file shows without knowing its architecture:
    its last 2-D weight's rows, its first 4-D weight's input channels."""
    matrices = [v for k, v in state_dict.items() if isinstance(v, Tensor) and v.dim() == 2]
    kernels = [v for v in state_dict.values() if isinstance(v, Tensor) and v.dim() == 4]
    return (
        int(matrices[-1].shape[0]) if matrices else 10,
        int(kernels[0].shape[1]) if kernels else 3,
    )


def _compare(state_dict: Mapping[str, Tensor], arch: str) -> _Fit:
    stem, head = _stem_and_head(arch)
    head_shape = _shape(state_dict.get(head)) if head else None
    stem_shape = _shape(state_dict.get(stem)) if stem else None
    file_classes, file_channels = _file_classes_and_channels(state_dict)
    num_classes = head_shape[0] if head_shape and len(head_shape) in (2, 4) else file_classes
    in_channels = stem_shape[1] if stem_shape and len(stem_shape) == 4 else file_channels
    if stem and in_channels not in (1, 3):  # a space-to-depth stem (TResNet) sees C·k² channels
        base = _expected_shapes(arch, 10, 3).get(stem)
        factor = base[1] // 3 if base and len(base) == 4 and base[1] % 3 == 0 else 1
        if factor > 1 and in_channels % factor == 0:
            in_channels //= factor
    expected = _expected_shapes(arch, num_classes, in_channels)
    fit = _Fit(arch, num_classes, in_channels)
    missing_stats: dict[str, set[str]] = {}
    for key, want in expected.items():
        if key not in state_dict:
            module, _, buffer = key.rpartition(".")
            if key.endswith(STAT_SUFFIXES):
                # strict loading accepts a missing BatchNorm counter in a state_dict without
                # version metadata (BatchNorm fills in 0), as in checkpoints from before 0.4.1
                missing_stats.setdefault(module, set()).add(buffer)
            else:
                fit.missing.append(key)
        elif (got := _shape(state_dict[key])) != want:
            fit.shapes.append((key, got if got is not None else (), want))
    fit.unexpected = [key for key in state_dict if key not in expected]
    for module, buffers in missing_stats.items():
        if {"running_mean", "running_var"} <= buffers:
            fit.no_stats.append(module)  # a BatchNorm saved without running statistics
        elif buffers != {"num_batches_tracked"}:
            fit.missing.extend(f"{module}.{b}" for b in sorted(buffers))
    return fit


def _detection(fit: _Fit) -> Detection:
    return Detection(fit.arch, fit.num_classes, fit.in_channels, tuple(fit.no_stats))


def detect_architecture(state_dict: Mapping[str, Tensor], arch: str | None = None) -> Detection:
    """Find the architecture whose keys and shapes fit the state_dict exactly: among those
    registered by hand and every model of the libraries' registries (`core.model.library_models`).

    When several fit (same tensors, different forward), the one keeping running statistics
    exactly where the file has them wins, then the hand-registered, torchvision's, then the
    shortest name; the notice names the others and `--arch`. A file without any running
    statistics is read as GroupNorm where the architecture allows (`<arch>+groupnorm`)."""
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise ArchitectureMismatch(f"Unknown architecture {arch!r}. {_known()}")
        fit = _compare(state_dict, arch)
        if fit.mismatches:
            raise ArchitectureMismatch(
                f"The weights do not fit the architecture {arch!r}: {fit.describe(5)}."
            )
        return _with_norm_notice(_detection(fit))

    wanted = key_signature(state_dict.keys())
    sigs = {name: sig for name, sig in signatures().items() if ARCHITECTURES[name].detect}
    fits = [
        _detection(fit)
        for name, (_, sig) in sigs.items()
        if sig == wanted and not (fit := _compare(state_dict, name)).mismatches
    ]
    quick, others = library_models.quick_fits(state_dict, excluded=HAND_REGISTERED)
    for q in quick:
        if q.in_channels in (1, 3):
            fits.append(Detection(q.name, q.num_classes, q.in_channels))
        elif not (fit := _compare(state_dict, q.name)).mismatches:  # e.g. a TResNet stem
            fits.append(_detection(fit))
    if not any(not f.no_running_stats for f in fits):  # compare the rest for real (builds)
        for name in others:
            if not (fit := _compare(state_dict, name)).mismatches:
                fits.append(_detection(fit))
    if fits:
        return _choose(state_dict, fits)
    # no fit: compare for real with the candidates closest in number of keys
    n = len(_parameter_keys(state_dict.keys()))
    nearest = sorted(sigs, key=lambda name: abs(sigs[name][0] - n))[:6]
    described = [d for lib in library_models.LIBRARIES
                 for d in library_models.descriptions(lib).values()]  # fmt: skip
    nearest += [d.name for d in sorted(described, key=lambda d: abs(d.n_keys - n))[:3]]
    closest = sorted((_compare(state_dict, name) for name in nearest), key=lambda f: f.mismatches)
    lines = "\n".join(f"  - {fit.describe()}" for fit in closest[:3])
    raise ArchitectureMismatch(
        f"The weights ({len(state_dict)} tensors) do not fit any known architecture. "
        f"Closest candidates:\n{lines}\n{_known()}"
    )


# the timm models that compute exactly as torchvision's registered here (same weights, same
# outputs: checked in tests/test_library_models.py and by hand for each): no look-alikes
SAME_AS_TORCHVISION = {
    **{name: f"timm/{name}" for name in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
        "densenet121", "densenet161", "densenet169", "densenet201",
    )},
    "inception_v3_noaux": "timm/inception_v3",
}  # fmt: skip


def _preference(d: Detection) -> tuple:
    name = d.arch
    where = 0 if name in HAND_REGISTERED else 2 if name.startswith("timm/") else 1
    base = name.removeprefix("timm/")
    return (bool(d.no_running_stats), where, base.startswith("tf_"), len(name), name)


def _choose(state_dict: Mapping[str, Tensor], fits: list[Detection]) -> Detection:
    """The fit to use and a notice naming the others (see detect_architecture)."""
    file_stats = any(k.endswith(".running_mean") for k in state_dict)
    if not file_stats and not any(not f.no_running_stats for f in fits):
        # no running statistics at all: a GroupNorm model as much as a BatchNorm one without
        best = min(fits, key=_preference)
        variant = best.arch + GROUPNORM_TAIL
        try:
            gn = _compare(state_dict, variant) if not best.arch.endswith(GROUPNORM_TAIL) else None
        except BnpError:  # its channels do not divide into groups
            gn = None
        if gn is not None and not gn.mismatches:
            fits = [*fits, _detection(gn)]
    fits = sorted(fits, key=_preference)
    chosen = fits[0]
    same = {SAME_AS_TORCHVISION.get(chosen.arch)}
    others = [f for f in fits[1:] if f.arch not in same]
    notices = list(_with_norm_notice(chosen).notices)
    if others:

        def label(d: Detection) -> str:
            return d.arch + (
                " (BatchNorm without running statistics)" if d.no_running_stats else ""
            )

        shown = ", ".join(label(d) for d in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        verb = "fits" if len(others) == 1 else "fit"
        notices.insert(0, LOOKALIKE_NOTICE.format(
            n=len(others) + 1, chosen=label(chosen), others=shown + more, verb=verb))  # fmt: skip
    return Detection(chosen.arch, chosen.num_classes, chosen.in_channels,
                     chosen.no_running_stats, tuple(notices))  # fmt: skip


LOOKALIKE_NOTICE = (
    "The weights fit {n} architectures with the same tensors: {chosen} is used; {others} "
    "{verb} too. They may compute differently (padding, normalisation), which the weights do not "
    "show: if the file's model is another, open it with --arch NAME (the window: Open With "
    "Architecture…)."
)
GROUPNORM_LAYERS_NOTICE = (
    "{arch} normalises with GroupNorm{how}: a GroupNorm keeps no running statistics and "
    "normalises each sample on its own, so EP, BNP and CLP do not apply to those layers."
)


def _with_norm_notice(d: Detection) -> Detection:
    """The detection with a notice when its model normalises with GroupNorm."""
    if d.arch.endswith(GROUPNORM_TAIL):
        base = d.arch[: -len(GROUPNORM_TAIL)]
        how = (
            f" in place of every BatchNorm of {base} (32 groups, the usual choice: the number "
            "of groups is not in the weights)"
        )
    else:
        described = None if d.arch in HAND_REGISTERED else library_models.find(d.arch)
        if described is None or not described.groupnorm:
            return d
        how = f" ({described.groupnorm} layers)"
    notice = GROUPNORM_LAYERS_NOTICE.format(arch=d.arch, how=how)
    return Detection(d.arch, d.num_classes, d.in_channels, d.no_running_stats,
                     (*d.notices, notice))  # fmt: skip


def main() -> None:
    """`python -m core.model.detect`: rewrite the shipped signature file."""
    write_signatures(SIGNATURE_FILE)
    print(f"{len(HAND_REGISTERED)} signatures written to {SIGNATURE_FILE}")


if __name__ == "__main__":
    main()
