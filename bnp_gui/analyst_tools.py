"""The analyst's tools around the main window, in one place so MainWindow stays a composition:
dock panels (neuron table, model properties, example strip), undo/redo of decisions, session
files, Reset to defaults, presentation mode, figure and CSV export, data-fit warnings.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QFrame, QMenu, QScrollArea

from bnp_gui import session_file
from bnp_gui.data_fit import fit_warnings
from bnp_gui.decisions import PAPER_DEFAULTS
from bnp_gui.panels.examples import ExampleStripPanel
from bnp_gui.panels.model_properties import ModelPropertiesPanel
from bnp_gui.panels.neuron_table import NeuronTablePanel, write_csv
from bnp_gui.presentation import PresentationMode
from bnp_gui.undo import DecisionHistory
from core.errors import BnpError

SESSION_FILTER = f"BNP Inspector sessions (*{session_file.SUFFIX});;All files (*)"


def _menu(window, title: str) -> QMenu:
    for action in window.menuBar().actions():
        if action.menu() is not None and action.text() == title:
            return action.menu()
    return window.menuBar().addMenu(title)


def _scrolling(widget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    return area


class AnalystTools(QObject):
    """Installs the panels, actions and menus of the analyst's tools onto a MainWindow."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.window = window
        s = self.session = window.session
        self.table = NeuronTablePanel(s)
        self.model_pane = ModelPropertiesPanel(s)
        self.examples = ExampleStripPanel(s)
        self.docks: dict[str, QDockWidget] = {}
        for name, title, widget, area in (
            ("model", "Model", self.model_pane, Qt.LeftDockWidgetArea),
            ("table", "Neuron table", self.table, Qt.BottomDockWidgetArea),
            ("examples", "Examples: triggered images", self.examples, Qt.BottomDockWidgetArea),
        ):
            dock = QDockWidget(title, window)
            dock.setObjectName(f"dock_{name}")
            if name == "model":  # a long list of fields scrolls rather than being cut
                widget = self.model_area = _scrolling(widget)
            dock.setWidget(widget)
            window.addDockWidget(area, dock)
            self.docks[name] = dock
        window.tabifyDockWidget(self.docks["table"], self.docks["examples"])
        self.docks["table"].raise_()
        self.docks["table"].hide()  # opened from View, Ctrl+F or the context of a task
        self.docks["examples"].hide()
        self.set_model_width(self.model_pane.maximumWidth())
        self.history = DecisionHistory(s, self)
        self.presentation = PresentationMode(window, self)
        self._pending: session_file.SessionFile | None = None
        self._make_actions()
        self._enable_plot_menus()
        s.data_changed.connect(self._check_fit)
        s.checkpoint_changed.connect(self._check_fit)
        s.checkpoint_changed.connect(self._apply_pending)
        s.analysis_finished.connect(self._pending_view)

    # ------------------------------------------------------------------ actions and menus
    def _make_actions(self) -> None:
        w = self.window
        self.undo_action = self.history.stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence.Undo)
        self.redo_action = self.history.stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcut(QKeySequence.Redo)
        self.reset_action = w._action(
            "Reset to Paper &Defaults",
            self.reset_to_defaults,
            None,
            "k = 3 for every method, EP ∪ BNP, CLP off, no overrides (undoable)",
        )
        self.open_session_action = w._action(
            "Open &Session…", self.open_session_dialog, "Ctrl+Shift+O", "Reopen a .bnpsession file"
        )
        self.save_session_action = w._action(
            "Save Session &As…",
            self.save_session_dialog,
            QKeySequence.Save,
            "Save checkpoint, data, trigger, input settings and decisions to a .bnpsession file",
        )
        self.csv_action = w._action(
            "Export Neuron &Scores (CSV)…",
            self.export_csv_dialog,
            None,
            "Every neuron's EP/BNP/CLP score, z-score, flags and decision as CSV",
        )
        self.find_action = w._action(
            "&Find Layer…", self.find_layer, QKeySequence.Find, "Find a layer by name (Ctrl+F)"
        )
        self.presentation_action = w._action(
            "&Presentation Mode",
            self._toggle_presentation,
            "F11",
            "Large fonts, ACC/ASR and trigger prominent, tables hidden (F11)",
        )
        self.presentation_action.setCheckable(True)

        file_menu = _menu(w, "&File")
        quit_action = w.quit_action
        for action in (self.open_session_action, self.save_session_action):
            file_menu.insertAction(w.export_action, action)
        file_menu.insertSeparator(w.export_action)
        file_menu.insertAction(quit_action, self.csv_action)
        file_menu.insertSeparator(quit_action)
        edit = QMenu("&Edit", w)
        w.menuBar().insertMenu(_menu(w, "&Analysis").menuAction(), edit)
        edit.addAction(self.undo_action)
        edit.addAction(self.redo_action)
        edit.addSeparator()
        edit.addAction(self.reset_action)
        edit.addAction(self.find_action)
        view = _menu(w, "&View")
        view.addSeparator()
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        view.addAction(self.presentation_action)
        for action in (self.undo_action, self.redo_action):
            w.addAction(action)

    def _enable_plot_menus(self) -> None:
        """Right-click on a plot: pyqtgraph's menu with Export… (PNG, SVG, CSV, clipboard).
        The heatmap keeps its neuron menu and offers the export dialog from there."""
        w = self.window
        for plot in (w.distribution.plot, w.neuron.plot, w.preview.plot):
            plot.setMenuEnabled(True)
            plot.getPlotItem().hideButtons()

    def set_model_width(self, width: int) -> None:
        """The model pane's widest (its dock follows; the heatmap keeps the rest)."""
        self.model_pane.setMaximumWidth(width)
        scrollbar = self.model_area.verticalScrollBar().sizeHint().width()
        self.model_area.setMaximumWidth(width + scrollbar)

    # ------------------------------------------------------------------ decisions
    def reset_to_defaults(self) -> None:
        """The paper's settings; one undoable step."""
        self.history.change(PAPER_DEFAULTS, "reset to paper defaults")
        self.window.thresholds.sync()

    def _toggle_presentation(self, on: bool) -> None:
        self.presentation.set(on)

    def find_layer(self) -> None:
        self.docks["table"].show()
        self.docks["table"].raise_()
        self.table.focus_find()

    # ------------------------------------------------------------------ files
    def export_csv_dialog(self) -> None:
        if self.session.inspection is None:
            self.window.show_message("error", "Nothing to export: open a checkpoint first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Export neuron scores", "neuron_scores.csv", "CSV (*.csv)"
        )
        if path:
            self.export_csv(path)

    def export_csv(self, path: str) -> None:
        try:
            n = write_csv(self.session, path)
        except OSError as exc:
            self.window.show_message("error", f"Cannot write {path}: {exc.strerror or exc}")
            return
        self.window.show_message("info", f"{n} neurons written to {path}.")

    def save_session_dialog(self) -> None:
        s = self.session
        start = (
            Path(s.checkpoint_path).with_suffix(session_file.SUFFIX) if s.checkpoint_path else ""
        )
        path, _ = QFileDialog.getSaveFileName(
            self.window, "Save session", str(start), SESSION_FILTER
        )
        if path:
            self.save_session(path)

    def save_session(self, path: str) -> Path | None:
        try:
            written = session_file.save(self.session, path)
        except BnpError as exc:
            self.window.show_message("error", f"Cannot save the session: {exc}")
            return None
        except OSError as exc:
            self.window.show_message("error", f"Cannot write {path}: {exc.strerror or exc}")
            return None
        self.window.show_message("info", f"Session saved to {written}.")
        return written

    def open_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open session", "", SESSION_FILTER)
        if path:
            self.window.engine.when_ready(lambda: self.open_session(path), "The session opens")

    def open_session(self, path: str) -> None:
        """Load the checkpoint, then input settings, trigger, decisions and data; analyse."""
        try:
            saved = session_file.load(path)
        except BnpError as exc:
            self.window.show_message("error", str(exc))
            return
        if saved.outside and not self._confirm_outside(path, saved.outside):
            return
        s = self.session
        self._pending = saved
        s.auto_analyze = saved.roles.any()
        s.trigger_source = saved.trigger
        s.open_checkpoint(saved.checkpoint, arch=saved.arch)
        if saved.roles.any():
            s.set_data(saved.roles)

    def _confirm_outside(self, path: str, paths: list[str]) -> bool:
        """The user confirms paths outside the session's folder before anything opens them."""
        from core.safety.paths import printable

        name = printable(Path(path).name)
        listed = ", ".join(printable(p) for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        if not self.window.interactive:
            self.window.show_message(
                "error",
                f"{name} was not opened (nobody to confirm paths outside its folder: {listed}).",
            )
            return False
        from bnp_gui.dialogs.session_paths import confirm_outside

        if confirm_outside(self.window, path, paths):
            return True
        self.window.show_message(
            "warning", f"{name} was not opened: it points outside its folder ({listed})."
        )
        return False

    def _apply_pending(self) -> None:
        saved, s = self._pending, self.session
        if saved is None or s.inspection is None:
            return
        if Path(s.checkpoint_path).resolve() != Path(saved.checkpoint).resolve():
            self._pending = None  # another checkpoint was opened meanwhile
            return
        from bnp_gui.report import sha256_file

        if saved.checkpoint_sha256 and sha256_file(s.checkpoint_path) != saved.checkpoint_sha256:
            self.window.show_message(
                "warning",
                f"{Path(s.checkpoint_path).name} changed since the session was saved "
                "(different sha256): the numbers may differ.",
            )
        if saved.input_overrides:
            s.set_input_spec(**saved.input_overrides)
        self.history.put(saved.decisions)
        self.history.reset()
        self.window.thresholds.sync()
        if not saved.roles.any():
            self._pending_view()

    def _pending_view(self) -> None:
        saved = self._pending
        if saved is None:
            return
        self._pending = None
        if self.session.available(saved.view_method):
            self.session.set_view_method(saved.view_method)

    # ------------------------------------------------------------------ data fit
    def _check_fit(self) -> None:
        s = self.session
        if s.inspection is None or not s.data:
            return
        lines = fit_warnings(s.inspection.spec, s.inspection.ckpt.metadata.num_classes, s.data)
        if lines:
            self.window.show_message("warning", "Data does not fit the model: " + " ".join(lines))
