"""A model over several devices gives what the same model on one device gives.

On a machine without a second device the split runs over "cpu" and "cpu:1": torch keeps both on the CPU, but
the plan names two devices, so every boundary move (residual stream, masks, rotary tables, encoder memory,
the head) runs, each as a real copy. Where parameters go is checked on the "meta" device, which holds no
data. tests/cuda/test_multi_device_cuda.py runs the real split (cuda:0 + CPU offload, two GPUs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import DeviceError, Session, load_model
from engine.analysis import logit_lens
from engine.explain import attribute, inside_head, mlp_neurons, residual_stream
from engine.multi_device import auto_placement, blocks, bytes_on, module_devices, sizes
from engine.patching import Component, patch
from engine.placement import Placement
from tests import modern_factories

PROMPTS = {"tiny-gpt": ("In the beginning God", None), "tiny-llama": ("In the beginning God", None),
           "untied-llama": ("In the beginning God", None),
           "tiny-bert": ("In the [MASK] God created", None),
           "tiny-seq2seq": ("In the", "In the beginning God created the heaven")}


def halves(model, first: str = "cpu", second: str = "cpu:1", head: str | None = None) -> Placement:
    """The first half of the blocks (encoder then decoder) on `first`, the rest on `second`."""
    n = len(blocks(model.net))
    layers = tuple(first if i < n // 2 else second for i in range(n))
    return Placement(layers, first, head or second, {})


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory):
    """A random Llama whose lm_head is its own matrix (the head then goes to the last device, not the embedding's)."""
    return modern_factories.llama(tmp_path_factory.mktemp("untied") / "llama")


@pytest.fixture(scope="module", params=list(PROMPTS))
def pair(request):
    name = request.param
    source = request.getfixturevalue("untied_llama") if name == "untied-llama" else name
    one = load_model(source, device="cpu")
    two = load_model(source, device="cpu")
    two.place(halves(two))
    return name, one, two


@pytest.mark.parametrize("mode", ["patterns", "rebuild"])
def test_split_sessions_step_back_and_branch_as_on_one_device(pair, mode):
    name, one, two = pair
    prompt, source = PROMPTS[name]
    one.capture_mode = two.capture_mode = mode
    try:
        a, b = Session(one, prompt, source=source), Session(two, prompt, source=source)
        steps = 1 if one.family == "encoder" else 3
        for _ in range(steps):
            sa, sb = a.step(), b.step()
            assert sa.token_id == sb.token_id
            np.testing.assert_allclose(sa.probs, sb.probs, atol=1e-6)
        if one.family != "encoder":
            a.back(), b.back()
            other = int(np.argsort(a.trace.logits[-1])[-2])
            a.branch(other), b.branch(other)
            a.step(), b.step()
        ta, tb = a.trace, b.trace
        assert ta.token_ids == tb.token_ids
        np.testing.assert_allclose(ta.logits, tb.logits, atol=1e-5)
        for kind in one.kinds:
            for layer in range(one.layers_by_kind[kind]):
                np.testing.assert_allclose(ta.attention(kind, layer), tb.attention(kind, layer), atol=1e-6)
    finally:
        one.capture_mode = two.capture_mode = "auto"


def test_split_model_says_its_placement(pair):
    name, _, two = pair
    text = two.placement
    assert "cpu:1" in text and two.devices == ("cpu", "cpu:1")
    if name == "tiny-seq2seq":  # 3 + 3 blocks: the encoder on the first device, the decoder on the second
        assert text.startswith("encoder: cpu layers 0–2 · decoder: cpu:1 layers 0–2")
    else:
        assert text.startswith("cpu layer 0 · cpu:1 layers 1–2" if name == "untied-llama" else "cpu layers 0–1 · cpu:1 layers 2–3")
    # a tied unembedding is the embedding's memory: the head stays with it
    assert text.endswith("· head cpu") == (two.net.lm_head is None)


def test_gates_and_explanations_on_a_split_model(pair):
    name, one, two = pair
    prompt, source = PROMPTS[name]
    kind = "encoder" if one.family == "encoder" else "self"
    last = one.layers_by_kind[kind] - 1
    for m in (one, two):
        m.set_head_gate(kind, last, 1, 0.0)
        m.set_neuron_gate(last, 3, 0.0)
    try:
        assert two.mlp_module(last).neuron_gate.device == two.mlp_module(last).down.weight.device
        ta, tb = one.run(prompt, source=source), two.run(prompt, source=source)
        np.testing.assert_allclose(ta.logits, tb.logits, atol=1e-5)
        np.testing.assert_allclose(ta.attention(kind, last), tb.attention(kind, last), atol=1e-6)
        ia, ib = inside_head(one, ta, kind, last, 0, 2), inside_head(two, tb, kind, last, 0, 2)
        np.testing.assert_allclose(ia.pattern, ib.pattern, atol=1e-6)
        np.testing.assert_allclose(ia.value_norms, ib.value_norms, rtol=1e-5)
        la, lb = logit_lens(one, ta, 2), logit_lens(two, tb, 2)
        np.testing.assert_allclose(la["probs"], lb["probs"], atol=1e-6)
        na, nb = mlp_neurons(one, ta, last, 2), mlp_neurons(two, tb, last, 2)
        np.testing.assert_allclose(na.activations, nb.activations, atol=1e-5)
        if one.family == "encoder":
            return
        aa, ab = attribute(one, ta, 2), attribute(two, tb, 2)
        np.testing.assert_allclose(aa.heads, ab.heads, atol=1e-4)
        np.testing.assert_allclose(aa.mlps, ab.mlps, atol=1e-4)
        assert ab.total == pytest.approx(ab.logit, abs=1e-3)
        np.testing.assert_allclose(na.writes, nb.writes, atol=1e-4)
        assert [n.index for n in na.neurons] == [n.index for n in nb.neurons]
        assert [[t for t, _, _ in n.pushes_up] for n in na.neurons[:3]] == [[t for t, _, _ in n.pushes_up] for n in nb.neurons[:3]]
        ra, rb = residual_stream(one, ta, 2), residual_stream(two, tb, 2)
        np.testing.assert_allclose(ra.mlp_effects, rb.mlp_effects, atol=1e-4)
        corrupt = "In the end God" if one.family == "decoder" else None
        if corrupt is not None:
            pa = patch(one, prompt, corrupt, Component("head", 0, 1, "self"))
            pb = patch(two, prompt, corrupt, Component("head", 0, 1, "self"))
            np.testing.assert_allclose(pa.after_logits, pb.after_logits, atol=1e-5)
            assert not np.allclose(pb.after_logits, pb.before_logits)  # the patch changed something
    finally:
        one.clear_gates()
        two.clear_gates()


def test_parameters_go_where_the_plan_says():
    """On the meta device (no data): each block, the embedding, the stacks' own modules and the head where planned."""
    model = load_model("tiny-seq2seq", device="cpu")
    n_enc = model.config.n_encoder_layers
    layers = ("cpu",) * (n_enc + 1) + ("meta",) * (len(blocks(model.net)) - n_enc - 1)
    model.place(Placement(layers, "cpu", "meta", {}))
    net = model.net
    for i, (_, block) in enumerate(blocks(net)):
        assert {p.device.type for p in block.parameters()} == {layers[i]}, i
        assert block.attn.gate.device.type == layers[i]
    assert net.embed.weight.device.type == "cpu"
    for stack, first, last in ((net.encoder, "cpu", "cpu"), (net.decoder, "cpu", "meta")):
        for child, module in stack.named_children():  # positions, embedding norm with the first block; final norm
            if child != "layers":
                want = last if child == "final_norm" else first
                assert {t.device.type for t in [*module.parameters(), *module.buffers()]} <= {want}, child
        for t in [getattr(stack, "sinusoid", None), *stack.inv_freqs]:
            assert t is None or t.device.type == first
    assert net.decoder.entry == torch.device("cpu") and net.decoder.moves == {1: torch.device("meta")}
    # tied: the unembedding is the embedding's memory, on its device, and the head goes with it
    assert net.lm_head is None and net.unembedding_t.device.type == "cpu"
    assert net.unembedding_t.data_ptr() == net.embed.weight.data_ptr()
    assert net.head_device == torch.device("cpu")


def test_module_map_of_an_untied_model(untied_llama):
    model = load_model(untied_llama, device="cpu")
    assert model.net.lm_head is not None and model.n_layers == 3
    p = Placement(("cuda:0", "cuda:1", "cpu"), "cuda:0", "cpu", {})
    where = module_devices(model.net, p)
    assert where["embed"] == "cuda:0" and where["lm_head"] == "cpu" and where["decoder.final_norm"] == "cpu"
    assert [where[f"decoder.layers.{i}"] for i in range(3)] == list(p.layers)
    embed, layer, head = sizes(model.net, 4)
    assert bytes_on(model.net, p, 4, "cpu") == layer[2] + head
    assert embed + sum(layer) + head == 4 * model.n_params


def test_auto_placement_spreads_by_free_memory():
    model = load_model("tiny-llama", device="cpu")
    embed, layer, head = sizes(model.net, 2)
    room = int((embed + layer[0] + layer[1]) / 0.9) + 1  # the embedding and two blocks, with the 10 % reserve
    p = auto_placement(model.net, torch.bfloat16, {"cuda:0": room, "cuda:1": room, "cpu": 10**12})
    assert p.embed == "cuda:0" and p.layers == ("cuda:0", "cuda:0", "cuda:1", "cuda:1")
    assert p.head in ("cuda:1", "cpu")
    p = auto_placement(model.net, torch.bfloat16, {"cpu": 10**12})
    assert p.devices == ("cpu",)


def test_a_load_over_a_placement_equals_a_load_on_one_device():
    one = load_model("tiny-llama", device="cpu")
    two = load_model("tiny-llama", device=Placement(("cpu", "cpu", "cpu:1", "cpu:1"), "cpu", "cpu:1", {}))
    assert two.devices == ("cpu", "cpu:1") and two.net.decoder.moves == {2: torch.device("cpu:1")}
    np.testing.assert_allclose(one.run("In the beginning").logits, two.run("In the beginning").logits, atol=1e-5)
    same = load_model("tiny-llama", device=Placement(("cpu",) * 4, "cpu", "cpu", {}))
    assert same.net.placement is None and same.net.decoder.moves == {}  # one device: the plain forward


def test_bad_placements_are_refused():
    with pytest.raises(DeviceError, match="names 3 layers but this model has 4"):
        load_model("tiny-llama", device=Placement(("cpu",) * 3, "cpu", "cpu", {}))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            load_model("tiny-llama", device=Placement(("cpu", "cpu", "cuda:0", "cuda:0"), "cpu", "cuda:0", {}))


def test_one_device_again_after_a_split():
    model = load_model("tiny-gpt", device="cpu")
    before = model.run("In the beginning").logits
    model.place(halves(model))
    model.place("cpu")
    assert model.net.placement is None and model.net.decoder.moves == {} and model.placement == "cpu layers 0–3"
    np.testing.assert_allclose(model.run("In the beginning").logits, before, atol=1e-6)
