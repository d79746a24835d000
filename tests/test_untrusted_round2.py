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

from core.cli import main
from core.data import load_images
from core.errors import BnpError, DataError
from core.pickle_guard import NestedSharing, check_sharing
from core.safety import check_output, confined, printable
from tests import corpus_data as corpus

ROOT = Path(__file__).resolve().parent.parent
_text = dict(capture_output=True, text=True)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bnp: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A healthy 1-channel ResNet-20 for 8×8 inputs, target 0."""
    folder = tmp_path_factory.mktemp("models")
    return corpus.metadata_checkpoint(folder / "good.pth", target_label=0)


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
        "from core.data import load_images\nfrom core.errors import DataError\n"
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


# ---- 5. structure, not time: shared references that nest ---------------------------------


def test_nested_sharing_is_refused_by_its_structure():
    from tests.corpus_checkpoints import _hash_bomb_pickle

    with pytest.raises(NestedSharing, match="shared references nest"):
        check_sharing(io.BytesIO(_hash_bomb_pickle(depth=60)))
    check_sharing(io.BytesIO(_hash_bomb_pickle(depth=8)))  # 2^8: small, passes


def test_a_real_state_dict_pickle_passes_the_structure_check():
    import pickle

    import torch

    from core.architectures import build_model

    state = build_model("cifar_resnet20", 10, 1).state_dict()
    twice = {"model": state, "ema": state, "history": [state] * 3}
    check_sharing(io.BytesIO(pickle.dumps(twice)))
    buffer = io.BytesIO()
    torch.save(twice, buffer)
    assert buffer.tell() > 0
