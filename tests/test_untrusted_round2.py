"""Untrusted input, round 2: no crash, no file replaced, nothing read or printed that the file
chose (issue 18). Every hostile file comes from tests/corpus_data.py or tests/corpus_checkpoints.py;
docs/safety.md lists what each group of tests guarantees.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.data.load import load_images
from core.errors import BnpError, DataError
from core.safety.paths import check_output, confined, printable
from core.safety.pickle_guard import NestedSharing, check_sharing
from tests import corpus_data as corpus
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
_text = dict(capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus.npy_folder(tmp_path_factory.mktemp("data") / "set", n=24)


# ---- 1. a data file never crashes the process --------------------------------------------


@pytest.mark.parametrize("name", list(corpus.CRASH_CASES))
def test_crash_files_are_refused_in_a_child_process(name, tmp_path):
    """The reader runs in a child, so that a regression (signal 11) fails here, not pytest."""
    make, expected = corpus.CRASH_CASES[name]
    folder = make(tmp_path / "cifar-10-batches-py").parent
    code = (
        "from core.data.load import load_images\nfrom core.errors import DataError\n"
        f"try:\n    load_images({str(folder)!r})\nexcept DataError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=600, **_text)
    assert result.returncode == 0, f"the reader died (exit {result.returncode})"
    assert re.search(expected, result.stdout), result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1


def test_crash_file_on_the_command_line(tmp_path, model_path):
    make, expected = corpus.CRASH_CASES["CIFAR labels with an object-field dtype"]
    folder = make(tmp_path / "cifar-10-batches-py").parent
    command = ["defend", str(model_path), "--method", "bnp", "--clean", str(folder)]
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", *command], cwd=ROOT, timeout=600, **_text
    )
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("bnp: error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]), result.stderr
    assert "Traceback" not in result.stderr


def test_plain_cifar_batches_still_read(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for protocol in (2, 5):
        data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
        batch = {b"data": data, b"labels": np.array([3, 9], dtype=">i8")}
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        images = load_images(tmp_path)
        assert images.labels.tolist() == [3, 9]
        assert images.images.reshape(2, -1).numpy().tolist() == data.tolist()
    # Python 2 pickles (CIFAR's own files) name dtypes and byte orders with byte strings
    py2 = pickle.dumps({b"data": data, b"labels": [3, 9]}, protocol=2)
    py2 = py2.replace(b"X\x02\x00\x00\x00u1", b"U\x02u1").replace(b"X\x01\x00\x00\x00|", b"U\x01|")
    assert b"U\x02u1" in py2 and b"U\x01|" in py2
    (folder / "data_batch_1").write_bytes(py2)
    assert load_images(tmp_path).labels.tolist() == [3, 9]


# ---- 5. structure, not time: shared references that nest ---------------------------------


def test_nested_sharing_is_refused_by_its_structure():
    from tests.corpus_checkpoints import _hash_bomb_pickle

    with pytest.raises(NestedSharing, match="shared references nest"):
        check_sharing(io.BytesIO(_hash_bomb_pickle(depth=60)))
    check_sharing(io.BytesIO(_hash_bomb_pickle(depth=8)))  # 2^8: small, passes


def test_a_real_state_dict_pickle_passes_the_structure_check():
    import pickle

    import torch

    from core.model.architectures import build_model

    state = build_model("cifar_resnet20", 10, 1).state_dict()
    twice = {"model": state, "ema": state, "history": [state] * 3}
    check_sharing(io.BytesIO(pickle.dumps(twice)))
    buffer = io.BytesIO()
    torch.save(twice, buffer)
    assert buffer.tell() > 0


# ---- 2. one output rule for every file written ---------------------------------------------


def _defend(model_path, data, *extra) -> list[str]:
    return ["defend", str(model_path), "--method", "bnp", "--clean", str(data), *extra]


def test_report_never_replaces_a_fifo_or_a_symlink(tmp_path, model_path, data, capsys):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    target = tmp_path / "kept.json"
    target.write_text("{}")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    for out, kind in ((fifo, "a FIFO"), (link, "a symbolic link")):
        assert main(_defend(model_path, data, "--report", str(out))) == 2
        line = one_line_error(capsys)
        assert f"it is {kind}" in line and "refusing to write" in line, line
    assert fifo.is_fifo() and link.is_symlink() and target.read_text() == "{}"


def test_devices_are_never_output_targets():
    with pytest.raises(BnpError, match="it is a device"):
        check_output("/dev/null")  # as root, renaming over it would replace the device


def test_a_state_dict_sidecar_never_replaces_the_input(tmp_path, model_path, data, capsys):
    """A checkpoint named model.pth.bnp.json, exported as --out model.pth --format state_dict:
    the export's sidecar would be the input itself."""
    source = tmp_path / "model.pth.bnp.json"
    source.write_bytes(model_path.read_bytes())
    before = source.read_bytes()
    out = tmp_path / "model.pth"
    args = ["--out", str(out), "--format", "state_dict"]
    assert main(_defend(source, data, *args)) == 2
    line = one_line_error(capsys)
    assert "metadata sidecar" in line and "this run reads that file" in line, line
    assert source.read_bytes() == before and not out.exists()  # nothing written at all


@pytest.mark.parametrize("option", ["--out", "--report"])
def test_outputs_never_replace_the_data_the_run_reads(option, tmp_path, model_path, capsys):
    data = corpus.npy_folder(tmp_path / "clean", n=24)
    labels = (data / "labels.npy").read_bytes()
    assert main(_defend(model_path, data, option, str(data / "labels.npy"))) == 2
    line = one_line_error(capsys)
    assert "inside the folder" in line and "which this run reads" in line, line
    assert (data / "labels.npy").read_bytes() == labels


def test_the_trigger_is_not_an_output(tmp_path, model_path, data, capsys):
    from PIL import Image

    trigger = tmp_path / "trigger.png"
    Image.new("L", (3, 3), 255).save(trigger)
    before = trigger.read_bytes()
    extra = ["--test", str(data), "--trigger", str(trigger), "--report", str(trigger)]
    assert main(_defend(model_path, data, *extra)) == 2
    assert "this run reads that file" in one_line_error(capsys)
    assert trigger.read_bytes() == before


def test_check_output_allows_new_and_regular_files(tmp_path):
    assert check_output(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("{}")
    assert check_output(tmp_path / "old.json", [tmp_path / "other.pth"]) == tmp_path / "old.json"


# ---- 3. BackdoorBench: tests/test_backdoorbench.py::test_sample_paths_stay_inside_... ----


def test_confined_paths(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    (tmp_path / "y.png").write_bytes(b"y")
    root = tmp_path / "a"
    assert confined("x.png", root) == (root / "x.png").resolve()
    assert confined(str(root / "x.png"), root) == (root / "x.png").resolve()
    assert confined("../y.png", root) is None
    assert confined(str(tmp_path / "y.png"), root) is None
    assert confined("/etc/passwd", root) is None
    assert confined("missing.png", root) is None


# ---- 4. a file's strings are printed with their control characters escaped --------------

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\rFAKE LINE: ASR 0.00\u202e"


def test_printable_escapes_every_control_character():
    shown = printable(HOSTILE)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in shown)
    assert shown.startswith("\\x1b]0;pwned\\x07\\x1b[2J\\rFAKE LINE")
    assert printable("x" * 50, limit=10) == "x" * 9 + "…"


def test_metadata_escape_codes_never_reach_the_terminal(tmp_path, capsys):
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", dataset=HOSTILE, target_label=0)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\r" not in out.out + out.err
    assert "\\x1b]0;pwned" in out.out
    assert not any(line.startswith("FAKE LINE") for line in out.out.splitlines())


def test_an_error_quoting_a_file_is_escaped(tmp_path, capsys):
    bad = tmp_path / "evil\x1b[2Jname"
    bad.mkdir()
    assert main(["defend", str(bad), "--method", "clp"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\x1b[2Jname" in err


def test_html_report_escapes_control_characters():
    from bnp_gui.report import report_html

    report = {
        "methods": {"bnp": 3.0},
        "thresholds": {"bnp": 3.0},
        "per_layer": {HOSTILE: 1},
        "measured_on": {"set": None},
        "provenance": {
            "defend_command": None,
            "defend_command_missing_because": "<script>" + HOSTILE,
            "created_utc": "now",
            "program": "bnp",
            "checkpoint_sha256": "0",
            "model_sha256": "0",
        },
        "checkpoint": HOSTILE,
        "architecture": "<b>x</b>",
        "model": "m.pth",
        "format": "seed",
        "acc_before": None,
        "acc_after": None,
        "asr_before": None,
        "asr_after": None,
        "trigger": None,
        "pruned": 1,
        "combine": "union",
        "force_prune": [],
        "keep": [],
    }
    page = report_html(report)
    assert "\x1b" not in page and "\u202e" not in page and "<script>" not in page
    assert "\\x1b]0;pwned" in page and "&lt;b&gt;x&lt;/b&gt;" in page


# ---- 6. session files: every field checked, paths confirmed ------------------------------


def _session(folder: Path, **changes) -> Path:
    content = {
        "format": "bnp-inspector-session",
        "version": 1,
        "checkpoint": {"path": str(folder / "model.pth"), "arch": "cifar_resnet20"},
        "data": {},
        "trigger": {"kind": "checkpoint", "path": {"path": ""}},
        "input_overrides": {},
        "decisions": {},
        "view_method": "bnp",
    }
    content.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pth").write_bytes(b"x")
    path = folder / "s.bnpsession"
    path.write_text(json.dumps(content))
    return path


SESSION_CASES = {
    "version text": ({"version": "one"}, r"version must be a whole number"),
    "size infinite": ({"input_overrides": {"size": [1e999, 8]}}, r"input_overrides\.size must"),
    "mean NaN": ({"input_overrides": {"mean": [float("nan")]}}, r"input_overrides\.mean must"),
    "std negative": ({"input_overrides": {"std": [-1]}}, r"input_overrides\.std must be positive"),
    "threshold text": ({"decisions": {"thresholds": {"bnp": "x"}}}, r"thresholds\.bnp must"),
    "force_prune triple": ({"decisions": {"force_prune": [[1, 2, 3]]}}, r"force_prune holds"),
    "unknown method": ({"view_method": "rm -rf"}, r"view_method must be one of"),
    "unknown role": ({"data": {"evil": "/etc"}}, r"unknown role"),
    "trigger alpha inf": ({"trigger": {"alpha": 1e999}}, r"trigger\.alpha must"),
    "checkpoint not a dict": ({"checkpoint": [1]}, r"checkpoint must be a dict"),
}


@pytest.mark.parametrize("name", list(SESSION_CASES))
def test_hostile_session_fields_are_one_line_each(name, tmp_path):
    from bnp_gui import session_file

    changes, expected = SESSION_CASES[name]
    path = _session(tmp_path, **changes)
    with pytest.raises(session_file.SessionFileError, match=expected) as info:
        session_file.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"format": "bnp-inspector-session", "version": 1' + "9" * 5000 + "}",
    ],
)
def test_malformed_session_json(text, tmp_path):
    from bnp_gui import session_file

    path = tmp_path / "s.bnpsession"
    path.write_text(text)
    with pytest.raises(session_file.SessionFileError, match="not a session file"):
        session_file.load(path)


def test_session_paths_must_be_files_or_folders(tmp_path):
    from bnp_gui import session_file

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path = _session(tmp_path, data={"clean": str(fifo)})
    with pytest.raises(session_file.SessionFileError, match=r"data \(clean\) .*pipe is a FIFO"):
        session_file.load(path)


def test_session_paths_outside_its_folder_need_confirming(tmp_path):
    from bnp_gui import session_file

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data").mkdir()
    inside = _session(tmp_path / "s")
    assert session_file.load(inside).outside == []
    climbing = _session(
        tmp_path / "s",
        data={"clean": {"path": "/nonexistent/data", "relative": "../elsewhere/data"}},
    )
    assert session_file.load(climbing).outside == [str(elsewhere / "data")]
    absolute = _session(tmp_path / "s", data={"test": "/etc"})
    assert session_file.load(absolute).outside == ["/etc"]


# ---- 5. time limits; non-regular files refused up front ----------------------------------


def test_a_fifo_as_trigger_is_refused_at_once(tmp_path, model_path, data, capsys):
    fifo = tmp_path / "trigger.png"
    os.mkfifo(fifo)  # opening it would block until someone writes to it
    extra = ["--test", str(data), "--trigger", str(fifo)]
    assert main(["defend", str(model_path), "--method", "clp", *extra]) == 2
    assert "is a FIFO (named pipe), not a file: refused" in one_line_error(capsys)


def test_a_fifo_as_data_is_refused_at_once(tmp_path, model_path, capsys):
    fifo = tmp_path / "data.npy"
    os.mkfifo(fifo)
    assert main(["defend", str(model_path), "--method", "bnp", "--clean", str(fifo)]) == 2
    line = one_line_error(capsys)
    assert line.startswith("bnp: error: clean data") and "is a FIFO" in line, line


def test_data_reads_stop_at_the_time_limit(tmp_path):
    """Data are parsed in the isolated reader: past its wall-clock limit the read is stopped
    with one line (here a limit far below what 300 PNG files take)."""
    from PIL import Image

    from core.data.limited import read_images

    for k in range(3):
        (tmp_path / "set" / str(k)).mkdir(parents=True)
        for i in range(100):
            Image.new("L", (16, 16), i).save(tmp_path / "set" / str(k) / f"{i}.png")
    assert len(read_images(tmp_path / "set")) == 300  # the same read without a tight limit
    with pytest.raises(DataError, match=r"took longer than 0\.001 s and was stopped"):
        read_images(tmp_path / "set", timeout=0.001)


def test_isolated_data_read_equals_the_direct_read(tmp_path):
    from core.data.limited import read_image, read_images

    folder = corpus.npy_folder(tmp_path / "set", n=12, channels=3)
    direct, isolated = load_images(folder), read_images(folder)
    assert torch.equal(direct.images, isolated.images)
    assert torch.equal(direct.labels, isolated.labels)
    assert (direct.source, direct.class_names) == (isolated.source, isolated.class_names)
    from core.data.imagefolder import image_to_tensor

    png = corpus.png16_folder(tmp_path / "png") / "a" / "0.png"
    assert torch.equal(read_image(png), image_to_tensor(png))


# ---- 7. command-line overrides pass the metadata's checks ---------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--std", "-1"], r"std \[-1\.0\] is negative"),
        (["--mean", "5000"], r"mean \[5000\.0\] is not one of images in \[0, 1\]"),
        (["--std", "inf"], r"std \[inf\] is not finite"),
        (["--input-size", "0", "8"], r"input size 0×8 is empty"),
    ],
)
def test_overrides_are_checked_like_metadata(args, expected, tmp_path, model_path, capsys):
    assert main(["info", str(model_path), *args]) == 2
    assert re.search(expected, one_line_error(capsys))


@pytest.mark.parametrize(
    "meta, expected", [({"std": [-1.0]}, r"std \[-1\.0\] is negative"), ({"mean": [5000]}, r"mean")]
)
def test_the_same_values_in_metadata_are_refused(meta, expected, tmp_path, capsys):
    path = corpus.metadata_checkpoint(tmp_path / "m.pth", **meta)
    assert main(["info", str(path)]) == 2
    assert re.search(expected, one_line_error(capsys))


# ---- 8. the smaller ones -------------------------------------------------------------------


def test_a_trigger_cut_inside_its_header_names_the_file(tmp_path):
    from PIL import Image

    from core.data.imagefolder import image_to_tensor

    whole = tmp_path / "whole.png"
    Image.new("RGB", (8, 8), "red").save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:40])
    with pytest.raises(DataError, match=r"cut\.png: not an image file that can be decoded") as e:
        image_to_tensor(cut)
    assert "BytesIO" not in str(e.value)


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_devices_that_cannot_run_the_model(device, model_path, capsys):
    assert main(["defend", str(model_path), "--method", "clp", "--device", device]) == 2
    assert f"Device '{device}' cannot run the model here" in one_line_error(capsys)


def test_a_nan_weight_torchscript_export_reopens(tmp_path):
    """Reading it twice gives the same NaN: not 'changed while it was read'."""
    from core.io.checkpoint import load_checkpoint
    from core.io.export import export_model

    ckpt = load_checkpoint(corpus.nan_weight_checkpoint(tmp_path / "nan.pth"))
    out = export_model(ckpt.model, tmp_path / "nan.pt", fmt="torchscript", metadata=ckpt.metadata)
    again = load_checkpoint(out)
    assert torch.isnan(again.state_dict["conv1.weight"]).any()


def test_exif_orientation_is_applied(tmp_path):
    import numpy as np
    from PIL import Image

    from core.data.imagefolder import read_image_array

    pixels = np.zeros((4, 8), np.uint8)
    pixels[0, 0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    image.save(tmp_path / "photo.png", exif=exif)
    assert read_image_array(tmp_path / "photo.png").shape == (8, 4)


def test_backdoorbench_num_classes_inf_is_a_notice(tmp_path):
    from core.io.backdoorbench import from_dict
    from core.model.architectures import build_model

    obj = {"model_name": "preactresnet18", "num_classes": float("inf"), "model": {}}
    obj["model"] = build_model("preactresnet18", 10, 3).state_dict()
    result = from_dict(obj, tmp_path / "defense_result.pt")
    assert "num_classes" not in result.meta
    assert any("inf is not a whole number" in n for n in result.notices)


def test_one_pixel_images_get_a_note_on_the_command_line(tmp_path, model_path, capsys):
    import numpy as np

    folder = tmp_path / "tiny"
    folder.mkdir()
    np.save(folder / "data.npy", np.full((20, 1, 1, 1), 128, np.uint8))
    np.save(folder / "labels.npy", np.arange(20) % 10)
    assert main(["defend", str(model_path), "--method", "clp", "--test", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "bnp: warning: the test images are 1×1, scaled up 8× to the model's 8×8 input" in err


def test_metadata_contradicting_the_weights_is_a_notice(tmp_path):
    from core.io.checkpoint import load_checkpoint

    path = corpus.metadata_checkpoint(tmp_path / "m.pth", num_classes=100, in_channels=3)
    ckpt = load_checkpoint(path)
    assert (ckpt.metadata.num_classes, ckpt.metadata.in_channels) == (10, 1)  # the weights win
    assert any("num_classes = 100, but the weights are 10" in n for n in ckpt.notices)
    assert any("in_channels = 3, but the weights are 1" in n for n in ckpt.notices)
    honest = load_checkpoint(corpus.metadata_checkpoint(tmp_path / "ok.pth"))
    assert not any("the weights' value is used" in n for n in honest.notices)


def _reporting_child(n: int):
    """Run in the reader child by the test below: reports each step, each after 0.3 s."""
    import time

    from core.safety.isolation import report_progress

    for i in range(n):
        time.sleep(0.3)  # past the 0.25 s between reports: each one is sent
        report_progress(i, n)
    report_progress(n, n)
    return {"steps": n}, []


def test_progress_of_the_reader_child_reaches_the_caller():
    from core.safety.isolation import run_isolated

    seen = []
    parsed = run_isolated(
        "tests.test_untrusted_round2:_reporting_child",
        2,
        what="reporting",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert parsed.info == {"steps": 2} and seen == [(0, 2), (1, 2), (2, 2)]


def test_an_image_folder_reports_every_file(tmp_path, monkeypatch):
    from PIL import Image

    from core.safety import isolation

    for k in range(2):
        (tmp_path / "set" / str(k)).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (4, 4), i).save(tmp_path / "set" / str(k) / f"{i}.png")
    sent = []

    class Conn:
        def send_bytes(self, data: bytes) -> None:
            sent.append(tuple(json.loads(data)["progress"]))

    monkeypatch.setattr(isolation, "_PROGRESS", {"conn": Conn(), "last": -1e9, "sent": False})
    monkeypatch.setattr(isolation, "PROGRESS_INTERVAL_S", 0.0)
    assert len(load_images(tmp_path / "set")) == 6
    assert sent == [(i, 6) for i in range(6)] + [(6, 6)]
