"""The neuron graph: every BatchNorm2d in data-flow order and the convolution that feeds it.

Pairing follows the traced data flow, not module registration order (SPEC §1, CLP): a
BatchNorm is paired with a convolution only when that convolution's output is the
BatchNorm's input. `torch.fx` is tried first; models it cannot trace fall back to one hooked
forward pass that matches tensors by identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import BnpError


@dataclass(frozen=True)
class NeuronLayer:
    """One BatchNorm2d layer: its neurons are its channels."""

    name: str
    channels: int
    conv: str | None
    index: int


def neuron_graph(model: nn.Module, example: torch.Tensor | None = None) -> list[NeuronLayer]:
    """List every BatchNorm2d in data-flow order with the conv whose output it normalises."""
    try:
        pairs = _fx_pairs(model)
    except Exception:  # noqa: BLE001 - fx cannot trace every model; the hook pass can
        if example is None:
            raise BnpError(
                "This model cannot be traced symbolically; an example input is needed "
                "to find its BatchNorm layers."
            ) from None
        pairs = _hook_pairs(model, example)
    modules = dict(model.named_modules())
    layers = []
    for index, (name, conv) in enumerate(pairs):
        layers.append(NeuronLayer(name, modules[name].num_features, conv, index))
    if not layers:
        raise BnpError("The model has no BatchNorm2d layer, so it has no neurons to score.")
    return layers


def _fx_pairs(model: nn.Module) -> list[tuple[str, str | None]]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str | None]] = []
    seen = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        if node.target in seen:
            continue
        seen.add(node.target)
        source = node.args[0] if node.args else None
        conv = None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
        ):
            conv = source.target
        pairs.append((node.target, conv))
    return pairs


def _hook_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str | None]]:
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str | None]] = []
    seen = set()

    def on_conv(name):
        def hook(_module, _inputs, output):
            produced[id(output)] = (name, output)  # keep the tensor alive so ids stay unique

        return hook

    def on_bn(name):
        def hook(_module, inputs):
            if name in seen:
                return
            seen.add(name)
            entry = produced.get(id(inputs[0]))
            pairs.append((name, entry[0] if entry and entry[1] is inputs[0] else None))

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs
