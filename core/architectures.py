"""Registry of the architectures the engine knows, and detection of one from a state_dict.

Architectures come from the libraries made for them: every torchvision classification model
with BatchNorm (built by torchvision's own builders), BackdoorBench's model names and our CIFAR
nets are registered here by hand; every other torchvision classification builder and, when the
optional `timm` is installed, every timm model (`timm/<name>`) come from the libraries' own
registries (`core.library_models`), so a new release needs no change here.

Detection compares key names first, shapes second, and materialises nothing: each candidate's
key names are a *signature* (a hash of its parameter key names) computed once by a build on
the `meta` device and cached on disk (`core/models/signatures.json` ships them for the pinned
library versions; other versions are computed once and kept in the user's cache folder).
Only candidates whose signature equals the file's are built on `meta` again, with the class
count and input channels read off the weights, and compared shape by shape.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from torch import Tensor, nn

from core import library_models
from core.described import memo
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
    # what the user should know: other architectures the same tensors fit, GroupNorm
    notices: tuple[str, ...] = field(default=(), compare=False)


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
        import torchvision  # imported on first build: the reader child never needs it

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notice
            model = torchvision.models.get_model(
                builder, weights=None, num_classes=num_classes, **kwargs
            )
        if type(model) is torchvision.models.MNASNet:
            model.__class__ = versioned_mnasnet()
        return replace_stem(model, in_channels)

    build.__qualname__ = f"torchvision.models.{builder}"
    return build


@cache
def versioned_mnasnet() -> type:
    """torchvision's MNASNet, loading a state_dict without torch's version metadata
    (safetensors files, any dict rebuilt from another) as the current layout (version 2);
    torchvision's own class refuses it."""
    import torchvision

    class VersionedMNASNet(torchvision.models.MNASNet):
        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args) -> None:
            if local_metadata.get("version") is None:
                local_metadata = {**local_metadata, "version": 2}
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    return VersionedMNASNet


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


class _Registry(dict):
    """The architectures registered by hand; a library model (`timm/<name>`, a torchvision
    builder) or a GroupNorm variant (`<arch>+groupnorm`) is looked up on first use."""

    def __missing__(self, name: str) -> ArchSpec:
        spec = _library_spec(name)
        if spec is None:
            raise KeyError(name)
        self[name] = spec
        return spec

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        return isinstance(name, str) and _library_spec(name) is not None

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


ARCHITECTURES: dict[str, ArchSpec] = _Registry((spec.name, spec) for spec in _registry())
HAND_REGISTERED = tuple(ARCHITECTURES)
GROUPNORM_TAIL = "+groupnorm"
GROUPNORM_GROUPS = 32


def _library_spec(name: str) -> ArchSpec | None:
    """A library model, or a GroupNorm variant of any architecture, by its registry name."""
    if name.endswith(GROUPNORM_TAIL):
        base = name[: -len(GROUPNORM_TAIL)]
        if base.endswith(GROUPNORM_TAIL) or base not in ARCHITECTURES:
            return None
        spec = ARCHITECTURES[base]
        return ArchSpec(name, spec.family, spec.input_size, _groupnorm(spec.build), True,
                        GROUPNORM_NOTE.format(base=base))  # fmt: skip
    if dict.__contains__(ARCHITECTURES, name):
        return None
    described = library_models.find(name)
    if described is None:
        return None
    if library_models.library_of(name) == "timm":
        build = _timm(name[len(library_models.TIMM_PREFIX) :])
        return ArchSpec(name, "timm", described.input_size, build)
    return ArchSpec(name, "torchvision", described.input_size, _torchvision(name))


GROUPNORM_NOTE = "{base} with GroupNorm(32 groups) in place of every BatchNorm"


def _groupnorm(build: Builder) -> Builder:
    """The builder's model with every BatchNorm replaced by a GroupNorm of 32 groups (the
    usual choice; the number of groups is not in the weights)."""

    def build_gn(num_classes: int, in_channels: int) -> nn.Module:
        model = build(num_classes, in_channels)
        norms = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # fmt: skip
        if not norms or any(m.num_features % GROUPNORM_GROUPS for _, m in norms):
            raise BnpError(
                f"Its BatchNorm layers cannot all become GroupNorms of {GROUPNORM_GROUPS} groups."
            )
        for name, bn in norms:
            parent, _, attr = name.rpartition(".")
            gn = nn.GroupNorm(GROUPNORM_GROUPS, bn.num_features, eps=bn.eps)
            setattr(model.get_submodule(parent) if parent else model, attr, gn)
        return model

    return build_gn


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise BnpError(f"Unknown architecture {arch!r}. {_known()}") from None


def _known() -> str:
    counts = [
        f"{len(library_models.descriptions(lib))} {lib} models"
        for lib in library_models.LIBRARIES
        if library_models.library_version(lib)
    ]
    return (
        f"Known architectures: {', '.join(HAND_REGISTERED)}; and from the libraries' registries "
        f"{' and '.join(counts)} (timm ones as timm/<name>); <arch>{GROUPNORM_TAIL} for a "
        "GroupNorm variant."
    )


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


def load_detected(detection: Detection, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """The detected architecture holding the file's weights (strict), in eval mode.

    Built on `meta` and given the file's tensors themselves, so nothing is initialised only to
    be overwritten (a ResNet-50's random initialisation costs more than reading its file); a
    model with tensors the state_dict does not hold (non-persistent buffers) is built for real.
    Raises RuntimeError (torch's) when the weights cannot be loaded."""
    model = _meta_copy(detection.arch, detection.num_classes, detection.in_channels)
    drop_running_stats(model, detection.no_running_stats)
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [t for t in (*model.parameters(), *model.buffers()) if t.is_meta]
    if left:  # tensors made in the constructor, not saved: build for real
        model = build_detected(detection)
        model.load_state_dict(state_dict, strict=True)
    # the module tree is our builder's: core.graph reuses a trace of the same build
    BUILDS[model] = (detection.arch, detection.num_classes, detection.in_channels,
                     tuple(sorted(detection.no_running_stats)))  # fmt: skip
    return model.eval()


# model → how load_detected built it (architecture, classes, channels, BatchNorms without
# statistics); a model built the same way has the same module tree and the same forward
BUILDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
        with library_models.FastMeta():  # in-place initialisation skipped: shapes only
            return build_model(arch, num_classes, in_channels)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors
        with _empty_weights():
            return build_model(arch, num_classes, in_channels)


@lru_cache(maxsize=8)
def _meta_template(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """One build on `meta` per architecture and size, never handed out itself: detection
    reads its shapes, and every model loaded gets a copy (cheaper than building again)."""
    return build_on_meta(arch, num_classes, in_channels)


def _meta_copy(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """A fresh model on `meta`: a copy of the template, or a new build if it cannot be
    copied."""
    template = _meta_template(arch, num_classes, in_channels)
    try:
        return _tree_copy(template) if _tree_copyable(template) else copy.deepcopy(template)
    except Exception:  # noqa: BLE001 - a module that refuses deepcopy: build it again
        return build_on_meta(arch, num_classes, in_channels)


_TREE_KEYS = {"_parameters", "_buffers", "_modules"}
_COPIED = (list, dict, set, OrderedDict)  # attributes copied one level; others are shared


def _tree_copyable(model: nn.Module) -> bool:
    """Whether every module keeps its submodules in `_modules` only (no module held in a
    plain attribute, list or dict), so that `_tree_copy` copies the whole model."""
    for module in model.modules():
        for key, value in vars(module).items():
            if key in _TREE_KEYS:
                continue
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, nn.Module) or (
                isinstance(value, (list, tuple, dict))
                and any(isinstance(v, nn.Module) for v in items)
            ):
                return False
    return True


def _tree_copy(module: nn.Module) -> nn.Module:
    """A copy of a meta model's module tree, cheaper than deepcopy: each module's attributes
    copied one level (lists, dicts and sets copied, so a copy never changes the template's),
    its parameters and buffers shared (they are `meta`: shapes only, and
    `load_state_dict(assign=True)` replaces them in the copy's own dicts)."""
    new = module.__class__.__new__(module.__class__)
    state = {
        key: value.copy() if type(value) in _COPIED else value
        for key, value in vars(module).items()
    }
    state["_modules"] = {
        name: None if child is None else _tree_copy(child)
        for name, child in module._modules.items()
    }
    new.__dict__.update(state)
    return new


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


def _valid_shapes(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(type(n) is int for n in v)
        for k, v in value.items()
    )


def _two_keys(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(v is None or isinstance(v, str) for v in value)
    )


def _build_stem_and_head(arch: str) -> tuple[str | None, str | None]:
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
    (the libraries' models: `core.library_models`)."""
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
    registered by hand and every model of the libraries' registries (`core.library_models`).

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
    """`python -m core.architectures`: rewrite the shipped signature file."""
    write_signatures(SIGNATURE_FILE)
    print(f"{len(HAND_REGISTERED)} signatures written to {SIGNATURE_FILE}")


if __name__ == "__main__":
    main()
