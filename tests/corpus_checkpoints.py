"""Bad checkpoints, written on demand: the corpus that API, CLI and window tests share.

Each writer takes a folder and returns the path of one hostile or broken file. ``CASES`` lists
the files a plain open must refuse, with the error class and a pattern of the one-line message
the user must see; ``HANGS`` lists files whose parsing never ends (the loader must stop them at
its wall-clock limit). Writers that prove "no code ran" take the marker path their code would
create. Nothing here needs a network or a GPU; every file is small (the zip bomb is ~2 MB).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from core.errors import CheckpointError, UnsafeCheckpointError
from core.model.architectures import build_model


def tiny_state_dict() -> dict[str, Tensor]:
    """A real cifar_resnet20 (4 classes) state_dict: files built on it pass detection."""
    torch.manual_seed(0)
    return build_model("cifar_resnet20", 4, 3).state_dict()


def _seed_with_meta(folder: Path, name: str, meta: dict) -> Path:
    base = {"arch": "cifar_resnet20", "num_classes": 4, "in_channels": 3, "input_size": [32, 32]}
    path = folder / name
    torch.save({"state_dict": tiny_state_dict(), "meta": {**base, **meta}}, path)
    return path


# ---- code that would run ------------------------------------------------------------------


class _MarkerOnLoad(nn.Module):
    """A module whose scripted __setstate__ creates the file named in its state."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))
        self.marker = marker

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[Tensor, str, bool]) -> None:
        written = torch.from_file(state[1], shared=True, size=2)  # creates the file
        self.weight = state[0] + written.sum() * 0  # used, so not optimised away
        self.marker = state[1]
        self.training = state[2]


class _EndlessOnLoad(nn.Module):
    """A module whose scripted __setstate__ never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]
        i = 0
        while i >= 0:
            i = (i + 1) % 7


def torchscript_writing_a_file(folder: Path, marker: Path) -> Path:
    """TorchScript whose __setstate__ creates ``marker`` when torch.jit.load opens it."""
    path = folder / "ts_writes_file.pt"
    torch.jit.save(torch.jit.script(_MarkerOnLoad(str(marker))), str(path))
    return path


def torchscript_endless(folder: Path) -> Path:
    """TorchScript whose __setstate__ loops forever when torch.jit.load opens it."""
    path = folder / "ts_endless.pt"
    torch.jit.save(torch.jit.script(_EndlessOnLoad()), str(path))
    return path


def torchscript_plain(folder: Path) -> Path:
    """A genuine traced cifar_resnet20 (no custom code): must load, as data."""
    model = build_model("cifar_resnet20", 4, 3).eval()
    model.load_state_dict(tiny_state_dict())
    path = folder / "ts_plain.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 32, 32)), str(path))
    return path


def torchscript_truncated(folder: Path) -> Path:
    """A genuine traced model whose first tensor record lost half its bytes."""
    source = zipfile.ZipFile(torchscript_plain(folder))
    path = folder / "ts_truncated.pt"
    with zipfile.ZipFile(path, "w") as z:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data/0"):
                data = data[: len(data) // 2]
            z.writestr(info, data)
    return path


# ---- hangs --------------------------------------------------------------------------------


def _hash_bomb_pickle(depth: int = 60) -> bytes:
    """Safe opcodes only: a tuple nesting itself twice per level, used as a dict key.

    Hashing it visits 2^depth tuples (tuples do not cache their hash).
    """
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += b")q\x00"  # EMPTY_TUPLE, BINPUT 0
    for level in range(depth):
        out += b"h" + bytes([level]) + b"h" + bytes([level])  # BINGET level twice
        out += b"\x86q" + bytes([level + 1])  # TUPLE2, BINPUT level+1
    out += b"}q\xffh" + bytes([depth]) + b"K\x01s."  # EMPTY_DICT, key, 1, SETITEM, STOP
    return bytes(out)


def hash_bomb_pickle(folder: Path) -> Path:
    """~300 bytes of plain pickle whose one dict key takes 2^60 hash steps."""
    path = folder / "hash_bomb.pkl"
    path.write_bytes(_hash_bomb_pickle())
    return path


def hash_bomb_zip(folder: Path) -> Path:
    """The hash bomb as the data.pkl of a torch.save-style zip."""
    path = folder / "hash_bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _hash_bomb_pickle())
        z.writestr("archive/version", "3\n")
    return path


# ---- memory -------------------------------------------------------------------------------


def zip_bomb(folder: Path, expanded: int = 2**28) -> Path:
    """A torch.save zip whose one storage record deflates from ~2 MB to ``expanded`` bytes."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    path = folder / "zip_bomb.pt"
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", compresslevel=1) as z:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                z_info = zipfile.ZipInfo(info.filename)
                z_info.compress_type = zipfile.ZIP_DEFLATED
                try:  # fast to write: level 1 (the attribute's name changed in Python 3.13)
                    z_info.compress_level = 1
                except AttributeError:
                    z_info._compresslevel = 1
                with z.open(z_info, "w", force_zip64=True) as f:
                    for _ in range(expanded // len(chunk)):
                        f.write(chunk)
            else:
                z.writestr(info, source.read(info.filename))
    return path


# ---- junk and misleading cases ------------------------------------------------------------


def junk_pk(folder: Path) -> Path:
    """Random bytes that happen to start like a zip."""
    path = folder / "junk_pk.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    return path


def junk_pickle_head(folder: Path) -> Path:
    """Random bytes that happen to start like a protocol-2 pickle."""
    path = folder / "junk_x80.pth"
    path.write_bytes(b"\x80\x02" + b"\xfe\xfd\xfc" * 300)
    return path


def junk_zip_with_data_pkl(folder: Path) -> Path:
    """A zip laid out like torch.save's whose data.pkl is random bytes."""
    path = folder / "junk_data_pkl.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + bytes(range(7, 250)) * 3)
        z.writestr("archive/version", "3\n")
    return path


def junk_zip_without_data(folder: Path) -> Path:
    """A genuine zip archive of text files: not a checkpoint, not a pickle needing trust."""
    path = folder / "notes.zip.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes/readme.txt", "hello")
    return path


def truncated_zip(folder: Path) -> Path:
    """A torch.save file cut in half (a download that stopped): its zip directory is missing."""
    whole = io.BytesIO()
    torch.save(tiny_state_dict(), whole)
    path = folder / "truncated.pth"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return path


def plain_pickle_state_dict(folder: Path) -> Path:
    """pickle.dump of a state_dict (not torch.save): needs trust, then must load."""
    path = folder / "plain_pickle.pkl"
    with path.open("wb") as f:
        pickle.dump(tiny_state_dict(), f)
    return path


def symlink_loop(folder: Path) -> Path:
    """loop_a.pth -> loop_b.pth -> loop_a.pth."""
    a, b = folder / "loop_a.pth", folder / "loop_b.pth"
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    return a


# ---- metadata -----------------------------------------------------------------------------


def meta_input_size_huge(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_size_huge.pth", {"input_size": [4000, 4000]})


def meta_input_size_zero(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_size_zero.pth", {"input_size": 0})


def meta_input_size_negative(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_size_negative.pth", {"input_size": [-3, 32]})


def meta_target_huge(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_target_huge.pth", {"target_label": 10**30})


def meta_extra_not_dict(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_extra_list.pth", {"extra": [1, 2, 3]})


def meta_trigger_position_short(folder: Path) -> Path:
    trigger = {"kind": "badnets", "patch": torch.ones(3, 3, 3).tolist(), "position": [1]}
    return _seed_with_meta(
        folder, "meta_trigger_position.pth", {"attack": {"kind": "badnets", "trigger": trigger}}
    )


def meta_std_zero(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_std_zero.pth", {"mean": [0.5], "std": [0.0]})


def meta_mean_nan(folder: Path) -> Path:
    return _seed_with_meta(folder, "meta_mean_nan.pth", {"mean": [float("nan")], "std": [0.5]})


def safetensors_meta_nested(folder: Path, depth: int = 100_000) -> Path:
    """safetensors whose bnp_meta JSON nests lists 100 000 deep (RecursionError in json)."""
    from safetensors.torch import save_file

    path = folder / "meta_nested.safetensors"
    meta = '{"arch": "cifar_resnet20", "extra": {"x": ' + "[" * depth + "]" * depth + "}}"
    save_file(tiny_state_dict(), str(path), metadata={"bnp_meta": meta})
    return path


def safetensors_header_junk(folder: Path) -> Path:
    """A safetensors-like header length followed by a JSON object that is no header."""
    path = folder / "header_junk.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)
    return path


@dataclass(frozen=True)
class Case:
    """One corpus file and what opening it (without trust) must say."""

    name: str
    write: Callable[[Path], Path]
    error: type[CheckpointError]
    message: str  # regex the one-line message must match


CASES = [
    Case("junk_pk", junk_pk, CheckpointError, r"is not a PyTorch checkpoint"),
    Case("junk_x80", junk_pickle_head, CheckpointError, r"is not a PyTorch checkpoint"),
    Case("zip_junk_data_pkl", junk_zip_with_data_pkl, CheckpointError, r"pickle data is damaged"),
    Case("zip_without_data", junk_zip_without_data, CheckpointError, r"without the data\.pkl"),
    Case("symlink_loop", symlink_loop, CheckpointError, r"loop of symbolic links"),
    Case("plain_pickle", plain_pickle_state_dict, UnsafeCheckpointError, r"plain Python pickle"),
    Case("torchscript_endless", torchscript_endless, UnsafeCheckpointError, r"__setstate__"),
    Case(
        "torchscript_truncated",
        torchscript_truncated,
        CheckpointError,
        r"ts_truncated.pt is a damaged TorchScript archive: .* holds \d+ bytes, not",
    ),
    Case("zip_bomb", zip_bomb, CheckpointError, r"decompression bomb"),
    Case("input_size_4000", meta_input_size_huge, CheckpointError, r"input_size is 4000"),
    Case("input_size_0", meta_input_size_zero, CheckpointError, r"input_size is 0"),
    Case("input_size_negative", meta_input_size_negative, CheckpointError, r"input_size is -3"),
    Case("target_10e30", meta_target_huge, CheckpointError, r"target label 1e\+30 is not one of"),
    Case("extra_not_dict", meta_extra_not_dict, CheckpointError, r"'extra' must be a dict"),
    Case(
        "trigger_position",
        meta_trigger_position_short,
        CheckpointError,
        r"trigger .* placed at \[1\]",
    ),
    Case("std_zero", meta_std_zero, CheckpointError, r"std \[0\.0\]"),
    Case("mean_nan", meta_mean_nan, CheckpointError, r"normalisation mean \[nan\] is not finite"),
    Case("meta_nested", safetensors_meta_nested, CheckpointError, r"nested too deeply"),
    Case("header_junk", safetensors_header_junk, CheckpointError, r"not a readable safetensors"),
    Case("truncated_zip", truncated_zip, CheckpointError, r"damaged or truncated zip archive"),
]

# Hash bombs are refused by their structure (core.safety.pickle_guard), trusted or not, at once
CASES += [
    Case("hash_bomb_pickle", hash_bomb_pickle, CheckpointError, r"shared references nest"),
    Case("hash_bomb_zip", hash_bomb_zip, CheckpointError, r"shared references nest"),
]

# Files whose parsing never ends: (name, writer, trust_pickle used to open them).
HANGS = [
    ("torchscript_endless_trusted", torchscript_endless, True),
]
