"""Writing pruned models and reports: atomically, and never over the checkpoint they came from.

Every file is written to a hidden temporary file beside its destination (named with the
writer's process id) and renamed over it only once complete, with the permissions the umask
gives new files. A failed write removes its temporary file and says why in one line ("disk
full", "read-only folder"); temporary files of writers that were killed are removed by the
next export into the same folder (``remove_stale_temporaries``).
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from core.data.triggers import PatchTrigger
from core.errors import BnpError
from core.io.metadata import SAFETENSORS_META_KEY, ModelMetadata, sidecar_path
from core.model.architectures import ARCHITECTURES
from core.model.masks import PruneMask
from core.safety.paths import check_output

EXPORT_FORMATS = ("seed", "state_dict", "safetensors", "torchscript")
SUFFIXES = {
    "seed": ".pth",
    "state_dict": ".pth",
    "safetensors": ".safetensors",
    "torchscript": ".pt",
}


def format_for_path(path: str | Path) -> str:
    """The export format a file name implies (.safetensors, else the seed format)."""
    return "safetensors" if str(path).endswith(".safetensors") else "seed"


TMP_SUFFIX = ".tmp"
_TMP_RE = re.compile(r"^\..+\.bnp(?P<pid>\d+)\.[^.]+\.tmp$")


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is racy)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed exports left in ``folder``; return them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m and not _pid_alive(int(m.group("pid"))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


def write_error_message(e: OSError, path: Path) -> str:
    """One line for a failed write: disk full, read-only folder, permission…"""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f" ({shutil.disk_usage(path.parent).free / 1e6:.0f} MB free)"
        except OSError:
            free = ""
        return (
            f"disk full: {path} could not be written{free}; nothing was written — free some "
            "space or choose another disk"
        )
    if e.errno == errno.EROFS:
        return f"cannot write {path}: the folder {path.parent} is on a read-only disk"
    if e.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot write {path}: permission denied in {path.parent} (a read-only folder?); "
            "choose another folder"
        )
    return f"cannot write {path}: {e.strerror or e}"


def atomic_write(
    path: str | Path,
    write: Callable[[Path], None],
    *,
    source: Path | None = None,
    reads: Iterable[str | Path | None] = (),
    what: str = "output",
):
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    The output rule comes first (``core.safety.paths.check_output``): `path` is new or a regular
    file — never a device, FIFO, socket or symbolic link — and not `source` (the checkpoint),
    its sidecar, anything in `reads` or anything this run has read. On any failure the
    temporary file is removed and `path` is left as it was; OSErrors (disk full, read-only
    folder) become one-line BnpErrors."""
    path = Path(path)
    if source is not None and _same_file(path, source):
        raise BnpError(f"Refusing to overwrite the input checkpoint {source}: choose another name.")
    sources = (source, sidecar_path(Path(source))) if source is not None else ()
    check_output(path, [*sources, *reads], what=what)
    if path.is_dir():
        raise BnpError(f"{path} is a folder: choose a file name.")
    if not path.parent.is_dir():
        raise BnpError(f"The folder {path.parent} does not exist.")
    remove_stale_temporaries(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.bnp{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent
        )
    except OSError as e:
        raise BnpError(write_error_message(e, path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise BnpError(write_error_message(e, path)) from None
        raise


class _KeepWriteErrors:
    """A binary file that remembers its write error: torch.save reports a failed write only as
    'enforce fail … unexpected pos', losing the reason (e.g. a full disk)."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch(obj, tmp: Path) -> None:
    """torch.save to ``tmp``, flushed to disk; a failed write raises its OSError."""
    with open(tmp, "wb") as fh:
        keeper = _KeepWriteErrors(fh)
        try:
            torch.save(obj, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None
            raise
        fh.flush()
        os.fsync(fh.fileno())


def _write_bytes(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def pruned_state_dict(model: nn.Module, mask: PruneMask | None) -> dict[str, torch.Tensor]:
    """The model's state_dict with the mask written in (the model itself is left untouched)."""
    pruned = copy.deepcopy(model).cpu()
    if mask is not None:
        mask.apply_(pruned)
    source = pruned.state_dict()
    out = OrderedDict((k, v.detach().clone().contiguous()) for k, v in source.items())
    # the layers' format versions: torchvision's MNASNet refuses a state_dict without them
    out._metadata = getattr(source, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return out


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    mask: PruneMask | None = None,
    fmt: str = "seed",
    metadata: ModelMetadata | None = None,
    trigger: torch.Tensor | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write the (pruned) model as `fmt`: seed {'state_dict','trigger','meta'}, bare
    state_dict, safetensors with our metadata in its header, or TorchScript (the model traced
    on zeros of the metadata's input size, the metadata in the archive's extra/bnp_meta.json):
    the format that reopens a model whose architecture is not registered as it is."""
    if fmt not in EXPORT_FORMATS:
        raise BnpError(f"Unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    if fmt == "seed" and metadata is not None and metadata.arch not in ARCHITECTURES:
        raise BnpError(
            f"The seed format is reopened by its architecture, and {metadata.arch} is not "
            "registered: export as state_dict (with a sidecar of metadata) or safetensors."
        )
    state_dict = pruned_state_dict(model, mask)
    meta = metadata.to_dict() if metadata is not None else None
    if meta is not None and mask is not None:
        meta["extra"] = {**meta.get("extra", {}), "pruned": mask.neurons()}
    if meta is not None and trigger is not None and not (meta.get("attack") or {}).get("trigger"):
        # formats without a 'trigger' entry (safetensors) keep the seed's patch in the metadata
        meta["attack"] = {**(meta.get("attack") or {}), "trigger": PatchTrigger(trigger).to_dict()}

    def write(tmp: Path) -> None:
        if fmt == "seed":
            obj = {"state_dict": state_dict, "trigger": trigger}
            if meta is not None:
                obj["meta"] = meta
            save_torch(obj, tmp)
        elif fmt == "state_dict":
            save_torch(state_dict, tmp)  # no room for metadata: a sidecar JSON beside it
        elif fmt == "torchscript":
            _write_bytes(tmp, _traced_bytes(model, mask, metadata, meta))
        else:
            from safetensors.torch import save

            header = {SAFETENSORS_META_KEY: json.dumps(meta)} if meta is not None else None
            _write_bytes(tmp, save(state_dict, metadata=header))

    path = Path(path)
    source = Path(source) if source else None
    sidecar = fmt == "state_dict" and meta is not None
    if sidecar:  # both targets pass the output rule before either is written
        reads = (source, sidecar_path(source)) if source is not None else ()
        check_output(sidecar_path(path), reads, what="metadata sidecar")
    atomic_write(path, write, source=source, what="model")
    if sidecar:
        data = json.dumps(json_ready(meta), indent=1).encode("utf-8")
        write_sidecar = lambda tmp: _write_bytes(tmp, data)  # noqa: E731
        atomic_write(sidecar_path(path), write_sidecar, source=source, what="metadata sidecar")
    return path


def _traced_bytes(model: nn.Module, mask, metadata: ModelMetadata | None, meta) -> bytes:
    """The pruned model traced into a TorchScript archive, with our metadata beside it."""
    import io
    import warnings

    from core.io.metadata import TORCHSCRIPT_META_FILE

    if metadata is None:
        raise BnpError("A TorchScript export needs the model's metadata (its input size).")
    pruned = copy.deepcopy(model).cpu().eval()
    if mask is not None:
        mask.apply_(pruned)
    example = torch.zeros(1, metadata.in_channels, *metadata.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(pruned, example, check_trace=False)
        except Exception as e:  # noqa: BLE001 - tracing fails in many ways on odd modules
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BnpError(f"The model cannot be exported as TorchScript: {text}") from None
        buffer = io.BytesIO()
        extra = {TORCHSCRIPT_META_FILE: json.dumps(json_ready(meta)) if meta is not None else "{}"}
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def json_ready(value):
    """Tensors to lists, NaN/inf to None, recursively, so json.dump writes valid JSON."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, report: dict, *, source: str | Path | None = None) -> Path:
    """Write a JSON report atomically."""
    text = json.dumps(json_ready(report), indent=2)
    path = Path(path)
    data = text.encode("utf-8")
    atomic_write(path, lambda tmp: _write_bytes(tmp, data), source=Path(source) if source else None)
    return path


def method_report(inspection, method: str, k: float, mask: PruneMask) -> dict:
    """Report fields of one method at one threshold: flagged neurons and every score."""
    return {
        "method": method,
        "threshold": k,
        "flagged": mask.neurons(),
        "pruned": mask.count(),
        "scores": inspection.scores(method),
    }


def session_metadata(inspection) -> ModelMetadata:
    """The checkpoint's metadata with what the session knows now: its input size and
    normalisation (overrides included), target label and trigger, so that reopening an
    export reproduces the session's predictions."""
    meta = copy.deepcopy(inspection.ckpt.metadata)
    spec = inspection.spec
    meta.input_size = tuple(spec.size)
    meta.mean = tuple(spec.mean) if spec.mean else None
    meta.std = tuple(spec.std) if spec.std else None
    meta.target_label = inspection.target
    if inspection.trigger is not None:
        meta.attack = {**(meta.attack or {}), "trigger": inspection.trigger.to_dict()}
    return meta
