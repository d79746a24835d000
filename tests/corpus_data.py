"""Bad inputs that must never hurt: each function writes one into a folder and returns its path.

Used by the API and CLI tests (tests/test_untrusted_data.py) and by the window's tests. Data
folders are what ``load_images`` / ``--clean`` / ``--test`` take; image files what ``--trigger``
takes; checkpoints are small 1-channel CIFAR ResNet-20s whose *contents* give nonsense
(the checkpoint-parsing corpus is tests/corpus_checkpoints.py).

Every function is cheap (well under a second): the bombs declare huge sizes in small files;
``gzip_idx_bomb`` with its defaults really decompresses to 4.9 GB (do not load it without the
bounds).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "idx_bytes",
    "npy_folder",
    "idx_folder",
    "gzip_idx_bomb",
    "idx_zero_dims",
    "idx_many_dims",
    "idx_huge_dims",
    "png_bomb",
    "png_bomb_folder",
    "cifar_hash_bomb",
    "cifar_object_dtype",
    "cifar_ndarray_new",
    "cifar_labels",
    "class_names_not_utf8",
    "npy_labels",
    "idx_float_labels",
    "npy_bad_header",
    "npy_pickle_file",
    "npy_object_array",
    "npy_empty",
    "npy_huge_header",
    "unreadable_folder",
    "symlink_loop",
    "png16_folder",
    "float_tiff_folder",
    "float_tiff_out_of_range",
    "checkpoint",
    "nan_weight_checkpoint",
    "negative_var_checkpoint",
    "metadata_checkpoint",
    "DATA_CASES",
    "CRASH_CASES",
]


# ---- well-formed building blocks -----------------------------------------------------------


def idx_bytes(array: np.ndarray, dims: list[int] | None = None, code: int = 0x08) -> bytes:
    """An idx file: magic (0, 0, dtype code, ndim), big-endian dims, then the data."""
    dims = list(array.shape) if dims is None else dims
    header = bytes([0, 0, code, len(dims) % 256]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.astype(np.uint8).tobytes()


def npy_folder(
    folder: Path, n: int = 16, *, classes: int = 10, side: int = 8, channels: int = 1, seed=0
) -> Path:
    """A valid data.npy (uint8 N×H×W×C) + labels.npy folder, labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data.npy", rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8))
    np.save(folder / "labels.npy", np.arange(n) % classes)
    return folder


def idx_folder(folder: Path, n: int = 4, side: int = 4) -> Path:
    """A valid train-images/train-labels idx pair."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((n, side, side))))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    return folder


# ---- idx files -----------------------------------------------------------------------------


def gzip_idx_bomb(folder: Path, n: int = 6_250_000, side: int = 28) -> Path:
    """A .gz idx pair whose images file declares n×side×side and really holds that many zero
    bytes, as repeated gzip members of 64 MiB each (defaults: 4.9 GB from a ~5 MB file)."""
    folder.mkdir(parents=True, exist_ok=True)
    total = n * side * side
    chunk = 64 << 20
    member = gzip.compress(bytes(min(chunk, total)), compresslevel=9)
    with open(folder / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", n, side, side)))
        for _ in range(total // chunk):
            fh.write(member)
        if total % chunk:
            fh.write(gzip.compress(bytes(total % chunk)))
    labels = gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(n), 9)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    return folder


def _idx_images_with_header(folder: Path, header: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(header + bytes(64))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4)))
    return folder


def idx_zero_dims(folder: Path) -> Path:
    """An images file whose header says 0 dimensions."""
    return _idx_images_with_header(folder, bytes([0, 0, 8, 0]))


def idx_many_dims(folder: Path, ndim: int = 200) -> Path:
    """An images file whose header says 200 dimensions (each 1)."""
    return _idx_images_with_header(folder, bytes([0, 0, 8, ndim]) + (1).to_bytes(4, "big") * ndim)


def idx_huge_dims(folder: Path) -> Path:
    """An images file declaring 2^31 × 2^31 × 2^31 (a product past 64 bits)."""
    return _idx_images_with_header(folder, bytes([0, 0, 8, 3]) + (1 << 31).to_bytes(4, "big") * 3)


# ---- image files ---------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int = 6000) -> Path:
    """A valid 1-bit grey PNG of side×side pixels, all black: a few KB that decode to side²
    bytes (6000: 36 M pixels, under Pillow's own 89 M warning limit)."""
    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )
    return path


def png_bomb_folder(folder: Path, side: int = 6000) -> Path:
    """An ImageFolder tree with one normal image and one PNG bomb."""
    from PIL import Image

    (folder / "a").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a" / "0.png")
    png_bomb(folder / "b" / "bomb.png", side)
    return folder


def png16_folder(folder: Path) -> Path:
    """An ImageFolder tree of 16-bit grey PNGs holding a ramp 0..65535 (8-bit reading clips
    everything above 255 to white)."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16).reshape(8, 8)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ramp).save(folder / name / "0.png")
    return folder


def float_tiff_folder(folder: Path) -> Path:
    """An ImageFolder tree of float32 TIFFs holding a ramp in [0, 1] (8-bit reading truncates
    it to black)."""
    from PIL import Image

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ramp).save(folder / name / "0.tif")
    return folder


def float_tiff_out_of_range(path: Path) -> Path:
    """A float32 TIFF with values 0..255 (neither [0, 1] nor an 8-bit image)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)).save(path)
    return path


# ---- CIFAR batches and class names ---------------------------------------------------------


def cifar_hash_bomb(folder: Path, depth: int = 60) -> Path:
    """A CIFAR folder whose data_batch_1 (under 600 bytes of safe pickle opcodes) is a dict
    keyed by a tuple nested ``depth`` deep, each level holding the memoised level below twice:
    hashing the key visits 2^depth tuples (an unpickler that hashes it never returns)."""
    folder.mkdir(parents=True, exist_ok=True)
    ops = bytearray(b"\x80\x02})q\x000")  # PROTO 2, EMPTY_DICT, EMPTY_TUPLE, BINPUT 0, POP
    for i in range(depth):  # BINGET i, BINGET i, TUPLE2, BINPUT i+1, POP
        ops += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0"
    ops += b"h" + bytes([depth]) + b"K\x00s."  # BINGET depth, BININT1 0, SETITEM, STOP
    (folder / "data_batch_1").write_bytes(bytes(ops))
    return folder


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_bytes(data: bytes) -> bytes:
    return b"B" + len(data).to_bytes(4, "little") + data  # BINBYTES


def _op_text(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def _op_int(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)  # BININT


def _op_dtype(spec: str) -> bytes:
    """numpy.dtype(spec, False, True) on the stack."""
    return _op_global("numpy", "dtype") + b"(" + _op_text(spec) + b"\x89\x88tR"


def _op_frombuffer(raw: bytes, dtype_ops: bytes, shape: tuple[int, ...]) -> bytes:
    """numpy's _frombuffer(raw, dtype, shape, 'C') on the stack."""
    dims = b"(" + b"".join(_op_int(n) for n in shape) + b"t"
    return (
        _op_global("numpy._core.numeric", "_frombuffer")
        + b"("
        + _op_bytes(raw)
        + dtype_ops
        + dims
        + _op_text("C")
        + b"tR"
    )


def _cifar_batch_ops(labels_ops: bytes, n: int = 4) -> bytes:
    """A protocol-2 CIFAR batch {b'labels': <labels_ops>, b'data': zeros n×3072 uint8}."""
    data = _op_frombuffer(bytes(n * 3072), _op_dtype("u1"), (n, 3072))
    labels = _op_bytes(b"labels") + labels_ops + b"s"
    return b"\x80\x02}" + labels + _op_bytes(b"data") + data + b"s."


def cifar_object_dtype(folder: Path) -> Path:
    """A CIFAR batch (~12 KB) whose labels are an array of dtype V8 rebuilt (BUILD) with an
    object field and its flags cleared: numpy then takes the file's bytes 0x4141… for object
    pointers, and converting the labels crashes the process (signal 11) in a reader that
    lets the file set a dtype's state."""
    folder.mkdir(parents=True, exist_ok=True)
    object_dtype = (
        _op_dtype("O8")
        + b"("
        + _op_int(3)
        + _op_text("|")
        + b"NNN"
        + _op_int(-1)
        + _op_int(-1)
        + _op_int(63)
        + b"tb"
    )
    state = (  # (3, '|', None, ('f0',), {'f0': (dtype('O'), 0)}, 8, 1, 0): flags 0, cleared
        b"("
        + _op_int(3)
        + _op_text("|")
        + b"N("
        + _op_text("f0")
        + b"t}"
        + _op_text("f0")
        + b"("
        + object_dtype
        + _op_int(0)
        + b"ts"
        + _op_int(8)
        + _op_int(1)
        + _op_int(0)
        + b"t"
    )
    evil = _op_dtype("V8") + state + b"b"  # BUILD: the dtype takes the file's state
    pointers = (0x4141414141414141).to_bytes(8, "little") * 4
    (folder / "data_batch_1").write_bytes(_cifar_batch_ops(_op_frombuffer(pointers, evil, (4,))))
    return folder


def cifar_ndarray_new(folder: Path) -> Path:
    """A CIFAR batch whose labels are ``ndarray.__new__(ndarray, (4,), 'O', <bytes>)`` (NEWOBJ):
    an object array over the file's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    args = b"(" + _op_int(4) + b"\x85" + _op_text("O") + _op_bytes(b"\x41" * 32) + b"t"
    labels = _op_global("numpy", "ndarray") + args + b"\x81"  # NEWOBJ
    (folder / "data_batch_1").write_bytes(_cifar_batch_ops(labels))
    return folder


def cifar_labels(folder: Path, labels: list) -> Path:
    """A valid CIFAR batch of len(labels) black images with these labels (e.g. -3, 0.7)."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    batch = {b"data": np.zeros((len(labels), 3072), np.uint8), b"labels": labels}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def class_names_not_utf8(folder: Path) -> Path:
    """A valid npy folder whose class_names.txt is Latin-1, not UTF-8."""
    npy_folder(folder)
    (folder / "class_names.txt").write_bytes("café\nthé\n".encode("latin-1"))
    return folder


# ---- npy -----------------------------------------------------------------------------------


def _labels(folder: Path, n: int = 4) -> None:
    np.save(folder / "labels.npy", np.arange(n) % 10)


def npy_labels(folder: Path, labels: list) -> Path:
    """A valid data.npy of len(labels) images with these labels.npy values."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data.npy", np.zeros((len(labels), 8, 8, 1), np.uint8))
    np.save(folder / "labels.npy", np.array(labels))
    return folder


def idx_float_labels(folder: Path) -> Path:
    """An idx pair whose labels file holds float32 1.5 (idx type code 0x0D)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 4, 4))))
    labels = np.array([1.5, 2.0], dtype=">f4")
    header = bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big")
    (folder / "train-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    return folder


def npy_bad_header(folder: Path) -> Path:
    """A version-1.0 data.npy whose header is not a Python literal and fails to tokenize
    (numpy retries it as a Python 2 header and tokenize raises)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 8, 8), \"\"\"  }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    (folder / "data.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(256)
    )
    _labels(folder)
    return folder


def npy_huge_header(folder: Path) -> Path:
    """A data.npy declaring 2^40 × 8 × 8 uint8 in a tiny file."""
    folder.mkdir(parents=True, exist_ok=True)
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1099511627776, 8, 8), }"
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    (folder / "data.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(256)
    )
    _labels(folder)
    return folder


def npy_pickle_file(folder: Path) -> Path:
    """data.npy that is a pickle, not an array (numpy advises loading it 'unsafely')."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.npy").write_bytes(pickle.dumps({"images": [1, 2, 3]}))
    _labels(folder)
    return folder


def npy_object_array(folder: Path) -> Path:
    """data.npy holding an object array (needs pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    _labels(folder)
    return folder


def npy_empty(folder: Path) -> Path:
    """data.npy and labels.npy with 0 samples."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data.npy", np.zeros((0, 8, 8, 1), np.uint8))
    np.save(folder / "labels.npy", np.zeros(0, np.int64))
    return folder


def unreadable_folder(folder: Path) -> Path:
    """A valid npy folder whose data.npy has mode 000 (still readable by root)."""
    npy_folder(folder)
    os.chmod(folder / "data.npy", 0)
    return folder


def symlink_loop(folder: Path) -> Path:
    """A path that is a symbolic link to itself."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "loop"
    link.symlink_to(link)
    return link


# ---- checkpoints whose contents give nonsense ----------------------------------------------


def checkpoint(path: Path, *, meta: dict | None = None, edit=None, seed: int = 0) -> Path:
    """A 1-channel, 10-class CIFAR ResNet-20 in the seed format (+ our 'meta' when given);
    ``edit(model)`` may change its weights first."""
    import torch

    from core.model.architectures import build_model

    torch.manual_seed(seed)
    model = build_model("cifar_resnet20", 10, 1)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    obj = {"state_dict": model.state_dict(), "trigger": torch.rand(3, 3, 3)}
    if meta is not None:
        obj["meta"] = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def nan_weight_checkpoint(path: Path) -> Path:
    """One NaN in the first convolution's weight: every output is NaN."""

    def edit(model):
        model.conv1.weight[0, 0, 0, 0] = float("nan")

    return checkpoint(path, edit=edit)


def negative_var_checkpoint(path: Path) -> Path:
    """A BatchNorm whose running_var is negative in one channel (its output is NaN)."""

    def edit(model):
        model.bn1.running_var[3] = -1.0

    return checkpoint(path, edit=edit)


def metadata_checkpoint(path: Path, **meta) -> Path:
    """A checkpoint whose metadata says ``meta`` (e.g. std=[1e-30], input_size=[4000, 4000])."""
    full = {"arch": "cifar_resnet20", "num_classes": 10, "in_channels": 1, "input_size": [8, 8]}
    full.update(meta)
    return checkpoint(path, meta=full)


# name → (maker, what the user must be told: a regex of the one-line message)
DATA_CASES = {
    "idx with 0 dimensions": (idx_zero_dims, r"0 dimensions; expected 3"),
    "idx with 200 dimensions": (idx_many_dims, r"200 dimensions; expected 3"),
    "idx declaring 2^31 sizes": (idx_huge_dims, r"would take .* more than the .* limit"),
    "PNG bomb in an ImageFolder": (png_bomb_folder, r"6000×6000 pixels, more than"),
    "npy header that fails to tokenize": (npy_bad_header, r"malformed \.npy header"),
    "npy declaring 2^40 samples": (npy_huge_header, r"truncated|would take"),
    "data.npy that is a pickle": (npy_pickle_file, r"is not a NumPy \.npy array"),
    "npy object array": (npy_object_array, r"Python objects .*refused"),
    "empty npy set": (npy_empty, r"holds no samples"),
    "symbolic-link loop": (symlink_loop, r"loop of symbolic links"),
    "class_names.txt not UTF-8": (class_names_not_utf8, r"class_names.txt is not UTF-8"),
    "CIFAR labels below 0": (lambda d: cifar_labels(d, [0, -3, 1, 2]), r"labels must be ≥ 0"),
    "CIFAR labels 0.7": (lambda d: cifar_labels(d, [0.7] * 4), r"labels must be integers"),
    "CIFAR labels past the classes": (
        lambda d: cifar_labels(d, [0, 10, 1, 2]),
        r"label 10 is not one of the 10 classes",
    ),
    "npy labels below 0": (lambda d: npy_labels(d, [0, -1, 2, 3]), r"labels must be ≥ 0"),
    "npy labels 0.5": (lambda d: npy_labels(d, [0.5, 1, 2, 3]), r"labels must be integers"),
    "idx float labels 1.5": (idx_float_labels, r"labels must be integers"),
}
# Files that crashed the reading process (signal 11) before the defence: tested in a child
# process, so that a regression fails a test instead of killing pytest.
CRASH_CASES = {
    "CIFAR labels with an object-field dtype": (cifar_object_dtype, r"refusing dtype V8"),
    "CIFAR labels from ndarray.__new__": (cifar_ndarray_new, r"refusing to create an object"),
}
# Not in DATA_CASES because a reader without the defence never returns (test it in a child
# process with a timeout): cifar_hash_bomb.
