"""Registry of the architectures the engine knows, and detection of one from a state_dict.

Architectures come from the libraries made for them: every torchvision classification model
with BatchNorm (built by torchvision's own builders), BackdoorBench's model names and our CIFAR
nets are registered here by hand; every other torchvision classification builder and, when the
optional `timm` is installed, every timm model (`timm/<name>`) come from the libraries' own
registries (`core.model.library_models`), so a new release needs no change here.

Detection compares key names first, shapes second, and materialises nothing: each candidate's
key names are a *signature* (a hash of its parameter key names) computed once by a build on
the `meta` device and cached on disk (`core/model/nets/signatures.json` ships them for the pinned
library versions; other versions are computed once and kept in the user's cache folder).
Only candidates whose signature equals the file's are built on `meta` again, with the class
count and input channels read off the weights, and compared shape by shape.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache

from torch import Tensor, nn

from core.errors import BnpError
from core.model import library_models
from core.model.meta import _SHAPES_10_3, _empty_weights, replace_stem
from core.model.nets import (
    cifar_resnet18,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet56,
    preact_resnet18,
    vgg16_bn_cifar,
)
from core.model.nets.backdoorbench_nets import backdoorbench_preactresnet18, backdoorbench_vit_b_16

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
    # the module tree is our builder's: core.model.graph reuses a trace of the same build
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
