"""Model & prompt panel: model picker, device, prompt (and source for encoder-decoder models), sampling."""

from __future__ import annotations

import logging

from PySide6.QtCore import QEvent, QObject, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import SamplingError

from ..core.state import InspectorState
from ..core.worker import EngineClient, ModelInfo, SessionRequest

log = logging.getLogger(__name__)

EDIT_DEBOUNCE_MS = 400  # a new session starts this long after the last keystroke
DEFAULT_TEXT = "In the beginning God created the heaven and the earth."


# the bundled models were trained on particular text; their examples show what they learned
BUNDLED_EXAMPLES = {
    "tiny-gpt": ("In the beginning God created the heaven and the earth. And God said,", ""),
    "tiny-seq2seq": ("", "Tuesday, 3rd March 1987"),
}


def default_prompts(info: ModelInfo) -> tuple[str, str]:
    """(prompt, source) a model starts with: its own example if it is a bundled one, else its family's."""
    if info.name in BUNDLED_EXAMPLES:
        return BUNDLED_EXAMPLES[info.name]
    if info.family == "encoder":
        mask = info.mask_token or "[MASK]"
        return f"In the beginning God created the {mask} and the earth.", ""
    if info.family == "encoder-decoder":
        return "", DEFAULT_TEXT
    return "In the beginning God created the", ""


class KeepReturnKey(QObject):
    """Return in an input field belongs to the field (open the model, confirm a value), not to the
    window-wide Run shortcut: claim it during the ShortcutOverride phase."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ShortcutOverride and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            event.accept()
            return True
        return False


class PromptPanel(QWidget):
    open_requested = Signal(str, object)  # model source, device (None = default)
    browse_requested = Signal()

    def __init__(self, state: InspectorState, client: EngineClient, devices: list[str],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.client = client
        self._defaults: tuple[str, str] = ("", "")

        # -- model ------------------------------------------------------------------------------------
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.setToolTip("A bundled model name, a checkpoint folder, or a Hugging Face cache id")
        self.model_box.lineEdit().setPlaceholderText("model name or folder")
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("Choose a checkpoint folder")
        self.browse_button.setFixedWidth(32)
        self.open_button = QPushButton("Open")
        self.device_box = QComboBox()
        self.device_box.addItem("auto", None)
        for d in devices:
            self.device_box.addItem(d, d)
        self.device_box.setToolTip("Where the model runs; auto = CUDA when present, else CPU")
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.browse_button)
        device_row = QHBoxLayout()
        device_row.addWidget(QLabel("device"))
        device_row.addWidget(self.device_box, 1)
        device_row.addWidget(self.open_button)
        model_group = QGroupBox("Model")
        mg = QVBoxLayout(model_group)
        mg.addLayout(model_row)
        mg.addLayout(device_row)
        self.model_label = QLabel("—")
        self.model_label.setWordWrap(True)
        self.model_label.setObjectName("caption")
        mg.addWidget(self.model_label)

        # -- text -------------------------------------------------------------------------------------
        self.source_label = QLabel("Source (encoder input)")
        self.source_edit = QPlainTextEdit()
        self.source_edit.setPlaceholderText("text for the encoder")
        self.prompt_label = QLabel("Prompt")
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("type a prompt")
        for edit in (self.source_edit, self.prompt_edit):
            edit.setTabChangesFocus(True)
            edit.setMinimumHeight(48)
        text_group = QGroupBox("Text")
        tg = QVBoxLayout(text_group)
        for w in (self.source_label, self.source_edit, self.prompt_label, self.prompt_edit):
            tg.addWidget(w)

        # -- sampling ---------------------------------------------------------------------------------
        self.mode_box = QComboBox()
        self.mode_box.addItems(["greedy", "sample"])
        self.temperature_spin = QDoubleSpinBox()
        self.temperature_spin.setRange(0.05, 10.0)
        self.temperature_spin.setSingleStep(0.1)
        self.temperature_spin.setValue(1.0)
        self.top_k_spin = QSpinBox()
        self.top_k_spin.setRange(0, 100000)
        self.top_k_spin.setSpecialValueText("off")
        self.top_p_spin = QDoubleSpinBox()
        self.top_p_spin.setRange(0.01, 1.0)
        self.top_p_spin.setSingleStep(0.05)
        self.top_p_spin.setValue(1.0)
        self.top_p_spin.setToolTip("1.00 = off")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        sampling_group = QGroupBox("Sampling")
        form = QFormLayout(sampling_group)
        form.addRow("choice", self.mode_box)
        form.addRow("temperature", self.temperature_spin)
        form.addRow("top-k", self.top_k_spin)
        form.addRow("top-p", self.top_p_spin)
        form.addRow("seed", self.seed_spin)
        self.sampling_note = QLabel("Changes re-draw the candidates at once; no new forward pass.")
        self.sampling_note.setWordWrap(True)
        self.sampling_note.setObjectName("caption")
        form.addRow(self.sampling_note)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(model_group)
        layout.addWidget(text_group, 1)
        layout.addWidget(sampling_group)

        # -- wiring -----------------------------------------------------------------------------------
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(EDIT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.request_session)
        self.prompt_edit.textChanged.connect(self._debounce.start)
        self.source_edit.textChanged.connect(self._debounce.start)
        self.open_button.clicked.connect(self._open_clicked)
        self.model_box.lineEdit().returnPressed.connect(self._open_clicked)
        self.browse_button.clicked.connect(self.browse_requested)
        self.device_box.activated.connect(lambda _i: self._device_changed())
        for w in (self.temperature_spin, self.top_p_spin):
            w.valueChanged.connect(lambda _v: self._sampling_changed())
        for w in (self.top_k_spin, self.seed_spin):
            w.valueChanged.connect(lambda _v: self._sampling_changed())
        self.mode_box.currentIndexChanged.connect(lambda _i: self._sampling_changed())
        state.model_changed.connect(self._on_model)
        self._keep_return = KeepReturnKey(self)
        for w in (self.model_box.lineEdit(), self.temperature_spin, self.top_k_spin, self.top_p_spin, self.seed_spin,
                  self.prompt_edit, self.source_edit):
            w.installEventFilter(self._keep_return)
        self._show_source(False)

    # -- public --------------------------------------------------------------------------------------
    def set_texts(self, prompt: str | None, source: str | None) -> None:
        """Fill the boxes without starting a session (the caller decides when)."""
        with QSignalBlocker(self.prompt_edit), QSignalBlocker(self.source_edit):
            if prompt is not None:
                self.prompt_edit.setPlainText(prompt)
            if source is not None:
                self.source_edit.setPlainText(source)

    def texts(self) -> tuple[str, str]:
        """(prompt, source) as typed."""
        return self.prompt_edit.toPlainText(), self.source_edit.toPlainText()

    def session_request(self) -> SessionRequest:
        s = self.state.sampling
        return SessionRequest(prompt=self.prompt_edit.toPlainText(), source=self.source_edit.toPlainText(),
                              temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed, greedy=s.greedy)

    def request_session(self) -> None:
        self._debounce.stop()
        if self.state.model is not None:
            self.client.new_session(self.session_request())

    def show_sampling(self, settings: dict) -> None:
        """Show these sampling settings (a reopened session's); the controls' own handlers pass them on to
        the state and the worker. Values that are not numbers leave the controls as they are."""
        try:
            self.mode_box.setCurrentText("greedy" if settings.get("greedy", True) else "sample")
            self.temperature_spin.setValue(float(settings.get("temperature", 1.0)))
            self.top_k_spin.setValue(int(settings.get("top_k") or 0))
            self.top_p_spin.setValue(float(settings.get("top_p") or 1.0))
            self.seed_spin.setValue(int(settings.get("seed", 0)))
        except (TypeError, ValueError) as exc:
            log.warning("session settings not shown: %s", exc)

    def set_model_text(self, text: str) -> None:
        self.model_box.setEditText(text)

    def set_model_choices(self, names: list[str]) -> None:
        current = self.model_box.currentText()
        with QSignalBlocker(self.model_box):
            self.model_box.clear()
            self.model_box.addItems(names)
            self.model_box.setEditText(current)

    def device(self) -> str | None:
        return self.device_box.currentData()

    def set_device(self, device: str | None) -> None:
        i = self.device_box.findData(device)
        if i < 0 and device:
            self.device_box.addItem(device, device)
            i = self.device_box.count() - 1
        self.device_box.setCurrentIndex(max(i, 0))

    # -- reactions -----------------------------------------------------------------------------------
    def _open_clicked(self) -> None:
        text = self.model_box.currentText().strip()
        if text:
            self.open_requested.emit(text, self.device())

    def _device_changed(self) -> None:
        if self.state.model is not None:  # the same model, on another device
            self.open_requested.emit(self.model_box.currentText().strip() or self.state.model.folder, self.device())

    def _show_source(self, on: bool) -> None:
        self.source_label.setVisible(on)
        self.source_edit.setVisible(on)
        self.prompt_label.setText("Decoder prefix (optional)" if on else "Prompt")

    def _on_model(self, info: ModelInfo) -> None:
        self._show_source(info.family == "encoder-decoder")
        # switch to the new family's example text unless the person typed their own
        prompt, source = self.prompt_edit.toPlainText(), self.source_edit.toPlainText()
        new_prompt, new_source = default_prompts(info)
        keep_prompt = prompt.strip() and prompt != self._defaults[0]
        keep_source = source.strip() and source != self._defaults[1]
        if info.family == "encoder" and info.mask_token and info.mask_token not in prompt:
            keep_prompt = False  # a fill-mask model needs a mask to fill
        self.set_texts(None if keep_prompt else new_prompt, None if keep_source else new_source)
        self._defaults = (new_prompt, new_source)
        params = f"{info.n_params / 1e6:.2f} M" if info.n_params >= 1e5 else f"{info.n_params:,}"
        layers = ", ".join(f"{k}: {n}" for k, n in info.layers_by_kind.items() if n)
        self.model_label.setText(f"{info.name} · {info.family} · {params} parameters · layers ({layers}) · "
                                 f"{info.n_heads} heads · {info.device} {info.dtype}")

    def _sampling_changed(self) -> None:
        changes = dict(greedy=self.mode_box.currentText() == "greedy",
                       temperature=round(self.temperature_spin.value(), 4),
                       top_k=self.top_k_spin.value() or None,
                       top_p=None if self.top_p_spin.value() >= 1.0 else round(self.top_p_spin.value(), 4),
                       seed=self.seed_spin.value())
        try:
            self.state.set_sampling(**changes)
        except SamplingError as exc:
            self.sampling_note.setText(str(exc))
            return
        self.sampling_note.setText("Changes re-draw the candidates at once; no new forward pass.")
        self.client.set_sampling(**changes)  # so the session's next steps use them
