"""Read the common checkpoint in-process, safely: a `torch.save` zip of plain tensors and data.

Starting the isolated reader (`core.safety.isolation`) costs a process that imports torch, and every
tensor crosses a pipe. Most checkpoints are plain: `data.pkl` holds dicts, lists and tensors,
and `data/N` records hold the tensors' bytes, stored uncompressed. Such a file is read here,
by our own small pickle machine: it knows a fixed set of instructions and a fixed set of
names (``ALLOWED``), and it never imports or calls anything a file names. The names are only
compared as text; each allowed one is carried out by code of ours (an OrderedDict, a tensor
over a record's bytes, a bytes object). A tensor's bytes are the record's own, mapped from the
file (``mmap``, copy-on-write: writing to a tensor never reaches the file), checked against
its dtype, shape, strides and the record's size before the tensor exists.

Anything else raises ``NotPlain`` with one line saying why, and the caller reads the file in
the isolated child exactly as before: a pickled module, any other name (numpy, a class…),
an instruction not in our set, a legacy or compressed file, a record not aligned or not where
the archive says, a pickle over ``MAX_PICKLE_BYTES``, more than ``MAX_CONTAINERS`` containers,
nesting deeper than ``MAX_DEPTH``, or a container referred to twice (the shape of the "hash
bomb" that `core.safety.pickle_guard` refuses). The work is linear in the pickle's length, and its
memory is bounded by those limits, so a hostile file cannot hang or exhaust this process.

A mapped tensor reads the file when it is touched: a file truncated in place while its
tensors are alive (a training script saving over it) would end the process with SIGBUS.
So mapped tensors are for short-lived readers (`bnp info`); ``copy=True`` (the default)
copies every record into memory and releases the map before returning.
"""

from __future__ import annotations

import mmap
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from core.errors import Cancelled, CheckpointError

__all__ = ["ALLOWED", "MAX_CONTAINERS", "MAX_DEPTH", "MAX_PICKLE_BYTES", "NotPlain", "read"]

MAX_PICKLE_BYTES = 8 * 2**20  # a ResNet-50's (320 tensors) is 38 KiB
MAX_CONTAINERS = 1_000_000
MAX_DEPTH = 64
MAX_DIMS = 32
MAX_ENTRIES = 200_000
_BIG = 1 << 62  # sizes, strides and offsets beyond this are not a tensor's

STORAGES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
# every name a plain checkpoint's pickle may mention, as (module, name) text
ALLOWED = frozenset(
    [
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("_codecs", "encode"),
    ]
    + [("torch", name) for name in STORAGES]
)


class NotPlain(CheckpointError):
    """The file is not a plain torch.save zip this reader handles: read it in the child."""


class _Global:
    """An allowed name, as a token: never the object the name stands for."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Storage:
    __slots__ = ("dtype", "flat")

    def __init__(self, dtype, flat) -> None:
        self.dtype, self.flat = dtype, flat


_MARK = object()
_CONTAINERS = (dict, list, tuple, OrderedDict)
_KEY_TYPES = (str, int, bytes, float, bool, type(None))


def read(path: Path, *, copy: bool = True, cancel=None) -> Any:
    """The object a plain torch.save zip at ``path`` holds, its tensors over the file's
    records (mapped when ``copy`` is False). Raises NotPlain for anything else."""
    if sys.byteorder != "little":
        raise NotPlain("this computer is big-endian")
    try:
        f = path.open("rb")
    except OSError as e:
        raise NotPlain(f"cannot open it: {e.strerror or e}") from None
    with f:
        try:
            archive = zipfile.ZipFile(f)
            entries = archive.infolist()
        except Exception as e:  # noqa: BLE001 - any malformed zip: the child says what is wrong
            raise NotPlain(f"not a zip archive this reader knows ({type(e).__name__})") from None
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as e:
            raise NotPlain(f"cannot map it: {e}") from None
    try:
        records, pickle_bytes = _records(entries, mapped)
        obj = _Machine(pickle_bytes, records, mapped, copy, cancel).run()
    except (NotPlain, Cancelled, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever a damaged pickle provokes: one line
        raise NotPlain(f"its pickle is malformed ({type(e).__name__})") from None
    finally:
        if copy:
            try:
                mapped.close()
            except BufferError:  # pragma: no cover - a view left alive by an error
                pass
    return obj


def _records(entries: list, mapped: mmap.mmap) -> tuple[dict[str, tuple[int, int]], bytes]:
    """{storage key: (offset, size)} of the data records, and the pickle's bytes."""
    if len(entries) > MAX_ENTRIES:
        raise NotPlain(f"it holds {len(entries)} records")
    names = [e.filename for e in entries]
    if len(set(names)) != len(names):
        raise NotPlain("it names a record twice")
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1 or any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        raise NotPlain("not torch.save's layout (a TorchScript archive, or no data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    size = len(mapped)
    spans, records, pickle_span = [], {}, None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.flag_bits & 1:
            raise NotPlain(f"its record {entry.filename} is compressed or encrypted")
        start = _data_start(entry, mapped, size)
        end = start + entry.file_size
        if entry.compress_size != entry.file_size or end > size:
            raise NotPlain(f"its record {entry.filename} lies outside the file")
        spans.append((start, end))
        name = entry.filename
        if name == pkl[0]:
            pickle_span = (start, end)
        elif name.startswith(prefix + "data/"):
            records[name[len(prefix) + 5 :]] = (start, entry.file_size)
        elif name == prefix + "byteorder" and mapped[start:end] != b"little":
            raise NotPlain("its tensors are stored big-endian")
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)):
        raise NotPlain("its records overlap")
    start, end = pickle_span
    if end - start > MAX_PICKLE_BYTES:
        raise NotPlain(f"its pickle is larger than {MAX_PICKLE_BYTES >> 20} MiB")
    return records, mapped[start:end]


def _data_start(entry: zipfile.ZipInfo, mapped: mmap.mmap, size: int) -> int:
    """Where a record's bytes start: after its local header, which must agree with the
    archive's directory."""
    at = entry.header_offset
    if not 0 <= at <= size - 30:
        raise NotPlain(f"its record {entry.filename} lies outside the file")
    head = mapped[at : at + 30]
    if head[:4] != b"PK\x03\x04":
        raise NotPlain(f"its record {entry.filename} has no header where the archive says")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    name = mapped[at + 30 : at + 30 + name_len]
    if name != entry.filename.encode("utf-8") and name != entry.filename.encode("cp437", "replace"):
        raise NotPlain(f"its record {entry.filename} is named otherwise in its header")
    return at + 30 + name_len + extra_len


def _sized(data, pos: int, n: int, width: int) -> tuple[Any, int]:
    """A length-prefixed run of a pickle (the length little-endian in `width` bytes: 1, 4 or
    8) → (the run, the position after it); a run past the end is a truncated pickle."""
    if width == 1:
        size, pos = data[pos], pos + 1
    else:
        (size,), pos = struct.unpack_from("<I" if width == 4 else "<Q", data, pos), pos + width
    if pos + size > n:
        raise NotPlain("its pickle is truncated")
    return data[pos : pos + size], pos + size


class _Machine:
    """The pickle instructions torch.save writes, and the plain data ones; nothing else."""

    def __init__(self, data: bytes, records: dict, mapped, copy: bool, cancel) -> None:
        self.data, self.records, self.mapped, self.copy = data, records, mapped, copy
        self.cancel = cancel
        self.storages: dict[str, _Storage] = {}
        self.depth: dict[int, int] = {}  # id(container) -> nesting depth, when over 1
        self.containers = 0
        import torch

        self.torch = torch

    # ---- helpers --------------------------------------------------------------------------

    def _count(self) -> None:
        self.containers += 1
        if self.containers > MAX_CONTAINERS:
            raise NotPlain(f"it builds more than {MAX_CONTAINERS:,} containers")

    def _place(self, parent: Any, child: Any) -> None:
        """Record that ``child`` went into ``parent``; refuse nesting past MAX_DEPTH."""
        if type(child) in _CONTAINERS:
            depth = self.depth.get(id(child), 1) + 1
            if depth > self.depth.get(id(parent), 1):
                if depth > MAX_DEPTH:
                    raise NotPlain(f"it nests containers more than {MAX_DEPTH} deep")
                self.depth[id(parent)] = depth

    def _tuple(self, items: list) -> tuple:
        t = tuple(items)
        self._count()
        for item in items:
            self._place(t, item)
        return t

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> Any:  # noqa: C901 - one dispatch loop reads best as one function
        data, n = self.data, len(self.data)
        stack: list = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        unpack = struct.unpack_from
        pos = ops = 0
        try:
            while True:
                if pos >= n:
                    raise NotPlain("its pickle ends without STOP")
                op = data[pos]
                pos += 1
                ops += 1
                if not ops & 0xFFFF and self.cancel is not None and self.cancel():
                    raise Cancelled("reading cancelled")
                if op == 0x71:  # q BINPUT
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == 0x68 or op == 0x6A:  # h BINGET, j LONG_BINGET
                    if op == 0x68:
                        key, pos = data[pos], pos + 1
                    else:
                        (key,), pos = unpack("<I", data, pos), pos + 4
                    value = memo[key]
                    if type(value) in _CONTAINERS or type(value) is _Storage:
                        raise NotPlain("it refers to one container twice")
                    stack.append(value)
                elif op == 0x58 or op == 0x8C or op == 0x8D:  # X / \x8c / \x8d: str
                    raw, pos = _sized(data, pos, n, 4 if op == 0x58 else 1 if op == 0x8C else 8)
                    stack.append(str(raw, "utf-8", "surrogatepass"))
                elif op == 0x28:  # ( MARK
                    marks.append(len(stack))
                    if len(marks) > MAX_CONTAINERS:
                        raise NotPlain("its pickle opens too many marks")
                elif op == 0x4B:  # K BININT1
                    stack.append(data[pos])
                    pos += 1
                elif op == 0x4D:  # M BININT2
                    (value,), pos = unpack("<H", data, pos), pos + 2
                    stack.append(value)
                elif op == 0x4A:  # J BININT
                    (value,), pos = unpack("<i", data, pos), pos + 4
                    stack.append(value)
                elif op == 0x8A:  # LONG1
                    size = data[pos]
                    stack.append(
                        int.from_bytes(data[pos + 1 : pos + 1 + size], "little", signed=True)
                    )
                    pos += 1 + size
                elif op == 0x74:  # t TUPLE
                    start = marks.pop()
                    items = stack[start:]
                    del stack[start:]
                    stack.append(self._tuple(items))
                elif op == 0x85:  # TUPLE1
                    stack[-1] = self._tuple(stack[-1:])
                elif op == 0x86:  # TUPLE2
                    stack[-2:] = [self._tuple(stack[-2:])]
                elif op == 0x87:  # TUPLE3
                    stack[-3:] = [self._tuple(stack[-3:])]
                elif op == 0x29:  # ) EMPTY_TUPLE
                    stack.append(())
                elif op == 0x51:  # Q BINPERSID
                    stack.append(self._storage(stack.pop()))
                elif op == 0x52:  # R REDUCE
                    args = stack.pop()
                    stack[-1] = self._reduce(stack[-1], args)
                elif op == 0x89 or op == 0x88:  # NEWFALSE / NEWTRUE
                    stack.append(op == 0x88)
                elif op == 0x63:  # c GLOBAL "module\nname\n"
                    end = data.find(b"\n", pos, pos + 256)
                    end2 = data.find(b"\n", end + 1, end + 257) if end >= 0 else -1
                    if end2 < 0:
                        raise NotPlain("its pickle names an object in a malformed way")
                    module = data[pos:end].decode("ascii", "replace")
                    name = data[end + 1 : end2].decode("ascii", "replace")
                    pos = end2 + 1
                    stack.append(self._global(module, name))
                elif op == 0x93:  # STACK_GLOBAL
                    name, module = stack.pop(), stack.pop()
                    if type(name) is not str or type(module) is not str:
                        raise NotPlain("its pickle names an object in a malformed way")
                    stack.append(self._global(module, name))
                elif op == 0x72 or op == 0x94:  # r LONG_BINPUT, MEMOIZE
                    if op == 0x72:
                        (key,), pos = unpack("<I", data, pos), pos + 4
                    else:
                        key = len(memo)
                    memo[key] = stack[-1]
                    if len(memo) > MAX_CONTAINERS:
                        raise NotPlain(f"its pickle remembers more than {MAX_CONTAINERS:,} objects")
                elif op == 0x7D or op == 0x5D:  # } EMPTY_DICT, ] EMPTY_LIST
                    self._count()
                    stack.append({} if op == 0x7D else [])
                elif op == 0x75:  # u SETITEMS
                    start = marks.pop()
                    items = stack[start:]
                    del stack[start:]
                    if len(items) % 2:
                        raise NotPlain("its pickle sets a key without a value")
                    target = stack[-1]
                    for i in range(0, len(items), 2):
                        self._setitem(target, items[i], items[i + 1])
                elif op == 0x73:  # s SETITEM
                    value = stack.pop()
                    key = stack.pop()
                    self._setitem(stack[-1], key, value)
                elif op == 0x65:  # e APPENDS
                    start = marks.pop()
                    items = stack[start:]
                    del stack[start:]
                    target = stack[-1]
                    if type(target) is not list:
                        raise NotPlain("its pickle appends to something not a list")
                    for item in items:
                        self._place(target, item)
                    target.extend(items)
                elif op == 0x61:  # a APPEND
                    value = stack.pop()
                    target = stack[-1]
                    if type(target) is not list:
                        raise NotPlain("its pickle appends to something not a list")
                    self._place(target, value)
                    target.append(value)
                elif op == 0x6C or op == 0x64:  # l LIST, d DICT (from the mark)
                    start = marks.pop()
                    items = stack[start:]
                    del stack[start:]
                    self._count()
                    if op == 0x6C:
                        target: Any = []
                        for item in items:
                            self._place(target, item)
                        target.extend(items)
                    else:
                        if len(items) % 2:
                            raise NotPlain("its pickle sets a key without a value")
                        target = {}
                        for i in range(0, len(items), 2):
                            self._setitem(target, items[i], items[i + 1])
                    stack.append(target)
                elif op == 0x4E:  # N NONE
                    stack.append(None)
                elif op == 0x47:  # G BINFLOAT
                    (value,), pos = unpack(">d", data, pos), pos + 8
                    stack.append(value)
                elif op == 0x62:  # b BUILD
                    state = stack.pop()
                    self._build(stack[-1], state)
                elif op == 0x42 or op == 0x43 or op == 0x8E:  # BINBYTES, SHORT_, 8
                    raw, pos = _sized(data, pos, n, 4 if op == 0x42 else 1 if op == 0x43 else 8)
                    stack.append(raw)
                elif op == 0x30:  # 0 POP
                    stack.pop()
                elif op == 0x31:  # 1 POP_MARK
                    del stack[marks.pop() :]
                elif op == 0x80:  # PROTO
                    if data[pos] > 5:
                        raise NotPlain(f"its pickle has protocol {data[pos]}")
                    pos += 1
                elif op == 0x95:  # FRAME: a length hint only
                    pos += 8
                elif op == 0x2E:  # . STOP
                    if len(stack) != 1 or marks:
                        raise NotPlain("its pickle ends with a malformed stack")
                    return stack[0]
                else:
                    raise NotPlain(f"its pickle uses the instruction {bytes([op])!r}")
                if pos > n:
                    raise NotPlain("its pickle is truncated")
        except (IndexError, KeyError, struct.error) as e:
            raise NotPlain(f"its pickle is malformed ({type(e).__name__})") from None

    # ---- the allowed names, carried out by us ---------------------------------------------

    def _global(self, module: str, name: str) -> _Global:
        if (module, name) not in ALLOWED:
            shown = f"{module}.{name}".encode("unicode_escape").decode("ascii")[:120]
            raise NotPlain(f"its pickle names {shown}, which this reader does not build")
        return _Global(module, name)

    def _setitem(self, target: Any, key: Any, value: Any) -> None:
        if type(target) not in (dict, OrderedDict):
            raise NotPlain("its pickle sets an item of something not a dict")
        if type(key) not in _KEY_TYPES:
            raise NotPlain(f"its pickle uses a {type(key).__name__} as a dict key")
        self._place(target, value)
        target[key] = value

    def _build(self, target: Any, state: Any) -> None:
        """BUILD: only an OrderedDict's `_metadata` (the versions torch.save records)."""
        if type(target) is not OrderedDict or type(state) is not dict or set(state) - {"_metadata"}:
            raise NotPlain("its pickle sets the state of an object")
        target.__dict__.update(state)

    def _reduce(self, func: Any, args: Any) -> Any:
        if type(func) is not _Global or type(args) is not tuple:
            raise NotPlain("its pickle calls something that is not an allowed name")
        name = func.name
        if name == "OrderedDict":
            if args:
                raise NotPlain("its pickle builds an OrderedDict from arguments")
            self._count()
            return OrderedDict()
        if name == "_rebuild_tensor_v2":
            return self._tensor(args)
        if name == "_rebuild_parameter":
            if len(args) != 3 or not self._is_tensor(args[0]) or type(args[1]) is not bool:
                raise NotPlain("its pickle rebuilds a parameter from odd arguments")
            self._no_hooks(args[2])
            return self.torch.nn.Parameter(args[0], requires_grad=args[1])
        if name == "encode":  # protocol 2 writes bytes as _codecs.encode(text, "latin1")
            if len(args) != 2 or type(args[0]) is not str or args[1] != "latin1":
                raise NotPlain("its pickle encodes text in an unexpected way")
            try:
                return args[0].encode("latin1")
            except UnicodeEncodeError:
                raise NotPlain("its pickle encodes text in an unexpected way") from None
        raise NotPlain(f"its pickle calls {func.module}.{name}")

    def _is_tensor(self, value: Any) -> bool:
        return isinstance(value, self.torch.Tensor)

    def _no_hooks(self, hooks: Any) -> None:
        if type(hooks) is not OrderedDict or hooks or hooks.__dict__:
            raise NotPlain("its tensors carry backward hooks")

    def _storage(self, pid: Any) -> _Storage:
        """BINPERSID ('storage', type, key, location, numel): the record's bytes as a tensor."""
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise NotPlain("its pickle refers to something other than a storage")
        kind, key, _location, numel = pid[1:]
        if type(kind) is not _Global or kind.module != "torch" or kind.name not in STORAGES:
            raise NotPlain("its pickle refers to a storage of an unknown type")
        if type(key) is not str or type(numel) is not int or not 0 <= numel < _BIG:
            raise NotPlain("its pickle refers to a storage in an unexpected way")
        torch = self.torch
        dtype = getattr(torch, STORAGES[kind.name])
        known = self.storages.get(key)
        if known is not None:
            if known.dtype != dtype or known.flat.numel() != numel:
                raise NotPlain(f"its storage {key} is declared with two types or sizes")
            return known
        record = self.records.get(key)
        if record is None:
            raise NotPlain(f"its storage {key} has no record in the archive")
        offset, size = record
        itemsize = dtype.itemsize
        if size != numel * itemsize:
            raise NotPlain(f"its storage {key} declares {numel} values but holds {size} bytes")
        if offset % itemsize:
            raise NotPlain(f"its storage {key} is not aligned for its type")
        if numel == 0:
            flat = torch.empty(0, dtype=dtype)
        else:
            flat = torch.frombuffer(self.mapped, dtype=dtype, count=numel, offset=offset)
            if self.copy:
                flat = flat.clone()
        storage = _Storage(dtype, flat)
        self.storages[key] = storage
        return storage

    def _tensor(self, args: tuple) -> Any:
        """_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])."""
        if not 6 <= len(args) <= 7 or type(args[0]) is not _Storage:
            raise NotPlain("its pickle rebuilds a tensor from odd arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if len(args) == 7 and args[6] not in (None, {}):
            raise NotPlain("its tensors carry extra state")
        self._no_hooks(hooks)
        ok = (
            type(offset) is int
            and type(size) is tuple
            and type(stride) is tuple
            and len(size) == len(stride) <= MAX_DIMS
            and all(type(v) is int and 0 <= v < _BIG for v in (*size, *stride))
            and type(requires_grad) is bool
            and 0 <= offset < _BIG
        )
        if not ok:
            raise NotPlain("its pickle rebuilds a tensor with malformed sizes")
        numel = 1
        last = offset
        for side, step in zip(size, stride, strict=True):
            numel *= side
            last += (side - 1) * step
            if numel >= _BIG or last >= _BIG:
                raise NotPlain("its pickle rebuilds a tensor with malformed sizes")
        flat = storage.flat
        if numel and last >= flat.numel():
            raise NotPlain("a tensor reaches past the end of its storage")
        if numel:
            tensor = flat.as_strided(size, stride, offset)
        else:
            tensor = self.torch.empty_strided(size, stride, dtype=flat.dtype)
        if requires_grad:
            if not tensor.is_floating_point() and not tensor.is_complex():
                raise NotPlain("an integer tensor asks for gradients")
            tensor.requires_grad_(True)
        return tensor
