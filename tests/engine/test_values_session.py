"""Session files: every sampling setting, head gate, step and branch and the caller's view state survive
save -> open, checked with values other than the defaults, and the reopened session goes on choosing the same
tokens as the original."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import Session, load_model
from engine.sampling import SamplingSettings
from engine.session_file import load_session, save_session
from engine.trace import capture_name
from tests.engine.values_models import LazyCheckpoints, checkpoint_root

SETTINGS = {"temperature": 0.7, "top_k": 5, "top_p": 0.8, "greedy": False, "seed": 11}
VIEW = {"kind": "self", "layer": 1, "head": 3, "query": 4, "source_query": None, "mean_heads": True, "rollout": True,
        "colormap": "magma", "log_scale": True, "nested": {"a": [1, 2.5, "x"]}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Only the checkpoints this module uses, built on first use (values_models.LazyCheckpoints)."""
    return LazyCheckpoints(checkpoint_root(tmp_path_factory, "ckpt"))


@pytest.fixture(scope="module")
def gpt(folders):
    return load_model(folders["gpt2"], device="cpu")


def test_defaults_differ_from_what_is_saved():
    defaults = SamplingSettings()
    assert all(getattr(defaults, k) != v for k, v in SETTINGS.items())


@pytest.mark.parametrize("name", ["gpt2", "marian", "bert"])
def test_every_setting_survives_save_and_open(folders, tmp_path, name):
    model = load_model(folders[name], device="cpu")
    prompt, source = {"gpt2": ("In the", None), "marian": (None, "And God said"), "bert": ("In the [MASK] God", None)}[name]
    s = Session(model, prompt, source=source, **SETTINGS)
    kind = model.kinds[-1]
    model.set_head_gate(kind, 1, 2, 0.0)
    model.set_head_gate(kind, 1, 0, 0.5)
    if model.family == "encoder":
        s.step()
        s.mask(2)
    else:
        s.step()
        s.step()
        s.branch(5)
    path = save_session(s, tmp_path / "s.json", view=VIEW)
    saved = json.loads(path.read_text())
    assert saved["settings"] == SETTINGS
    before, want = s.trace, s.distribution()
    model.clear_gates()  # `s` follows its model's gates: from here on it would recompute without them

    again, view = load_session(path, loader=lambda ref: load_model(ref, device="cpu"))
    assert view == VIEW
    for key, value in SETTINGS.items():
        assert getattr(again.settings, key) == value, key
    assert again.model.gates() == {capture_name(kind, 1): (0.5, 1.0, 0.0, 1.0)}
    assert again.trace.token_ids == before.token_ids and again.trace.steps == before.steps
    assert again.history == s.history
    np.testing.assert_allclose(again.distribution(), want, atol=1e-7)  # same settings and gates in force
    if model.family != "encoder":
        # the next sampled tokens are the original's (same temperature, top-k, top-p and seed)
        model.set_head_gate(kind, 1, 2, 0.0)  # the original session's model, gated again as it was saved
        model.set_head_gate(kind, 1, 0, 0.5)
        ours = [s.step().token_id for _ in range(3)]
        theirs = [again.step().token_id for _ in range(3)]
        assert ours == theirs and all(x.how == "sampled" for x in again.steps[-3:])


def test_changed_settings_are_what_is_saved(gpt, tmp_path):
    s = Session(gpt, "In the")
    s.step()
    s.set_sampling(temperature=1.9, top_k=40, top_p=0.55, greedy=False, seed=123)
    path = save_session(s, tmp_path / "later.json")
    again, view = load_session(path, loader=lambda ref: gpt)
    assert view == {}
    assert (again.settings.temperature, again.settings.top_k, again.settings.top_p, again.settings.greedy,
            again.settings.seed) == (1.9, 40, 0.55, False, 123)
    assert again.steps[0].how == "greedy"  # the first step was taken greedily, before the change
