"""The state's one-signal-per-field contract, and the action registry the menus and the shortcut table come from."""

from __future__ import annotations

from PySide6.QtGui import QKeySequence

from gui.core.state import InspectorState
from gui.core.worker import ModelInfo


def _info() -> ModelInfo:
    return ModelInfo(name="m", folder=None, family="decoder", kinds=("self",), layers_by_kind={"self": 3}, n_heads=4,
                     n_params=1, device="cpu", dtype="float32", load_seconds=0.0, vocab=(), mask_token=None,
                     max_positions=16, has_logits=True)


def _record(state: InspectorState) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []
    for name in ("kind", "layer", "head", "mean_heads", "query", "source_query", "colormap", "log_scale"):
        getattr(state, f"{name}_changed").connect(lambda v, n=name: seen.append((n, v)))
    state.selection_changed.connect(lambda: seen.append(("selection", None)))
    state.display_changed.connect(lambda: seen.append(("display", None)))
    return seen


def test_each_field_signals_once_then_the_group(qapp):
    state = InspectorState()
    state.set_model(_info())
    seen = _record(state)
    got: list[tuple[int, int]] = []
    state.layer_changed.connect(lambda _v: got.append((state.layer, state.head)))  # every field is set first
    state.select(layer=2, head=3)
    assert seen == [("layer", 2), ("head", 3), ("selection", None)] and got == [(2, 3)]
    seen.clear()
    state.select(layer=2, head=9)  # unchanged, and out of range: nothing
    state.set_display(colormap=state.colormap)
    assert seen == []
    state.set_display(colormap="magma", log_scale=True)
    assert seen == [("colormap", "magma"), ("log_scale", True), ("display", None)]


def test_every_action_is_bound_and_the_help_table_comes_from_the_registry(window):
    registry = window.registry
    assert registry.unbound() == []
    shortcuts = [a.shortcut().toString() for a in registry.actions.values() if not a.shortcut().isEmpty()]
    assert len(shortcuts) == len(set(shortcuts))  # no key does two things
    rows = dict(registry.shortcut_table())
    assert rows["→"].startswith("Step") and rows["↑ / ↓"] == "Previous / next layer"
    assert rows[QKeySequence("Ctrl+E").toString(QKeySequence.SequenceFormat.NativeText)] == "Export the trace (.npz)"
    assert "right-click a head" in rows
    assert registry.action("view.log_scale").shortcut() == QKeySequence("L")
    registry.action("view.log_scale").trigger()  # through the state: the attention view's box follows
    assert window.state.log_scale and window.attention_view.scale_box.currentText() == "log"
