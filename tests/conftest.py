"""Test-wide setup, before any test module imports torch."""

import os

import pytest

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine (CI, a developer
# running the app beside the tests) spinning threads made torch many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist every core already runs a worker: torch's intra-op threads (and those of the
# `python -m core.cli` and reader children, which inherit this) only add hand-offs between
# oversubscribed cores. A test that wants more threads still sets them (torch.set_num_threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# Files whose one test or shared fixture runs longest (README's `--durations`: 7-20 s each)
# are handed to the pytest-xdist workers first: run last, one of them kept a worker busy
# while the other had finished (6 s of a 172 s run).
FIRST = (
    "tests/test_suspects_demo.py",
    "tests/gui/test_screenshot.py",
    "tests/test_demo.py",
    "tests/test_zoo.py",
)


def pytest_collection_modifyitems(items):
    first = {name: rank for rank, name in enumerate(FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(FIRST)))


@pytest.fixture
def one_torch_thread():
    """One torch thread for a test that trains or runs many forward passes: on a shared 2-core
    machine, spinning OpenMP threads cost far more than they bring."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A healthy 1-channel ResNet-20 for 8×8 inputs, target 0 (the untrusted-input tests)."""
    from tests import corpus_data

    folder = tmp_path_factory.mktemp("models")
    return corpus_data.metadata_checkpoint(folder / "good.pth", target_label=0)


def one_line_error(capsys) -> str:
    """The one `bnp: error:` line a failed command printed (no traceback, no second line)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bnp: error:")]
    assert len(lines) == 1, err
    return lines[0]
