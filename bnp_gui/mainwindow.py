"""The main window: a composition of panels around one Session, plus menus, shortcuts,
drag-and-drop, recent files, the message banner, the progress bar and persisted settings."""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QByteArray, QEvent, QSettings, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.analyst_tools import AnalystTools
from bnp_gui.data_roles import DataRoles, guess_roles
from bnp_gui.decisions import PAPER_DEFAULTS, apply
from bnp_gui.demo import demo_files
from bnp_gui.dialogs.architecture import ArchitectureDialog
from bnp_gui.dialogs.export import ExportDialog
from bnp_gui.dialogs.input_spec import InputSpecDialog
from bnp_gui.dialogs.open_data import OpenDataDialog
from bnp_gui.dialogs.trigger import TriggerDialog
from bnp_gui.dialogs.trust import confirm_trust
from bnp_gui.engine import Engine, EngineStatus
from bnp_gui.message_banner import MessageBanner
from bnp_gui.next_step import NextStepHint
from bnp_gui.panels.distribution import DistributionPanel
from bnp_gui.panels.heatmap import HeatmapPanel
from bnp_gui.panels.neuron import NeuronPanel
from bnp_gui.panels.neuron_table import write_csv
from bnp_gui.panels.plot_style import palette_colors
from bnp_gui.panels.preview import PreviewPanel
from bnp_gui.panels.repair import install as install_repair
from bnp_gui.panels.suspects import SuspectsPanel
from bnp_gui.panels.thresholds import ThresholdPanel
from bnp_gui.report import CURVE_PNG, HEATMAP_PNG, SCORES_CSV
from bnp_gui.session import Session, valid_threshold
from core.errors import BnpError
from core.model.methods import METHOD_NAMES, METHODS
from core.progress import format_duration

MAX_RECENT = 8
# Long jobs the status bar shows with a progress bar and Cancel (Esc stops them).
WAITED_TASKS = ("load", "collect", "export", "suggest")
CHECKPOINT_FILTER = "Checkpoints (*.pth *.pt *.ckpt *.bin *.safetensors *.tar);;All files (*)"


class MainWindow(QMainWindow):
    """Window over one Session; every action is a session intent."""

    closed = Signal()

    def __init__(
        self,
        session: Session | None = None,
        *,
        persist: bool = True,
        interactive: bool = True,
        engine: Engine | None = None,
    ) -> None:
        """``persist=False`` (``--screenshot``): defaults only, nothing read from or written to
        the user's settings, so the picture is the same on every machine. ``interactive=False``
        (``--screenshot``): no question dialogs; what would be asked is shown as an error.
        ``engine``: still loading (bnp-gui's start), opening waits for it; None: ready."""
        super().__init__()
        self.engine = engine or Engine.loaded(self)
        self.session = session or Session(self)
        self.persist = persist
        self.interactive = interactive
        self.setWindowTitle("BNP Inspector")
        self.setAcceptDrops(True)
        self.settings = QSettings()
        self.export_format = "seed"

        s = self.session
        self.banner = MessageBanner()
        self.heatmap = HeatmapPanel(s)
        self.distribution = DistributionPanel(s)
        self.neuron = NeuronPanel(s)
        self.thresholds = ThresholdPanel(s)
        self.preview = PreviewPanel(s)
        self.suspects = SuspectsPanel(s)

        # left: heatmap over (distribution | neuron); right: thresholds over preview
        bottom = QSplitter(Qt.Horizontal)
        bottom.addWidget(self._boxed("Score distribution", self.distribution))
        bottom.addWidget(self._boxed("Selected neuron", self.neuron))
        bottom.addWidget(self._boxed("Suspect samples", self.suspects))
        self.left = QSplitter(Qt.Vertical)
        self.left.addWidget(self._boxed("Neurons", self.heatmap))
        self.left.addWidget(bottom)
        self.left.setStretchFactor(0, 1)  # the panels below need the height on 720-px screens
        self.left.setStretchFactor(1, 1)
        self.right = QSplitter(Qt.Vertical)
        self.right.addWidget(self._boxed("Thresholds", self.thresholds))
        self.right.addWidget(self._boxed("Preview: ACC / ASR", self.preview))
        self.right.setSizes([440, 460])  # room for the per-layer table; saved sizes win
        self.main_split = QSplitter(Qt.Horizontal)
        self.main_split.addWidget(self.left)
        self.main_split.addWidget(self.right)
        self.main_split.setStretchFactor(0, 3)
        self.main_split.setStretchFactor(1, 1)
        self.main_split.setSizes([1000, 440])
        self.bottom_split = bottom

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.banner)
        self.next_step = NextStepHint(s)
        layout.addWidget(self.next_step)
        layout.addWidget(self.main_split, 1)
        self.setCentralWidget(central)

        self._make_status_bar()
        self._make_actions()
        self._make_menus()
        self.tools = AnalystTools(self)  # docks, undo, session files, presentation, CSV
        self.repair = install_repair(self)  # the Repair dock (Analysis › Repair…)

        s.message.connect(self.show_message)
        s.busy_changed.connect(self._busy_changed)
        s.progress.connect(self._progress)
        s.unsafe_checkpoint.connect(self._ask_trust)
        s.architecture_needed.connect(self._ask_architecture)
        s.checkpoint_changed.connect(self._checkpoint_changed)
        s.data_changed.connect(self._update_actions)
        s.scores_changed.connect(self._update_actions)
        s.selection_changed.connect(self._update_actions)
        s.analysis_finished.connect(self._select_a_neuron)
        self.engine.waiting.connect(lambda text: self.show_message("info", text))
        self.engine.failed.connect(self._engine_failed)
        self.engine.ready.connect(self._update_actions)
        if persist:
            self._restore_settings()
        else:
            self.resize(1440, 900)
        self._apply_palette()
        self._update_actions()

    # ------------------------------------------------------------------ layout
    @staticmethod
    def _boxed(title: str, widget: QWidget) -> QWidget:
        frame = QWidget()
        layout = QVBoxLayout(frame)
        layout.setContentsMargins(2, 2, 2, 2)
        label = QLabel(f"<b>{title}</b>")
        layout.addWidget(label)
        layout.addWidget(widget, 1)
        return frame

    def _make_status_bar(self) -> None:
        bar = self.statusBar()
        self.device_label = QLabel("device: –")
        self.device_label.setToolTip("Where the statistics and previews are computed")
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(240)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.eta_label = QLabel("")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop opening the checkpoint, or the analysis (Esc)")
        self.cancel_button.clicked.connect(self.session.cancel_analysis)
        self.cancel_button.clicked.connect(self.session.suspects.cancel)
        self.cancel_button.hide()
        bar.addPermanentWidget(self.eta_label)
        bar.addPermanentWidget(self.progress_bar)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(EngineStatus(self.engine))
        bar.addPermanentWidget(self.device_label)

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(tip or text.replace("&", "").rstrip("…"))
        action.setStatusTip(tip)
        action.triggered.connect(slot)
        return action

    def _make_actions(self) -> None:
        self.open_action = self._action(
            "&Open Checkpoint…", self.open_dialog, QKeySequence.Open, "Open a checkpoint (Ctrl+O)"
        )
        self.open_as_action = self._action(
            "Open With &Architecture…",
            self.open_as_dialog,
            None,
            "Open a checkpoint as a chosen architecture instead of detecting it",
        )
        self.open_data_action = self._action(
            "Open &Data…",
            self.open_data_dialog,
            "Ctrl+D",
            "Choose clean / training / test data and the trigger (Ctrl+D)",
        )
        self.demo_action = self._action(
            "Open D&emo",
            self._demo_triggered,
            None,
            "Open the bundled backdoored demo model and data, and analyse it",
        )
        self.export_action = self._action(
            "&Export…", self.export_dialog, "Ctrl+E", "Export the pruned model and report (Ctrl+E)"
        )
        self.quit_action = self._action("&Quit", self.close, QKeySequence.Quit)
        self.analyze_action = self._action(
            "&Analyze",
            self.session.analyze,
            "Ctrl+R",
            "Collect statistics and compute EP/BNP scores (Ctrl+R)",
        )
        self.cancel_action = self._action(
            "&Cancel Analysis", self.session.cancel_analysis, "Esc", "Stop the analysis (Esc)"
        )
        self.suggest_action = self._action(
            "&Suggest Thresholds",
            self.session.suspects.suggest,
            "Ctrl+G",
            "Set the thresholds to the smallest pruning whose estimated ASR is low within the "
            "accuracy budget: chosen on half of the samples, judged on the other half (Ctrl+G)",
        )
        self.trigger_action = self._action(
            "&Trigger Source…", self.trigger_dialog, None, "Choose the trigger used for ASR"
        )
        self.spec_action = self._action(
            "&Input Settings…",
            self.input_spec_dialog,
            None,
            "Override input channels, size and normalisation",
        )
        self.prune_action = self._action(
            "Force &Prune Neuron",
            lambda: self._override("prune"),
            "P",
            "Prune the selected neuron whatever the thresholds say (P)",
        )
        self.keep_action = self._action(
            "&Keep Neuron",
            lambda: self._override("keep"),
            "K",
            "Never prune the selected neuron (K)",
        )
        self.auto_action = self._action(
            "&Automatic",
            lambda: self._override(None),
            "A",
            "Let the thresholds decide for the selected neuron (A)",
        )
        self.method_actions = {}
        for i, m in enumerate(METHODS, start=1):
            action = self._action(
                f"Show {METHOD_NAMES[m]} Scores",
                self._show_method,
                f"Ctrl+{i}",
                f"Heatmap and distribution of {METHOD_NAMES[m]} scores (Ctrl+{i})",
            )
            action.setData(m)
            self.method_actions[m] = action
        toolbar = self.toolbar = self.addToolBar("Main")
        toolbar.setObjectName("main_toolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonTextOnly)
        for action in (
            self.open_action,
            self.open_data_action,
            self.analyze_action,
            self.suggest_action,
            self.export_action,
        ):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addAction(self.demo_action)

    def _make_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_as_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        file_menu.addAction(self.open_data_action)
        file_menu.addAction(self.demo_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        analysis = menu.addMenu("&Analysis")
        for action in (self.analyze_action, self.cancel_action, self.suggest_action):
            analysis.addAction(action)
        analysis.addSeparator()
        analysis.addAction(self.trigger_action)
        analysis.addAction(self.spec_action)
        neuron = menu.addMenu("&Neuron")
        for action in (self.prune_action, self.keep_action, self.auto_action):
            neuron.addAction(action)
        view = menu.addMenu("&View")
        for action in self.method_actions.values():
            view.addAction(action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self._action("&About", self._about))
        self._fill_recent()

    def _update_actions(self) -> None:
        s = self.session
        loaded = s.inspection is not None
        collecting = s.is_busy("collect")
        self.analyze_action.setEnabled(loaded and bool(s.data) and not collecting)
        self.cancel_action.setEnabled(collecting or s.is_busy("load") or s.is_busy("export"))
        self.export_action.setEnabled(loaded)
        self.open_as_action.setEnabled(self.engine.is_ready)  # its dialog lists the engine's
        self.trigger_action.setEnabled(True)
        self.spec_action.setEnabled(loaded)
        for action in (self.prune_action, self.keep_action, self.auto_action):
            action.setEnabled(s.selected is not None)
        for m, action in self.method_actions.items():
            action.setEnabled(s.available(m))

    # ------------------------------------------------------------------ messages / progress
    def show_message(self, level: str, text: str) -> None:
        """Errors and warnings go to the banner; information to the status bar."""
        if level == "info":
            self.statusBar().showMessage(text, 15000)
            if self.banner.level == "info":
                self.banner.hide()
        else:
            self.statusBar().clearMessage()  # an "Opening…" or "Analysing…" line is over now
            self.banner.show_message(level, text)

    def _busy_changed(self, task: str, running: bool) -> None:
        if task in WAITED_TASKS:  # what the progress bar shows and Cancel / Esc stops
            waiting = any(self.session.is_busy(t) for t in WAITED_TASKS)
            self.progress_bar.setVisible(waiting)
            self.cancel_button.setVisible(waiting)
            self.eta_label.setVisible(waiting)
            if running:
                self.progress_bar.setRange(0, 0)
                self.eta_label.setText("opening…" if task == "load" else "starting…")
        self._update_actions()

    def _progress(self, task: str, done: int, total: int, eta: float) -> None:
        if task not in ("collect", "export", "suggest"):
            return
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        formats = {"collect": "%v / %m samples", "export": "export %p%", "suggest": "suggest %p%"}
        self.progress_bar.setFormat(formats[task])
        self.eta_label.setText(f"ETA {format_duration(eta)}" if eta >= 0 else "")

    def _checkpoint_changed(self) -> None:
        s = self.session
        if s.inspection is not None:
            self.device_label.setText(f"device: {s.inspection.device_name}")
            self.setWindowTitle(f"BNP Inspector — {Path(s.checkpoint_path).name}")
            self._add_recent(s.checkpoint_path)
            if self.banner.level == "error":
                self.banner.hide()
        self._update_actions()

    def _select_a_neuron(self) -> None:
        """After an analysis, the neuron plot shows something: the most suspicious neuron."""
        s = self.session
        if s.selected is None:
            from bnp_gui.screenshot import most_suspicious

            neuron = most_suspicious(s)
            if neuron is not None:
                s.select_neuron(neuron)

    def _engine_failed(self, why: str) -> None:
        self.show_message("error", f"The engine (PyTorch) could not be loaded: {why}")

    # ------------------------------------------------------------------ open
    def open_checkpoint(self, path: str, **kwargs) -> None:
        """Open now, or once the engine has loaded (bnp-gui's start)."""
        self.engine.when_ready(
            lambda: self.session.open_checkpoint(path, **kwargs), f"{Path(path).name} opens"
        )

    def open_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.settings.setValue("last_dir", str(Path(path).parent))
            self.open_checkpoint(path)

    def open_as_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open checkpoint", start, CHECKPOINT_FILTER)
        if not path:
            return
        dialog = ArchitectureDialog(path, "", self, forced=True)
        if dialog.exec():
            self.open_checkpoint(path, **dialog.choice())

    def open_data(self, roles: DataRoles, trigger=None) -> None:
        if trigger is not None:
            self.session.trigger_source = trigger
        self.engine.when_ready(lambda: self.session.set_data(roles), "The data open")

    def open_data_dialog(self) -> None:
        dialog = OpenDataDialog(self.session.roles, self.session.trigger_source, self)
        if dialog.exec():
            if not dialog.roles().any():
                self.show_message("error", "No data folder was chosen.")
                return
            self.open_data(dialog.roles(), dialog.trigger_source())

    def open_demo(self, analyze: bool = True) -> None:
        """Open the bundled demo (once the engine has loaded) and analyse it."""
        self.engine.when_ready(lambda: self._open_demo(analyze), "The demo opens")

    def _open_demo(self, analyze: bool) -> None:
        try:
            checkpoint, roles = demo_files()
        except BnpError as exc:
            self.show_message("error", str(exc))
            return
        self.session.auto_analyze = analyze
        self.session.trigger_source = type(self.session.trigger_source)()
        apply(self.session, PAPER_DEFAULTS)  # the README's numbers, whatever was saved
        self.session.view_method = "bnp"
        self.session.open_checkpoint(checkpoint)
        self.session.set_data(roles)

    def _demo_triggered(self) -> None:
        self.open_demo(analyze=True)  # QAction.triggered would pass `checked` as `analyze`

    def trigger_dialog(self) -> None:
        dialog = TriggerDialog(self.session.trigger_source, self)
        if dialog.exec():
            self.session.set_trigger_source(dialog.source())

    def input_spec_dialog(self) -> None:
        if self.session.inspection is None:
            return
        dialog = InputSpecDialog(self.session.inspection.spec, self)
        if dialog.exec():
            self.session.set_input_spec(**dialog.changes())

    def _ask_trust(self, path: str, why: str) -> None:
        if not self.interactive:
            self.show_message("error", f"{Path(path).name} was not loaded (nobody to ask): {why}")
        elif confirm_trust(self, path, why):
            self.open_checkpoint(path, trust_pickle=True)
        else:
            self.show_message("warning", f"{Path(path).name} was not loaded: {why}")

    def _ask_architecture(self, path: str, why: str) -> None:
        if not self.interactive:
            self.show_message("error", f"Cannot open {Path(path).name}: {why}")
            return
        dialog = ArchitectureDialog(path, why, self)
        if dialog.exec():
            self.open_checkpoint(path, **dialog.choice())
        else:
            self.show_message("error", f"Cannot open {Path(path).name}: {why}")

    # drag and drop: a file is a checkpoint, a folder is data
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
        event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """A checkpoint file or a data folder (dropped, or given on the command line)."""
        p = Path(path)
        if p.is_dir():
            try:
                self.open_data(guess_roles(p))
            except BnpError as exc:
                self.show_message("error", str(exc))
        elif p.is_file():
            self.open_checkpoint(str(p))
        else:
            self.show_message("error", f"{path} does not exist.")

    # recent files
    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):  # a settings file may hold anything
            return []
        return [str(v) for v in value if isinstance(v, str) and v]

    def _add_recent(self, path: str) -> None:
        if not self.persist:
            return
        recent = [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent", [path, *recent][:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for path in recent:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setData(path)
            action.triggered.connect(self._open_recent)
        self.recent_menu.setEnabled(bool(recent))

    def _open_recent(self) -> None:
        self.open_checkpoint(self.sender().data())

    # ------------------------------------------------------------------ neuron / view
    def _override(self, state: str | None) -> None:
        if self.session.selected is not None:
            self.session.set_override(self.session.selected, state)

    def _show_method(self) -> None:
        self.session.set_view_method(self.sender().data())

    # ------------------------------------------------------------------ export
    def export_dialog(self) -> None:
        default = self.settings.value("export_dir", str(Path.home() / "bnp-export"))
        dialog = ExportDialog(str(default), self.export_format, self)
        if dialog.exec():
            folder, fmt = dialog.values()
            if folder:
                self.settings.setValue("export_dir", folder)
                self.export_format = fmt
                self.export_to(folder, fmt)

    def export_to(self, folder: str, fmt: str = "seed") -> None:
        """Measure and write model and reports in a worker, then render the figures here."""
        try:
            Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.show_message("error", f"Cannot write to {folder}: {exc.strerror or exc}")
            return
        stack = self.tools.history.stack
        steps = [stack.text(i) for i in range(stack.index())]  # undone steps are not taken
        self.session.export(folder, fmt=fmt, render=self.render_figures, steps=steps)

    def render_figures(self, folder: str) -> None:
        """heatmap.png without the selection square, tradeoff.png with its curve complete,
        neuron_scores.csv with every neuron's scores and decision."""
        out = Path(folder).expanduser()
        write_csv(self.session, out / SCORES_CSV)
        with self.heatmap.without_selection():
            self.save_plot_png(self.heatmap.plot, str(out / HEATMAP_PNG))
        self.save_plot_png(self.preview.plot, str(out / CURVE_PNG))

    @staticmethod
    def save_plot_png(plot: pg.PlotWidget, path: str) -> None:
        """The plot at its on-screen size (scaling would shrink legends against axes)."""
        from pyqtgraph.exporters import ImageExporter  # on export only, not at the start

        exporter = ImageExporter(plot.getPlotItem())
        exporter.export(path)

    # ------------------------------------------------------------------ palette / settings
    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.type() in (QEvent.PaletteChange, QEvent.ApplicationPaletteChange):
            self._apply_palette()
        super().changeEvent(event)

    def _apply_palette(self) -> None:
        """Plots follow the window's (system) light or dark palette."""
        foreground, background = palette_colors()
        for panel in (self.heatmap, self.distribution, self.neuron, self.preview):
            panel.apply_palette(foreground, background)

    def _restore_settings(self) -> None:
        st = self.settings
        geometry = st.value("geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1440, 900)
        for key, splitter in (
            ("split/main", self.main_split),
            ("split/left", self.left),
            ("split/right", self.right),
            ("split/bottom", self.bottom_split),
        ):
            state = st.value(key)
            if isinstance(state, QByteArray) and not state.isEmpty():
                splitter.restoreState(state)
        s = self.session
        for m in METHODS:
            k = valid_threshold(st.value(f"thresholds/{m}"))  # None: absent or not a number
            if k is not None:
                s.thresholds[m] = k
            enabled = st.value(f"enabled/{m}")
            if enabled is not None:
                s.enabled[m] = str(enabled).lower() in ("true", "1")
        combine = st.value("combine")
        if combine in ("union", "intersection"):
            s.combine = combine
        self.export_format = str(st.value("export_format", "seed"))
        self.thresholds.sync()

    def save_settings(self) -> None:
        st = self.settings
        st.setValue("geometry", self.saveGeometry())
        st.setValue("split/main", self.main_split.saveState())
        st.setValue("split/left", self.left.saveState())
        st.setValue("split/right", self.right.saveState())
        st.setValue("split/bottom", self.bottom_split.saveState())
        s = self.session
        for m in METHODS:
            st.setValue(f"thresholds/{m}", s.thresholds[m])
            st.setValue(f"enabled/{m}", s.enabled[m])
        st.setValue("combine", s.combine)
        st.setValue("export_format", self.export_format)
        st.sync()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.persist:
            self.save_settings()
        self.session.shutdown()
        self.closed.emit()
        super().closeEvent(event)

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About BNP Inspector",
            "<b>BNP Inspector</b><br>Find and prune backdoor neurons in image classifiers "
            "with EP, BNP and CLP (Zheng et al., NeurIPS 2022 / ECCV 2022).",
        )
