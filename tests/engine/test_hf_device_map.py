"""The transformers backend over several devices: accelerate's device map from the engine's own plan.

Here the two "devices" are "cpu" and "cpu:1" (accelerate gets "cpu" for both): the map is built, transformers
loads through it, and the model answers as on one device. tests/cuda/test_multi_device_cuda.py loads over
cuda:0 + CPU offload."""

from __future__ import annotations

import numpy as np
import pytest

from engine import DeviceError, Session, load_model
from engine.hf_backend import load as hf_load
from engine.hf_backend.device_map import device_map, layout, placement_for
from engine.placement import Placement
from tests import modern_factories

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

SPLIT = Placement(("cpu", "cpu:1", "cpu:1"), "cpu", "cpu:1", {})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfmap")
    return {"llama": modern_factories.llama(root / "llama"),
            "tied": modern_factories.llama(root / "tied", tie_word_embeddings=True)}


@pytest.fixture(scope="module")
def one(folders):
    return load_model(folders["llama"], device="cpu", backend="transformers")


def test_the_map_covers_every_weight_and_follows_the_plan(one):
    hf = one.hf
    plan = Placement(("cuda:0", "cuda:1", "cpu"), "cuda:0", "cpu", {})
    mapping = device_map(hf, plan)
    assert [mapping[f"model.layers.{i}"] for i in range(3)] == [0, 1, "cpu"]
    assert mapping["model.embed_tokens"] == 0 and mapping["lm_head"] == "cpu" and mapping["model.norm"] == "cpu"
    for name, _ in hf.named_parameters():  # every weight under exactly one entry of the map
        assert any(name == k or name.startswith(k + ".") for k in mapping), name


def test_a_tied_head_stays_with_the_embedding(folders):
    tied = load_model(folders["tied"], device="cpu", backend="transformers")
    assert tied.hf.lm_head.weight is tied.hf.model.embed_tokens.weight
    mapping = device_map(tied.hf, Placement(("cuda:0", "cuda:1", "cuda:1"), "cuda:0", "cuda:1", {}))
    assert mapping["lm_head"] == mapping["model.embed_tokens"] == 0


def test_the_plan_counts_the_blocks_and_the_head(one):
    blocks, others = layout(one.hf, 4)
    assert blocks == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert {name: last for name, _, last in others}["lm_head"] == 2
    p = placement_for(one.hf, 4, {"cpu": 10**12})
    assert p.devices == ("cpu",)


def test_a_load_over_two_devices_answers_as_on_one(folders, one, monkeypatch):
    seen = {}
    real = hf_load._auto_model

    def spy(family, folder, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(kw)
        return real(family, folder, **kw)

    monkeypatch.setattr(hf_load, "_auto_model", spy)
    two = load_model(folders["llama"], device=SPLIT, backend="transformers")
    assert two.devices == ("cpu", "cpu:1") and two.placement == "cpu layer 0 · cpu:1 layers 1–2"
    assert seen["device_map"]["model.layers.1"] == "cpu"  # transformers loaded it through accelerate's device map
    assert set(seen["device_map"]) >= {"model.embed_tokens", "model.layers.0", "lm_head"}
    for m in (one, two):
        m.set_head_gate("self", 1, 2, 0.0)
    try:
        a, b = Session(one, "In the beginning"), Session(two, "In the beginning")
        for _ in range(3):
            assert a.step().token_id == b.step().token_id
        np.testing.assert_allclose(a.trace.logits, b.trace.logits, atol=1e-5)
        for layer in range(3):
            np.testing.assert_allclose(a.trace.attention("self", layer), b.trace.attention("self", layer), atol=1e-6)
    finally:
        one.clear_gates()
        two.clear_gates()


def test_without_accelerate_a_split_says_what_to_install(folders, monkeypatch):
    monkeypatch.setattr(hf_load, "_has_accelerate", lambda: False)
    with pytest.raises(DeviceError, match="pip install accelerate"):
        load_model(folders["llama"], device=SPLIT, backend="transformers")
