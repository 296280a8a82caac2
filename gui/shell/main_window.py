"""The main window: docks around the attention view, menus, status bar, drag & drop, remembered layout."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.state import InspectorState
from ..core.worker import EngineClient, ModelInfo
from ..panels.attention import AttentionView
from ..panels.candidates import LogitsPanel
from ..panels.experts import ExpertsPanel
from ..panels.head_view import HeadView
from ..panels.heads import HeadGrid
from ..panels.prompt import PromptPanel
from ..panels.tokens import TokenStrip
from ..rendering import colormaps
from ..widgets import file_dialogs
from ..widgets.error_banner import ErrorBanner
from . import style
from .actions import ActionRegistry
from .analysis import install as install_analysis
from .cache_dialog import CachedModelsMenu, show_cache_dialog
from .loading import LoadingController
from .remote_engine import install as install_remote_engine
from .server_folders import ServerFoldersDialog

log = logging.getLogger(__name__)

APP_NAME = "Attention Inspector"
MAX_RECENT = 8


def device_text(info: ModelInfo) -> str:
    """The status bar's device · dtype and why (the engine's dtype_reason), naming the device once; a model
    spread over several devices names them all ("cuda:0 + cuda:1 + cpu · bfloat16"; the tooltip has the layers);
    and what became of quantised weights."""
    reason = info.dtype_reason
    if len(info.devices) > 1:
        text = f"{' + '.join(info.devices)} · {info.dtype}"
    elif not reason:
        text = f"{info.device} · {info.dtype}"
    else:
        device = info.device.split(":")[0]
        text = reason if device.upper() in reason.upper() else f"{info.device} · {reason}"
    method = info.quantization.split(",")[0]
    if method and method not in text:  # quantised weights: say what became of them ("mxfp4, dequantised to …")
        text += f" · {info.quantization}"
    return text


# panels whose least size is large (tables and plots side by side): in their docks they scroll below it,
# so that opening or tabbing one never pushes the window past the screen (issue 30) and the window's own least
# size stays within a 1280 x 800 laptop screen (issue 28). The others shrink or scroll by themselves.
SCROLLED_DOCKS = ("head_view", "inside", "stats", "lens")
FITTING_MIN = QSize(120, 90)  # the least size of a scrolled dock's content area


STATUS_CHARS = 70  # what the status bar beside its permanent labels shows of an error on a 1366-px screen


def status_copy(message: str) -> str:
    """The status bar's copy of an error: its first line, cut at a word (never mid-word) where it is long."""
    first = message.splitlines()[0] if message else "error"
    if len(first) <= STATUS_CHARS:
        return first
    return first[:STATUS_CHARS].rsplit(" ", 1)[0] + " … (the whole message is above the view)"


def default_size() -> QSize:
    """1400 x 900, or the screen's available area where that is smaller (a 1366 x 768 laptop)."""
    screen = QGuiApplication.primaryScreen()
    size = QSize(1400, 900)
    return size.boundedTo(screen.availableGeometry().size()) if screen is not None else size


def fitting(widget: QWidget) -> QScrollArea:
    """`widget` in a frameless scroll area: it fills the dock where the dock is big enough, scrolls where not."""
    area = QScrollArea()
    area.setObjectName(f"scroll-{widget.objectName() or type(widget).__name__}")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    area.setMinimumSize(FITTING_MIN)
    return area


class MainWindow(QMainWindow):
    settled = Signal()  # the startup chain (open → session → steps) has finished, successfully or not

    def __init__(self, settings: QSettings | None = None, devices: list[str] | None = None) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setObjectName("MainWindow")
        self.settings = settings if settings is not None else QSettings("AttentionInspector", "AttentionInspector")
        # every save / open dialog starts in the folder used last, this run or an earlier one (issue 30)
        file_dialogs.memory.folder = str(self.settings.value("last_file_folder", "") or "")
        file_dialogs.memory.on_change = functools.partial(self.settings.setValue, "last_file_folder")
        self.state = InspectorState(self)
        self.client = EngineClient(self)
        self.last_error = ""
        self.errors: list[str] = []
        # --trust-remote-code: the person's consent, given once at startup, holds for every model opened after
        self.trust_remote_code = False
        self._chain: list[str] = []  # what the startup still has to do: "session", "run"
        self._chain_steps = 0
        self._chain_texts: tuple[str | None, str | None] = (None, None)
        self._loading_source = ""

        # -- panels ------------------------------------------------------------------------------------
        if devices is None:  # this computer's, without importing torch now: its GPUs are added once a model loads
            devices = self.client.engine.devices_known_now()
        self.prompt_panel = PromptPanel(self.state, self.client, devices)
        self.token_strip = TokenStrip(self.state, self.client)
        self.attention_view = AttentionView(self.state)
        self.head_grid = HeadGrid(self.state)
        self.logits_panel = LogitsPanel(self.state, self.client)

        self.banner = ErrorBanner()
        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        cl.addWidget(self.banner)
        cl.addWidget(self.attention_view, 1)
        self.setCentralWidget(central)

        self.registry = ActionRegistry(self)  # every menu and action, by id (gui/shell/actions.py)
        self.view_menu = self.registry.menu("view")
        self.docks: dict[str, QDockWidget] = {}
        self.add_dock("prompt", "Model && prompt", self.prompt_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.add_dock("tokens", "Tokens", self.token_strip, Qt.DockWidgetArea.TopDockWidgetArea)
        self.add_dock("heads", "All heads", self.head_grid, Qt.DockWidgetArea.RightDockWidgetArea)
        self.add_dock("logits", "Next-token candidates", self.logits_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.head_view = HeadView(self.state)  # issue 21: one query token, every head of a layer (tabbed by the grid)
        self.add_dock("head_view", "Head view", self.head_view, Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["heads"], self.docks["head_view"])
        # tabbed away it skips its redraws (a step at 1k tokens cost ~15 ms unseen); its tab coming back catches up
        self.docks["head_view"].visibilityChanged.connect(lambda on: on and self.head_view.catch_up())
        self.experts_panel = ExpertsPanel(self.state, self.client)  # issue 26: the experts each token took (MoE models)
        self.add_dock("experts", "Experts", self.experts_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["head_view"], self.docks["experts"])
        self.docks["experts"].hide()  # shown (beside the head view) when a model with experts opens
        self._experts_for_model = False  # whether the Experts dock was matched to the open model yet
        self.docks["heads"].raise_()
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.setCorner(Qt.Corner.TopLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)

        self._build_status_bar()
        self._bind_actions()
        self.setAcceptDrops(True)

        # -- wiring ------------------------------------------------------------------------------------
        self.client.model_loaded.connect(self._on_model_loaded)
        self.client.trace_ready.connect(self._on_trace)
        self.client.error.connect(self._on_error)
        self.client.stopped.connect(self._on_stopped)
        self.client.model_loaded.connect(lambda _info: self._add_engine_devices())
        self.client.busy_changed.connect(self._on_busy)
        self.prompt_panel.open_requested.connect(
            lambda src, dev: self.open_model(src, device=dev))
        self.prompt_panel.browse_requested.connect(self.browse_folder)
        self.token_strip.reset_button.clicked.connect(self.prompt_panel.request_session)
        self.token_strip.before_step = self.prompt_panel.flush_edits  # Step right after typing steps the new text
        self._run_from: int | None = None  # tokens when the newest run started (its "stopped after N steps")
        self.state.model_changed.connect(self._on_model_changed)
        self.analysis = install_analysis(self)  # issue 7: ablation, lens, statistics, sessions
        self.remote_engine = install_remote_engine(self)  # issue 27: File → Connect to engine…, the engine: label

        self.resize(default_size())
        self.apply_default_sizes()
        self._default_state = self.saveState()
        self._restore_settings()
        style.theme_plots(self)
        # a bound method (not a lambda), so the connection ends with the window
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._on_scheme_changed)
        self.prompt_panel.set_model_choices(self.client.engine.bundled_models() + self.recent_models())

    # -- construction helpers ----------------------------------------------------------------------------
    def add_dock(self, key: str, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        """Later panels (logit lens, head statistics) plug in here: build them with (self.state,
        self.client), as the panels below are, and add them as docks; View lists them."""
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{key}")
        dock.setWidget(fitting(widget) if key in SCROLLED_DOCKS else widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(area, dock)
        self.docks[key] = dock
        self.registry.add_to_section("view.docks", dock.toggleViewAction())
        return dock

    def apply_default_sizes(self) -> None:
        self.resizeDocks([self.docks["prompt"]], [300], Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["heads"]], [400], Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["tokens"]], [120], Qt.Orientation.Vertical)
        self.resizeDocks([self.docks["heads"], self.docks["logits"]], [400, 400], Qt.Orientation.Vertical)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # indeterminate: the engine reports no fractions while loading
        self.busy_bar.setMaximumWidth(140)
        self.busy_bar.setMaximumHeight(14)
        self.busy_bar.hide()
        self._busy_delay = QTimer(self)
        self._busy_delay.setSingleShot(True)
        self._busy_delay.setInterval(300)
        # a load has its own progress strip: the indeterminate bar stays hidden while one runs
        self._busy_delay.timeout.connect(lambda: self.busy_bar.setVisible(self.client.busy and not self.client.loading))
        self.status_labels = {k: QLabel() for k in ("model", "family", "params", "device", "load")}
        self.loading = LoadingController(self)  # the load strip: name, size, progress, Cancel (gui/shell/loading.py)
        bar.addPermanentWidget(self.loading.widget)
        bar.addPermanentWidget(self.busy_bar)
        for label in self.status_labels.values():
            label.setContentsMargins(6, 0, 6, 0)
            bar.addPermanentWidget(label)
        self.status_labels["model"].setText("no model")

    def _bind_actions(self) -> None:
        """The window's own actions; the analysis features bind theirs in gui/shell/analysis.py."""
        r, s = self.registry, self.state
        self.hf_menu, self.bundled_menu, self.recent_menu = (r.menu(m) for m in ("file.hf", "file.bundled", "file.recent"))
        self.hf_models = CachedModelsMenu(self.hf_menu, lambda n: self.open_model(n, device=self.prompt_panel.device()),
                                          scan=lambda: self.client.engine.cached_models())  # wherever the engine runs
        self.bundled_menu.aboutToShow.connect(self._fill_bundled_menu)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        for action_id, slot in (
            ("file.open_folder", self.browse_folder),
            ("file.screenshot", self._save_screenshot_dialog),
            ("file.quit", self.close),
            ("generate.step", self.token_strip.step),
            ("generate.back", self.token_strip.back),
            ("generate.run", self.token_strip.run_or_stop),
            ("generate.stop", self.client.stop),
            ("generate.reset", self.prompt_panel.request_session),
            ("generate.mask", self.token_strip.mask_selected),
            ("view.prev_layer", lambda: s.step_layer(-1)),
            ("view.next_layer", lambda: s.step_layer(1)),
            ("view.prev_head", lambda: s.step_head(-1)),
            ("view.next_head", lambda: s.step_head(1)),
            ("view.mean_heads", lambda: s.select(mean_heads=not s.mean_heads)),
            ("view.prev_query", lambda: s.step_query(-1)),
            ("view.next_query", lambda: s.step_query(1)),
            ("view.log_scale", lambda: s.set_display(log_scale=not s.log_scale)),
            ("view.reset_layout", self.reset_layout),
            ("help.shortcuts", self.show_shortcuts),
            ("help.about", self.show_about),
            ("file.export_head_view", lambda: self.analysis.exports.export_widget_dialog(self.head_view.picture, "head-view")),
            ("file.open_cache", self.open_from_cache),
        ):
            r.bind(action_id, slot)

    # -- opening models ------------------------------------------------------------------------------------
    def open_model(self, source: str, device: str | None = None, dtype: str | None = None,
                   prompt: str | None = None, source_text: str | None = None, steps: int = 0,
                   load_options: dict | None = None) -> None:
        """Load a model; then start a session (with these texts, else the family's example) and take `steps`.
        `load_options`: more keywords for engine.load_model (backend, trust_remote_code); None: load_options()."""
        source = str(source)
        load_options = self.load_options() if load_options is None else dict(load_options)
        self._loading_source = source
        self._chain = ["session"] + (["run"] if steps > 0 else [])
        self._chain_steps = steps
        self._chain_texts = (prompt, source_text)
        self.prompt_panel.set_model_text(source)
        if device:
            self.prompt_panel.set_device(device)
        self.loading.begin(source)
        self.client.load(source, device, dtype, load_options)

    def load_options(self) -> dict:
        """How every open without options of its own loads (menus, the prompt panel, a device change, the reopen
        after switching engines, local or remote): the panel's engine choice, and --trust-remote-code."""
        options = self.prompt_panel.load_options()
        if self.trust_remote_code:
            options["trust_remote_code"] = True
        return options

    def open_from_cache(self) -> None:
        """File → Open from cache…: the cached models listed in a thread, the openable ones marked."""
        show_cache_dialog(self, scan=self.client.engine.cached_model_infos)  # the engine's cache, wherever it runs

    def browse_folder(self) -> None:
        # the engine lists what it may open (a server's --models-dir), or answers None: any folder here opens
        if self.client.engine.list_folders() is not None:
            self.folder_browser = ServerFoldersDialog(self.client.engine.list_folders, self.client.engine.address, self)
            self.folder_browser.open_requested.connect(lambda f: self.open_model(f, device=self.prompt_panel.device()))
            self.folder_browser.open()
            return
        folder = QFileDialog.getExistingDirectory(self, "Open a checkpoint folder (config.json, weights, tokenizer)",
                                                  str(self.settings.value("last_folder", str(Path.home()))))
        if folder:
            self.settings.setValue("last_folder", folder)
            self.open_model(folder, device=self.prompt_panel.device())

    def _fill_bundled_menu(self) -> None:
        self.bundled_menu.clear()
        names = self.client.engine.bundled_models() + self.client.engine.model_folders()  # + a server's --models-dir
        for name in names:
            self.bundled_menu.addAction(name, lambda n=name: self.open_model(n, device=self.prompt_panel.device()))
        if not names:
            self.bundled_menu.addAction("(no bundled models installed)").setEnabled(False)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for name in self.recent_models():
            self.recent_menu.addAction(name, lambda n=name: self.open_model(n, device=self.prompt_panel.device()))
        if not self.recent_models():
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def recent_models(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):  # QSettings returns a bare string for a one-item list
            value = [value]
        return [str(v) for v in (value or [])]

    def _remember_recent(self, source: str) -> None:
        recent = [source] + [r for r in self.recent_models() if r != source]
        self.settings.setValue("recent", recent[:MAX_RECENT])

    # -- drag & drop ---------------------------------------------------------------------------------------
    @staticmethod
    def _dropped_folder(event: QDragEnterEvent | QDropEvent) -> str | None:
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        for url in urls:
            path = Path(url.toLocalFile())
            if url.isLocalFile() and path.exists():
                return str(path if path.is_dir() else path.parent)  # a dropped config.json means its folder
        return None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt API
        if self._dropped_folder(event):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        folder = self._dropped_folder(event)
        if folder:
            event.acceptProposedAction()
            self.open_model(folder, device=self.prompt_panel.device())

    # -- engine results ------------------------------------------------------------------------------------
    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.banner.hide()
        self._remember_recent(self._loading_source)
        self.prompt_panel.set_model_choices(self.client.engine.bundled_models() + self.recent_models())
        self.state.set_model(info)  # panels switch to the family's defaults here
        prompt, source = self._chain_texts
        if info.family == "encoder-decoder" and source is None and prompt is not None:
            prompt, source = None, prompt  # as on the command line: a lone prompt is the source text
        self.prompt_panel.set_texts(prompt, source)
        if self._chain and self._chain[0] == "session":
            self._chain.pop(0)
        self.prompt_panel.request_session()
        self.statusBar().showMessage(f"Opened {info.name} in {info.load_seconds:.2f} s", 5000)

    def _on_model_changed(self, info: ModelInfo) -> None:
        self.setWindowTitle(f"{info.name} — {APP_NAME}")
        self._experts_for_model = False
        self.docks["logits"].setWindowTitle("Masked-token predictions" if info.family == "encoder" else "Next-token candidates")
        params = f"{info.n_params / 1e6:.2f} M" if info.n_params >= 1e5 else f"{info.n_params:,}"
        texts = {"model": info.name, "family": info.family, "params": f"{params} parameters",
                 "device": device_text(info),
                 "load": f"loaded in {info.load_seconds:.2f} s"}
        where = f" · {info.placement}" if info.placement else ""
        self.status_labels["device"].setToolTip(f"{info.device} · {info.dtype}{where}")
        for key, text in texts.items():
            self.status_labels[key].setText(text)

    def _on_trace(self, trace, op: str) -> None:  # noqa: ANN001 - engine.Trace
        if op != "progress":
            self.banner.hide()  # the last request worked: an older error no longer applies
            self.statusBar().setToolTip("")
        self.state.set_trace(trace)
        if not self._experts_for_model and trace is not None:
            self._experts_for_model = True  # the model's first trace says whether it has experts (View still shows it)
            self.docks["experts"].setVisible(bool(getattr(trace, "moe_layers", ())))
        if op == "run":
            self._report_run(trace)
        if op == "session" and self._chain == ["run"]:
            self._chain = []
            self.client.run(self._chain_steps)
        self._maybe_settled()

    def _add_engine_devices(self) -> None:
        """After a model loaded (in this process torch is imported by then, in the worker), list the engine's
        devices in the device box (the window started with what it knew without torch); never a network call."""
        self.prompt_panel.add_devices(self.client.engine.devices_known_now())

    def _on_stopped(self, op: str, message: str) -> None:
        """Stop/Esc during one long step (or branch): its forward stopped; no banner, the session is unchanged."""
        what = {"branch": "the branch", "mask": "the fill"}.get(op, "the step")
        self.statusBar().showMessage(f"Stopped: {what} was not finished; the session is as it was", 10000)
        self._chain = []
        self._maybe_settled()

    def _on_error(self, op: str, message: str) -> None:
        if op == "load" and self.loading.load_failed(message):  # cancelled: said in the status bar, no banner
            self._chain = []
            self._maybe_settled()
            return
        if op == "session" and self.client.session_cancelled:  # Stop/Esc during a long prefill: no banner
            self.statusBar().showMessage("Stopped: the new prompt was not read to the end; the panels show the "
                                         "session before it, unchanged", 10000)
            self._chain = []
            self._maybe_settled()
            return
        self.show_error(message, op)
        if op in ("load", "session", "run"):
            self._chain = []
        self._maybe_settled()

    def _on_busy(self, busy: bool, op: str) -> None:
        # loads and runs show progress at once; a step only if it is slow (no flicker on small models)
        if busy and op == "run":  # a load shows its own progress strip (gui/shell/loading.py)
            self.busy_bar.show()
        elif busy:
            self._busy_delay.start()
        else:
            self._busy_delay.stop()
            self.busy_bar.hide()
        if busy and op == "run":
            self._run_from = len(self.state.trace.steps) if self.state.trace is not None else None
            self.statusBar().showMessage("Running … (Esc or Stop to stop)")
        if not busy:
            self.statusBar().clearMessage()
            self._maybe_settled()

    def _report_run(self, trace) -> None:  # noqa: ANN001 - engine.Trace
        """How the run ended, in the status bar: stopped (Esc / Stop) after N steps, finished early, or done."""
        if self._run_from is None:
            return
        taken, asked = len(trace.steps) - self._run_from, self.client.run_asked
        self._run_from = None
        if self.client.stop_asked:
            text = f"Stopped after {taken} step{'s' if taken != 1 else ''} of {asked}"
        elif taken < asked:
            text = f"Run ended after {taken} of {asked} steps: nothing more to generate"
        else:
            text = f"Ran {taken} step{'s' if taken != 1 else ''}"
        self.statusBar().showMessage(text, 8000)

    def _maybe_settled(self) -> None:
        if not self._chain and not self.client.busy:
            QTimer.singleShot(0, self.settled.emit)

    def show_error(self, message: str, op: str = "") -> None:
        hint = ""
        if op == "load":
            hint = "\nOpen another model with File → Open model folder, or drag a checkpoint folder onto the window."
        self.last_error = message
        self.errors.append(message)
        log.warning("%s", message)
        self.banner.show_message(message + hint)
        self.statusBar().showMessage(status_copy(message), 10000)
        self.statusBar().setToolTip(message)  # the whole text, where the bar has room for its start only

    def _on_scheme_changed(self, _scheme: object = None) -> None:
        """The system switched between light and dark: plots and chips pick up the new palette."""
        style.theme_plots(self)
        self.head_grid.retheme()
        if self.state.trace is not None:
            self.state.trace_changed.emit(self.state.trace)

    # -- help ----------------------------------------------------------------------------------------------
    def show_shortcuts(self) -> None:
        dialog = QDialog(self)
        dialog.setWindowTitle("Keyboard shortcuts")
        rows = self.registry.shortcut_table()
        table = QTableWidget(len(rows), 2, dialog)
        table.setHorizontalHeaderLabels(["key", "does"])
        table.verticalHeader().hide()
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        table.setWordWrap(True)
        for row, (key, text) in enumerate(rows):
            table.setItem(row, 0, QTableWidgetItem(key))
            table.setItem(row, 1, QTableWidgetItem(text))
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dialog.close)
        layout = QVBoxLayout(dialog)
        layout.addWidget(table)
        layout.addWidget(buttons)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        dialog.resize(560, 400)
        dialog.show()
        table.resizeRowsToContents()  # after show: the wrapped heights need the final column widths
        self.shortcuts_dialog = dialog

    def show_about(self) -> None:
        from engine.about import app_version, engine_versions

        v = engine_versions()
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b> {app_version()}<p>Step through a transformer's generation one token at a time and see, "
                          "for every layer and head, the attention pattern and the next-token candidates.</p>"
                          "<p>Decoder-only (GPT-2), encoder-only (BERT) and encoder-decoder (T5, BART, Marian) "
                          "models, run by a small torch engine of its own.</p>"
                          f"<p>Engine: torch {v['torch']} (CUDA {v['cuda']}), default device {v['device']}, "
                          f"Python {v['python']}</p><p>Models run on: {self.client.engine.where()}</p>"
                          + (f"<p>{self.state.model.name}: {self.state.model.placement}</p>"
                             if self.state.model is not None and self.state.model.placement else ""))

    def export_trace(self, path: str) -> int | None:
        """Tokens, every pattern under its capture name, and the logits, as the `export` command writes them
        (in the engine's thread; the status bar says when it is written)."""
        return self.analysis.exports.export_trace(path)

    def _save_screenshot_dialog(self) -> None:
        path, _ = file_dialogs.save_path(self, "Save screenshot", "attention-inspector.png", "PNG (*.png)")
        if path:
            self.grab().save(path)

    # -- window state --------------------------------------------------------------------------------------
    def reset_layout(self) -> None:
        self.restoreState(self._default_state)
        for dock in self.docks.values():
            dock.show()

    def _restore_settings(self) -> None:
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        window_state = self.settings.value("window_state")
        # a layout saved with other docks (an older version) would squeeze the new ones: keep the default
        same_docks = str(self.settings.value("docks", "")) == ",".join(sorted(self.docks))
        if isinstance(window_state, QByteArray) and same_docks:
            self.restoreState(window_state)
        cmap = str(self.settings.value("colormap") or "")
        if cmap in colormaps.COLORMAPS:  # a name from another version would have no colours
            self.state.set_display(colormap=cmap)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("window_state", self.saveState())
        self.settings.setValue("docks", ",".join(sorted(self.docks)))
        self.settings.setValue("colormap", self.state.colormap)
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        self.save_settings()
        self.client.shutdown()
        super().closeEvent(event)
