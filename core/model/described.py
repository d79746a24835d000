"""A registered architecture's model, built only when something asks for it, and what
`bnp info` said about its layers, remembered so that the next `bnp info` of a file with the
same layout answers without building it.

Building a torchvision model imports torchvision, whose `torchvision.ops` imports
`torch._dynamo`: on a busy machine that costs more than reading a ResNet-50's file. `bnp info`
needs the model only for what depends on its structure (the BatchNorm table from the fx trace,
which methods apply), and that is the same for every file of the same layout. So:

- ``deferred(detection, state_dict, path)`` gives a ``Deferred`` model: ``LoadedCheckpoint.model``
  (the ``MODEL`` property) builds it on first use, under a lock (the window loads on worker
  threads). A layout never described before is built at once, so its load errors are said when
  the file is opened, exactly as before; only a layout that was built and described before
  waits.
- ``remember(ckpt, spec, lines)`` (after `bnp info` built the model) writes the layout's
  description to ``$XDG_CACHE_HOME/bnp-inspector/described/<key>.json``: the table's lines per
  input size, the model's tensor names in its own order and its BatchNorms with running
  statistics. ``recall(ckpt, spec)`` reads it back and computes the warnings that depend on the
  weights (NaN/∞, running_var ≤ 0) from the file's tensors themselves, with the same code
  (`core.data.checks.tensor_warnings`).

The key is a hash of everything the description depends on: the architecture, classes, channels and
BatchNorms without statistics, every tensor's name, shape and dtype, the torch, torchvision and timm
versions, and the source of the code that builds and describes the model (`core/model/detect.py`,
`core/model/graph.py`, `core/model/nets/`, ...). A corrupt or foreign cache file is ignored (the
model is built, as without a cache).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from core.errors import CheckpointError

if TYPE_CHECKING:
    from core.data.images import InputSpec
    from core.model.architectures import Detection

__all__ = ["Deferred", "MODEL", "deferred", "layer_lines", "recall", "remember"]

# the code a description depends on (relative to core/)
_SOURCES = (
    "model/architectures.py",
    "model/detect.py",
    "model/meta.py",
    "model/graph.py",
    "model/library_models.py",
    "data/checks.py",
    "model/described.py",
)
_FORMAT = 1


class Deferred:
    """A model built on first use (once, under a lock)."""

    def __init__(self, build: Callable[[], nn.Module], key: str) -> None:
        self.key = key
        self._build: Callable[[], nn.Module] | None = build
        self._model: nn.Module | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the model has been built already."""
        return self._model is not None

    def get(self) -> nn.Module:
        """The model, built on the first call (once, whichever thread asks first)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    assert self._build is not None
                    self._model = self._build()
                    self._build = None
        return self._model

    def __reduce__(self):  # a copy or a pickle holds the model itself (a lock cannot be copied)
        return _same, (self.get(),)


def _same(model: nn.Module) -> nn.Module:
    return model


def _get_model(self) -> nn.Module:
    model = self.__dict__["_model"]
    return model.get() if isinstance(model, Deferred) else model


def _set_model(self, model: nn.Module | Deferred) -> None:
    self.__dict__["_model"] = model


# LoadedCheckpoint.model: a Deferred given to the constructor is built on first read
MODEL = property(_get_model, _set_model, doc="The model, eval mode, on CPU, strict-loaded.")


def deferred(detection: Detection, state_dict: Mapping[str, Tensor], path: Path) -> Deferred:
    """The detected architecture holding the file's weights, built now unless a model of this
    very layout was built and described before (then on first use)."""
    from core.model.architectures import load_detected

    def build() -> nn.Module:
        try:  # BatchNorms without statistics in the file get none
            return load_detected(detection, state_dict).eval()
        except RuntimeError as e:
            raise CheckpointError(
                f"{path.name} fits {detection.arch} by its keys and shapes but its weights "
                f"cannot be loaded: {str(e).splitlines()[0]}"
            ) from None

    model = Deferred(build, _layout_key(detection, state_dict))
    if _read(model.key) is None:
        model.get()
    return model


def layer_lines(found: Any, availability: Mapping[str, tuple[bool, str]]) -> list[str]:
    """What `bnp info` prints about the layers: the BatchNorm table, the skipped layers, and
    whether each method applies ("" is an empty line)."""
    from core.model.methods import METHOD_NAMES

    lines = []
    if found.layers:
        lines.append(f"{'#':>3}  {'BatchNorm layer':<28} {'neurons':>7}  fed by")
        for layer in found.layers:
            conv = layer.conv or "(not a convolution: no CLP score)"
            lines.append(f"{layer.index:>3}  {layer.name:<28} {layer.channels:>7}  {conv}")
        total = sum(layer.channels for layer in found.layers)
        lines += ["", f"{len(found.layers)} BatchNorm layers, {total} neurons"]
    groups: dict[tuple[str, str], list[str]] = {}
    for skipped in found.skipped:  # one line per kind and reason
        groups.setdefault((skipped.kind, skipped.reason), []).append(skipped.name)
    for (kind, reason), names in groups.items():
        shown = ", ".join(names[:3]) + (f", … (+{len(names) - 3})" if len(names) > 3 else "")
        lines.append(f"skipped       {len(names)} {kind} ({shown}): {reason}")
    for method, (applies, text) in availability.items():
        status = "applies" if applies else "cannot apply"
        lines.append(f"{METHOD_NAMES[method]:<4} {status}: {text}")
    return lines


def recall(ckpt: Any, spec: InputSpec) -> tuple[list[str], list[str]] | None:
    """(warnings, layer lines) for a checkpoint whose model is not built yet and whose layout
    was described before at this input size; None otherwise (then build and describe)."""
    from core.data.checks import tensor_warnings

    model = ckpt.__dict__.get("_model")
    if not isinstance(model, Deferred) or model.built:
        return None
    known = _read(model.key)
    lines = (known or {}).get("specs", {}).get(_spec_key(spec))
    if known is None or not isinstance(lines, list):
        return None
    state = ckpt.state_dict
    try:
        named = [(name, state[name]) for name in known["tensors"]]
        norms = [(name, state[key], int(n)) for name, key, n in known["norms"]]
    except (KeyError, TypeError, ValueError):
        return None
    return tensor_warnings(named, norms, spec), [str(line) for line in lines]


def remember(ckpt: Any, spec: InputSpec, lines: list[str]) -> None:
    """Keep the layer lines of a model built from a Deferred (nothing for any other)."""
    model = ckpt.__dict__.get("_model")
    if not isinstance(model, Deferred) or not model.built:
        return
    built = model.get()
    state = ckpt.state_dict
    tensors = [name for name, _ in (*built.named_parameters(), *built.named_buffers())]
    if any(name not in state for name in tensors):
        return  # tensors made by the constructor (not in the file): always build
    norms = [
        [name, f"{name}.running_var" if name else "running_var", m.num_features]
        for name, m in built.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None
    ]
    if any(key not in state for _, key, _ in norms):
        return
    known = {"format": _FORMAT, "tensors": tensors, "norms": norms, "specs": {}}
    before = _read(model.key)
    if before is not None and (before["tensors"], before["norms"]) == (tensors, norms):
        known["specs"] = before["specs"]  # the other input sizes described before
    known["specs"][_spec_key(spec)] = lines
    path = _path(model.key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known))
        temporary.replace(path)  # readers never see half a file
    except OSError:
        pass  # an unwritable cache only costs the next call a build


def _spec_key(spec: InputSpec) -> str:
    return f"{spec.channels}x{spec.size[0]}x{spec.size[1]}"


def _path(key: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnp-inspector" / "described" / f"{key}.json"


def _read(key: str) -> dict | None:
    try:
        known = json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return None
    valid = (
        isinstance(known, dict)
        and known.get("format") == _FORMAT
        and isinstance(known.get("tensors"), list)
        and isinstance(known.get("norms"), list)
        and isinstance(known.get("specs"), dict)
    )
    return known if valid else None


def _layout_key(detection: Detection, state_dict: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256(_environment().encode())
    build = (detection.arch, detection.num_classes, detection.in_channels,
             tuple(sorted(detection.no_running_stats)))  # fmt: skip
    digest.update(repr(build).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name]
        digest.update(f"\n{name}\0{tuple(tensor.shape)}\0{tensor.dtype}".encode())
    return digest.hexdigest()[:40]


@functools.cache
def _environment() -> str:
    """The library versions and a hash of our code that builds and describes models."""
    versions = []
    for library in ("torch", "torchvision", "timm"):
        try:
            versions.append(f"{library}={importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{library}=none")
    core = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    files = [core / name for name in _SOURCES] + sorted((core / "model" / "nets").glob("*.py"))
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return ";".join(versions) + ";" + digest.hexdigest()


def memo(kind: str, args: tuple, compute: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    """``compute()``'s JSON value for ``args``, kept on disk (a file per value) per library
    versions and code hash: detection's expected shapes of a registered architecture come
    from a `meta` build, which imports torchvision; the next process reads them instead. A
    kept value that is not ``valid`` (a damaged file) is computed again."""
    key = hashlib.sha256(f"{_environment()}\n{kind}\n{args!r}".encode()).hexdigest()[:40]
    path = _path(f"{kind}-{key}")
    try:
        value = json.loads(path.read_text())["value"]
        if valid(value):
            return value
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not kept yet, or damaged: computed again
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps({"args": repr(args), "value": value}))
        temporary.replace(path)  # readers never see half a file
    except OSError:
        pass  # an unwritable cache only costs the next process a build
    return value
