"""Inside the MLP and patching over the wire equal the in-process engine: neuron gates (set, cleared, recomputed,
carried through a session file and a reconnect), engine.explain.mlp_neurons / residual_stream, one patch and
the layer x head sweep (its progress and its cancel reach the server). The server runs the same code on the
same weights and CPU thread count, so values are compared exactly."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from engine import Session, load_model
from engine.errors import CaptureError
from engine.local import LocalEngine
from engine.remote import connect
from tests.remote.test_parity import assert_same_trace, same_threads  # noqa: F401 - an autouse fixture

PROMPT = "In the beginning God created the heaven"
OTHER = "And the earth was without form and void"


def assert_same_records(remote, local) -> None:
    """Two engine records (dataclasses) field by field: arrays exactly, nested records recursively."""
    assert type(remote) is type(local)
    for f in dataclasses.fields(local):
        r, loc = getattr(remote, f.name), getattr(local, f.name)
        if f.name == "trace":
            continue
        if dataclasses.is_dataclass(loc):
            assert_same_records(r, loc)
        elif isinstance(loc, np.ndarray):
            np.testing.assert_array_equal(r, loc, err_msg=f.name)
        elif isinstance(loc, tuple) and loc and dataclasses.is_dataclass(loc[0]):
            assert len(r) == len(loc)
            for a, b in zip(r, loc):
                assert_same_records(a, b)
        else:
            assert r == loc or (isinstance(loc, float) and np.isnan(loc) and np.isnan(r)), f.name


@pytest.fixture(scope="module")
def pair(eng):
    """A remote and an in-process tiny-llama (gated MLP) with a session each, one step taken."""
    rm, lm = eng.load_model("tiny-llama"), load_model("tiny-llama", device="cpu")
    return rm, lm


def test_neuron_gates_recompute_on_the_server_and_clear_with_the_head_gates(eng, pair):
    rm, lm = pair
    rs, ls = eng.Session(rm, PROMPT), Session(lm, PROMPT)
    rs.step(), ls.step()
    try:
        for m in (rm, lm):
            m.set_neuron_gate(1, 5, 0.0)
            m.set_neuron_gate(0, 7, 0.5)
            m.set_head_gate("self", 1, 2, 0.0)
        assert rm.neuron_gates() == lm.neuron_gates() == {"decoder.1.mlp": {5: 0.0}, "decoder.0.mlp": {7: 0.5}}
        assert_same_trace(rs.trace, ls.trace)
        assert rs.trace.neuron_gates == {"decoder.1.mlp": {5: 0.0}, "decoder.0.mlp": {7: 0.5}}
        rs.step(), ls.step()
        assert_same_trace(rs.trace, ls.trace)
        rm.clear_neuron_gates(), lm.clear_neuron_gates()
        assert rm.neuron_gates() == {} and rm.gates() == lm.gates() != {}
        assert_same_trace(rs.trace, ls.trace)
        rm.set_neuron_gate(1, 5, 0.0), lm.set_neuron_gate(1, 5, 0.0)
        rm.clear_gates(), lm.clear_gates()  # both kinds
        assert rm.gates() == {} and rm.neuron_gates() == {}
        assert_same_trace(rs.trace, ls.trace)
        with pytest.raises(CaptureError, match="neuron 100000 does not exist"):
            rm.set_neuron_gate(1, 100000, 0.0)
    finally:
        rm.clear_gates(), lm.clear_gates()


def test_mlp_neurons_and_the_residual_stream_match(eng, pair):
    rm, lm = pair
    rs, ls = eng.Session(rm, PROMPT), Session(lm, PROMPT)
    rs.step(), ls.step()
    local = LocalEngine()
    for layer, position, token, rank_by in ((1, 4, None, "write"), (0, 2, 40, "abs_write"), (1, 6, None, "activation")):
        r = eng.mlp_neurons(rm, rs.trace, layer, position, token, 6, rank_by, include=(3,))
        lo = local.mlp_neurons(lm, ls.trace, layer, position, token, 6, rank_by, include=(3,))
        assert_same_records(r, lo)
        assert 3 in [n.index for n in r.neurons] and r.residual is not None
    assert_same_records(eng.residual_stream(rm, rs.trace, 3), local.residual_stream(lm, ls.trace, 3))
    with pytest.raises(CaptureError, match="position 99 is outside"):
        eng.mlp_neurons(rm, rs.trace, 1, 99)


def test_mlp_neurons_of_an_encoder_match(eng):
    rm, lm = eng.load_model("tiny-bert"), load_model("tiny-bert", device="cpu")
    text = "In the [MASK] God created the [MASK]"
    r = eng.mlp_neurons(rm, rm.run(text), 1, 2, k=4)
    lo = LocalEngine().mlp_neurons(lm, lm.run(text), 1, 2, k=4)
    assert_same_records(r, lo)
    assert r.rank_by == "activation" and np.isnan(r.mlp_effect)


def test_patch_matches_with_and_without_its_trace(eng, pair):
    rm, lm = pair
    local = LocalEngine()
    rc, lc = rm.run(PROMPT), lm.run(PROMPT)
    rx, lx = rm.run(OTHER), lm.run(OTHER)
    for component in ("L1.H2", "L0.MLP, L1.N5", "L1.resid"):
        r = eng.patch(rm, rc, rx, component, capture=False)
        lo = local.patch(lm, lc, lx, component, capture=False)
        assert_same_records(r, lo)
        assert r.trace is None and r.label == lo.label and r.total_variation == lo.total_variation
    r = eng.patch(rm, rc, OTHER, "L1.H0", align="start")  # text on one side, a captured patched run back
    lo = local.patch(lm, lc, OTHER, "L1.H0", align="start")
    assert_same_records(r, lo)
    assert_same_trace(r.trace, lo.trace)
    assert eng.logit_lens(rm, r.trace, 2, top=3)["top_ids"].tolist() == local.logit_lens(lm, lo.trace, 2, top=3)["top_ids"].tolist()
    with pytest.raises(CaptureError, match="is not a component"):
        eng.patch(rm, rc, rx, "L1.Q3")


def test_patch_sweep_matches_reports_progress_and_cancels_on_the_server(eng, pair):
    rm, lm = pair
    local = LocalEngine()
    rc, lc = rm.run(PROMPT), lm.run(PROMPT)
    rx, lx = rm.run(OTHER), lm.run(OTHER)
    seen: list[tuple[int, int]] = []
    r = eng.patch_sweep(rm, rc, rx, 40, 41, progress=lambda d, t: seen.append((d, t)), batch=2)
    lo = local.patch_sweep(lm, lc, lx, 40, 41, batch=2)
    assert_same_records(r, lo)
    assert not r.cancelled and not np.isnan(r.patched).any()
    total = rm.n_layers * -(-rm.n_heads // 2)
    assert seen == [(i, total) for i in range(1, total + 1)]

    cancel = threading.Event()

    def stop_after_first(done: int, total: int) -> None:
        cancel.set()  # from the link's thread, while the server sweeps

    # 32 forwards of 300 positions, one head each (seconds): the cancel arrives long before the last
    long_c, long_x = list(range(10, 310)), list(range(20, 320))
    r = eng.patch_sweep(rm, long_c, long_x, 40, 41, progress=stop_after_first, cancel=cancel, batch=1)
    assert r.cancelled and np.isnan(r.patched).any() and not np.isnan(r.patched[0, 0])
    done = int((~np.isnan(r.patched)).sum())
    counted: list[int] = []
    part = local.patch_sweep(lm, long_c, long_x, 40, 41, batch=1, progress=lambda d, t: counted.append(d),
                             cancel=lambda: len(counted) >= done)  # the same forwards here
    np.testing.assert_array_equal(r.patched, part.patched)

    early = eng.patch_sweep(rm, rc, rx, 40, None, cancel=cancel)  # cancelled before it was sent
    assert early.cancelled and np.isnan(early.patched).all()
    assert early.clean_metric == local.patch_sweep(lm, lc, lx, 40, None, cancel=cancel).clean_metric


def test_a_trace_from_elsewhere_is_refused(eng, pair):
    rm, lm = pair
    with pytest.raises(Exception, match="made in this process"):
        eng.patch(rm, lm.run(PROMPT), OTHER, "L1.H0")


def test_neuron_gates_go_into_session_files_and_through_a_reconnect(server, tmp_path):
    from engine.session_file import read_session_file, save_session

    eng = connect(server.address, token=server.token)
    try:
        model = eng.load_model("tiny-llama")
        lm = load_model("tiny-llama", device="cpu")
        model.set_neuron_gate(1, 5, 0.0), lm.set_neuron_gate(1, 5, 0.0)
        model.set_head_gate("self", 0, 1, 0.0), lm.set_head_gate("self", 0, 1, 0.0)
        session, ls = eng.Session(model, PROMPT), Session(lm, PROMPT)
        session.step(), ls.step()
        path = save_session(session, tmp_path / "s.aisession")
        assert read_session_file(path)["neuron_gates"] == {"decoder.1.mlp": {"5": 0.0}}
        model.clear_gates()
        restored = eng.restore_session(read_session_file(path), model)
        assert model.neuron_gates() == {"decoder.1.mlp": {5: 0.0}} and set(model.gates()) == {"decoder.0.attn"}
        assert_same_trace(restored.trace, ls.trace)
        eng.reconnect()  # the server drops what this client opened; the client puts it back, gates and all
        assert model.neuron_gates() == {"decoder.1.mlp": {5: 0.0}}
        restored.step(), ls.step()
        assert_same_trace(restored.trace, ls.trace)
    finally:
        eng.close()


def test_a_session_file_that_does_not_fit_leaves_the_gates_as_they_were(eng, pair, tmp_path):
    from engine.session_file import read_session_file, save_session

    rm, _ = pair
    try:
        rm.set_head_gate("self", 0, 3, 0.0)
        rm.set_neuron_gate(0, 9, 0.0)
        path = save_session(eng.Session(rm, PROMPT), tmp_path / "s.aisession")
        state = read_session_file(path)
        state["neuron_gates"] = {"decoder.1.mlp": {"99999": 0.0}}
        rm.clear_gates()
        rm.set_head_gate("self", 1, 1, 0.5)
        before = (rm.gates(), rm.neuron_gates())
        with pytest.raises(CaptureError, match="neuron 99999 does not exist"):
            eng.restore_session(state, rm)
        assert (rm.gates(), rm.neuron_gates()) == before
        assert rm.run(PROMPT).gates == before[0]  # and so are the server's
    finally:
        rm.clear_gates()
