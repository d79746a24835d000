"""A TorchScript module's eval-mode ``forward`` graph → a *program*: plain JSON and tensors.

The converter half of ``core.io.scripted`` (see its docstring for what is converted and what is
refused); it runs in the reader child. The program names modules (conv, BatchNorm, linear and
norms of the archive's submodules, with constructor arguments) and fx nodes whose targets are
on the allow-lists below; ``core.io.scripted.build_module`` rebuilds the module from those names.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Pure tensor operations the converted module may call (aten names, any overload).
TENSOR_OPS = frozenset(
    """
    conv1d conv2d conv3d _convolution conv_transpose1d conv_transpose2d conv_transpose3d
    batch_norm instance_norm layer_norm group_norm linear matmul mm bmm addmm einsum
    relu relu_ relu6 relu6_ hardtanh hardtanh_ hardswish hardswish_ hardsigmoid hardsigmoid_
    sigmoid sigmoid_ tanh tanh_ silu silu_ gelu elu elu_ selu selu_ celu leaky_relu leaky_relu_
    prelu mish softplus softmax log_softmax threshold threshold_ clamp clamp_ clamp_min
    clamp_min_ clamp_max clamp_max_ clip
    max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
    adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
    max_pool2d_with_indices adaptive_max_pool2d_with_indices
    dropout dropout_ feature_dropout feature_dropout_ alpha_dropout alpha_dropout_
    feature_alpha_dropout
    flatten view reshape permute transpose t contiguous squeeze squeeze_ unsqueeze unsqueeze_
    expand expand_as repeat narrow slice select chunk split split_with_sizes unbind
    cat stack channel_shuffle pixel_shuffle pixel_unshuffle pad constant_pad_nd
    reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
    upsample_nearest2d upsample_bilinear2d
    add add_ sub sub_ rsub mul mul_ div div_ floor_divide neg pow sqrt rsqrt exp log abs sign
    reciprocal
    mean sum amax amin max min norm
    to type_as detach clone size dim numel zeros zeros_like ones ones_like full full_like
    eq ne lt gt le ge logical_not logical_and logical_or where any all
    Int Float Bool ScalarImplicit
    """.split()
)
NUMBER_OF = ("aten::Int", "aten::Float", "aten::Bool", "aten::ScalarImplicit")
# Operations on plain numbers, lists and strings: computed at conversion time when their
# arguments are known, else called as Python operators (on sizes read from the input).
SCALAR_OPS = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "floordiv": operator.floordiv,
    "remainder": operator.mod,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "gt": operator.gt,
    "le": operator.le,
    "ge": operator.ge,
    "neg": operator.neg,
    "__and__": operator.and_,
    "__or__": operator.or_,
    "__getitem__": operator.getitem,
}
# Arithmetic of traced sizes (prim::NumToTensor values) with numbers.
NUM_OPS = {
    "floor_divide": operator.floordiv,
    "floordiv": operator.floordiv,
    "mul": operator.mul,
    "add": operator.add,
    "sub": operator.sub,
}
OPERATORS = {f"operator.{f.__name__}": f for f in SCALAR_OPS.values()}
SIMPLE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
PART_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")  # one component of a dotted module path
MAX_STEPS = 500_000  # graph nodes visited (loops unrolled): a bound for hostile graphs
MAX_NODES = 100_000  # operations in the converted module


class Refused(Exception):
    """The graph uses something the converter does not turn into allowed operations."""


@dataclass(frozen=True)
class _ModuleRef:
    path: str  # dotted, "" for the root


@dataclass(frozen=True)
class _TensorRef:
    name: str  # dotted name of the tensor in the archive's module tree


@dataclass(frozen=True)
class _Dyn:
    """An emitted fx node (by index): a value known only when the module runs."""

    index: int


@dataclass(frozen=True)
class _Num:
    """prim::NumToTensor of a number: traced code turns sizes into tensors and back."""

    value: Any


class _Uninitialized:
    """prim::Uninitialized: a value a raising branch never gives."""


_UNINIT = _Uninitialized()


# ---- child side: ScriptModule → program -------------------------------------------------------


class _Converter:
    def __init__(self, root: torch.jit.ScriptModule) -> None:
        self.root = root.eval()
        self.nodes: list[dict] = []  # the fx nodes, in order
        self.tensors: dict[str, Tensor] = {}  # name -> tensor sent to the parent
        self.params: set[str] = set()  # which of them are parameters
        self.modules: dict[str, dict] = {}  # path -> {"kind", "kwargs", "tensors"}
        self.got_attr: dict[str, int] = {}  # tensor name -> get_attr node index
        self.steps = 0
        self.constants = 0
        self.guards = 0
        self._sizes_of: dict[_Dyn, Any] = {}  # aten::size(x) node -> x, for len()

    # -- entry --
    def convert(self) -> dict:
        graph = self.root.inlined_graph
        inputs = list(graph.inputs())
        if len(inputs) != 2:
            raise Refused(
                f"its forward takes {len(inputs) - 1} inputs; an image classifier takes one"
            )
        env: dict[Any, Any] = {inputs[0]: _ModuleRef("")}
        env[inputs[1]] = self._emit("placeholder", "x")
        self._block(graph, env)
        outputs = [env[v] for v in graph.outputs()]
        result = outputs[0] if len(outputs) == 1 else tuple(outputs)
        if isinstance(result, tuple) and result and all(v is None for v in result[1:]):
            result = result[0]  # scripted GoogLeNet/Inception: (logits, None, None) in eval
        self._emit("output", "output", (self._encode(result),))
        return {
            "name": str(getattr(self.root, "original_name", "") or "ScriptedModule"),
            "nodes": self.nodes,
            "modules": self.modules,
            "tensors": list(self.tensors),
            "parameters": sorted(self.params),
            "guards": self.guards,
        }

    def _emit(self, op: str, target: str, args: tuple = (), kwargs: dict | None = None) -> _Dyn:
        if len(self.nodes) >= MAX_NODES:
            raise Refused(f"it converts to more than {MAX_NODES} operations")
        self.nodes.append({"op": op, "target": target, "args": list(args), "kwargs": kwargs or {}})
        return _Dyn(len(self.nodes) - 1)

    # -- blocks and nodes --
    def _block(self, block: Any, env: dict) -> None:
        for node in block.nodes():
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise Refused(f"its graph unrolls to more than {MAX_STEPS} operations")
            self._node(node, env)

    def _node(self, node: Any, env: dict) -> None:
        kind = node.kind()
        ins = [env[v] for v in node.inputs()]
        outs = list(node.outputs())
        if kind == "prim::Constant":
            env[outs[0]] = self._constant(node)
        elif kind == "prim::GetAttr":
            env[outs[0]] = self._getattr(ins[0], node.s("name"))
        elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            env[outs[0]] = list(ins) if kind == "prim::ListConstruct" else tuple(ins)
        elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            self._unpack(ins[0], outs, env, kind)
        elif kind == "prim::TupleIndex":
            env[outs[0]] = self._index(ins[0], ins[1], kind)
        elif kind == "prim::If":
            self._if(node, ins[0], env)
        elif kind == "prim::Loop":
            self._loop(node, ins, env)
        elif kind == "prim::Uninitialized":
            env[outs[0]] = _UNINIT
        elif kind in ("prim::unchecked_cast", "aten::detach_") and len(ins) == 1:
            env[outs[0]] = ins[0]
        elif kind == "prim::NumToTensor":
            env[outs[0]] = _Num(ins[0])  # a traced size read, used as a number again below
        elif kind in NUMBER_OF and isinstance(ins[0], _Num):
            env[outs[0]] = ins[0].value
        elif kind == "aten::warn":
            pass  # a warning changes no output
        elif kind == "aten::append":
            if not isinstance(ins[0], list):
                raise Refused("it appends to a list built from the input")
            ins[0].append(ins[1])
            env[outs[0]] = ins[0]
        elif kind == "aten::len":
            env[outs[0]] = self._len(ins[0], node)
        elif kind in ("aten::__is__", "aten::__isnot__"):
            env[outs[0]] = self._is(node, ins, kind == "aten::__isnot__")
        elif kind == "aten::__not__":
            value = ins[0]
            if isinstance(value, _Dyn):
                env[outs[0]] = self._emit("call_function", "operator.eq", (value, False))
            else:
                env[outs[0]] = not value
        elif kind == "aten::format":
            if not all(_static(v) for v in ins) or not isinstance(ins[0], str):
                raise Refused("it formats a string from the input")
            env[outs[0]] = ins[0].format(*ins[1:])
        elif kind == "aten::__contains__" and all(_static(v) for v in ins):
            env[outs[0]] = ins[1] in ins[0]
        elif kind in ("prim::min", "prim::max") and all(_static(v) for v in ins):
            env[outs[0]] = (min if kind == "prim::min" else max)(*ins)
        elif kind == "prim::RaiseException":
            raise Refused("it raises an exception on every input in eval mode")
        elif kind.startswith("aten::"):
            self._aten(node, ins, outs, env)
        else:
            raise Refused(f"it uses {kind}, which is not a pure tensor operation")

    def _constant(self, node: Any) -> Any:
        if not node.hasAttributes() and node.output().type().kind() == "NoneType":
            return None
        value = node.output().toIValue()
        if isinstance(value, Tensor):
            name = f"_scripted_constant_{self.constants}"
            self.constants += 1
            self.tensors[name] = value.detach()
            return _TensorRef(name)
        if isinstance(value, (type(None), bool, int, float, str, torch.device, torch.dtype)):
            return value
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (bool, int, float, str, type(None))) for v in value
        ):
            return list(value) if isinstance(value, list) else tuple(value)
        raise Refused(f"it holds a constant of type {type(value).__name__}")

    def _getattr(self, owner: Any, name: str) -> Any:
        if not isinstance(owner, _ModuleRef):
            raise Refused(f"it reads the attribute {name} of something not a module")
        module = self._sub(owner.path)
        full = f"{owner.path}.{name}" if owner.path else name
        if name == "training":
            return False
        try:
            value = getattr(module, name)
        except AttributeError:
            raise Refused(f"it reads {full}, which the archive does not hold") from None
        if isinstance(value, torch.jit.ScriptModule):
            return _ModuleRef(full)
        if isinstance(value, Tensor):
            if full not in self.tensors:
                self.tensors[full] = value.detach()
                if name in dict(module.named_parameters(recurse=False)):
                    self.params.add(full)
            return _TensorRef(full)
        if _static(value):
            return value
        raise Refused(f"its attribute {full} is a {type(value).__name__}")

    def _sub(self, path: str) -> Any:
        module = self.root
        for part in filter(None, path.split(".")):
            module = getattr(module, part)
        return module

    def _unpack(self, value: Any, outs: list, env: dict, kind: str) -> None:
        if isinstance(value, (list, tuple)):
            if len(value) != len(outs):
                raise Refused(f"{kind} of {len(value)} values into {len(outs)}")
            for out, item in zip(outs, value, strict=True):
                env[out] = item
        elif isinstance(value, _Dyn):
            for i, out in enumerate(outs):
                env[out] = self._emit("call_function", "operator.getitem", (value, i))
        else:
            raise Refused(f"{kind} of a {type(value).__name__}")

    def _index(self, value: Any, index: Any, kind: str) -> Any:
        if not isinstance(index, int):
            raise Refused(f"{kind} at a position computed from the input")
        if isinstance(value, (list, tuple)):
            return value[index]
        if isinstance(value, _Dyn):
            return self._emit("call_function", "operator.getitem", (value, index))
        raise Refused(f"{kind} of a {type(value).__name__}")

    def _len(self, value: Any, node: Any) -> Any:
        if isinstance(value, (list, tuple, str)):
            return len(value)
        source = self._sizes_of.get(value) if isinstance(value, _Dyn) else None
        if source is not None:  # len(x.size()) is x.dim()
            return self._emit("call_function", "aten::dim.default", (source,))
        raise Refused("it takes the length (aten::len) of a list built from the input")

    def _is(self, node: Any, ins: list, negate: bool) -> Any:
        a, b = ins
        if _static(a) and _static(b):
            same = a is b or (a is None and b is None)
            return same != negate
        if a is None or b is None:
            other = b if a is None else a
            if isinstance(other, (_TensorRef, _Dyn, _ModuleRef, list, tuple)):
                optional = any(v.type().kind() == "OptionalType" for v in node.inputs())
                if not optional or not isinstance(other, _Dyn):
                    return negate  # a tensor, module or list is never None
        raise Refused("it tests whether a value computed from the input is None")

    def _if(self, node: Any, cond: Any, env: dict) -> None:
        then_block, else_block = list(node.blocks())
        outs = list(node.outputs())
        if isinstance(cond, _Dyn):
            raising = [_raises(b) for b in (then_block, else_block)]
            if raising == [True, False]:
                self._guard(then_block, cond, fail_when=True)
                chosen = else_block
            elif raising == [False, True]:
                self._guard(else_block, cond, fail_when=False)
                chosen = then_block
            else:
                raise Refused(
                    "it branches on a value computed from the input (data-dependent "
                    "control flow, prim::If)"
                )
        elif isinstance(cond, bool):
            chosen = then_block if cond else else_block
        else:
            raise Refused(f"it branches on a {type(cond).__name__}")
        self._block(chosen, env)
        for out, value in zip(outs, chosen.outputs(), strict=True):
            env[out] = env[value]

    def _guard(self, block: Any, cond: Any, fail_when: bool) -> None:
        message = "a check in the model's own code failed"
        for inner in block.nodes():
            if inner.kind() == "prim::RaiseException":
                text = _constant_text(next(iter(inner.inputs())))
                message = text or message
        ok = self._emit("call_function", "operator.eq", (cond, not fail_when))
        self._emit("call_function", "torch._assert", (ok, message[:300]))
        self.guards += 1

    def _loop(self, node: Any, ins: list, env: dict) -> None:
        trips, cond, *carried = ins
        (body,) = list(node.blocks())
        if not isinstance(trips, int) or not isinstance(cond, bool):
            raise Refused("it loops a number of times computed from the input (prim::Loop)")
        body_in = list(body.inputs())
        i = 0
        while cond and i < trips:
            env[body_in[0]] = i
            for value, current in zip(body_in[1:], carried, strict=True):
                env[value] = current
            self._block(body, env)
            results = [env[v] for v in body.outputs()]
            cond, carried = results[0], results[1:]
            if not isinstance(cond, bool):
                raise Refused("it loops while a value computed from the input holds (prim::Loop)")
            i += 1
        for out, value in zip(node.outputs(), carried, strict=True):
            env[out] = value

    def _aten(self, node: Any, ins: list, outs: list, env: dict) -> None:
        kind = node.kind()
        name = kind.removeprefix("aten::")
        schema = node.schema()
        if schema == "(no schema)":
            raise Refused(f"it uses {kind} without a known signature")
        qual = schema.split("(", 1)[0].removeprefix("aten::")
        overload = qual.split(".", 1)[1] if "." in qual else "default"
        dynamic = any(_has_dynamic(v) for v in ins)
        if name == "__getitem__" and isinstance(ins[0], (list, tuple)) and _static(ins[1]):
            env[outs[0]] = ins[0][ins[1]]
            return
        if name == "list" and isinstance(ins[0], (list, tuple, _Dyn)):
            # a copy of a list: a fresh Python list, or the list an operation returned
            env[outs[0]] = ins[0] if isinstance(ins[0], _Dyn) else list(ins[0])
            return
        if name in SCALAR_OPS and not dynamic and all(_static(v) for v in ins):
            try:
                env[outs[0]] = SCALAR_OPS[name](*ins)
            except Exception as e:  # noqa: BLE001 - e.g. a constant division by zero
                raise Refused(f"its {kind} fails on its constants: {e}") from None
            return
        if name in SCALAR_OPS and not _takes_tensors(schema):
            target = f"operator.{SCALAR_OPS[name].__name__}"
            env[outs[0]] = self._emit("call_function", target, tuple(self._encode(v) for v in ins))
            return
        if name in NUM_OPS and any(isinstance(v, _Num) for v in ins[:2]) and len(ins) == 2:
            # traced arithmetic on sizes (channels // groups): numbers, kept as numbers
            a, b = (v.value if isinstance(v, _Num) else v for v in ins)
            if _static(a) and _static(b):
                env[outs[0]] = _Num(NUM_OPS[name](a, b))
            else:
                op = f"operator.{NUM_OPS[name].__name__}"
                env[outs[0]] = _Num(self._emit("call_function", op, (a, b)))
            return
        if name not in TENSOR_OPS:
            raise Refused(f"it uses {kind}, which is not on the list of pure tensor operations")
        if self._as_module(name, ins, outs, env):
            return
        args, kwargs = _split_arguments(schema, [self._encode(v) for v in ins])
        result = self._emit("call_function", f"aten::{name}.{overload}", args, kwargs)
        if name == "size" and len(ins) == 1:
            self._sizes_of[result] = self._encode(ins[0])
        if len(outs) == 1:
            env[outs[0]] = result
        else:
            for i, out in enumerate(outs):
                env[out] = self._emit("call_function", "operator.getitem", (result, i))

    def _encode(self, value: Any) -> Any:
        """A value as an fx argument: tensors of the archive become get_attr nodes."""
        if isinstance(value, _TensorRef):
            if value.name not in self.got_attr:
                self.got_attr[value.name] = self._emit("get_attr", value.name)
            return self.got_attr[value.name]
        if isinstance(value, list):
            return [self._encode(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._encode(v) for v in value)
        if isinstance(value, (_ModuleRef, _Uninitialized)):
            raise Refused("it passes a module or an unset value to an operation")
        if isinstance(value, _Num):
            raise Refused("it computes with a size of the input turned into a tensor")
        return value

    # -- conv / batch_norm / linear as real modules --
    def _as_module(self, name: str, ins: list, outs: list, env: dict) -> bool:
        spec = None
        if name in ("conv1d", "conv2d", "conv3d") and len(ins) == 7:
            x, w, b, stride, padding, dilation, groups = ins
            spec = self._conv_spec(w, b, stride, padding, dilation, groups)
        elif name == "_convolution" and len(ins) >= 9:
            x, w, b, stride, padding, dilation, transposed, _out_pad, groups = ins[:9]
            if transposed is False:
                spec = self._conv_spec(w, b, stride, padding, dilation, groups)
        elif name == "batch_norm" and len(ins) == 9:
            x, w, b, mean, var, training, momentum, eps, _cudnn = ins
            spec = self._bn_spec(w, b, mean, var, training, momentum, eps)
        elif name == "linear" and len(ins) == 3:
            x, w, b = ins
            spec = self._linear_spec(w, b)
        elif name in ("layer_norm", "group_norm") and len(ins) == 6:
            x, size, w, b, eps, _cudnn = ins  # size: normalized_shape, or the group count
            spec = self._norm_spec(name, size, w, b, eps)
        if spec is None or not isinstance(x, _Dyn) or len(outs) != 1:
            return False
        path, kind, kwargs, tensors = spec
        known = self.modules.get(path)
        if known is not None and (known["kind"], known["kwargs"]) != (kind, kwargs):
            return False  # the same weights used two ways: leave both as plain operations
        self.modules[path] = {"kind": kind, "kwargs": kwargs, "tensors": tensors}
        env[outs[0]] = self._emit("call_module", path, (x,))
        return True

    def _owner(self, *refs: Any) -> str | None:
        """The module path all given tensor refs belong to (as .weight, .bias, ...)."""
        paths = {r.name.rpartition(".")[0] for r in refs if isinstance(r, _TensorRef)}
        if len(paths) != 1:
            return None
        path = paths.pop()
        return path or None

    def _conv_spec(self, w, b, stride, padding, dilation, groups):
        if not isinstance(w, _TensorRef) or not (b is None or isinstance(b, _TensorRef)):
            return None
        path = self._owner(w, b)
        if path is None or not w.name.endswith(".weight"):
            return None
        if b is not None and not b.name.endswith(".bias"):
            return None
        weight = self.tensors[w.name]
        dims = weight.dim() - 2
        if dims not in (1, 2, 3) or not isinstance(groups, int) or groups < 1:
            return None
        if not all(_int_list(v, dims) for v in (stride, dilation)):
            return None
        if not (isinstance(padding, str) or _int_list(padding, dims)):
            return None
        kwargs = {
            "in_channels": int(weight.shape[1]) * groups,
            "out_channels": int(weight.shape[0]),
            "kernel_size": list(weight.shape[2:]),
            "stride": list(stride),
            "padding": padding if isinstance(padding, str) else list(padding),
            "dilation": list(dilation),
            "groups": groups,
            "bias": b is not None,
        }
        tensors = {"weight": w.name, **({"bias": b.name} if b is not None else {})}
        return path, f"Conv{dims}d", kwargs, tensors

    def _bn_spec(self, w, b, mean, var, training, momentum, eps):
        refs = [r for r in (w, b, mean, var) if r is not None]
        if not refs or not all(isinstance(r, _TensorRef) for r in refs):
            return None
        path = self._owner(*refs)
        if path is None or (w is None) != (b is None) or (mean is None) != (var is None):
            return None
        names = {"weight": w, "bias": b, "running_mean": mean, "running_var": var}
        if any(r is not None and r.name != f"{path}.{k}" for k, r in names.items()):
            return None
        # eval mode with statistics, or batch statistics where the module keeps none
        if training is not (mean is None) or not isinstance(eps, float):
            return None
        if momentum is not None and not isinstance(momentum, float):
            return None
        features = int(self.tensors[refs[0].name].shape[0])
        tensors = {k: r.name for k, r in names.items() if r is not None}
        tracked = f"{path}.num_batches_tracked"
        if mean is not None:
            module = self._sub(path)
            count = getattr(module, "num_batches_tracked", None)
            if isinstance(count, Tensor):
                self.tensors.setdefault(tracked, count.detach())
                tensors["num_batches_tracked"] = tracked
        original = str(getattr(self._sub(path), "original_name", ""))
        kind = original if original in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d") else "any"
        kwargs = {
            "num_features": features,
            "eps": eps,
            "momentum": momentum,
            "affine": w is not None,
            "track_running_stats": mean is not None,
        }
        return path, f"BatchNorm:{kind}", kwargs, tensors

    def _norm_spec(self, name: str, size: Any, w: Any, b: Any, eps: Any):
        """LayerNorm / GroupNorm as modules, so that the engine lists them as skipped."""
        if not isinstance(w, _TensorRef) or not (b is None or isinstance(b, _TensorRef)):
            return None
        path = self._owner(w, b)
        if path is None or w.name != f"{path}.weight" or not isinstance(eps, float):
            return None
        if b is not None and b.name != f"{path}.bias":
            return None
        weight = self.tensors[w.name]
        tensors = {"weight": w.name, **({"bias": b.name} if b is not None else {})}
        if name == "layer_norm":
            if not isinstance(size, list) or list(weight.shape) != size:
                return None
            kwargs = {"normalized_shape": size, "eps": eps, "bias": b is not None}
            return path, "LayerNorm", kwargs, tensors
        if not isinstance(size, int) or weight.dim() != 1 or b is None:
            return None
        kwargs = {"num_groups": size, "num_channels": int(weight.shape[0]), "eps": eps}
        return path, "GroupNorm", kwargs, tensors

    def _linear_spec(self, w, b):
        if not isinstance(w, _TensorRef) or not (b is None or isinstance(b, _TensorRef)):
            return None
        path = self._owner(w, b)
        if path is None or not w.name.endswith(".weight") or self.tensors[w.name].dim() != 2:
            return None
        if b is not None and not b.name.endswith(".bias"):
            return None
        weight = self.tensors[w.name]
        kwargs = {
            "in_features": int(weight.shape[1]),
            "out_features": int(weight.shape[0]),
            "bias": b is not None,
        }
        tensors = {"weight": w.name, **({"bias": b.name} if b is not None else {})}
        return path, "Linear", kwargs, tensors


def _static(value: Any) -> bool:
    if isinstance(value, _Dyn):
        return False
    if isinstance(value, (list, tuple)):
        return all(_static(v) for v in value)
    return isinstance(value, (type(None), bool, int, float, str, torch.device, torch.dtype))


def _has_dynamic(value: Any) -> bool:
    if isinstance(value, (_Dyn, _TensorRef)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_dynamic(v) for v in value)
    return False


def _split_arguments(schema: str, values: list) -> tuple[tuple, dict]:
    """Positional arguments and keyword-only ones (``*, dtype=None``) by the op's schema."""
    try:
        arguments = torch._C.parse_schema(schema).arguments
    except RuntimeError:
        raise Refused(f"its operation {schema.split('(')[0]} has an unreadable signature") from None
    if len(arguments) != len(values):
        raise Refused(
            f"its {schema.split('(')[0]} has {len(values)} arguments, not {len(arguments)}"
        )
    args = tuple(v for a, v in zip(arguments, values, strict=True) if not a.kwarg_only)
    kwargs = {a.name: v for a, v in zip(arguments, values, strict=True) if a.kwarg_only}
    return args, kwargs


def _takes_tensors(schema: str) -> bool:
    return "Tensor" in schema.split("->", 1)[0]


def _int_list(value: Any, n: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, (bool, _Dyn)) for v in value)
    )


def _raises(block: Any) -> bool:
    """A block that ends by raising (its outputs are never used)."""
    return any(n.kind() == "prim::RaiseException" for n in block.nodes())


def _constant_text(value: Any) -> str | None:
    """The text of a raise: a constant string, or the template of aten::format."""
    node = value.node()
    if node.kind() == "prim::Constant":
        text = value.toIValue()
        return text if isinstance(text, str) else None
    if node.kind() == "aten::format":
        return _constant_text(next(iter(node.inputs())))
    return None


def script_to_program(module: torch.jit.ScriptModule) -> tuple[dict, list[Tensor]]:
    """(program, tensors): the eval-mode forward of ``module`` as allowed operations.

    Raises ``Refused`` naming what cannot be converted. Runs none of the module's code.
    """
    converter = _Converter(module)
    program = converter.convert()
    tensors = [converter.tensors[n] for n in program["tensors"]]
    _check_json(program)
    return program, tensors


def _check_json(program: dict) -> None:
    """The program crosses to the parent as JSON: encode the few non-JSON constants."""

    def fix(value: Any) -> Any:
        if isinstance(value, _Dyn):
            return {"node": value.index}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, float) and not math.isfinite(value):
            return {"float": repr(value)}
        if isinstance(value, tuple):
            return {"tuple": [fix(v) for v in value]}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    for node in program["nodes"]:
        node["args"] = [fix(a) for a in node["args"]]
        node["kwargs"] = {str(k): fix(v) for k, v in node["kwargs"].items()}
