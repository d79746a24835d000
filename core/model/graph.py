"""The neuron graph: every BatchNorm over image channels, in data-flow order, with the
convolution that feeds it, and every normalisation layer left out with the reason.

Pairing follows the traced data flow, not module registration order (SPEC §1, CLP): a
BatchNorm is paired with a convolution only when that convolution's output, unchanged, is the
BatchNorm's input. `torch.fx` is tried first, with every BatchNorm and Conv2d subclass kept as
one node (timm's `BatchNormAct2d` calls `F.batch_norm` itself; a weight-standardised conv calls
`F.conv2d` itself); models it cannot trace fall back to one hooked forward pass that matches
tensors by identity *and* version, so `out += shortcut` after a convolution breaks the pair.
With an example input, that pass also counts calls: a BatchNorm called twice in one forward
pass would mix two distributions in one neuron, so it is left out and said so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from core.errors import BnpError


@dataclass(frozen=True)
class NeuronLayer:
    """One BatchNorm layer over image channels: its neurons are its channels."""

    name: str
    channels: int
    conv: str | None
    index: int


@dataclass(frozen=True)
class SkippedLayer:
    """A normalisation layer the engine does not score, and why."""

    name: str
    kind: str  # the module's class name
    reason: str


@dataclass
class LayerDiscovery:
    """What `discover_layers` found: the neuron layers and every layer left out."""

    layers: list[NeuronLayer]
    skipped: list[SkippedLayer] = field(default_factory=list)
    traced_by: str = "torch.fx"  # or "hooked forward pass"

    def require(self) -> list[NeuronLayer]:
        """The layers, or a BnpError saying why there are none."""
        if self.layers:
            return self.layers
        if self.skipped:
            why = "; ".join(f"{s.name}: {s.reason}" for s in self.skipped[:3])
            raise BnpError(f"No BatchNorm layer can be scored ({why}).")
        raise BnpError(NO_BATCHNORM)


NO_BATCHNORM = (
    "The model has no BatchNorm layer, so EP, BNP and CLP cannot apply: all three score the "
    "channels of BatchNorm layers (EP and BNP their inputs, BNP against their running "
    "statistics, CLP the convolution feeding them) and prune by zeroing their γ."
)
OTHER_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
)


def neuron_graph(model: nn.Module, example: torch.Tensor | None = None) -> list[NeuronLayer]:
    """List every BatchNorm in data-flow order with the conv whose output it normalises."""
    return discover_layers(model, example).require()


def discover_layers(model: nn.Module, example: torch.Tensor | None = None) -> LayerDiscovery:
    """Neuron layers in data-flow order, and every normalisation layer skipped with a reason."""
    modules = dict(model.named_modules())
    skipped: list[SkippedLayer] = []
    try:
        pairs, calls = _fx_pairs(model)
        traced_by = "torch.fx"
    except Exception:  # noqa: BLE001 - fx cannot trace every model; the hook pass can
        if example is None:
            raise BnpError(
                "This model cannot be traced symbolically; an example input is needed "
                "to find its BatchNorm layers."
            ) from None
        pairs, calls, dims = _hooked_pass(model, example)
        traced_by = "hooked forward pass"
    else:
        dims: dict[str, int] = {}
        # fx counts the calls of leaf modules, and a BatchNorm2d refuses any input but 4-D:
        # a model of plain BatchNorm2d layers needs no forward pass to know both
        plain = all(
            type(m) is nn.BatchNorm2d for m in modules.values() if isinstance(m, _BatchNorm)
        )
        if example is not None and not plain:
            try:
                _, hooked_calls, dims = _hooked_pass(model, example)
                calls = {**calls, **hooked_calls}
            except Exception:  # noqa: BLE001 - the traced graph alone still answers
                pass
    layers: list[NeuronLayer] = []
    seen = set()
    for name, conv in pairs:
        seen.add(name)
        reason = _skip_reason(modules[name], calls.get(name, 1), dims.get(name))
        if reason:
            skipped.append(SkippedLayer(name, type(modules[name]).__name__, reason))
            continue
        layers.append(NeuronLayer(name, modules[name].num_features, conv, len(layers)))
    for name, module in modules.items():
        if isinstance(module, _BatchNorm) and name not in seen:
            reason = "not used in the forward pass"
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm3d)):
                reason = _skip_reason(module, 1, None) or reason
            skipped.append(SkippedLayer(name, type(module).__name__, reason))
        elif isinstance(module, OTHER_NORMS):
            skipped.append(
                SkippedLayer(
                    name,
                    type(module).__name__,
                    "not a BatchNorm: it keeps no running statistics and normalises each "
                    "sample on its own, so EP/BNP/CLP do not apply",
                )
            )
    return LayerDiscovery(layers, skipped, traced_by)


def _skip_reason(module: nn.Module, calls: int, dim: int | None) -> str:
    if isinstance(module, nn.BatchNorm1d) or dim in (2, 3):
        return "normalises 1-D features, not image channels (no H×W maps to score)"
    if isinstance(module, nn.BatchNorm3d) or dim == 5:
        return "normalises 3-D volumes, not image channels"
    if calls > 1:
        return (
            f"called {calls} times in one forward pass: one neuron would have {calls} input "
            "distributions, and mixing them would make its scores meaningless"
        )
    if not module.affine:
        return "has no γ/β (affine=False): pruning cannot switch its neurons off"
    return ""


def is_conv(module: nn.Module | None) -> bool:
    """A 2-D convolution, `nn.Conv2d` or a subclass (e.g. weight-standardised)."""
    return isinstance(module, nn.Conv2d)


class _Tracer(torch.fx.Tracer):
    """fx tracer keeping every BatchNorm and Conv2d subclass as one module call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (_BatchNorm, nn.Conv2d)):
            return True
        return super().is_leaf_module(m, qualname)


_TRACES: dict = {}  # a build's key and module tree → its (pairs, calls)
_TRACES_KEPT = 16


def _fx_pairs(model: nn.Module) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """(BatchNorm, the conv feeding it) in data-flow order, and calls per BatchNorm, from an
    fx trace. A model that `core.model.architectures.load_detected` built reuses the trace of the
    same build (same architecture, sizes and module tree: tracing a ResNet-50 costs more than
    reading its file); any other model is traced."""
    key = _build_key(model)
    if key is not None and key in _TRACES:
        pairs, calls = _TRACES[key]
        return list(pairs), dict(calls)
    pairs, calls = _traced_pairs(model)
    if key is not None:
        if len(_TRACES) >= _TRACES_KEPT:
            _TRACES.pop(next(iter(_TRACES)))
        _TRACES[key] = (list(pairs), dict(calls))
    return pairs, calls


def _build_key(model: nn.Module) -> tuple | None:
    architectures = sys.modules.get("core.model.architectures")
    build = architectures.BUILDS.get(model) if architectures is not None else None
    if build is None:
        return None
    tree = []
    for name, module in model.named_modules():
        if "forward" in vars(module):  # a forward replaced on the instance: trace it
            return None
        tree.append((name, type(module)))
    return build, tuple(tree)


def _traced_pairs(model: nn.Module) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str | None]] = []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        calls[node.target] = calls.get(node.target, 0) + 1
        if calls[node.target] > 1:
            continue
        source = node.args[0] if node.args else None
        conv = None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and is_conv(modules.get(source.target))
        ):
            conv = source.target
        pairs.append((node.target, conv))
    return pairs, calls


def _hook_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str | None]]:
    """The pairs a hooked forward pass finds (the fallback when fx cannot trace)."""
    return _hooked_pass(model, example)[0]


def _hooked_pass(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[tuple[str, str | None]], dict[str, int], dict[str, int]]:
    """(pairs, calls per BatchNorm, input dims per BatchNorm) from one hooked forward pass.

    A conv output is matched by identity and by its version counter: an in-place operation
    on it (`out += shortcut`) bumps the version, so the sum is not taken for the conv output.
    """
    produced: dict[int, tuple[str, torch.Tensor, int]] = {}
    pairs: list[tuple[str, str | None]] = []
    calls: dict[str, int] = {}
    dims: dict[str, int] = {}

    def on_conv(name):
        def hook(_module, _inputs, output):
            # keep the tensor alive so ids stay unique
            produced[id(output)] = (name, output, output._version)

        return hook

    def on_bn(name):
        def hook(_module, inputs):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                return
            z = inputs[0]
            dims[name] = z.dim()
            entry = produced.get(id(z))
            same = entry is not None and entry[1] is z and entry[2] == z._version
            pairs.append((name, entry[0] if same else None))

        return hook

    handles = []
    for name, module in model.named_modules():
        if is_conv(module):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.no_grad():  # not inference_mode: its tensors have no version counter
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs, calls, dims


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight the convolution really applies (detached, CPU, float32).

    A subclass with its own `forward` (e.g. weight standardisation) may transform `.weight`
    before `F.conv2d`: one call on a tiny input records the weight it passes.
    """
    if type(conv).forward is nn.Conv2d.forward:
        return conv.weight.detach().float().cpu()
    captured: list[torch.Tensor] = []

    class Capture(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.conv2d and not captured:
                captured.append(args[1] if len(args) > 1 else kwargs["weight"])
            return func(*args, **kwargs)

    kh, kw = conv.kernel_size
    weight = conv.weight
    x = torch.zeros(1, conv.in_channels, kh, kw, dtype=weight.dtype, device=weight.device)
    with torch.no_grad(), Capture():
        conv(x)
    if not captured or captured[0].shape != weight.shape:
        return weight.detach().float().cpu()
    return captured[0].detach().float().cpu()


def method_availability(model: nn.Module, found: LayerDiscovery) -> dict[str, tuple[bool, str]]:
    """For EP, BNP and CLP: whether it applies to this model, and what to know about it."""
    if not found.layers:
        bns = [s for s in found.skipped if isinstance(model.get_submodule(s.name), _BatchNorm)]
        why = "no BatchNorm layer" if not bns else f"none of its {len(bns)} BatchNorm layers"
        why += " can be scored" if bns else ""
        return {
            "ep": (False, f"{why}: EP scores BatchNorm channels' inputs and prunes their γ"),
            "bnp": (False, f"{why}: BNP compares clean statistics with BatchNorm running ones"),
            "clp": (False, f"{why}: CLP bounds conv→BatchNorm channels and prunes their γ, β"),
        }
    modules = dict(model.named_modules())
    no_stats = [layer.name for layer in found.layers if modules[layer.name].running_var is None]
    paired = [layer for layer in found.layers if layer.conv is not None]
    n = len(found.layers)
    batch_stats = (
        f"; {len(no_stats)} of {n} BatchNorm layers normalise with batch statistics, as the "
        "file defines them (it has no running statistics for them)"
        if no_stats
        else ""
    )
    ep = (True, f"scores {n} layers from training samples{batch_stats}")
    if len(no_stats) == n:
        bnp = (False, "the file has no running statistics (running_mean/running_var) to "
               "compare the clean statistics against")  # fmt: skip
    elif no_stats:
        bnp = (True, f"scores {n - len(no_stats)} of {n} layers; the others have no running "
               "statistics to compare against")  # fmt: skip
    else:
        bnp = (True, f"scores {n} layers from clean samples")
    if not paired:
        clp = (False, "no BatchNorm is fed directly by a convolution")
    else:
        unit = "; v_c = 1 where the file has no running variance (SPEC §1)" if no_stats else ""
        clp = (True, f"scores the {len(paired)} of {n} layers fed by a convolution{unit}")
    return {"ep": ep, "bnp": bnp, "clp": clp}
