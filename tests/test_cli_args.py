"""`bnp` says an argument error at once: before torch (and the model) load."""

from __future__ import annotations

import subprocess
import sys

import pytest

# runs main() in a fresh interpreter and reports whether torch was imported on the way
PROBE = (
    "import sys\n"
    "from core.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('torch' in sys.modules, rc)\n"
)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "bnp"], "BNP needs clean labelled samples: pass --clean DIR."),
        (["--method", "ep"], "EP needs samples of the suspect training set"),
        ([], "Choose --method ep|bnp|clp, or --auto"),
        (["--auto", "--clean", "c"], "--auto needs the suspect samples"),
        (["--auto", "--method", "ep"], "--auto chooses the methods itself"),
        (["--method", "clp", "--poisoned", "p"], "--poisoned gives the ASR beside the ACC"),
        (["--method", "clp", "--out", "x.pth", "--report", "x.pth"], "--out and --report both"),
    ],
)
def test_defend_argument_errors_come_before_torch(tmp_path, arguments, message):
    checkpoint = tmp_path / "missing.pth"  # never opened: the error comes first
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "defend", str(checkpoint), *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.stdout.split() == ["False", "2"], done.stdout + done.stderr
    assert message in done.stderr
    assert done.stderr.startswith("bnp: error: ")
