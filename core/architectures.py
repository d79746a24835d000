"""Registry of the architectures the engine knows, and detection of one from a state_dict.

Architectures come from the libraries made for them: every torchvision classification model
with BatchNorm (built by torchvision's own builders), BackdoorBench's model names, our CIFAR
nets, and, when the optional `timm` is installed, a set of popular timm models.

Detection compares key names first, shapes second, and materialises nothing: each candidate's
key names are a *signature* (a hash of its parameter key names) computed once by a build on
the `meta` device and cached on disk (`core/models/signatures.json` ships them for the pinned
library versions; other versions are computed once and kept in the user's cache folder).
Only candidates whose signature equals the file's are built on `meta` again, with the class
count and input channels read off the weights, and compared shape by shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from core.errors import ArchitectureMismatch, BnpError
from core.models import (
    cifar_resnet18,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet56,
    preact_resnet18,
    vgg16_bn_cifar,
)
from core.models.backdoorbench_nets import backdoorbench_preactresnet18, backdoorbench_vit_b_16

Builder = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> model
# BatchNorm buffers a file may lack (SPEC §1: no running statistics) without failing a fit.
STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass(frozen=True)
class ArchSpec:
    """One known architecture: its name, family, natural input side and builder.

    `detect` is False for variants whose weights cannot be told apart from another entry's
    (e.g. GoogLeNet with torchvision's `transform_input`): they are chosen by name only.
    """

    name: str
    family: str
    input_size: int
    build: Builder
    detect: bool = True
    note: str = ""


@dataclass
class Detection:
    """The architecture, class count and input channels that fit a state_dict.

    `no_running_stats` names the BatchNorm layers whose running_mean/running_var the file
    lacks; `build_detected` builds them without running statistics (SPEC §1).
    """

    arch: str
    num_classes: int
    in_channels: int
    no_running_stats: tuple[str, ...] = ()


# ---- builders -----------------------------------------------------------------------------


def replace_stem(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the model's first convolution `in_channels` inputs (same kernel, stride, padding)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            return model
    return model


def _torchvision(builder: str, **kwargs) -> Builder:
    """A registry builder calling torchvision's own builder (random weights, no download)."""

    def build(num_classes: int, in_channels: int) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
            model = torchvision.models.get_model(
                builder, weights=None, num_classes=num_classes, **kwargs
            )
        if type(model) is torchvision.models.MNASNet:
            model.__class__ = VersionedMNASNet
        return replace_stem(model, in_channels)

    build.__qualname__ = f"torchvision.models.{builder}"
    return build


class VersionedMNASNet(torchvision.models.MNASNet):
    """torchvision's MNASNet, loading a state_dict without torch's version metadata
    (safetensors files, any dict rebuilt from another) as the current layout (version 2);
    torchvision's own class refuses it."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
        if local_metadata.get("version") is None:
            local_metadata = {**local_metadata, "version": 2}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def _timm(name: str) -> Builder:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        import timm

        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )

    build.__qualname__ = f"timm.{name}"
    return build


# torchvision's classification models with BatchNorm, by family
TORCHVISION_BN = {
    "torchvision_resnet": [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    ],
    "torchvision_vgg": ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"],
    "torchvision_mobilenet": ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
    "torchvision_densenet": ["densenet121", "densenet161", "densenet169", "densenet201"],
    "torchvision_efficientnet": [
        *(f"efficientnet_b{i}" for i in range(8)),
        "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    ],
    "torchvision_shufflenet": [
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    ],
    "torchvision_regnet": [
        f"regnet_{kind}_{size}"
        for kind in ("x", "y")
        for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")
    ] + ["regnet_y_128gf"],
    "torchvision_mnasnet": ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"],
}  # fmt: skip

# timm models registered when timm is installed (`pip install bnp-inspector[timm]`)
TIMM_MODELS = (
    "resnet50d", "seresnet50", "resnetv2_50", "efficientnet_b0", "tf_efficientnet_b0",
    "mobilenetv3_large_100", "mobilenetv2_100", "regnety_016", "densenet121", "dla34",
    "cspresnet50", "rexnet_100", "mixnet_s", "ghostnet_100", "hrnet_w18_small",
)  # fmt: skip

# timm models whose state_dict keys and shapes equal another entry's, though they compute
# differently (TensorFlow "same" padding) or come from another implementation
TIMM_SAME_KEYS = {"tf_efficientnet_b0": "timm/efficientnet_b0", "densenet121": "densenet121"}

TRANSFORM_NOTE = (
    "transform_input cannot be seen in the weights: torchvision's ImageNet weights need the "
    "'{name}_transform_input' variant (--arch)"
)


def _registry() -> Iterator[ArchSpec]:
    yield ArchSpec("cifar_resnet18", "cifar_resnet", 32, cifar_resnet18)
    yield ArchSpec("cifar_resnet20", "cifar_resnet", 32, cifar_resnet20)
    yield ArchSpec("cifar_resnet32", "cifar_resnet", 32, cifar_resnet32)
    yield ArchSpec("cifar_resnet56", "cifar_resnet", 32, cifar_resnet56)
    yield ArchSpec("preact_resnet18", "preact_resnet", 32, preact_resnet18)
    yield ArchSpec("vgg16_bn_cifar", "vgg", 32, vgg16_bn_cifar)
    yield ArchSpec("preactresnet18", "backdoorbench", 32, backdoorbench_preactresnet18)
    for family, names in TORCHVISION_BN.items():
        for name in names:
            yield ArchSpec(name, family, 224, _torchvision(name))
    # GoogLeNet / Inception v3: with and without auxiliary heads (their keys differ); the
    # transform_input variants have the same keys, so they are picked by name only
    for name, size, aux_default in (("googlenet", 224, False), ("inception_v3", 299, True)):
        family = f"torchvision_{name.split('_')[0]}"
        note = TRANSFORM_NOTE.format(name=name)
        yield ArchSpec(name, family, size, _torchvision(name, aux_logits=aux_default), note=note)
        other = "_noaux" if aux_default else "_aux"
        yield ArchSpec(
            name + other, family, size, _torchvision(name, aux_logits=not aux_default), note=note
        )
        yield ArchSpec(
            f"{name}_transform_input",
            family,
            size,
            _torchvision(name, aux_logits=aux_default, transform_input=True),
            detect=False,
        )
    # models without BatchNorm that BackdoorBench trains: they load; no method applies
    yield ArchSpec("convnext_tiny", "torchvision_convnext", 224, _torchvision("convnext_tiny"))
    yield ArchSpec("bb_vit_b_16", "backdoorbench", 224, backdoorbench_vit_b_16)
    if _timm_available():
        for name in TIMM_MODELS:
            same = TIMM_SAME_KEYS.get(name)
            note = f"same keys as {same}: chosen by name (--arch) only" if same else ""
            yield ArchSpec(f"timm/{name}", "timm", 224, _timm(name), not same, note)


def _timm_available() -> bool:
    if os.environ.get("BNP_NO_TIMM"):
        return False
    return importlib.util.find_spec("timm") is not None


ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in _registry()}


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise BnpError(f"Unknown architecture {arch!r}. {_known()}") from None


def _known() -> str:
    return f"Known architectures ({len(ARCHITECTURES)}): {', '.join(ARCHITECTURES)}."


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model of a registered architecture."""
    if num_classes < 1 or in_channels < 1:
        raise BnpError(
            f"Cannot build {arch}: need at least one class and one input channel "
            f"(got num_classes={num_classes}, in_channels={in_channels})."
        )
    return _spec(arch).build(num_classes, in_channels)


def build_detected(detection: Detection) -> nn.Module:
    """Build the detected architecture; BatchNorms the file has no statistics for get none."""
    model = build_model(detection.arch, detection.num_classes, detection.in_channels)
    drop_running_stats(model, detection.no_running_stats)
    return model


def running_stats_notice(detection: Detection) -> list[str]:
    """The notice a file without BatchNorm running statistics deserves (empty otherwise)."""
    n = len(detection.no_running_stats)
    if not n:
        return []
    return [
        f"{n} BatchNorm layer(s) carry no running statistics in the file: they normalise with "
        "batch statistics, as the file defines them; BNP is unavailable there (it compares "
        "against those statistics) and CLP uses v_c = 1; EP and evaluation run as defined."
    ]


def drop_running_stats(model: nn.Module, names: tuple[str, ...] | list[str]) -> None:
    """Make the named BatchNorms normalise with batch statistics, as a model saved with
    `track_running_stats=False` does (its state_dict has no running buffers)."""
    for name in names:
        bn = model.get_submodule(name)
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.num_batches_tracked = None


# ---- building on `meta` -------------------------------------------------------------------


_META_LOCK = threading.Lock()
_META_THREAD = threading.local()
_META_USERS = [0]  # threads inside _empty_weights; the patch is installed while > 0
_ORIGINAL = (nn.Module.register_parameter, nn.Module.register_buffer)


def _meta_parameter(self, name, param):
    if getattr(_META_THREAD, "active", False) and param is not None:
        if param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _ORIGINAL[0](self, name, param)


def _meta_buffer(self, name, tensor, persistent=True):
    if getattr(_META_THREAD, "active", False) and tensor is not None:
        tensor = tensor.to("meta")
    _ORIGINAL[1](self, name, tensor, persistent)


@contextlib.contextmanager
def _empty_weights() -> Iterator[None]:
    """Parameters and buffers go to `meta` as they are registered, while plain tensor
    arithmetic in a builder (RegNet computes its widths with torch) still runs on the CPU.
    Only the calling thread is affected: models built meanwhile by other threads are real."""
    with _META_LOCK:
        if _META_USERS[0] == 0:
            nn.Module.register_parameter, nn.Module.register_buffer = _meta_parameter, _meta_buffer
        _META_USERS[0] += 1
    _META_THREAD.active = True
    try:
        yield
    finally:
        _META_THREAD.active = False
        with _META_LOCK:
            _META_USERS[0] -= 1
            if _META_USERS[0] == 0:
                nn.Module.register_parameter, nn.Module.register_buffer = _ORIGINAL


def build_on_meta(arch: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A model of the architecture with shapes only: no memory, no initialisation cost."""
    try:
        with torch.device("meta"):
            return build_model(arch, num_classes, in_channels)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors
        with _empty_weights():
            return build_model(arch, num_classes, in_channels)


@lru_cache(maxsize=64)
def _expected_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the architecture and its shape, from a build on `meta`."""
    if (num_classes, in_channels) == (10, 3) and arch in _SHAPES_10_3:
        return _SHAPES_10_3[arch]
    model = build_on_meta(arch, num_classes, in_channels)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@cache
def _stem_and_head(arch: str) -> tuple[str | None, str | None]:
    """Weight keys of the first convolution and of the classifier (the last Linear layer,
    else the last convolution, as in heads made of a 1×1 conv) of an architecture."""
    model = build_on_meta(arch)
    _SHAPES_10_3[arch] = {key: tuple(v.shape) for key, v in model.state_dict().items()}
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else (convs[-1] if convs else None)
    return (
        f"{convs[0]}.weight" if convs else None,
        f"{head}.weight" if head else None,
    )


_SHAPES_10_3: dict[str, dict[str, tuple[int, ...]]] = {}  # the build above, kept for reuse


# ---- signatures ---------------------------------------------------------------------------

SIGNATURE_FILE = Path(__file__).parent / "models" / "signatures.json"


def _parameter_keys(keys) -> list[str]:
    return sorted(k for k in keys if not k.endswith(STAT_SUFFIXES))


def key_signature(keys) -> str:
    """Hash of the key names that are not BatchNorm statistics (which a file may lack)."""
    text = "\n".join(_parameter_keys(keys))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _library_versions() -> dict[str, str]:
    """Versions of the libraries whose builders the signatures depend on."""
    versions = {"torchvision": torchvision.__version__.split("+")[0]}
    if _timm_available():
        versions["timm"] = importlib.metadata.version("timm")
    return versions


def _library(arch: str) -> str:
    return "timm" if ARCHITECTURES[arch].family == "timm" else "torchvision"


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
            if arch in ARCHITECTURES and written.get(_library(arch)) == versions.get(_library(arch))
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a missing or damaged cache is recomputed


def compute_signature(arch: str) -> tuple[int, str]:
    """(number of parameter keys, key signature) of one architecture, from a meta build."""
    keys = _expected_shapes(arch, 10, 3).keys()
    return len(_parameter_keys(keys)), key_signature(keys)


@cache
def signatures() -> dict[str, tuple[int, str]]:
    """Signatures of every registered architecture: shipped, cached, or computed once."""
    versions = _library_versions()
    known = _read_signatures(SIGNATURE_FILE, versions)
    if not set(ARCHITECTURES) <= set(known):
        known.update(_read_signatures(_user_cache_file(), versions))
    missing = [arch for arch in ARCHITECTURES if arch not in known]
    if missing:
        known.update({arch: compute_signature(arch) for arch in missing})
        write_signatures(_user_cache_file(), known, versions, quiet=True)
    return {arch: known[arch] for arch in ARCHITECTURES}


def write_signatures(
    path: Path,
    sigs: Mapping[str, tuple[int, str]] | None = None,
    versions: dict[str, str] | None = None,
    *,
    quiet: bool = False,
) -> None:
    """Write signatures (all registered ones by default) with the library versions they hold for."""
    if sigs is None:
        sigs = {arch: compute_signature(arch) for arch in ARCHITECTURES}
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


def _compare(state_dict: Mapping[str, Tensor], arch: str) -> _Fit:
    stem, head = _stem_and_head(arch)
    head_shape = _shape(state_dict.get(head)) if head else None
    stem_shape = _shape(state_dict.get(stem)) if stem else None
    num_classes = head_shape[0] if head_shape and len(head_shape) in (2, 4) else 10
    in_channels = stem_shape[1] if stem_shape and len(stem_shape) == 4 else 3
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
    """Find the registered architecture whose keys and shapes fit the state_dict exactly."""
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise ArchitectureMismatch(f"Unknown architecture {arch!r}. {_known()}")
        fit = _compare(state_dict, arch)
        if fit.mismatches:
            raise ArchitectureMismatch(
                f"The weights do not fit the architecture {arch!r}: {fit.describe(5)}."
            )
        return _detection(fit)

    wanted = key_signature(state_dict.keys())
    sigs = {name: sig for name, sig in signatures().items() if ARCHITECTURES[name].detect}
    for name, (_, sig) in sigs.items():
        if sig == wanted and not (fit := _compare(state_dict, name)).mismatches:
            return _detection(fit)
    # no fit: compare for real with the candidates closest in number of keys
    n = len(_parameter_keys(state_dict.keys()))
    nearest = sorted(sigs, key=lambda name: abs(sigs[name][0] - n))[:8]
    closest = sorted((_compare(state_dict, name) for name in nearest), key=lambda f: f.mismatches)
    lines = "\n".join(f"  - {fit.describe()}" for fit in closest[:3])
    raise ArchitectureMismatch(
        f"The weights ({len(state_dict)} tensors) do not fit any known architecture. "
        f"Closest candidates:\n{lines}\n{_known()}"
    )


def main() -> None:
    """`python -m core.architectures`: rewrite the shipped signature file."""
    write_signatures(SIGNATURE_FILE)
    print(f"{len(ARCHITECTURES)} signatures written to {SIGNATURE_FILE}")


if __name__ == "__main__":
    main()
