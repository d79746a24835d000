"""Bad data, bad numbers, bad exports: a clear one-line error or a loud warning, never a
traceback, a hang, a memory blow-up or a clean-looking table of nonsense.

Every input comes from tests/corpus_data.py; the window's tests use the same corpus.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import core.data.imagefolder
import core.data.images
import core.data.npy
import core.io.export
from core.cli import main
from core.data.imagefolder import image_to_tensor
from core.data.images import ImageSet, InputSpec
from core.data.load import load_images
from core.data.triggers import trigger_from_image
from core.defense.evaluation import evaluate
from core.defense.inspection import Inspection, batch_size_for
from core.errors import BnpError, CheckpointError, DataError, MeaninglessResult
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model, remove_stale_temporaries, write_json
from tests import corpus_data as corpus
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "resources" / "demo"


@pytest.fixture(scope="module")
def inspection(model_path):
    return Inspection(load_checkpoint(model_path), device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus.npy_folder(tmp_path_factory.mktemp("data") / "set", n=24)


# ---- data files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(corpus.DATA_CASES))
def test_bad_data_is_one_clear_error(name, tmp_path):
    make, expected = corpus.DATA_CASES[name]
    path = make(tmp_path / "case")
    with pytest.raises(DataError, match=expected) as info:
        load_images(path)
    assert "\n" not in str(info.value)
    assert "pickle.load()" not in str(info.value) and "allow_pickle" not in str(info.value)


@pytest.mark.parametrize("name", list(corpus.DATA_CASES))
def test_bad_data_on_the_command_line(name, tmp_path, model_path, capsys):
    make, expected = corpus.DATA_CASES[name]
    path = make(tmp_path / "case")
    code = main(["defend", str(model_path), "--method", "bnp", "--clean", str(path)])
    assert code == 2
    line = one_line_error(capsys)
    assert line.startswith("bnp: error: clean data")
    assert re.search(expected, line), line


def test_gzip_bomb_refused_before_decompressing(tmp_path, monkeypatch):
    bomb = corpus.gzip_idx_bomb(tmp_path / "bomb", n=40_000, side=28)  # 31 MB of zeros
    monkeypatch.setattr(core.data.images, "MAX_DATA_BYTES", 8 << 20)
    with pytest.raises(DataError, match=r"would take 0\.0314 GB .* more than the"):
        load_images(bomb)
    # with a limit, only the samples asked for are decompressed, and they fit
    assert load_images(bomb, limit=100).images.shape == (100, 1, 28, 28)


def test_cifar_hash_bomb_is_refused_at_once(tmp_path):
    folder = corpus.cifar_hash_bomb(tmp_path / "cifar")
    assert (folder / "data_batch_1").stat().st_size < 600
    code = (
        "import sys\nfrom core.data.load import load_images\nfrom core.errors import DataError\n"
        f"try:\n    load_images({str(folder)!r})\nexcept DataError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=600, **_text)
    assert "shared references nest" in result.stdout  # refused by its structure


def test_unreadable_file_is_said_as_such(tmp_path, monkeypatch):
    folder = corpus.unreadable_folder(tmp_path / "locked")
    if os.geteuid() != 0:
        with pytest.raises(DataError, match="permission denied reading .*data.npy"):
            load_images(folder)
    real_open = open

    def deny(path, *args, **kwargs):  # as root, mode 000 does not stop reading: simulate it
        if str(path).endswith("data.npy"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(core.data.npy, "open", deny, raising=False)
    with pytest.raises(DataError, match="permission denied reading .*data.npy"):
        load_images(folder)


def test_huge_folder_tree_is_not_walked_to_the_end(tmp_path, monkeypatch):
    for k in range(30):
        (tmp_path / "tree" / f"d{k}").mkdir(parents=True)
        (tmp_path / "tree" / f"d{k}" / "notes.txt").write_text("no images here")
    monkeypatch.setattr(core.data.imagefolder, "MAX_FOLDER_ENTRIES", 20)
    with pytest.raises(DataError, match="holds more than 20 files and folders"):
        load_images(tmp_path / "tree")


def test_sixteen_bit_png_is_not_clipped(tmp_path):
    images = load_images(corpus.png16_folder(tmp_path / "png16"))
    assert images.images.dtype == torch.float32
    ramp = torch.linspace(0, 65535, 64, dtype=torch.float64).round() / 65535
    assert torch.allclose(images.images[0, 0].double().flatten(), ramp, atol=1e-6)


def test_float_tiff_is_not_truncated(tmp_path):
    images = load_images(corpus.float_tiff_folder(tmp_path / "tiff"))
    ramp = torch.linspace(0, 1, 64)
    assert torch.allclose(images.images[1, 0].flatten(), ramp, atol=1e-6)
    with pytest.raises(DataError, match=r"values in \[0, 255\].*without clipping"):
        image_to_tensor(corpus.float_tiff_out_of_range(tmp_path / "range.tif"))


def test_png_bomb_as_trigger(tmp_path, model_path, data, capsys):
    bomb = corpus.png_bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="6000×6000 pixels"):
        trigger_from_image(bomb)
    args = ["defend", str(model_path), "--method", "clp", "--test", str(data)]
    assert main([*args, "--trigger", str(bomb)]) == 2
    assert "6000×6000 pixels" in one_line_error(capsys)


def test_several_data_sets_say_which_folder(capsys, model_path):
    code = main(["defend", str(model_path), "--method", "bnp", "--clean", str(DEMO)])
    assert code == 2
    line = one_line_error(capsys)
    assert "split=" not in line
    assert "clean/" in line and str(DEMO / "clean") in line


# ---- input spec ----------------------------------------------------------------------------


def test_input_spec_messages():
    with pytest.raises(DataError) as info:
        InputSpec(1, (8, 8), mean=(0.1, 0.2, 0.3))
    assert "expected 1 or 1" not in str(info.value)
    assert "has 3 values, but the model takes 1-channel images: give 1 value" in str(info.value)
    with pytest.raises(DataError, match="0×0 is empty"):
        InputSpec(1, (0, 0))
    with pytest.raises(DataError, match="4000×4000 is larger than"):
        InputSpec(3, (4000, 4000))
    with pytest.raises(DataError, match="not finite"):
        InputSpec(1, (8, 8), mean=(0.5,), std=(float("nan"),))


def test_large_inputs_get_small_batches():
    assert batch_size_for(InputSpec(3, (32, 32)), 256) == 256
    assert batch_size_for(InputSpec(3, (1024, 1024)), 256) == 12


META = "The model metadata's "
IN_RANGE = r"; it must lie in 1\.\.1024\."


@pytest.mark.parametrize(
    ("meta", "args", "expected"),
    [
        # the metadata reader refuses a stranger's metadata when the file is read
        ({"input_size": [4000, 4000]}, [], META + "input_size is 4000" + IN_RANGE),
        ({"input_size": [0, 0]}, [], META + "input_size is 0" + IN_RANGE),
        ({}, ["--input-size", "0", "0"], "input size 0×0 is empty"),
        ({}, ["--channels", "3"], "takes 1-channel images"),
        ({"std": [float("nan")]}, [], META + r"std: the normalisation std \[nan\] is not finite"),
        ({}, ["--std", "nan"], r"the normalisation std \[nan\] is not finite"),
        ({}, ["--input-size", "4000", "4000"], r"input size 4000×4000 is larger than the 1024×"),
        ({}, ["--mean", "0.1", "0.2", "0.3"], "give 1 value"),
    ],
)
def test_bad_input_spec_on_the_command_line(tmp_path, capsys, meta, args, expected):
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", **meta)
    assert main(["defend", str(path), "--method", "clp", *args]) == 2
    line = one_line_error(capsys)
    assert re.search(expected, line), line


# ---- nonsense numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "warning"),
    [
        (corpus.nan_weight_checkpoint, "NaN or infinite values \\(conv1.weight\\)"),
        (corpus.negative_var_checkpoint, "bn1 has running_var ≤ 0 in 1 of 16 channels \\(3\\)"),
    ],
)
def test_broken_model_is_never_a_clean_table(make, warning, tmp_path, data):
    inspection = Inspection(load_checkpoint(make(tmp_path / "m.pth")), device="cpu")
    assert any(re.search(warning, w) for w in inspection.warnings)
    test = load_images(data)
    with pytest.raises(MeaninglessResult, match="NaN or infinite on all 24 test images"):
        inspection.evaluate(test, trigger=None)
    with pytest.raises(MeaninglessResult, match="pre-activations of .* NaN or infinite"):
        inspection.collect(test)


def test_tiny_std_refused_in_metadata_and_a_loud_warning_when_given(tmp_path, data, capsys):
    # a stranger's metadata: refused when read (the metadata reader owns that check)
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", mean=[0.5], std=[1e-30])
    with pytest.raises(CheckpointError, match=r"std \[1e-30\] would divide the inputs by almost"):
        load_checkpoint(path)
    # the same std given by the user: the model opens, every result carries the warning
    good = corpus.metadata_checkpoint(tmp_path / "good.pth", mean=[0.5], std=[0.25])
    inspection = Inspection(load_checkpoint(good), device="cpu", overrides={"std": (1e-30,)})
    assert any("multiplies inputs by more than 1000" in w for w in inspection.warnings)
    report = tmp_path / "r.json"
    args = ["defend", str(good), "--method", "clp", "--test", str(data), "--report", str(report)]
    main([*args, "--std", "1e-30"])
    assert "bnp: warning: the normalisation std [1e-30]" in capsys.readouterr().err
    assert "[1e-30]" in json.loads(report.read_text())["warnings"][0]


def test_broken_model_on_the_command_line(tmp_path, data, capsys):
    path = corpus.nan_weight_checkpoint(tmp_path / "nan.pth")
    report = tmp_path / "report.json"
    assert main(["defend", str(path), "--method", "clp", "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert "bnp: warning: the weights hold NaN" in err
    assert "NaN" in json.loads(report.read_text())["warnings"][0]
    assert main(["defend", str(path), "--method", "clp", "--test", str(data)]) == 2
    assert "NaN or infinite on all" in one_line_error(capsys)


class _NanOnBright(nn.Module):
    """Outputs NaN for images brighter than 0.5 on average, class 0 otherwise."""

    def forward(self, x):
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1
        logits[x.mean(dim=(1, 2, 3)) > 0.5] = float("nan")
        return logits


def test_some_nan_outputs_are_a_warning():
    images = torch.cat([torch.zeros(6, 1, 4, 4), torch.ones(2, 1, 4, 4)])
    metrics = evaluate(_NanOnBright(), ImageSet(images, torch.zeros(8)), InputSpec(1, (4, 4)))
    assert metrics.acc == 75.0  # the NaN samples count as wrong
    assert metrics.warnings == [
        "the model's outputs are NaN or infinite on 2 of 8 test images (counted as wrong "
        "predictions)"
    ]
    assert metrics.to_dict()["warnings"] == metrics.warnings


@pytest.mark.parametrize("target", [-3, 999, 10**30])
def test_target_outside_the_classes(target, inspection, data, capsys, model_path):
    test = load_images(data)
    with pytest.raises(DataError, match="not one of the model's 10 classes"):
        inspection.evaluate(test, target=target)
    with pytest.raises(DataError, match="not one of the model's 10 classes"):
        evaluate(inspection.model, test, inspection.spec, trigger=inspection.trigger, target=target)
    args = ["defend", str(model_path), "--method", "clp", "--test", str(data)]
    assert main([*args, "--target", str(target)]) == 2
    assert "not one of the model's 10 classes" in one_line_error(capsys)


def test_metadata_target_outside_the_classes(tmp_path, capsys):
    # refused when the file is read, by the rule every target obeys (core.data.checks.check_target)
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", target_label=999)
    expected = "The model metadata's target_label: the target label 999 is not one of the model's"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    assert main(["defend", str(path), "--method", "clp"]) == 2
    assert expected in one_line_error(capsys)


def test_labels_beyond_the_classes(inspection, tmp_path, model_path, capsys):
    folder = corpus.npy_folder(tmp_path / "twelve", n=24, classes=13)
    with pytest.raises(DataError, match="4 of 24 test labels are ≥ 10 \\(up to 12\\)"):
        inspection.evaluate(load_images(folder))
    assert main(["defend", str(model_path), "--method", "clp", "--test", str(folder)]) == 2
    assert "labels are ≥ 10" in one_line_error(capsys)


@pytest.mark.parametrize("k", ["-inf", "nan", "inf"])
def test_thresholds_must_be_finite(k, inspection, model_path, capsys):
    with pytest.raises(BnpError, match="finite number"):
        inspection.mask({"clp": float(k)})
    assert main(["defend", str(model_path), "--method", "clp", f"-k={k}"]) == 2
    assert "finite number" in one_line_error(capsys)


def test_empty_set_is_not_collect_first(inspection):
    empty = ImageSet(torch.zeros(0, 1, 8, 8), torch.zeros(0))
    with pytest.raises(DataError, match="clean set is empty"):
        inspection.collect(empty)


# ---- exports -------------------------------------------------------------------------------


def test_out_and_report_may_not_be_one_file(model_path, tmp_path, capsys):
    same = tmp_path / "x.pth"
    args = ["defend", str(model_path), "--method", "clp"]
    assert main([*args, "--out", str(same), "--report", str(same)]) == 2
    assert "both name" in one_line_error(capsys)
    assert not same.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_exports_follow_the_umask(inspection, tmp_path, umask):
    old = os.umask(umask)
    try:
        model = export_model(inspection.model, tmp_path / "m.pth")
        report = write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    for path in (model, report):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def _fill_disk_after(monkeypatch, limit: int):
    """Writes to temporary files fail with ENOSPC once `limit` bytes were written."""
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, data):
            self.n += len(data)
            if self.n > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if "w" in mode and str(path).endswith(".tmp") else fh

    monkeypatch.setattr(core.io.export, "open", fake_open, raising=False)


@pytest.mark.parametrize("fmt", ["seed", "state_dict", "safetensors", "json"])
def test_full_disk_is_said_and_leaves_nothing(fmt, inspection, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _fill_disk_after(monkeypatch, 50_000)
    with pytest.raises(BnpError, match="^disk full: .* nothing was written"):
        if fmt == "json":
            write_json(out / "r.json", {"scores": list(range(50_000))})
        else:
            export_model(inspection.model, out / "m.pth", fmt=fmt)
    assert list(out.iterdir()) == []


def test_full_disk_on_the_command_line(model_path, tmp_path, monkeypatch, capsys):
    _fill_disk_after(monkeypatch, 50_000)
    out = tmp_path / "pruned.pth"
    assert main(["defend", str(model_path), "--method", "clp", "--out", str(out)]) == 2
    assert one_line_error(capsys).startswith("bnp: error: disk full")
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder(inspection, tmp_path, monkeypatch, model_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        with pytest.raises(BnpError, match="permission denied"):
            export_model(inspection.model, folder / "m.pth")
        folder.chmod(0o755)

    def refuse(*args, **kwargs):  # root writes anywhere: simulate the read-only disk
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(core.io.export.tempfile, "mkstemp", refuse)
    args = ["defend", str(model_path), "--method", "clp", "--out", str(folder / "m.pth")]
    assert main(args) == 2
    assert "read-only disk" in one_line_error(capsys)


def test_stale_temporary_files_are_removed(inspection, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_text)
    stale = tmp_path / f".m.pth.bnp{int(dead.stdout)}.x1y2.tmp"
    live = tmp_path / f".m.pth.bnp{os.getppid()}.x1y2.tmp"
    stale.write_bytes(b"half a model")
    live.write_bytes(b"another export in progress")
    export_model(inspection.model, tmp_path / "m.pth")
    assert not stale.exists() and live.exists()
    assert remove_stale_temporaries(tmp_path) == []


_text = {"capture_output": True, "text": True, "check": True}


def test_failed_write_removes_its_temporary_file(inspection, tmp_path):
    def broken(_tmp):
        raise ValueError("a bug in the writer")

    with pytest.raises(ValueError):
        core.io.export.atomic_write(tmp_path / "x.json", broken)
    assert list(tmp_path.iterdir()) == []


# ---- the command line itself ---------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["info"], ["defend"], ["demo"], ["train"]])
def test_help_does_not_import_torch(command):
    code = (
        "import sys\nfrom core.cli import main\n"
        f"try:\n    main({[*command, '-h']!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, **_text)
    assert "usage: bnp" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_bug_is_one_line_too(monkeypatch, capsys, model_path):
    import core.cli

    def boom(_args):
        raise ValueError("something nobody expected\nsecond line")

    monkeypatch.setattr(core.cli, "cmd_info", boom)
    assert main(["info", str(model_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error (ValueError: something nobody expected)" in err


def test_progress_bar_is_tqdm():
    import io

    from core.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(label="statistics", stream=stream)
    for done in (0, 5, 10):
        bar(done, 10)
    text = stream.getvalue()
    assert "statistics" in text and "10/10" in text and "100%" in text
    assert bar._bar is None  # closed at done == total
    np.testing.assert_equal(text.count("\n") >= 1, True)


@pytest.mark.parametrize(
    ("meta", "args"),
    [
        ({"input_size": [4000, 4000]}, ["--input-size", "28", "28"]),
        ({"std": [float("nan")]}, ["--std", "0.3"]),
        ({"mean": [5000.0]}, ["--mean", "0.5"]),
    ],
)
def test_a_bad_metadata_field_is_corrected_by_its_override(tmp_path, capsys, meta, args):
    """The file's wrong field is refused alone; given on the command line, the model opens."""
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", **meta)
    assert main(["info", str(path)]) == 2
    capsys.readouterr()
    assert main(["info", str(path), *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if args[0] == "--input-size":
        assert "1×28×28" in out
