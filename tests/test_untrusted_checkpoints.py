"""A stranger's checkpoint cannot hurt: no code run, no hang, no memory blow-up, one-line errors.

The files come from tests/corpus_checkpoints.py. Every case is opened through the Python API
and through the command line's ``main`` (exit 2, one line, no traceback); two cases also run
as a real ``python -m core.cli`` process. Hangs are stopped by the loader's wall-clock limit
(a generous 5 s here; nothing asserts how long anything took).
"""

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.cli import main as cli_main
from core.errors import Cancelled, CheckpointError, UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.io.metadata import ModelMetadata
from core.safety import isolation
from tests import corpus_checkpoints as corpus

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

HANG_LIMIT_S = 2.0  # a hang waits out the whole limit: short, the suite pays it per hang test
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def files(folder):
    """Every corpus case written once for this module."""
    return {case.name: case.write(folder) for case in corpus.CASES}


def _reader_children() -> list[int]:
    """Children of the zygote still alive (the readers of files)."""
    proc = isolation._ZYGOTE._proc
    if proc is None:
        return []
    try:
        text = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def _assert_no_reader_left() -> None:
    """A stopped reader is killed: its process disappears (waits, asserts no duration)."""
    for _ in range(200):
        if not _reader_children():
            return
        time.sleep(0.05)
    assert _reader_children() == []


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_api_refuses_with_one_line(files, case):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(files[case.name])
    assert type(info.value) is case.error  # junk is never "unsafe": no trust offered for it
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.search(case.message, message), message


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_cli_exits_2_with_one_line(files, case, capsys):
    assert cli_main(["info", str(files[case.name])]) == 2
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert line.startswith("bnp: error: ")
    assert re.search(case.message, line), line
    assert out.out == ""


def test_torchscript_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = corpus.torchscript_writing_a_file(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"__setstate__.*--trust-pickle"):
        load_checkpoint(path)
    assert not marker.exists()
    # the control: torch.jit.load does run the archive's code, so the file is a real threat
    torch.jit.load(str(path))
    assert marker.exists()


def test_torchscript_code_never_runs_from_the_command_line(tmp_path):
    marker = tmp_path / "marker"
    path = corpus.torchscript_writing_a_file(tmp_path, marker)
    result = _run_cli("info", str(path))
    assert result.returncode == 2
    assert "cannot be loaded safely" in _one_line(result.stderr)
    assert not marker.exists()


def test_torchscript_weights_read_as_data_equal_jit_load(tmp_path):
    path = corpus.torchscript_plain(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torchscript" and ckpt.metadata.arch == "cifar_resnet20"
    expected = torch.jit.load(str(path)).state_dict()  # our own file: safe to run here
    assert list(ckpt.state_dict) == list(expected)
    for key, value in expected.items():
        assert torch.equal(ckpt.state_dict[key], value), key


def test_trusted_torchscript_with_code_runs_it_in_the_child(tmp_path):
    marker = tmp_path / "marker"
    path = corpus.torchscript_writing_a_file(tmp_path, marker)
    # with consent the code runs (in the reader process); the file holds no known model
    with pytest.raises(CheckpointError, match="does not fit|no registered|architecture|maps no"):
        load_checkpoint(path, trust_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("name, write, trust", corpus.HANGS, ids=[h[0] for h in corpus.HANGS])
def test_hangs_stop_at_the_wall_clock_limit(tmp_path, name, write, trust):
    path = write(tmp_path)
    with pytest.raises(CheckpointError, match="took longer than 2 s and was stopped") as info:
        load_checkpoint(path, trust_pickle=trust, timeout=HANG_LIMIT_S)
    assert "\n" not in str(info.value)
    _assert_no_reader_left()


def test_hang_from_the_command_line_stops_at_the_limit(tmp_path):
    path = corpus.torchscript_endless(tmp_path)
    env = {isolation.TIMEOUT_ENV: str(HANG_LIMIT_S)}
    result = _run_cli("info", str(path), "--trust-pickle", env=env)
    assert result.returncode == 2
    assert "took longer than 2 s" in _one_line(result.stderr)


def test_cli_main_hang_uses_the_environment_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(isolation.TIMEOUT_ENV, str(HANG_LIMIT_S))
    hang = str(corpus.torchscript_endless(tmp_path))
    assert cli_main(["info", hang, "--trust-pickle"]) == 2
    assert "took longer than 2 s" in _one_line(capsys.readouterr().err)


def test_cancel_stops_a_hang(tmp_path):
    path = corpus.torchscript_endless(tmp_path)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 5  # after ~5 polls of the running reader

    with pytest.raises(Cancelled):
        load_checkpoint(path, trust_pickle=True, cancel=cancel, timeout=600)
    _assert_no_reader_left()


def test_ctrl_c_during_a_hang_kills_the_reader(tmp_path):
    path = corpus.torchscript_endless(tmp_path)
    load_checkpoint(corpus.torchscript_plain(tmp_path))  # the zygote is up: SIGINT lands in wait

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            load_checkpoint(path, trust_pickle=True, timeout=600)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _assert_no_reader_left()


def test_plain_pickle_needs_trust_then_loads(tmp_path):
    path = corpus.plain_pickle_state_dict(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert ckpt.format == "state_dict" and ckpt.metadata.arch == "cifar_resnet20"
    for key, value in corpus.tiny_state_dict().items():
        assert torch.equal(ckpt.state_dict[key], value)


def test_plain_pickle_of_plain_data_needs_no_trust(tmp_path):
    path = tmp_path / "numbers.pkl"
    path.write_bytes(pickle.dumps({"epoch": 3, "acc": [0.5, 0.6]}, protocol=4))
    with pytest.raises(CheckpointError, match="no model weights") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_zip_sizes_bounded_before_unpacking(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(corpus.tiny_state_dict(), path)
    with pytest.raises(CheckpointError, match=r"would take .* more than the .* allowed"):
        load_checkpoint(path, memory_limit=64 * 1024)
    assert load_checkpoint(path).format == "state_dict"


class _Allocates:
    """Unpickling this (trusted) asks for a 1 GiB tensor."""

    def __reduce__(self):
        return (torch.ones, (2**28,))


def test_memory_limit_stops_the_reader(tmp_path):
    path = tmp_path / "allocates.pkl"
    path.write_bytes(pickle.dumps({"x": _Allocates()}, protocol=4))
    with pytest.raises(CheckpointError, match=r"needs more than 256 MiB of memory") as info:
        load_checkpoint(path, trust_pickle=True, memory_limit=256 * 2**20)
    assert "\n" not in str(info.value)


def test_symlink_loop_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="loop of symbolic links"):
        load_checkpoint(corpus.symlink_loop(tmp_path))
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(fifo)  # reading a pipe would block forever
    with pytest.raises(CheckpointError, match="No such file"):
        load_checkpoint(tmp_path / "missing.pth")


BASE = {"arch": "cifar_resnet20", "num_classes": 4, "in_channels": 3, "input_size": [32, 32]}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": [4000, 4000]}, r"input_size is 4000"),
        ({"input_size": [32]}, r"two numbers"),
        ({"input_size": "big"}, r"whole number"),
        ({"input_size": True}, r"whole number"),
        ({"target_label": -1}, r"target_label: the target label -1 is not one of the model's 4"),
        ({"target_label": 2.5}, r"whole number"),
        ({"extra": "x"}, r"'extra' must be a dict"),
        ({"attack": [1]}, r"'attack' must be a dict"),
        ({"class_names": ["a", "b"]}, r"names 2 classes .* 4 outputs"),
        ({"mean": [0.5, 0.5]}, r"mean: the normalisation mean has 2 values, but .* 3-channel"),
        ({"std": [float("inf")]}, r"std: the normalisation std \[inf\] is not finite"),
        ({"dataset": {"name": "x"}}, r"dataset must be a name"),
        ({"num_classes": 0}, r"num_classes is 0"),
    ],
)
def test_metadata_fields_checked_when_read(change, message):
    with pytest.raises(CheckpointError, match=message) as info:
        ModelMetadata.from_dict({**BASE, **change})
    assert "\n" not in str(info.value)


def test_good_metadata_still_reads():
    meta = ModelMetadata.from_dict(
        {**BASE, "target_label": 3.0, "mean": [0.5], "std": 0.25, "class_names": list("abcd")}
    )
    assert meta.target_label == 3 and meta.mean == (0.5,) and meta.std == (0.25,)
    assert meta.input_size == (32, 32)


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=600,
    )


def test_relative_path_after_chdir(tmp_path, monkeypatch):
    load_checkpoint(corpus.torchscript_plain(tmp_path))  # the reader started in another folder
    torch.save(corpus.tiny_state_dict(), tmp_path / "here.pth")
    monkeypatch.chdir(tmp_path)
    ckpt = load_checkpoint("here.pth")
    assert ckpt.path == Path("here.pth") and ckpt.format == "state_dict"


def _grandchildren(pid: int) -> list[int]:
    """Processes two levels below ``pid`` (the CLI → its zygote → the reader)."""
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            found += Path(f"/proc/{child}/task/{child}/children").read_text().split()
    except OSError:
        pass
    return [int(p) for p in found]


def test_ctrl_c_stops_the_command_line_during_a_hang(tmp_path):
    path = corpus.torchscript_endless(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "info", str(path), "--trust-pickle"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        # Ctrl-C as a terminal delivers it: a shell starts background jobs (CI under nohup, a
        # job started with &) with SIGINT ignored, and Python keeps that — then no Ctrl-C
        # reaches the command at all (seen: a loaded run of the suite started with &)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        readers: list[int] = []
        give_up = time.monotonic() + 600  # a cap so that old code fails instead of hanging
        while not readers and proc.poll() is None and time.monotonic() < give_up:
            time.sleep(0.2)  # wait until the reader is hashing
            readers = _grandchildren(proc.pid)
        assert readers, proc.communicate()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = proc.communicate(timeout=600)  # a hang guard, not a bound
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert _one_line(err) == "bnp: interrupted"
    for pid in readers:  # the reader was killed, not left hashing
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
