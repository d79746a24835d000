"""GUI test setup: offscreen Qt, torch imported before the QApplication, settings in a temporary
folder, and tiny models + data built once per session (an untrained one, and one with a real
backdoor standing in for the bundled demo)."""

from __future__ import annotations

import gc
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app does (bnp_gui/__init__.py)

import torch  # noqa: E402 - before Qt creates the application

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # tests/conftest.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gui_helpers import LONG  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402

from bnp_gui.data_roles import DataRoles  # noqa: E402


class _PatientBot:
    """pytest-qt's qtbot with LONG as the default of every wait: its 5 s default is a latency
    bound in disguise, and a loaded machine broke it (CI must not fail for machine load)."""

    _WAITS = ("waitUntil", "waitSignal", "waitSignals", "waitCallback", "waitExposed", "waitActive")

    def __init__(self, bot):
        self._bot = bot

    def __getattr__(self, name):
        attr = getattr(self._bot, name)
        if name not in self._WAITS:
            return attr

        def wait(*args, timeout=LONG, **kwargs):
            return attr(*args, timeout=timeout, **kwargs)

        return wait


@pytest.fixture
def qtbot(qtbot):
    return _PatientBot(qtbot)


@pytest.fixture(scope="session")
def qapp_args():
    return ["bnp-gui-tests"]


@pytest.fixture(scope="session", autouse=True)
def _app_identity(qapp, tmp_path_factory):
    """Named like the real app, but with settings under a temporary folder."""
    from bnp_gui.app import make_application

    make_application()
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(
        QSettings.IniFormat, QSettings.UserScope, str(tmp_path_factory.mktemp("settings"))
    )
    qapp.setApplicationName("bnp-gui-tests")
    # torch, Qt and the app's modules are imported and live for the whole session: moved out of
    # the collector's reach, each test's collection (below) scans only what the test made
    # (a full collection over the ~230 000 imported objects cost 0.1-0.25 s per test)
    gc.collect()
    gc.freeze()
    _modules_frozen[0] = len(sys.modules)
    yield


@pytest.fixture(autouse=True)
def _fresh_settings():
    """Each GUI test starts from empty settings: thresholds another test left behind (Suggest,
    Reset, a session file) must not change this test's numbers."""
    QSettings().clear()
    yield


_modules_frozen = [0]  # len(sys.modules) at the last gc.freeze()


@pytest.fixture(autouse=True)
def _garbage_collected_like_the_app():
    """Each GUI test collects cycles only on the GUI thread, as make_application arranges; the
    engine tests that run after them get Python's automatic collection back. Modules a test
    imported first (the planted model's training imports torch._dynamo, sympy and triton with
    torch.optim: ~1 400 modules) live on: frozen with them, each later collection scans only
    what its test made (measured in one process: 25-65 ms per collection before the
    engine's first use and 140-170 ms after it; 0-3 ms with the freeze)."""
    gc.disable()
    yield
    gc.collect()
    if len(sys.modules) > _modules_frozen[0]:
        gc.freeze()
        _modules_frozen[0] = len(sys.modules)
    gc.enable()


def _write_npy(folder, images: np.ndarray, labels: np.ndarray) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "data.npy", images)
    np.save(folder / "labels.npy", labels)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A CIFAR ResNet-20 on 1×16×16 inputs with a BadNets patch, untrained, in the seed format,
    plus small clean / poisoned-train / test folders of random images (no backdoor: the window
    without evidence). 16×16, not the demo's 28×28: a third of the forward passes' cost."""
    from core.attack.train import make_trigger, save_checkpoint
    from core.io.metadata import ModelMetadata
    from core.model.architectures import build_model

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 1)
    model.train()
    with torch.no_grad():  # give the BatchNorms non-trivial running statistics
        for _ in range(3):
            model(torch.rand(64, 1, 16, 16))
    model.eval()
    trigger = make_trigger("badnets", channels=1, image_size=(16, 16), size=3)
    meta = ModelMetadata(
        arch="cifar_resnet20",
        num_classes=10,
        in_channels=1,
        input_size=(16, 16),
        target_label=0,
        attack={"kind": "badnets", "trigger": trigger.to_dict()},
    )
    path = save_checkpoint(root / "tiny_resnet20_badnets.pth", model, trigger, meta)
    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, size=(n, 16, 16, 1), dtype=np.uint8)

    def labels(n):
        return rng.integers(0, 10, size=n).astype(np.int64)

    roles = DataRoles(
        clean=_write_npy(root / "data" / "clean", images(96), labels(96)),
        train=_write_npy(root / "data" / "train_poisoned", images(96), labels(96)),
        test=_write_npy(root / "data" / "test", images(320), labels(320)),
    )
    return str(path), roles


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """(checkpoint, roles) of a tiny model with a real backdoor (tests/planted_demo.py): the
    demo's behaviour (suspect samples, inferred target, a repair) in seconds, not minutes."""
    import planted_demo

    from core.demo import demo_paths

    paths = demo_paths(planted_demo.shared(tmp_path_factory))
    roles = DataRoles(clean=str(paths.clean), train=str(paths.train), test=str(paths.test))
    return str(paths.checkpoint), roles


@pytest.fixture(scope="session")
def demo(planted):
    """(checkpoint, roles) for the window tests: $BNP_GUI_TEST_MODEL + $BNP_GUI_TEST_DATA when
    set, else the planted stand-in (the bundled demo itself is `real_demo`)."""
    from bnp_gui.data_roles import guess_roles

    if os.environ.get("BNP_GUI_TEST_MODEL"):
        return os.environ["BNP_GUI_TEST_MODEL"], guess_roles(os.environ["BNP_GUI_TEST_DATA"])
    return planted


@pytest.fixture(scope="session")
def real_demo():
    """(checkpoint, roles) of the bundled demo (ResNet-20, 2 000 test images): for the one or two
    end-to-end tests; skipped when it is not installed."""
    from bnp_gui.demo import demo_files
    from core.errors import BnpError

    try:
        return demo_files()
    except BnpError as exc:
        pytest.skip(f"the bundled demo is not installed: {exc}")


@pytest.fixture
def window(qtbot):
    from bnp_gui.mainwindow import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()  # stops every worker and waits (idempotent)
