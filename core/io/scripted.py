"""Use a TorchScript archive's own forward as a plain module, without running the file's code.

A TorchScript archive carries its network: the graph of its ``forward``. When its weights fit
no registered architecture, that graph is the only way to use it; when they fit one, the
archive's forward may still compute something else (a normalisation step, scaled logits, a
skipped block), so it is converted too and compared with the registered build on a seeded
probe input (``check_own_forward``): the registered model is kept when the outputs agree within
float32 rounding, the converted one used (and said) when they do not. This module turns that
graph into a ``torch.fx.GraphModule``:

* every ``aten::conv{1,2,3}d`` / ``aten::_convolution`` (not transposed), ``aten::batch_norm``
  and ``aten::linear`` whose weights are attributes of one submodule (``self.layer1.0.bn1``)
  becomes a call of a real ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` of that dotted
  name, built from the archive's tensors, so the engine's hooks, layer discovery, masks, CLP
  and exports see ordinary layers;
* every other operation must be on an allow-list of pure tensor operations (no I/O, no
  randomness that matters in eval mode, no Python) and is called as ``torch.ops.aten.<op>``,
  with exactly the archive's overload and arguments;
* control flow is resolved for eval mode: a ``prim::If`` whose condition is known without the
  input (``self.training``, attributes, constants) keeps its branch; one whose condition comes
  from the input but whose other branch only raises (BatchNorm's ``input.dim() != 4`` check)
  becomes a ``torch._assert``; any other data-dependent branch, any operation off the
  allow-list, a Python op or a call that cannot be inlined is refused with the op named.

Obtaining the graph needs ``torch.jit.load``, which compiles the archive's code and runs only
scripted ``__setstate__`` methods; ``core.io.torchscript`` refuses archives that define one unless
the user trusts the file. The conversion (``core.io.script_graph``) runs in the reader child
(``core.safety.isolation``) and sends back a *program* (JSON: modules with their constructor
arguments, and a list of fx nodes whose targets are names on the allow-list) and its tensors;
the parent rebuilds the module from those names only (``build_module``), never from a pickle.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from core.errors import ArchitectureMismatch, Cancelled, CheckpointError, UnsafeCheckpointError
from core.io.script_graph import (
    OPERATORS,
    PART_NAME,
    SIMPLE_NAME,
    TENSOR_OPS,
    Refused,
    script_to_program,
)

NO_SETSTATE = re.compile(rb"__setstate__")


# ---- child entry: the file → program and tensors ---------------------------------------------


def convert_file(path_text: str, trust_pickle: bool, max_bytes: int) -> tuple[dict, list[Tensor]]:
    """Child side (``core.safety.isolation``): the archive at ``path_text`` → (info, tensors)."""
    import warnings

    from core.io.metadata import TORCHSCRIPT_META_FILE
    from core.io.readers import _check_zip_sizes, _unsafe_text
    from core.io.torchscript import is_torchscript

    warnings.simplefilter("ignore")
    path = Path(path_text)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _check_zip_sizes(archive, path, max_bytes)
            if not is_torchscript(names):
                raise CheckpointError(f"{path.name} is not a TorchScript archive.")
            custom = _defines_setstate(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise CheckpointError(f"{path.name} is a damaged zip archive: {e}") from None
    if custom and not trust_pickle:
        raise UnsafeCheckpointError(
            _unsafe_text(
                path,
                f"its TorchScript code in {custom} defines __setstate__, which would run on "
                "loading",
            )
        )
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:  # runs no code of the file: it defines no __setstate__ (or the user trusts it)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - torch raises bare RuntimeErrors of many kinds
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path.name} is not a readable TorchScript archive: {text}"
        ) from None
    try:
        program, tensors = script_to_program(module)
    except Refused as e:
        raise ArchitectureMismatch(str(e)) from None
    # the converted module's first run happens here, under the reader's time and memory
    # limits: a graph that allocates without bound (zeros of a huge constant size) stops here
    from core.io.metadata import _parse_meta_json
    from core.io.own_module import module_metadata

    meta = (
        _parse_meta_json(extra[TORCHSCRIPT_META_FILE], path)
        if extra[TORCHSCRIPT_META_FILE]
        else None
    )
    weights = dict(zip(program["tensors"], tensors, strict=True))  # first conv: its channels
    module_metadata(build_module(program, tensors), weights, meta, path)
    return {"program": program}, tensors


def _defines_setstate(archive: zipfile.ZipFile) -> str | None:
    """The first entry (other than tensor records) that mentions __setstate__, or None.

    Stricter than ``core.io.torchscript``'s reading of the code: every entry that is not a
    tensor record is searched, whatever its folder, so no code path can hide one.
    """
    for info in archive.infolist():
        if info.filename.rpartition("/")[2].isdigit():
            continue  # raw tensor bytes (data/N, constants/N): code is only read from .py
        if info.file_size > 64 * 2**20:
            return info.filename  # no code is that large: treat as hiding something
        if NO_SETSTATE.search(archive.read(info)):
            return info.filename
    return None


# ---- parent side: program → GraphModule ------------------------------------------------------


def load_scripted(
    path: Path,
    state_dict: Mapping[str, Tensor],
    trust_pickle: bool,
    mismatch: str,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    memory_limit: int | None = None,
) -> fx.GraphModule:
    """The archive's own forward as a module, converted in a child process (``convert_file``).

    ``state_dict`` is what the first read found (checked against the converted module's
    tensors: the file must not change in between); ``mismatch`` is why no registered
    architecture fits, said first when the forward cannot be converted.
    """
    try:
        program, tensors = _convert_in_child(path, trust_pickle, cancel, timeout, memory_limit)
    except ArchitectureMismatch as e:
        raise ArchitectureMismatch(
            f"{path.name} is a TorchScript archive whose own forward cannot be used as it is: "
            f"{e}. Nor do its weights fit a registered architecture: {mismatch}"
        ) from None
    return _built(path, program, tensors, state_dict)


def _convert_in_child(
    path: Path,
    trust_pickle: bool,
    cancel: Callable[[], bool] | None,
    timeout: float | None,
    memory_limit: int | None,
) -> tuple[Mapping[str, Any], list[Tensor]]:
    """(program, tensors) of the archive's forward, from ``convert_file`` in the reader child."""
    from core.safety.isolation import read_isolated

    parsed = read_isolated(
        "core.io.scripted:convert_file", path, trust_pickle, "Converting", error=CheckpointError,
        timeout=timeout, memory_limit=memory_limit, cancel=cancel,
    )  # fmt: skip
    info = parsed.info if isinstance(parsed.info, Mapping) else {}
    if not isinstance(info.get("program"), Mapping):
        raise CheckpointError(f"Converting {path.name} failed: no program came back.")
    return info["program"], parsed.tensors


def _built(
    path: Path, program: Mapping[str, Any], tensors: list[Tensor], state_dict: Mapping[str, Tensor]
) -> fx.GraphModule:
    """The converted module, its weights checked against the first read's."""
    from core.io.unwrap import same_tensor

    module = build_module(program, tensors)
    for key, value in module.state_dict().items():
        if key in state_dict and not same_tensor(state_dict[key], value):
            raise CheckpointError(f"{path.name} changed while it was read: its weights differ.")
    return module


# ---- an archive whose weights fit a registered architecture: is its forward the same? -----------

PROBE_SEED = 0
PROBE_COUNT = 2  # seeded N(0, 1) images of the metadata's input size
PROBE_RTOL, PROBE_ATOL = 1e-4, 1e-5  # the atol is relative to the logits' largest magnitude
FORWARD_UNCHECKED = (
    "The archive's weights fit {arch} and are used in {arch}'s forward; the archive's own "
    "forward could not be checked against it: {why}"
)


@dataclass(frozen=True)
class ForwardCheck:
    """What comparing an archive's own forward with the registered build's found."""

    module: fx.GraphModule | None  # the archive's own forward when it differs, else None
    difference: str | None = None  # how the outputs differ (when ``module`` is set)
    notice: str | None = None  # why the forward could not be checked (when it could not)


def check_own_forward(
    path: Path,
    registered: nn.Module,
    state_dict: Mapping[str, Tensor],
    arch: str,
    in_channels: int,
    input_size: tuple[int, int],
    trust_pickle: bool,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    memory_limit: int | None = None,
) -> ForwardCheck:
    """Convert the archive's forward (in the child, as ``load_scripted``) and compare it with
    ``registered`` (eval mode, weights loaded) on a fixed probe; the converted module comes
    back only when the outputs differ. A forward that cannot be converted (an op off the
    allow-list, a data-dependent branch, a graph torch cannot load) is reported, not raised;
    ``Cancelled`` and a file that changed while read are raised."""
    try:
        program, tensors = _convert_in_child(path, trust_pickle, cancel, timeout, memory_limit)
    except Cancelled:
        raise
    except CheckpointError as e:  # refused (ArchitectureMismatch), unreadable, over the limits
        why = " ".join(str(e).split())[:300]
        return ForwardCheck(None, notice=FORWARD_UNCHECKED.format(arch=arch, why=why))
    module = _built(path, program, tensors, state_dict)
    difference = forward_difference(registered, module, in_channels, input_size)
    return ForwardCheck(module, difference) if difference else ForwardCheck(None)


def forward_difference(
    registered: nn.Module, own: nn.Module, in_channels: int, input_size: tuple[int, int]
) -> str | None:
    """None when ``own`` gives ``registered``'s outputs on the probe (within float32 rounding),
    else how they differ, in a few words."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn(PROBE_COUNT, in_channels, *input_size, generator=generator)
    with torch.no_grad():
        want = registered(x)
        try:
            got = own(x)
        except Exception as e:  # noqa: BLE001 - the archive's forward may reject the probe
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"it fails on a {input_size[0]}×{input_size[1]} input ({text[:200]})"
    if not isinstance(got, Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
        return f"its output is {shape}, not {tuple(want.shape)}"
    finite = want[torch.isfinite(want)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    atol = PROBE_ATOL * max(1.0, largest)
    if torch.allclose(got, want, rtol=PROBE_RTOL, atol=atol, equal_nan=True):
        return None
    gap = float((got - want).abs().nan_to_num(nan=math.inf).max())
    return f"outputs differ by up to {gap:.3g} where the registered logits reach {largest:.3g}"


class ScriptedBatchNorm(nn.BatchNorm2d):
    """A BatchNorm from a scripted class of unknown dimensionality: accepts any input rank,
    as ``aten::batch_norm`` does."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}D input)")


MODULE_KINDS: dict[str, Callable[..., nn.Module]] = {
    "Conv1d": nn.Conv1d,
    "Conv2d": nn.Conv2d,
    "Conv3d": nn.Conv3d,
    "Linear": nn.Linear,
    "BatchNorm:BatchNorm1d": nn.BatchNorm1d,
    "BatchNorm:BatchNorm2d": nn.BatchNorm2d,
    "BatchNorm:BatchNorm3d": nn.BatchNorm3d,
    "BatchNorm:any": ScriptedBatchNorm,
    "LayerNorm": nn.LayerNorm,
    "GroupNorm": nn.GroupNorm,
}
KWARGS = {
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "bias",
    "in_features",
    "out_features",
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "normalized_shape",
    "num_groups",
    "num_channels",
}


def _function(target: str) -> Callable:
    """The callable of an allowed target name; anything else is refused."""
    if target in OPERATORS:
        return OPERATORS[target]
    if target == "torch._assert":
        return torch._assert
    if target.startswith("aten::"):
        name, _, overload = target.removeprefix("aten::").partition(".")
        if name in TENSOR_OPS and SIMPLE_NAME.match(overload or "default"):
            try:
                return getattr(getattr(torch.ops.aten, name), overload or "default")
            except (AttributeError, RuntimeError):
                pass
    raise CheckpointError(f"The converted graph calls {target}, which is not allowed.")


def _decode(value: Any, nodes: list) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if isinstance(value, dict):
        if "node" in value:
            index = value["node"]
            if not isinstance(index, int) or not 0 <= index < len(nodes) or nodes[index] is None:
                raise CheckpointError("The converted graph refers to a node not yet defined.")
            return nodes[index]
        if "tuple" in value:
            return tuple(_decode(v, nodes) for v in value["tuple"])
        if "dtype" in value:
            dtype = getattr(torch, str(value["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError("The converted graph names an unknown dtype.")
            return dtype
        if "device" in value:
            return torch.device("cpu")  # the model is loaded on the CPU
        if "float" in value:
            return float(value["float"])
        raise CheckpointError("The converted graph holds a value of an unknown kind.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError("The converted graph holds a value of an unknown kind.")


def _keyword(name: Any) -> str:
    """A keyword argument's name (it is written into the module's generated code)."""
    if not isinstance(name, str) or not SIMPLE_NAME.match(name) or not name.isidentifier():
        raise CheckpointError(f"The converted graph passes an argument named {name!r}.")
    return name


def _checked_path(path: Any) -> str:
    """A dotted module/tensor path of names fx writes into code as they are: plain ones only."""
    if not isinstance(path, str) or not all(PART_NAME.match(p) for p in path.split(".")):
        raise CheckpointError(f"The converted graph names a module or tensor {path!r}.")
    return path


def _install(root: nn.Module, path: str, module: nn.Module | None = None, tensor=None, param=False):
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if module is not None:
        owner.add_module(leaf, module)
    elif leaf not in owner._parameters and leaf not in owner._buffers:
        if param:
            owner.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
        else:
            owner.register_buffer(leaf, tensor)


def build_module(program: Mapping[str, Any], tensors: list[Tensor]) -> fx.GraphModule:
    """The converted module (CPU, eval mode) from a program and its tensors.

    Only module kinds of MODULE_KINDS and call targets on the allow-list are accepted.
    """
    try:
        names = [_checked_path(n) for n in program["tensors"]]
        if len(names) != len(tensors):
            raise CheckpointError("The converted graph's tensors do not match their names.")
        by_name = dict(zip(names, tensors, strict=True))
        params = set(program.get("parameters") or [])
        root = nn.Module()
        owned: set[str] = set()
        for path, spec in dict(program["modules"]).items():
            _checked_path(path)
            kind, kwargs = spec["kind"], dict(spec["kwargs"])
            if kind not in MODULE_KINDS or not set(kwargs) <= KWARGS:
                raise CheckpointError(f"The converted graph builds a module of kind {kind!r}.")
            for key in ("kernel_size", "stride", "padding", "dilation", "normalized_shape"):
                if isinstance(kwargs.get(key), list):
                    kwargs[key] = tuple(kwargs[key])
            module = MODULE_KINDS[kind](**kwargs)
            state = {k: by_name[_checked_path(n)] for k, n in dict(spec["tensors"]).items()}
            if (
                "num_batches_tracked" not in state
                and module.state_dict().get("num_batches_tracked") is not None
            ):
                state["num_batches_tracked"] = torch.zeros((), dtype=torch.long)
            module.load_state_dict(state, strict=True)
            _install(root, path, module)
            owned.update(spec["tensors"].values())
        graph = fx.Graph()
        nodes: list = []
        for item in program["nodes"]:
            op, target = item["op"], item["target"]
            args = tuple(_decode(a, nodes) for a in item["args"])
            kwargs = {
                _keyword(k): _decode(v, nodes) for k, v in dict(item.get("kwargs") or {}).items()
            }
            if op == "placeholder":
                node = graph.placeholder("x")
            elif op == "get_attr":
                target = _checked_path(target)
                if target not in owned:
                    _install(root, target, tensor=by_name[target], param=target in params)
                node = graph.get_attr(target)
            elif op == "call_module":
                node = graph.call_module(_checked_path(target), args)
            elif op == "call_function":
                node = graph.call_function(_function(str(target)), args, kwargs)
            elif op == "output":
                node = graph.output(args[0])
            else:
                raise CheckpointError(f"The converted graph has a node of kind {op!r}.")
            nodes.append(node)
        graph.lint()
        name = str(program.get("name") or "ScriptedModule")
        name = name if SIMPLE_NAME.match(name) else "ScriptedModule"
        module = fx.GraphModule(root, graph, class_name=name)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"The converted TorchScript graph is malformed: {e}") from None
    return module.eval()
