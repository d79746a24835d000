"""CIFAR-10 / CIFAR-100 batches (``cifar-10-batches-py/``, ``cifar-100-python/``), read without
letting the file build anything but plain numeric arrays.

The batches are pickles of dicts of numpy arrays. Unpickling a numpy array normally lets the
file choose a ``numpy.dtype`` and then rebuild it from the file's own state (``BUILD`` →
``dtype.__setstate__``): a dtype whose state declares an object field with its flags cleared
makes numpy treat the file's bytes as object pointers, and reading the array crashes the
process (a memory-corruption primitive). So ``_NumpyOnlyUnpickler``:

- never calls ``__setstate__`` with the file's state: a dtype is taken from a fixed list of
  plain numeric dtypes (bool, int8–64, uint8–64, float16–64, either byte order) and its state
  must be exactly the one that dtype pickles to; an array is rebuilt with a dtype from that
  list, its shape and raw bytes checked against each other;
- lets the file call only numpy's own array rebuilders, each checked the same way, and
  ``_codecs.encode`` to latin-1 (Python 2 strings); no other callable, no ``NEWOBJ``/``OBJ``
  (``ndarray.__new__`` over the file's bytes), no sets, dict keys only of plain types;
- reads the opcodes first (``core.safety.pickle_guard``): shared references that nest (a hash bomb)
  are refused by their structure before anything is built.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.idx import _normalise_split
from core.data.imagefolder import _natural_key
from core.data.images import ImageSet, _labels_from_array, os_error_message
from core.data.names import CIFAR10_CLASSES
from core.errors import DataError
from core.safety.paths import printable
from core.safety.pickle_guard import NestedSharing, check_sharing

__all__ = ["load_cifar", "read_cifar_pickle", "SAFE_DTYPES"]

_NUMERIC = "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64".split()
# dtype.str ('|u1', '<i8', '>f4', …) → a dtype object made here, never by the file
SAFE_DTYPES: dict[str, np.dtype] = {}
for _name in _NUMERIC:
    for _order in "<>":
        _dt = np.dtype(_name).newbyteorder(_order)
        SAFE_DTYPES.setdefault(_dt.str, _dt)
# the names the file may give numpy.dtype(...) ('u1', 'i8', 'uint8', '<i8', 'b', …)
_DTYPE_NAMES = {
    *(_dt.str for _dt in SAFE_DTYPES.values()),
    *(_dt.str[1:] for _dt in SAFE_DTYPES.values()),
    *(_dt.char for _dt in SAFE_DTYPES.values()),  # numpy's own empty array is made of 'b'
    *_NUMERIC,
}
MAX_BATCH_BYTES = 1 << 31  # one array in one batch (CIFAR's are 30 MB)


class _Refused(pickle.UnpicklingError):
    """Something a CIFAR batch never holds."""


def _safe_dtype(value: Any) -> np.dtype:
    """A dtype from SAFE_DTYPES equal to ``value`` (a dtype, or the names above)."""
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if isinstance(value, str):
        if value not in _DTYPE_NAMES:
            shown = printable(value, 40)
            raise _Refused(f"refusing dtype {shown}: only plain numbers are expected")
        value = np.dtype(value)
    if (
        not isinstance(value, np.dtype)
        or value.str not in SAFE_DTYPES
        or value.names is not None
        or value.subdtype is not None
        or value.hasobject
    ):
        raise _Refused("refusing an array type that is not a plain number type")
    return SAFE_DTYPES[value.str]


def _make_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` as pickles call it: a fresh copy of a plain dtype
    (fresh, so that a BUILD on it can never touch numpy's own dtype objects)."""
    if not isinstance(spec, (str, bytes)) or align not in (False, 0):
        raise _Refused("refusing a dtype that is not a plain number type")
    return np.dtype(_safe_dtype(spec), copy=True)


def _dtype_state(dtype: np.dtype) -> tuple:
    return dtype.__reduce__()[2]


def _numel(shape: Any) -> int:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape
    ):
        raise _Refused("refusing an array shape that is not a tuple of sizes")
    return math.prod(shape)


def _check_size(nbytes: int) -> None:
    if nbytes > MAX_BATCH_BYTES:
        raise _Refused(f"refusing an array of {nbytes:,} bytes: a CIFAR batch is 30 MB")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an empty plain array for BUILD to fill."""
    if subtype is not np.ndarray:
        raise _Refused("refusing an array subclass")
    _check_size(_numel(shape))
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5 arrays), with a dtype from SAFE_DTYPES."""
    dt = _safe_dtype(dtype)
    n = _numel(shape)
    if not isinstance(buffer, (bytes, bytearray)) or len(buffer) != n * dt.itemsize:
        raise _Refused("refusing an array whose bytes do not match its shape")
    if order not in ("C", "F"):
        raise _Refused("refusing an array of unknown memory order")
    return np.frombuffer(bytes(buffer), dtype=dt).reshape(shape, order=order).copy()


def _scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's ``scalar(dtype, bytes)`` (a numpy integer or float), plain types only."""
    dt = _safe_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused("refusing a numpy scalar whose bytes do not match its type")
    return np.frombuffer(data, dtype=dt)[0]


def _encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode(str, 'latin1')``: how Python 3 pickles bytes for Python 2."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused("refusing a text encoding other than latin-1")
    return codecs.encode(obj, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,  # only as _reconstruct's first argument
        ("numpy", "dtype"): _make_dtype,
        ("_codecs", "encode"): _encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = _scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_CALLABLE = {_make_dtype, _reconstruct, _frombuffer, _scalar, _encode}
_HASHABLE_KEYS = (str, bytes, int, float, bool, type(None))


def _check_key(key: Any) -> Any:
    # Hashing a tuple nested n deep whose parts repeat one memoised object costs 2^n: a few
    # hundred bytes of pickle can hash for ever. CIFAR's dicts only have plain keys.
    if not isinstance(key, _HASHABLE_KEYS):
        raise _Refused(
            f"refusing a dict key of type {type(key).__name__}: only plain keys are expected"
        )
    return key


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """Rebuilds plain numeric numpy arrays and builtin containers, refuses anything else.
    Pure Python, so that every check runs before anything is built or hashed."""

    _allowed = _allowed_globals()
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load {printable(module, 60)}.{printable(name, 60)}: only numpy "
                "arrays are expected"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing a persistent reference: CIFAR batches hold none")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in _CALLABLE or not isinstance(args, tuple):
            raise _Refused("refusing to call anything but numpy's array rebuilders")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.dtype or isinstance(inst, np.dtype):
            # a dtype made by _make_dtype: its state must be the one it pickles to (a byte
            # order at most); it is never set from the file
            if not isinstance(state, tuple) or len(state) != 8 or state[0] != 3:
                raise _Refused("refusing a dtype state that is not a plain number type's")
            order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
            if order not in ("<", ">", "|", "="):  # bytes in Python 2 pickles (CIFAR's own)
                raise _Refused("refusing a dtype of unknown byte order")
            wanted = inst if order in ("|", "=") else inst.newbyteorder(order)
            if tuple(state[2:]) != tuple(_dtype_state(wanted)[2:]):
                raise _Refused("refusing a dtype whose state declares fields or flags")
            if wanted.str != inst.str:
                self.stack[-1] = SAFE_DTYPES[_safe_dtype(wanted).str]
                self._replace_in_memo(inst, self.stack[-1])
            return
        if type(inst) is np.ndarray:
            if not isinstance(state, tuple) or len(state) != 5:
                raise _Refused("refusing an array state of unknown form")
            version, shape, dtype, fortran, raw = state
            dt = _safe_dtype(dtype)
            n = _numel(shape)
            if isinstance(raw, str):
                raw = raw.encode("latin1")
            if version != 1 or not isinstance(fortran, bool) or not isinstance(raw, bytes):
                raise _Refused("refusing an array state of unknown form")
            _check_size(n * dt.itemsize)
            if len(raw) != n * dt.itemsize:
                raise _Refused(
                    f"refusing an array whose {len(raw):,} bytes do not fill its shape "
                    f"{shape} of {dt.name}"
                )
            inst.__setstate__((1, shape, dt, fortran, raw))  # the dtype is ours, not the file's
            return
        raise _Refused(f"refusing to rebuild a {type(inst).__name__}: CIFAR batches hold none")

    def _replace_in_memo(self, old: Any, new: Any) -> None:
        for key, value in list(self.memo.items()):
            if value is old:
                self.memo[key] = new

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = _check_key(self.stack.pop())
        self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[_check_key(items[i])] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.append({_check_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def refuse_set(self) -> None:
        raise _Refused("refusing a set: CIFAR batches hold no sets")

    def refuse_object(self) -> None:
        raise _Refused("refusing to create an object: CIFAR batches hold only arrays")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    for _opcode in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_opcode[0]] = refuse_set
    for _opcode in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST, pickle.EXT1,
                    pickle.EXT2, pickle.EXT4):  # fmt: skip
        dispatch[_opcode[0]] = refuse_object


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch (a dict of arrays and lists), or a DataError in one line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(os_error_message(e, path)) from None
    try:
        check_sharing(io.BytesIO(raw))
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except NestedSharing as e:
        raise DataError(f"{path} is not a CIFAR batch: {e}") from None
    except _Refused as e:
        raise DataError(f"{path} is not a CIFAR batch: {e}") from None
    except RecursionError:
        raise DataError(f"{path} is not a CIFAR batch: it nests objects too deeply") from None
    except (MemoryError, OverflowError):
        raise DataError(f"{path} is not a CIFAR batch: it declares impossibly large data") from None
    except Exception as e:  # noqa: BLE001 - a malformed pickle raises almost anything
        first = str(e).splitlines()[0] if str(e) else "malformed"
        raise DataError(
            f"{path} is not a CIFAR batch (a pickled dict of arrays): {type(e).__name__}: "
            f"{printable(first, 200)}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _plain_labels(value: Any, where: Path) -> np.ndarray:
    """The batch's labels (a list of ints or an integer array) as an array, checked."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        for v in value
    ):
        raise DataError(f"{where}: the labels must be a list of integers")
    try:
        return np.asarray(value)
    except (OverflowError, ValueError):
        raise DataError(f"{where}: the labels must be integers") from None


def load_cifar(d: Path, split: str | None, limit: int | None) -> ImageSet:
    """The train (data_batch_*) or test (test_batch) split of a CIFAR folder."""
    which = _normalise_split(split)
    cifar100 = (d / "meta").is_file() and not (d / "batches.meta").is_file()
    if cifar100:
        files = [d / ("train" if which == "train" else "test")]
        label_key, names_key, meta = "fine_labels", "fine_label_names", d / "meta"
    else:
        if which == "train":
            files = sorted(d.glob("data_batch_*"), key=lambda f: _natural_key(f.name))
        else:
            files = [d / "test_batch"]
        label_key, names_key, meta = "labels", "label_names", d / "batches.meta"
    files = [f for f in files if f.is_file()]
    if not files:
        expected = "data_batch_1..5" if which == "train" else "test_batch"
        raise DataError(f"CIFAR folder {d} has no {which} batches ({expected})")

    images, labels, n = [], [], 0
    for f in files:
        batch = read_cifar_pickle(f)
        if "data" not in batch or label_key not in batch:
            keys = printable(sorted(batch), 200)
            raise DataError(f"{f}: expected keys 'data' and '{label_key}', found {keys}")
        data = batch["data"]
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
        ):
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else "no array"
            raise DataError(f"{f}: expected uint8 data of shape N×3072, found {found}")
        lab = _labels_from_array(_plain_labels(batch[label_key], f), f).numpy()
        if len(lab) != len(data):
            raise DataError(f"{f}: {len(data)} images but {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
        n += len(data)
        if limit is not None and n >= limit:
            break
    x = np.concatenate(images)[:limit]
    y = np.concatenate(labels)[:limit]

    class_names = None
    if meta.is_file():
        m = read_cifar_pickle(meta)
        names = m.get(names_key)
        if isinstance(names, (list, tuple)):
            class_names = [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names
            ]
    if class_names is None and not cifar100:
        class_names = list(CIFAR10_CLASSES)
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(y),
        class_names,
        f"{d} ({which})",
    )
