"""A transformers-backend model over the remote engine answers every Trace question exactly as in-process:
gpt-oss (attention sinks, experts, sliding windows), hybrids (LFM2: convolution layers; Qwen3-Next: Gated DeltaNet
layers and experts) and Qwen3-MoE, from
tiny random checkpoints (tests/hf_factories.py) under the server's --models-dir. The server runs the same engine
code on the same weights and CPU, so patterns (rebuilt from q, k, lse on the client), sink shares, routing and
logits are compared exactly."""

from __future__ import annotations

import numpy as np
import pytest

from engine import EngineError, Session, load_model
from engine.local import LocalEngine
from engine.remote import connect

from .conftest import Server
from .test_parity import assert_same_trace

pytest.importorskip("transformers")

ARCHS = ("gpt_oss", "lfm2", "qwen3_moe", "qwen3_next")
PROMPT = list(range(5, 25))  # 20 tokens: past every sliding window (5)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tests import hf_factories

    root = tmp_path_factory.mktemp("hf-models")
    for name in ARCHS:
        hf_factories.ARCHITECTURES[name](root / name)
    return root


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory, hf_dir):
    s = Server(tmp_path_factory.mktemp("hf-server"), models_dirs=(hf_dir,))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hf_eng(hf_server):
    e = connect(hf_server.address, token=hf_server.token)
    yield e
    e.close()


@pytest.fixture(autouse=True)
def same_threads(hf_eng):
    """CPU float results depend on torch's thread count: compare like with like (see test_parity.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(hf_eng.info["torch_threads"])
    yield
    torch.set_num_threads(before)


def _pair(eng, hf_dir, name: str, **load):
    """(remote model, in-process model) of one checkpoint, both freshly loaded: a transformers-backend model's
    first forward also checks its lazy logits (two rows through the output head, not one), which rounds the
    last row differently in the 7th digit, so like is compared with like."""
    folder = str(hf_dir / name)
    return eng.load_model(folder, device="cpu", **load), load_model(folder, device="cpu", **load)


def _drive(session) -> None:
    """Steps past the window, back, a branch, a sampled step: the same both ways."""
    for _ in range(3):
        session.step()
    session.back()
    session.branch(7)
    session.set_sampling(temperature=0.7, greedy=False, seed=3)
    session.step()


def assert_same_hf_trace(remote, local) -> None:
    """Everything the transformers backend adds to a Trace, and everything a Trace answers."""
    assert remote.n_experts == local.n_experts
    assert remote.no_attention == local.no_attention
    assert remote.moe_layers == local.moe_layers
    assert remote.rules.keys() == local.rules.keys()
    for name, rule in local.rules.items():
        other = remote.rules[name]
        assert (other.scale, other.causal, other.group, other.softcap, other.window, other.window_ahead, other.chunk) == \
            (rule.scale, rule.causal, rule.group, rule.softcap, rule.window, rule.window_ahead, rule.chunk)
        if rule.sinks is None:
            assert other.sinks is None
        else:
            np.testing.assert_array_equal(other.sinks, rule.sinks)
    for layer in range(local.n_layers["self"]):
        if f"decoder.{layer}.attn" in local.no_attention:
            continue
        a, b = remote.sink_share("self", layer), local.sink_share("self", layer)
        assert (a is None) == (b is None)
        if b is not None:
            np.testing.assert_array_equal(a, b)
    for layer in local.moe_layers:
        r, loc = remote.routing(layer), local.routing(layer)
        assert (r.layer, r.n_experts, r.k) == (loc.layer, loc.n_experts, loc.k)
        np.testing.assert_array_equal(r.experts, loc.experts)
        np.testing.assert_array_equal(r.weights, loc.weights)
        np.testing.assert_array_equal(r.top_expert, loc.top_expert)
        np.testing.assert_array_equal(r.load(), loc.load())
    assert_same_trace(remote, local)


@pytest.mark.parametrize("name", ARCHS)
def test_session_over_the_wire_equals_in_process(hf_eng, hf_dir, name):
    rm, lm = _pair(hf_eng, hf_dir, name)
    assert rm.backend == lm.backend == "transformers"
    assert (rm.n_heads, rm.layers_by_kind, rm.n_params, rm.config.n_kv_heads, rm.config.model_type) == \
        (lm.n_heads, lm.layers_by_kind, lm.n_params, lm.config.n_kv_heads, lm.config.model_type)
    rs, ls = hf_eng.Session(rm, PROMPT), Session(lm, PROMPT)
    assert_same_hf_trace(rs.trace, ls.trace)
    _drive(rs), _drive(ls)
    assert rs.history == ls.history and rs.ids == ls.ids and rs.finished == ls.finished
    assert_same_hf_trace(rs.trace, ls.trace)
    np.testing.assert_array_equal(rs.distribution(), ls.distribution())


def test_what_the_new_fields_hold(hf_eng, hf_dir):
    """Not vacuous: gpt-oss has sinks and experts in every layer, LFM2 has layers without attention."""
    rm, _ = _pair(hf_eng, hf_dir, "gpt_oss")
    trace = rm.run(PROMPT)
    assert trace.n_experts == 4 and trace.moe_layers == [0, 1]
    share = trace.sink_share("self", 0)
    assert share is not None and share.shape == (rm.n_heads, len(PROMPT)) and share.max() > 0.05
    assert trace.routing(1).experts.shape == (len(PROMPT), 2)
    hybrid, _ = _pair(hf_eng, hf_dir, "lfm2")
    t = hybrid.run(PROMPT)
    assert set(t.no_attention) == {"decoder.0.attn", "decoder.2.attn"} and t.moe_layers == [] and t.n_experts is None
    with pytest.raises(Exception, match="no attention"):
        t.attention("self", 0)


@pytest.mark.parametrize("name", ["gpt_oss", "lfm2"])
def test_one_off_run_and_head_statistics_match(hf_eng, hf_dir, name):
    rm, lm = _pair(hf_eng, hf_dir, name)
    rt, lt = rm.run(PROMPT), lm.run(PROMPT)
    assert_same_hf_trace(rt, lt)
    local = LocalEngine()
    ind_r, ind_l = hf_eng.induction_scores(rm), local.induction_scores(lm)
    np.testing.assert_array_equal(ind_r, ind_l)  # NaN rows (layers without attention) compare equal
    assert hf_eng.head_statistics(rm, rt, ind_r) == local.head_statistics(lm, lt, ind_l)
    # the explanations run where the model is (engine.hf_backend.explain) and come back equal
    lens_r, lens_l = hf_eng.logit_lens(rm, rt, 3), local.logit_lens(lm, lt, 3)
    np.testing.assert_array_equal(lens_r["probs"], lens_l["probs"])
    ih_r, ih_l = hf_eng.inside_head(rm, rt, "self", 1, 2, 4), local.inside_head(lm, lt, "self", 1, 2, 4)
    np.testing.assert_array_equal(ih_r.pattern, ih_l.pattern)
    assert (ih_r.output_norm, ih_r.sink_share) == (ih_l.output_norm, ih_l.sink_share)
    at_r, at_l = hf_eng.attribute(rm, rt, 3), local.attribute(lm, lt, 3)
    assert at_r.parts == at_l.parts and at_r.logit == at_l.logit
    # a refusal (experts have no single MLP to open) comes back as the same engine error, the same advice
    if name == "gpt_oss":
        with pytest.raises(EngineError) as remote_err:
            hf_eng.mlp_neurons(rm, rt, 0, 3)
        with pytest.raises(EngineError) as local_err:
            local.mlp_neurons(lm, lt, 0, 3)
        assert type(remote_err.value) is type(local_err.value) and str(remote_err.value) == str(local_err.value)
        assert "mixture of experts" in str(local_err.value)


def test_the_engine_choice_reaches_the_server(hf_eng, hf_dir):
    """backend= picks the server's engine as in-process; a refusal comes back as the same engine error."""
    from engine import load_model as local_load

    with pytest.raises(Exception) as remote_err:
        hf_eng.load_model(str(hf_dir / "gpt_oss"), backend="native")
    with pytest.raises(Exception) as local_err:
        local_load(str(hf_dir / "gpt_oss"), backend="native")
    assert type(remote_err.value) is type(local_err.value) and str(remote_err.value) == str(local_err.value)
    assert hf_eng.load_model("tiny-llama", backend="transformers").backend == "transformers"
    assert hf_eng.load_model("tiny-llama").backend == "native"


def test_head_gates_recompute_keys_and_all(hf_eng, hf_dir):
    """An ablation recomputes the session on the server: every key after the gated layer changes while the tokens
    stay, so the client's keys (patterns here are always rebuilt from q, k, lse) must be replaced, not kept."""
    rm, lm = _pair(hf_eng, hf_dir, "gpt_oss")
    rs, ls = hf_eng.Session(rm, PROMPT), Session(lm, PROMPT)
    rs.step(), ls.step()
    before = rs.trace
    rm.set_head_gate("self", 0, 1, 0.0)
    lm.set_head_gate("self", 0, 1, 0.0)
    assert rs.trace.token_ids == before.token_ids and rs.trace.gates == ls.trace.gates != before.gates
    assert not np.array_equal(ls.trace.attention("self", 1), before.attention("self", 1))
    assert_same_hf_trace(rs.trace, ls.trace)
    rs.step(), ls.step()
    rm.clear_gates(), lm.clear_gates()
    assert_same_hf_trace(rs.trace, ls.trace)


def test_expert_gates_over_the_wire_equal_in_process(hf_eng, hf_dir):
    """Expert ablation on the server: the session recomputes there, the trace carries the gates, and routing,
    patterns and logits are the in-process ablation's; clearing puts everything back."""
    rm, lm = _pair(hf_eng, hf_dir, "qwen3_moe")
    rs, ls = hf_eng.Session(rm, PROMPT), Session(lm, PROMPT)
    rs.step(), ls.step()
    before = ls.trace  # in-process: an old remote trace's logits are no longer held by the server once it recomputes
    layer = lm.moe_layers[-1]
    expert = int(np.bincount(before.routing(layer).experts.ravel()).argmax())  # the busiest: it matters
    rm.set_expert_gate(layer, expert, 0.0)
    lm.set_expert_gate(layer, expert, 0.0)
    rm.set_expert_gate(layer, expert + 1, 0.5)
    lm.set_expert_gate(layer, expert + 1, 0.5)
    assert rm.expert_gates() == lm.expert_gates() == {layer: {expert: 0.0, expert + 1: 0.5}}
    after = rs.trace
    assert after.expert_gates == ls.trace.expert_gates == {layer: {expert: 0.0, expert + 1: 0.5}}
    assert after.token_ids == before.token_ids
    assert np.abs(after.logits - before.logits).max() > 1e-3, "the ablation changed the logits"
    r = after.routing(layer)
    assert np.all(r.weights[r.experts == expert] == 0)
    assert_same_hf_trace(after, ls.trace)
    rs.step(), ls.step()
    assert_same_hf_trace(rs.trace, ls.trace)
    assert rm.run(PROMPT).expert_gates == {layer: {expert: 0.0, expert + 1: 0.5}}  # one-off runs carry them too
    rm.clear_expert_gates(), lm.clear_expert_gates()
    assert rm.expert_gates() == {} and rs.trace.expert_gates == {}
    assert_same_hf_trace(rs.trace, ls.trace)
    # restored (to rounding: the recomputed prefill's last row comes through the output head, not unembedded later)
    np.testing.assert_allclose(rs.trace.logits[: len(before)], before.logits, atol=1e-5)


def test_expert_gates_refused_where_there_are_no_experts(hf_eng, hf_dir):
    from engine import CaptureError

    rm, lm = _pair(hf_eng, hf_dir, "qwen3_moe")
    for model in (rm, lm):  # the same refusal both ways
        with pytest.raises(CaptureError, match="experts are 0"):
            model.set_expert_gate(model.moe_layers[0], 99, 0.0)
    assert rm.expert_gates() == {}
    native = hf_eng.load_model("tiny-llama")
    assert native.moe_layers == [] and native.expert_gates() == {}
    native.clear_expert_gates()  # nothing to clear: not an error (session files call it)
    with pytest.raises(CaptureError, match="has no experts"):
        native.set_expert_gate(0, 0, 0.0)


def test_expert_gates_survive_a_reconnect_and_a_session_file(hf_server, hf_dir, tmp_path):
    """The client puts its expert gates back on the server when it reconnects (as head gates), and a saved remote
    session restores them."""
    from engine.session_file import read_session_file, save_session

    eng = connect(hf_server.address, token=hf_server.token)
    try:
        lm = load_model(str(hf_dir / "qwen3_moe"), device="cpu")
        rm = eng.load_model(str(hf_dir / "qwen3_moe"), device="cpu")
        layer = lm.moe_layers[0]
        rm.set_expert_gate(layer, 1, 0.0)
        lm.set_expert_gate(layer, 1, 0.0)
        rs, ls = eng.Session(rm, PROMPT), Session(lm, PROMPT)
        rs.step(), ls.step()
        path = save_session(rs, tmp_path / "remote.json")
        assert read_session_file(path)["expert_gates"] == {str(layer): {"1": 0.0}}
        handle = rm.handle
        eng.reconnect()
        assert rm.handle != handle  # a new model on the server, its gates set again from what the client kept
        assert rm.expert_gates() == {layer: {1: 0.0}}
        rs.step(), ls.step()
        assert rs.trace.expert_gates == {layer: {1: 0.0}}
        assert_same_hf_trace(rs.trace, ls.trace)
        rm.clear_expert_gates()
        restored = eng.restore_session(read_session_file(path), rm)
        assert rm.expert_gates() == {layer: {1: 0.0}} == restored.trace.expert_gates
        lm.clear_expert_gates()
        lm.set_expert_gate(layer, 1, 0.0)
        ls2 = Session(lm, PROMPT)
        ls2.step()
        # to rounding: the server's model checked its lazy logits on another forward than lm did (see _pair)
        a, b = restored.trace, ls2.trace
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        for moe in lm.moe_layers:
            np.testing.assert_array_equal(a.routing(moe).experts, b.routing(moe).experts)
    finally:
        eng.close()


def test_head_gates_in_native_rebuild_mode_replace_the_keys_too(hf_eng):
    """The same over the native engine when it rebuilds patterns (a long context's mode)."""
    rm = hf_eng.load_model("tiny-llama", capture_mode="rebuild")
    lm = load_model("tiny-llama", device="cpu")
    lm.capture_mode = "rebuild"
    rs, ls = hf_eng.Session(rm, "In the beginning God created"), Session(lm, "In the beginning God created")
    rs.step(), ls.step()
    rm.set_head_gate("self", 0, 1, 0.0)
    lm.set_head_gate("self", 0, 1, 0.0)
    assert_same_trace(rs.trace, ls.trace)


def test_bytes_per_step_do_not_grow_with_the_context(hf_eng, hf_dir):
    """Routing and sink-rule records are sent once per block, like patterns: a step after 200 tokens costs what one
    after 20 does (the new token's q, k, lse and expert choices; give or take the digits of larger positions)."""
    model = hf_eng.load_model(str(hf_dir / "gpt_oss"))
    hf_eng.prefetch_logits = False
    try:
        costs = []
        for n in (20, 200):
            session = hf_eng.Session(model, list(range(10, 10 + n)))
            session.step()
            before = hf_eng.conn.bytes_sent + hf_eng.conn.bytes_received
            session.step()
            costs.append(hf_eng.conn.bytes_sent + hf_eng.conn.bytes_received - before)
        assert abs(costs[1] - costs[0]) < 300, costs
    finally:
        hf_eng.prefetch_logits = True


def test_a_window_on_a_remote_engine_shows_sinks_and_experts(qtbot, hf_server, hf_dir, tmp_path):
    """The window against the server: the prompt panel's engine choice and --trust-remote-code reach the server's
    load, gpt-oss's sink share is in the attention caption and its routing in the Experts dock, as in-process."""
    import re

    from PySide6.QtCore import QSettings

    from engine.remote import RemoteTrace
    from gui.core.engine_jobs import use_this_computer
    from gui.panels.experts import PALETTE
    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    make_app()
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), devices=["cpu"])
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()

    def idle() -> None:
        qtbot.waitUntil(lambda: not win.client.busy and not win._chain, timeout=60_000)

    try:
        win.remote_engine.connect_to({"address": hf_server.address, "token": hf_server.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=60_000)
        idle()
        loads: list[dict] = []
        conn = win.client.engine.conn
        real_call = conn.call

        def call(op, body=None, **kw):  # noqa: ANN001, ANN202 - records what each load asks the server for
            if op == "load":
                loads.append(dict(body))
            return real_call(op, body, **kw)

        conn.call = call
        n_errors = len(win.errors)
        panel = win.prompt_panel
        panel.set_backend("transformers")  # a natively supported model, forced through transformers on the server
        panel.model_box.setEditText("tiny-llama")
        panel.open_button.click()  # the panel sends its request from the event loop
        qtbot.waitUntil(lambda: bool(loads), timeout=10_000)
        idle()
        assert win.errors[n_errors:] == []
        assert loads[-1]["backend"] == "transformers" and loads[-1]["trust_remote_code"] is False
        assert win.state.model.backend == "transformers" and "through transformers" in panel.model_label.text()

        win.trust_remote_code = True  # as main.py --trust-remote-code sets it: every later open carries it
        win.open_model(str(hf_dir / "gpt_oss"), prompt="In the beginning")  # as the menus open (no options of their own)
        idle()
        assert win.errors[n_errors:] == []
        assert loads[-1]["backend"] == "transformers" and loads[-1]["trust_remote_code"] is True
        n = len(win.state.trace)
        win.client.step()
        qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=60_000)
        idle()
        trace = win.state.trace
        assert isinstance(trace, RemoteTrace) and trace.n_experts == 4

        title = win.attention_view.plot.titleLabel.text
        m = re.search(r"sink (\d+)% \(row (\d+)\), (\d+)% mean", title)
        assert m, title
        share = trace.sink_share("self", 0)[0]
        assert int(m.group(2)) == len(trace) - 1
        assert abs(int(m.group(1)) - 100 * share[-1]) <= 0.5 and abs(int(m.group(3)) - 100 * share.mean()) <= 0.5

        experts = win.experts_panel
        qtbot.waitUntil(lambda: experts.image.image is not None and experts.image.image.shape[1] == len(trace),
                        timeout=10_000)
        assert experts.layers == trace.moe_layers == [0, 1] and "4 experts" in experts.caption.text()
        r = trace.routing(1)
        assert (experts.image.image[1] == PALETTE[r.top_expert % len(PALETTE)]).all()
        np.testing.assert_allclose(experts.load_share[:, -1], trace.routing(0).load() / (r.k * len(trace)))

        # right-click ablation in the Experts dock reaches the server's model; the recomputed trace comes back
        token = len(trace) - 1
        expert = int(r.top_expert[token])
        menu = experts.menu_for(1, token)
        texts = [a.text() for a in menu.actions()]
        menu.actions()[texts.index(f"Ablate expert {expert} of layer 1")].trigger()
        qtbot.waitUntil(lambda: win.state.trace.expert_gates == {1: {expert: 0.0}}, timeout=60_000)
        idle()
        assert win.errors[n_errors:] == []
        after = win.state.trace
        assert np.all(after.routing(1).weights[after.routing(1).experts == expert] == 0)
        assert np.abs(after.logits_at(token) - trace.logits_at(token)).max() > 1e-4
        assert f"ablated: layer 1 expert {expert}" in experts.caption.text()
        experts.menu_for(1, token).actions()[-1].trigger()  # restore every expert
        qtbot.waitUntil(lambda: not win.state.trace.expert_gates, timeout=60_000)
        idle()
        np.testing.assert_allclose(win.state.trace.logits_at(token), trace.logits_at(token), atol=1e-5)
    finally:
        win.client.call("engine", use_this_computer())
        idle()
        win.close()


def test_mxfp4_weights_over_the_wire_say_they_were_dequantised(hf_eng, hf_dir):
    """The server's model tells the client what became of its quantised weights (the status bar shows it)."""
    from gui.core.worker import model_info
    from tests import mxfp4_factory

    mx, _reference, _values = mxfp4_factory.build(hf_dir / "mxfp4")
    rm, lm = _pair(hf_eng, hf_dir, "mxfp4/gpt-oss-mxfp4")
    assert rm.quantization == lm.quantization == "mxfp4, dequantised to bfloat16"
    assert model_info(rm, hf_eng).quantization == "mxfp4, dequantised to bfloat16"
    assert rm.dtype == "bfloat16" and rm.dtype_reason == lm.dtype_reason
    assert_same_hf_trace(hf_eng.Session(rm, PROMPT).trace, Session(lm, PROMPT).trace)


def test_neuron_gates_and_mlp_neurons_over_the_wire(hf_eng, hf_dir):
    """A dense MLP's neuron gate on the transformers backend (LFM2's feed-forward), set through the server: the same
    logits and the same Inside the MLP as in-process."""
    rm, lm = _pair(hf_eng, hf_dir, "lfm2")
    for m in (rm, lm):
        m.set_neuron_gate(1, 5, 0.0)
    try:
        assert rm.neuron_gates() == lm.neuron_gates() == {"decoder.1.mlp": {5: 0.0}}
        rt, lt = rm.run(PROMPT), lm.run(PROMPT)
        np.testing.assert_array_equal(rt.logits, lt.logits)
        mr, ml = hf_eng.mlp_neurons(rm, rt, 1, 3, include=(5,)), LocalEngine().mlp_neurons(lm, lt, 1, 3, include=(5,))
        np.testing.assert_array_equal(mr.writes, ml.writes)
        assert mr.activations[5] == ml.activations[5] == 0.0
    finally:
        rm.clear_neuron_gates()
        lm.clear_neuron_gates()


def test_expert_neurons_over_the_wire_equal_in_process(hf_eng, hf_dir):
    """Inside a Qwen3-MoE layer's chosen experts through the server: the same experts, weights, activations, write
    sizes and direct effects (and candidate) as in-process, bit for bit; a dense-layer refusal crosses as one."""
    from engine import CaptureError

    rm, lm = _pair(hf_eng, hf_dir, "qwen3_moe")
    rt, lt = rm.run(PROMPT), lm.run(PROMPT)
    local = LocalEngine()
    for layer, position, token in ((1, 13, None), (0, 19, 7)):
        r = hf_eng.expert_neurons(rm, rt, layer, position, 4, token)
        lo = local.expert_neurons(lm, lt, layer, position, 4, token)
        assert type(r).__name__ == "ExpertsInside" and r.token_id == lo.token_id and r.token == lo.token
        assert (r.layer, r.position, r.note, r.mlp_effect, r.error) == (lo.layer, lo.position, lo.note, lo.mlp_effect,
                                                                        lo.error)
        np.testing.assert_array_equal(r.block_output, lo.block_output)
        assert len(r.experts) == len(lo.experts) == 2
        for a, b in zip(r.experts, lo.experts):
            assert (a.expert, a.weight, a.top, a.effect, a.bias_effect) == (b.expert, b.weight, b.top, b.effect,
                                                                            b.bias_effect)
            for f in ("activations", "write_norms", "output", "effects"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    dense = hf_eng.load_model(str(hf_dir / "lfm2"), device="cpu")  # no experts anywhere
    with pytest.raises(CaptureError, match="not a mixture-of-experts layer"):
        hf_eng.expert_neurons(dense, dense.run(PROMPT), 0, 3)


@pytest.mark.parametrize("name", ["qwen3_moe", "lfm2"])
def test_patching_over_the_wire_equals_in_process(hf_eng, hf_dir, name):
    """Activation patching on a transformers-backend model runs on the server and answers as in-process: a patch
    (several components, the trace mirrored), the sweep (a hybrid's layers without attention nan) and a refusal."""
    from engine import CaptureError

    rm, lm = _pair(hf_eng, hf_dir, name)
    local = LocalEngine()
    clean, corrupt = PROMPT[:14], [40, 41, 42, *PROMPT[4:14]]
    comp = "L1.H2, L1.attn" if name == "qwen3_moe" else "L1.H2, L2.MLP"
    r = hf_eng.patch(rm, clean, corrupt, comp, split=5)
    loc = local.patch(lm, clean, corrupt, comp, split=5)
    assert r.pairs == loc.pairs and r.label == loc.label and r.note == loc.note
    np.testing.assert_array_equal(r.after_logits, loc.after_logits)
    assert np.abs(loc.after_logits - loc.before_logits).max() > 0.01
    assert r.trace is not None and r.trace.token_ids == loc.trace.token_ids
    rs, ls = hf_eng.patch_sweep(rm, clean, corrupt, 40, 41), local.patch_sweep(lm, clean, corrupt, 40, 41)
    np.testing.assert_array_equal(rs.patched, ls.patched)
    assert rs.note == ls.note and np.isfinite(ls.patched[1]).all()
    bad = "L1.N3" if name == "qwen3_moe" else "L0.attn"
    with pytest.raises(CaptureError) as remote_err:
        hf_eng.patch(rm, clean, corrupt, bad)
    with pytest.raises(CaptureError) as local_err:
        local.patch(lm, clean, corrupt, bad)
    assert str(remote_err.value) == str(local_err.value)
