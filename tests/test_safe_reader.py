"""core.io.torch_zip, the in-process reader of plain torch.save zips: it returns what
torch.load(weights_only=True) returns, and refuses (NotPlain, one line) anything else without
importing, calling or crashing; load_checkpoint then reads the file in the child as before."""

from __future__ import annotations

import io
import random
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from core.errors import BnpError, CheckpointError, UnsafeCheckpointError
from core.io import checkpoint, torch_zip
from core.io.torch_zip import NotPlain


def _same(ours, theirs) -> None:
    """Equal structure, types, tensors (dtype, shape, strides, offset, values, grad flag)."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    if isinstance(ours, torch.Tensor):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert ours.stride() == theirs.stride()
        assert ours.storage_offset() == theirs.storage_offset()
        assert ours.requires_grad == theirs.requires_grad
        assert torch.equal(ours, theirs) or (
            ours.is_floating_point() and torch.allclose(ours, theirs, equal_nan=True)
        )
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs)
        for key in ours:
            _same(ours[key], theirs[key])
        assert getattr(ours, "_metadata", None) == getattr(theirs, "_metadata", None)
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            _same(a, b)
    else:
        assert ours == theirs


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )


def _corpus() -> dict[str, object]:
    import torchvision

    torch.manual_seed(0)
    shared = torch.randn(6, 4)
    base = torch.arange(24, dtype=torch.float32)
    tv = torchvision.models.mobilenet_v3_small(num_classes=10).state_dict()
    cases = {
        "torchvision mobilenet_v3_small": tv,
        "torchvision resnet18 (10 classes)": torchvision.models.resnet18(
            num_classes=10
        ).state_dict(),
        "nested training checkpoint": {
            "state_dict": tv,
            "epoch": 7,
            "best_acc": 93.25,
            "arch": "mobilenet_v3_small",
            "optimizer": {"lr": 0.1, "momentum": 0.9, "groups": [[1, 2], (3, None)]},
            "flags": (True, False, None),
            "big": 2**70,
            "negative": -123456789,
            "note": "ünïcode ✓",
            "blob": b"\x00\x01binary",
        },
        "BackdoorBench-like, tensors only": {
            "model": tv,
            "num_classes": 10,
            "bd_test": {"x": torch.rand(4, 3, 8, 8), "y": torch.tensor([1, 2, 3, 4])},
        },
        "views, shared storage and dtypes": {
            "tied_a": shared,
            "tied_b": shared,
            "transposed": shared.t(),
            "offset": base[5:17],
            "strided": base.view(4, 6)[:, ::2],
            "half": torch.randn(3, 3).half(),
            "bf16": torch.randn(5).bfloat16(),
            "int8": torch.tensor([-3, 0, 7], dtype=torch.int8),
            "bool": torch.tensor([True, False]),
            "complex": torch.randn(2, dtype=torch.complex64),
            "empty": torch.zeros(0, 3),
            "scalar": torch.tensor(3.5),
            "param": nn.Parameter(torch.ones(2, 2)),
            "nan": torch.tensor([float("nan"), float("inf")]),
        },
    }
    try:
        import timm

        cases["timm resnet10t"] = timm.create_model("resnet10t", num_classes=10).state_dict()
    except ImportError:  # pragma: no cover - timm is a declared dependency
        pass
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("safe_reader")
    files = []
    for i, (name, obj) in enumerate(_corpus().items()):
        path = folder / f"case{i}.pth"
        torch.save(obj, path)
        files.append((name, path))
    path = folder / "protocol4.pth"
    torch.save(_corpus()["nested training checkpoint"], path, pickle_protocol=4)
    files.append(("pickle protocol 4", path))
    return files


@pytest.mark.parametrize("copy", [True, False], ids=["copied", "mapped"])
def test_reads_what_torch_load_reads(corpus, copy):
    for name, path in corpus:
        ours = torch_zip.read(path, copy=copy)
        # torch's weights-only unpickler refuses protocol 4's FRAME; ours reads it (a length
        # hint), so that file, ours, is compared with a full load
        plain = "protocol 4" not in name
        try:
            _same(ours, torch.load(path, map_location="cpu", weights_only=plain))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_shared_tensors_stay_shared_and_writes_never_reach_the_file(corpus):
    path = dict(corpus)["views, shared storage and dtypes"]
    before = path.read_bytes()
    obj = torch_zip.read(path, copy=False)
    assert obj["tied_a"] is obj["tied_b"]
    assert (
        obj["transposed"].untyped_storage().data_ptr() == obj["tied_a"].untyped_storage().data_ptr()
    )
    obj["tied_a"].zero_()  # copy-on-write: the file keeps its bytes
    assert path.read_bytes() == before
    assert not torch.equal(torch.load(path, weights_only=True)["tied_a"], obj["tied_a"])


def test_load_checkpoint_reads_a_plain_file_without_the_child(tmp_path, monkeypatch):
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": _corpus()["torchvision mobilenet_v3_small"], "epoch": 3}, path)

    def no_child(*args, **kwargs):
        raise AssertionError("the isolated child was started for a plain file")

    monkeypatch.setattr(checkpoint, "run_isolated", no_child)
    for mapped in (False, True):
        ckpt = checkpoint.load_checkpoint(path, mapped=mapped)
        assert ckpt.metadata.arch == "mobilenet_v3_small" and ckpt.format == "wrapped:state_dict"


# ---- hostile input ------------------------------------------------------------------------

CANARY = "bnp_canary_s21"


def _zip(path: Path, data_pkl: bytes, records: dict[str, bytes], **kw) -> Path:
    compression = kw.get("compression", zipfile.ZIP_STORED)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, payload in records.items():
            z.writestr(f"archive/data/{key}", payload)
    return path


def _pid(kind: str, key: str, numel: int) -> bytes:
    """Protocol-2 opcodes for BINPERSID ('storage', torch.<kind>, key, 'cpu', numel)."""
    return (
        b"(X\x07\x00\x00\x00storagec" + b"torch\n" + kind.encode() + b"\n"
        + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    )  # fmt: skip


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes(16, "little", signed=True)
    return b"\x8a\x10" + raw  # LONG1


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor_pickle(
    kind="ByteStorage", key="0", numel=8, offset=0, size=(8,), stride=(1,), extra=b""
) -> bytes:
    """{'w': tensor} in the opcodes torch.save writes, with every field settable."""
    return (
        b"\x80\x02}(" + _str("w") + b"ctorch._utils\n_rebuild_tensor_v2\n("
        + _pid(kind, key, numel) + _int(offset)
        + _ints(size) + _ints(stride) + b"\x89ccollections\nOrderedDict\n)R" + extra
        + b"tRu."
    )  # fmt: skip


def _hostile(folder: Path) -> dict[str, Path]:
    ok = bytes(range(8))
    cases = {
        "a name outside the allowlist (a canary module)": _zip(
            folder / "canary.pth",
            b"\x80\x02c" + CANARY.encode() + b"\nboom\n)R.",
            {},
        ),
        "os.system": _zip(folder / "system.pth", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idR.", {}),
        "the numel declared differs from the record": _zip(
            folder / "numel.pth", _tensor_pickle(numel=10**12), {"0": ok}
        ),
        "a record that is missing": _zip(
            folder / "missing.pth", _tensor_pickle(key="9"), {"0": ok}
        ),
        "a size past the storage": _zip(
            folder / "size.pth", _tensor_pickle(size=(2**30,)), {"0": ok}
        ),
        "an offset past the storage": _zip(
            folder / "offset.pth", _tensor_pickle(offset=100, size=(1,)), {"0": ok}
        ),
        "a huge stride": _zip(
            folder / "stride.pth", _tensor_pickle(size=(2, 2), stride=(2**31 - 1, 1)), {"0": ok}
        ),
        "a negative stride": _zip(
            folder / "negstride.pth", _tensor_pickle(size=(2,), stride=(-1,)), {"0": ok}
        ),
        "shape and stride of different lengths": _zip(
            folder / "dims.pth", _tensor_pickle(size=(2, 2), stride=(1,)), {"0": ok}
        ),
        "an unknown storage type": _zip(
            folder / "kind.pth", _tensor_pickle(kind="QInt8Storage"), {"0": ok}
        ),
        "a float storage of 8 bytes declared as 8 values": _zip(
            folder / "float.pth", _tensor_pickle(kind="FloatStorage"), {"0": ok}
        ),
        "one container referred to twice (hash-bomb shape)": _zip(
            folder / "shared.pth", b"\x80\x02]q\x00h\x00h\x00\x86.", {}
        ),
        "containers nested 10 000 deep": _zip(
            folder / "deep.pth", b"\x80\x02" + b"]" * 10_000 + b"a" * 9_999 + b".", {}
        ),
        "a compressed record": _zip(
            folder / "deflated.pth",
            _tensor_pickle(),
            {"0": ok},
            compression=zipfile.ZIP_DEFLATED,
        ),
        "a pickle without STOP": _zip(folder / "nostop.pth", b"\x80\x02}", {}),
        "random bytes as the pickle": _zip(
            folder / "random.pth", random.Random(1).randbytes(4000), {}
        ),
        "a tuple as a dict key": _zip(folder / "tuplekey.pth", b"\x80\x02}(K\x01\x85K\x02u.", {}),
        "a BUILD of an object's state": _zip(
            folder / "build.pth",
            b"\x80\x02ccollections\nOrderedDict\n)R}(X\x01\x00\x00\x00aK\x01ub.",
            {},
        ),
        "extra tensor state": _zip(
            folder / "state.pth",
            _tensor_pickle(extra=b"}(X\x01\x00\x00\x00aK\x01u"),
            {"0": ok},
        ),
    }
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    return _hostile(tmp_path_factory.mktemp("hostile"))


def test_every_hostile_file_is_not_plain_in_one_line(hostile):
    for name, path in hostile.items():
        with pytest.raises(NotPlain) as e:
            torch_zip.read(path, copy=False)
        text = str(e.value)
        assert text and "\n" not in text and len(text) < 300, name
    assert CANARY not in sys.modules


def test_a_valid_hand_written_tensor_is_read(tmp_path):
    """The hostile files above differ from this one in one field each."""
    path = _zip(
        tmp_path / "ok.pth", _tensor_pickle(size=(2, 4), stride=(4, 1)), {"0": bytes(range(8))}
    )
    obj = torch_zip.read(path)
    assert torch.equal(obj["w"], torch.arange(8, dtype=torch.uint8).view(2, 4))
    _same(obj, torch.load(path, weights_only=True))


def test_hostile_files_through_load_checkpoint_are_one_clear_error(hostile, tmp_path):
    """The child reads what the in-process reader refuses: one line, never the canary."""
    for name, path in list(hostile.items())[:6]:
        with pytest.raises(BnpError) as e:
            checkpoint.load_checkpoint(path, timeout=60)
        assert "\n" not in str(e.value).strip(), name
    with pytest.raises(UnsafeCheckpointError):
        checkpoint.load_checkpoint(hostile["a name outside the allowlist (a canary module)"])
    assert CANARY not in sys.modules


def _real_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))
    torch.save({"state_dict": model.state_dict(), "epoch": 2}, buffer)
    return buffer.getvalue()


def test_truncated_files_are_not_plain(tmp_path):
    data = _real_bytes()
    for cut in (10, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(NotPlain):
            torch_zip.read(path)


def test_flipped_bytes_never_escape_as_anything_but_not_plain(tmp_path):
    """Fuzz: a genuine checkpoint with random bytes changed is read (tensors within their
    records) or refused with NotPlain; no other exception, no crash."""
    data = bytearray(_real_bytes())
    rng = random.Random(21)
    path = tmp_path / "fuzz.pth"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(damaged)
        try:
            obj = torch_zip.read(path, copy=rng.random() < 0.5)
        except NotPlain as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        stack = [obj]
        while stack:  # every tensor can be read whole
            value = stack.pop()
            if isinstance(value, torch.Tensor):
                value.clone()
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, (list, tuple)):
                stack.extend(value)
    assert outcomes["read"] and outcomes["refused"]


def test_limits_are_enforced(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_zip, "MAX_CONTAINERS", 100)
    path = _zip(tmp_path / "many.pth", b"\x80\x02](" + b"}" * 200 + b"e.", {})
    with pytest.raises(NotPlain, match="containers"):
        torch_zip.read(path)
    remembered = b"".join(b"K\x01r" + struct.pack("<I", i) + b"0" for i in range(200))
    with pytest.raises(NotPlain, match="remembers"):
        torch_zip.read(_zip(tmp_path / "memo.pth", b"\x80\x02" + remembered + b"N.", {}))
    monkeypatch.setattr(torch_zip, "MAX_PICKLE_BYTES", 10)
    with pytest.raises(NotPlain, match="larger than"):
        torch_zip.read(_zip(tmp_path / "big.pth", b"\x80\x02" + _str("x" * 100) + b".", {}))


def test_misaligned_records_fall_back(tmp_path):
    """zipfile does not align records: a float record at an odd offset is refused, not read."""
    payload = struct.pack("<2f", 1.0, 2.0)
    pkl = _tensor_pickle(kind="FloatStorage", numel=2, size=(2,))
    for pad in range(4):  # one of these names puts the record off a 4-byte boundary
        path = tmp_path / f"pad{pad}.pth"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/" + "p" * pad, b"")
            z.writestr("archive/data/0", payload)
        try:
            obj = torch_zip.read(path)
        except NotPlain as e:
            assert "aligned" in str(e)
        else:
            assert obj["w"].tolist() == [1.0, 2.0]


def test_not_plain_is_a_checkpoint_error():
    assert issubclass(NotPlain, CheckpointError)
