"""Read a TorchScript archive's weights without running any of its code.

`torch.jit.load` compiles the archive's `code/` and runs it: a class's scripted `__setstate__`
executes on loading (it can write files, or loop forever). Yet the weights are plain data: the
archive's `data.pkl` pickles the module objects (classes named `__torch__.…`, state dicts of
attributes) and its tensors live in `data/N` records, like `torch.save`'s zip format. This
module unpickles `data.pkl` with an allow-list (script classes become inert stand-ins, tensors
are rebuilt from the records with bounds checked) and names the parameters and buffers from the
`__parameters__`/`__buffers__` lines of the code, read as text. A class that restores its state
with its own `__setstate__` cannot be read this way: the caller refuses it unless trusted.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from core.errors import CheckpointError

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS = re.compile(r"^class\s+(\w+)\s*\(", re.M)
_NAMES = re.compile(r"^\s+__(parameters|buffers)__\s*=\s*\[([^\]]*)\]", re.M)
_SETSTATE = re.compile(r"\bdef\s+__setstate__\b")


class CustomStateError(Exception):
    """The archive restores some object with its own code (a scripted ``__setstate__``)."""


class ScriptObject:
    """An inert stand-in for an instance of a TorchScript class: its name and pickled state."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _list(*args: Any) -> list:
    return list(args[0]) if args else []


def _restore_type_tag(value: Any, _type: Any = None) -> Any:
    return value


class _Unpickler(pickle.Unpickler):
    """Only tensors, plain containers and stand-ins for script classes; nothing is called."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("collections", "OrderedDict"): OrderedDict,
            ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
            ("torch.jit._pickle", "build_intlist"): _list,
            ("torch.jit._pickle", "build_doublelist"): _list,
            ("torch.jit._pickle", "build_boollist"): _list,
            ("torch.jit._pickle", "build_tensorlist"): _list,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise CustomStateError(f"it refers to {module}.{name}, which is not plain tensor data")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError("its data.pkl refers to storage in an unknown way")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise CheckpointError("its data.pkl refers to storage in an unknown way")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise CheckpointError(f"its record {name} is missing") from None
            if not isinstance(numel, int) or numel < 0:
                raise CheckpointError(f"its record {name} has a bad size")
            nbytes = numel * kind.dtype.itemsize
            if info.file_size < nbytes:
                raise CheckpointError(
                    f"its record {name} holds {info.file_size} bytes, not the {nbytes} declared"
                )
            raw = bytearray(self._archive.read(name)[:nbytes])
            flat = torch.frombuffer(raw, dtype=kind.dtype) if nbytes else torch.empty(0)
            self._storages[key] = flat.to(kind.dtype)
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> Tensor:
        if not isinstance(storage, Tensor):
            raise CheckpointError("its data.pkl rebuilds a tensor from something not a storage")
        try:
            size, stride, offset = tuple(map(_index, size)), tuple(map(_index, stride)), offset
            offset = _index(offset)
            if len(size) != len(stride) or any(s < 0 for s in (*size, *stride, offset)):
                raise ValueError
            last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True) if n > 0)
            if all(n > 0 for n in size) and last >= storage.numel():
                raise ValueError
            return storage.as_strided(size, stride, offset)
        except (TypeError, ValueError, RuntimeError):
            raise CheckpointError("its data.pkl describes a tensor outside its storage") from None


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def is_torchscript(names: list[str]) -> bool:
    """TorchScript archives are zips like torch.save's, but carry compiled code."""
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def read_torchscript(archive: zipfile.ZipFile, file_name: str) -> tuple[dict[str, Tensor], Any]:
    """(state_dict, text of extra/bnp_meta.json or None); CustomStateError when code is needed."""
    names = archive.namelist()
    data_pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(data_pkl) != 1:
        raise CheckpointError(f"{file_name} is a TorchScript archive without its data.pkl.")
    prefix = data_pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names:
        order = archive.read(f"{prefix}byteorder")[:16].decode("ascii", "replace").strip()
        if order not in ("", sys.byteorder):
            raise CheckpointError(f"{file_name} was written on a {order}-endian machine.")
    params, custom = _code_facts(archive, prefix, names)
    if custom:
        raise CustomStateError(
            f"its TorchScript class {custom[0]} restores its state with its own code "
            "(__setstate__), which would run on loading"
        )
    try:
        root = _Unpickler(archive.read(data_pkl[0]), archive, prefix).load()
    except CheckpointError as e:  # "its record … holds …": say whose
        raise CheckpointError(f"{file_name} is a damaged TorchScript archive: {e}.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{file_name}'s data.pkl is damaged: {e}") from None
    state_dict = _state_dict(root, params, file_name)
    meta_name = f"{prefix}extra/bnp_meta.json"
    meta = archive.read(meta_name) if meta_name in names else None
    return state_dict, meta


def _code_facts(archive: zipfile.ZipFile, prefix: str, names: list[str]):
    """Parameter/buffer names per class and the classes defining __setstate__, from the code."""
    params: dict[str, set[str]] = {}
    custom: list[str] = []
    code_dir = f"{prefix}code/"
    for name in names:
        if not (name.startswith(code_dir) and name.endswith(".py")):
            continue
        module = name[len(code_dir) : -len(".py")].replace("/", ".")
        text = archive.read(name).decode("utf-8", "replace")
        starts = [(m.start(), m.group(1)) for m in _CLASS.finditer(text)]
        for i, (start, cls) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            body = text[start:end]
            qualname = f"{module}.{cls}"
            found = _NAMES.findall(body)
            if found:
                params[qualname] = {
                    item for _, items in found for item in re.findall(r"\"([^\"]*)\"", items)
                }
            if _SETSTATE.search(body):
                custom.append(qualname)
        if not starts and _SETSTATE.search(text):
            custom.append(module)
    return params, custom


def _state_dict(root: Any, params: dict[str, set[str]], file_name: str) -> dict[str, Tensor]:
    """Parameters and buffers of the module tree, keyed like nn.Module.state_dict()."""
    if not isinstance(root, ScriptObject):
        raise CheckpointError(f"{file_name} holds no TorchScript module.")
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    stack: list[tuple[str, ScriptObject]] = [("", root)]
    while stack:
        prefix, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        state = getattr(obj, "state", None)
        if not isinstance(state, dict):
            raise CustomStateError(f"its object {obj.qualname} keeps its state in its own way")
        names = params.get(obj.qualname)
        children = []
        for key, value in state.items():
            if not isinstance(key, str):
                continue
            if isinstance(value, ScriptObject):
                children.append((f"{prefix}{key}.", value))
            elif isinstance(value, Tensor) and (names is None or key in names):
                out[f"{prefix}{key}"] = value
        stack.extend(reversed(children))
    return out
