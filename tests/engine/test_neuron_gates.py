"""Neuron gates beside the head gates: checked by name and range, kept in a session file and restored, put back
as they were when a session file cannot be restored, cleared with the head gates."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Session, load_model
from engine.errors import CaptureError
from engine.session_file import load_session, save_session
from tests import factories


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(factories.gpt2(tmp_path_factory.mktemp("gpt2") / "ckpt"), device="cpu")


def test_bad_neurons_and_layers_say_what_exists(model):
    with pytest.raises(CaptureError, match="neurons 0..127"):
        model.set_neuron_gate(1, 128, 0.0)
    with pytest.raises(CaptureError, match="layers are 0..1"):
        model.set_neuron_gate(2, 0, 0.0)
    with pytest.raises(CaptureError, match="no 'encoder' stack"):
        model.set_neuron_gate(0, 0, 0.0, stack="encoder")


def test_a_session_file_keeps_the_neuron_gates(model, tmp_path):
    try:
        model.set_neuron_gate(1, 5, 0.0)
        model.set_neuron_gate(0, 7, 0.5)
        model.set_head_gate("self", 1, 2, 0.0)
        session = Session(model, list(range(5, 15)))
        session.step()
        want = session.trace.logits_at(10).copy()
        path = save_session(session, tmp_path / "s.json")
        model.clear_gates()
        assert model.neuron_gates() == {} and model.gates() == {}
        restored, _view = load_session(path, loader=lambda _ref: model)
        assert model.neuron_gates() == {"decoder.1.mlp": {5: 0.0}, "decoder.0.mlp": {7: 0.5}}
        assert restored.trace.neuron_gates == model.neuron_gates()
        np.testing.assert_allclose(restored.trace.logits_at(10), want, atol=1e-6)
        # a file that cannot be restored leaves the model's gates as they were
        bad = path.read_text().replace('"decoder.1.mlp"', '"decoder.9.mlp"')
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(CaptureError, match="layer 9"):
            load_session(tmp_path / "bad.json", loader=lambda _ref: model)
        assert model.neuron_gates() == {"decoder.1.mlp": {5: 0.0}, "decoder.0.mlp": {7: 0.5}}
    finally:
        model.clear_gates()
    assert model.mlp_module(1).neuron_gate is None and model.mlp_module(0).neuron_gate is None
