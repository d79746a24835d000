"""One reader per checkpoint format (zip and legacy pickles, safetensors, TorchScript), each
refusing what it cannot read safely."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.errors import (
    CheckpointError,
    UnsafeCheckpointError,
)
from core.io import backdoorbench
from core.io.metadata import SAFETENSORS_META_KEY, TORCHSCRIPT_META_FILE, _first_line
from core.io.torchscript import CustomStateError, is_torchscript, read_torchscript
from core.io.unwrap import _unwrap
from core.safety.isolation import MEMORY_ENV

LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch's legacy format starts so


def _sniff(path: Path) -> str:
    """ "safetensors", "zip", "legacy" (old torch.save), "pickle", or the first bytes of junk."""
    if _is_safetensors(path):
        return "safetensors"
    with path.open("rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(b"PK\x03\x04") and _zip_entry_name(path):
        return "truncated zip"  # a real first entry, but the archive's directory is gone
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return repr(head[:4])


def _zip_entry_name(path: Path) -> str:
    """The first entry's name when the file starts with a plausible zip entry header (a
    printable name of at most 1024 bytes), else ''."""
    with path.open("rb") as f:
        header = f.read(30)
        if len(header) < 30:
            return ""
        length = int.from_bytes(header[26:28], "little")
        name = f.read(length) if 0 < length <= 1024 else b""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if len(name) == length and text.isprintable() else ""


def _not_a_checkpoint(path: Path, detail: str) -> str:
    return (
        f"{path.name} is not a PyTorch checkpoint, safetensors file or TorchScript archive "
        f"({detail})."
    )


def _is_safetensors(path: Path) -> bool:
    """A `.safetensors` name, or the format's header: 8-byte length then a JSON object."""
    if path.suffix.lower() == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + n <= path.stat().st_size


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], Any]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {e}") from None
    return tensors, header.get(SAFETENSORS_META_KEY)


def _read_zip(path: Path, trust_pickle: bool, max_bytes: int, weights: str | None = None):
    """torch.save's zip format or a TorchScript archive, sizes checked before anything is read:
    (format, weights, trigger, metadata), or a BackdoorBenchResult for BackdoorBench's files."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _check_zip_sizes(archive, path, max_bytes)
            if is_torchscript(names):
                return _read_torchscript(archive, path, trust_pickle)
            data_pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(data_pkl) != 1:
                raise CheckpointError(
                    _not_a_checkpoint(path, "a zip archive without the data.pkl of torch.save")
                )
            refers_to = _check_pickle(io.BytesIO(archive.read(data_pkl[0])), path, count=1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise CheckpointError(_not_a_checkpoint(path, f"a damaged zip archive: {e}")) from None
    obj = None
    if not trust_pickle and any(name.startswith("numpy.") for name in refers_to):
        obj = backdoorbench.load_with_numpy(path)  # a BackdoorBench result needs numpy types
        if not backdoorbench.is_backdoorbench(obj):
            obj = None  # numpy types anywhere else still need trust: torch.load says why
            _refuse_beyond_numpy(path)
    if obj is None:
        obj = _torch_load(path, trust_pickle)
    if backdoorbench.is_backdoorbench(obj):
        try:
            return backdoorbench.from_dict(obj, path)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(
                f"{path.name} has BackdoorBench's layout but a malformed entry: {_first_line(e)}"
            ) from None
    return _unwrap(obj, path, weights)


def _refuse_beyond_numpy(path: Path) -> None:
    """A file with numpy types (as BackdoorBench's) that also refers to other objects (PIL
    images in a data set's state...): name those, not the numpy types torch meets first."""
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - torch.load says what is wrong with it
        return
    beyond = sorted(unsafe - backdoorbench.ALLOWED_GLOBALS)
    if beyond and any(name.startswith("numpy.") for name in unsafe):
        shown = ", ".join(beyond[:5]) + (f" (+{len(beyond) - 5})" if len(beyond) > 5 else "")
        raise UnsafeCheckpointError(
            _unsafe_text(
                path,
                f"beside the numpy arrays a BackdoorBench result holds, it refers to the Python "
                f"object(s) {shown}, which are not plain tensor data",
            )
        )


# A torch.save zip stores its records uncompressed; a compressed record expanding more than this
# (and to more than ZIP_RATIO_FLOOR bytes) is a decompression bomb.
ZIP_MAX_RATIO = 50
ZIP_RATIO_FLOOR = 16 * 2**20
ZIP_MAX_ENTRIES = 200_000


def _check_zip_sizes(archive: zipfile.ZipFile, path: Path, max_bytes: int) -> None:
    entries = archive.infolist()
    if len(entries) > ZIP_MAX_ENTRIES:
        raise CheckpointError(f"{path.name} is a zip archive of {len(entries)} files: refused.")
    total = 0
    for entry in entries:
        total += entry.file_size
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > ZIP_RATIO_FLOOR and ratio > ZIP_MAX_RATIO:
            raise CheckpointError(
                f"{path.name} is a decompression bomb: its record {entry.filename} of "
                f"{entry.compress_size} bytes would expand to {entry.file_size} bytes. Refused."
            )
    if total > max_bytes:
        raise CheckpointError(
            f"{path.name} would take {total / 2**30:.3g} GiB of memory once unpacked, more than "
            f"the {max_bytes / 2**30:.3g} GiB allowed (${MEMORY_ENV} raises the limit). Refused."
        )


def _read_torchscript(archive: zipfile.ZipFile, path: Path, trust_pickle: bool):
    """Weights read as data (no code run); with trust, torch.jit.load for archives needing code."""
    try:
        state_dict, meta = read_torchscript(archive, path.name)
    except CustomStateError as e:
        if not trust_pickle:
            raise UnsafeCheckpointError(_unsafe_text(path, str(e))) from None
        state_dict, meta = _jit_load(path)
    return "torchscript", state_dict, None, meta


def _jit_load(path: Path) -> tuple[dict[str, Tensor], Any]:
    """Trusted only: torch.jit.load runs the archive's code."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises bare RuntimeErrors of many kinds here
        if _allocation_failed(e):
            raise MemoryError from None
        raise CheckpointError(
            f"{path.name} is not a readable TorchScript archive: {_first_line(e)}"
        ) from None
    return dict(module.state_dict()), extra[TORCHSCRIPT_META_FILE] or None


def _check_pickle(stream: Any, path: Path, count: int) -> list[str]:
    """Parse ``count`` pickles opcode by opcode without running them; their globals' names.

    Junk fails here and is said to be junk, instead of "needs trust" from the unpickler.
    """
    from core.safety.pickle_guard import NestedSharing, check_sharing

    found: list[str] = []
    for _ in range(count):
        strings: list[str] = []
        try:
            start = stream.tell()
            check_sharing(stream)  # a hash bomb is refused by its structure, before any hashing
            stream.seek(start)
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif isinstance(arg, str):
                    strings.append(arg)
        except NestedSharing as e:
            raise CheckpointError(f"{path.name} is refused: {e}.") from None
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError) as e:
            raise CheckpointError(
                _not_a_checkpoint(path, f"its pickle data is damaged: {_first_line(e)}")
            ) from None
    return found


def _read_pickle(path: Path, kind: str, trust_pickle: bool) -> Any:
    """Old torch.save files through torch.load; plain pickles only without globals or trusted."""
    with path.open("rb") as f:
        names = _check_pickle(f, path, count=4 if kind == "legacy" else 1)
    if kind == "legacy":
        return _torch_load(path, trust_pickle)
    if names and not trust_pickle:
        listed = ", ".join(sorted(set(names))[:5])
        raise UnsafeCheckpointError(
            _unsafe_text(
                path,
                f"it is a plain Python pickle (not written by torch.save) that refers to {listed}",
            )
        )
    with path.open("rb") as f:
        try:
            return (pickle.Unpickler if trust_pickle else _PlainDataUnpickler)(f).load()
        except (RecursionError, MemoryError):
            raise
        except Exception as e:
            if _allocation_failed(e):
                raise MemoryError from None
            raise CheckpointError(f"{path.name} cannot be unpickled: {_first_line(e)}") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """A pickle that names no global holds only plain data; refuse any it names all the same."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} was not an allowed global")


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only=True, or full unpickling when the caller trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"{path.name} cannot be unpickled: {_first_line(e)}") from None
        raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as e:  # torch.load raises KeyError, EOFError, RuntimeError... on other files
        text = _first_line(e)
        if _allocation_failed(e):
            raise MemoryError from None
        raise CheckpointError(
            f"{path.name} is a damaged PyTorch checkpoint (reading it failed with "
            f"{type(e).__name__}: {text or 'no details'})."
        ) from None


def _allocation_failed(e: BaseException) -> bool:
    """torch reports a failed allocation (the child's memory limit) as a RuntimeError."""
    text = str(e)
    return "can't allocate memory" in text or "bad_alloc" in text or "out of memory" in text


def _unsafe_message(path: Path, torch_message: str) -> str:
    """Say why the file was refused and how to opt in, without torch's long advice text."""
    if m := re.search(r"GLOBAL (\S+) was not an allowed global", torch_message):
        why = f"it refers to the Python object {m.group(1)}, which is not plain tensor data"
    elif m := re.search(r"whose module (\S+) is blocked", torch_message):
        why = f"it refers to the blocked module {m.group(1)}"
    elif m := re.search(r"Unsupported operand (\S+)", torch_message):
        why = f"it uses a pickle instruction the safe loader refuses (opcode {m.group(1)})"
    else:
        why = "it holds more than tensors and plain containers"
    return _unsafe_text(path, why)


def _unsafe_text(path: Path, why: str) -> str:
    return (
        f"{path.name} cannot be loaded safely: {why}. Loading it needs full unpickling, "
        "which can execute arbitrary code on this computer. Only if you trust where the file "
        "came from, opt in: --trust-pickle on the command line, confirm the prompt in the app, "
        "or load_checkpoint(path, trust_pickle=True) in Python."
    )
