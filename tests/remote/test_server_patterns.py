"""Patterns kept on the server (past the mirror limit): the client's Trace asks for what it draws, and every
answer equals the in-process one exactly (the server runs the same Trace code on the same numbers). What
crosses at prefill is counted at the connection layer: stubs and tokens, never the queries and keys, so it
does not grow with the model's width and grows with the prompt only by its tokens; a step costs the same
at 20 and at 600 tokens. Answers are cached: the same tile twice crosses once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine import Session, load_model
from engine.analysis import head_statistics, rollout
from engine.local import LocalEngine
from engine.remote import connect
from engine.remote.remote_patterns import ServerBlock
from engine.trace import capture_name

from .conftest import Server
from .test_parity import _drive, assert_same_trace


@pytest.fixture(scope="module")
def far(server):
    """A client that never mirrors a trace's record (mirror limit 0): every pattern stays on the server."""
    e = connect(server.address, token=server.token, mirror_limit=0)
    yield e
    e.close()


@pytest.fixture(autouse=True)
def same_threads(far):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(far.info["torch_threads"])
    yield
    torch.set_num_threads(before)


def assert_same_everywhere(rt, lt) -> None:
    """assert_same_trace, plus pooled thumbnails, tiles of every head, max overviews, sink shares and rollout."""
    assert rt.patterns_on_server
    assert_same_trace(rt, lt)
    for kind in lt.kinds:
        for layer in range(lt.n_layers[kind]):
            if capture_name(kind, layer) in lt.no_attention:
                continue
            _h, nq, nk = lt.attention_shape(kind, layer)
            for args in ((0, nq, nk, 1), (1, nq, nk, 2), (nq - 1, nq, nk, 4)):
                np.testing.assert_array_equal(rt.attention_pooled(kind, layer, *args), lt.attention_pooled(kind, layer, *args))
            np.testing.assert_array_equal(rt.attention_tiles(kind, layer, 0, nq, 0, nk), lt.attention_tiles(kind, layer, 0, nq, 0, nk))
            np.testing.assert_array_equal(rt.attention_head(kind, layer, 0), lt.attention_head(kind, layer, 0))
            np.testing.assert_array_equal(rt.attention_overview(kind, layer, heads=[1, 0], rows=2, cols=3, q_range=(1, nq)),
                                          lt.attention_overview(kind, layer, heads=[1, 0], rows=2, cols=3, q_range=(1, nq)))
            share, local_share = rt.sink_share(kind, layer), lt.sink_share(kind, layer)
            assert (share is None) == (local_share is None)
            if share is not None:
                np.testing.assert_array_equal(share, local_share)
        if kind != "cross":
            np.testing.assert_array_equal(rollout(rt, kind), rollout(lt, kind))
    for layer in lt.moe_layers:
        r, lr = rt.routing(layer), lt.routing(layer)
        np.testing.assert_array_equal(r.experts, lr.experts)
        np.testing.assert_array_equal(r.weights, lr.weights)
    assert rt.moe_layers == lt.moe_layers


def assert_same_stats(remote: list, local: list) -> None:
    """Head statistics equal, NaN (no induction score) equal to NaN."""
    np.testing.assert_equal([dataclasses.astuple(s) for s in remote], [dataclasses.astuple(s) for s in local])


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-bert", "tiny-seq2seq"])
def test_every_answer_matches_in_process_when_patterns_stay_on_the_server(far, name):
    rm, lm = far.load_model(name, device="cpu"), load_model(name, device="cpu")
    rs, ls = _drive(far, rm, name), _drive(LocalEngine(), lm, name)
    assert rs.ids == ls.ids and rs.history == ls.history
    rt = rs.trace
    assert all(isinstance(b, ServerBlock) for bs in rt.blocks.values() for b in bs) and rt.keys == {}
    assert_same_everywhere(rt, ls.trace)
    assert_same_stats(far.head_statistics(rm, rt), LocalEngine().head_statistics(lm, ls.trace))


def test_rebuild_mode_gemma2_with_windows_soft_caps_and_gqa(far):
    folder = str(far.model_folders()[0])
    rm = far.load_model(folder, capture_mode="rebuild")
    lm = load_model(folder, device="cpu")
    lm.capture_mode = "rebuild"
    prompt = "In the beginning God created the heaven and the earth. " * 2
    rs, ls = far.Session(rm, prompt), Session(lm, prompt)
    for _ in range(3):
        rs.step(), ls.step()
    rs.back(), ls.back()
    rs.step(5), ls.step(5)
    assert {b.what for bs in rs.trace.blocks.values() for b in bs} == {"query"}
    assert_same_everywhere(rs.trace, ls.trace)
    assert_same_stats(far.head_statistics(rm, rs.trace), head_statistics(lm, ls.trace))


def test_a_gate_change_recomputes_and_old_rows_are_not_reused(far):
    rm, lm = far.load_model("tiny-llama", capture_mode="rebuild"), load_model("tiny-llama", device="cpu")
    lm.capture_mode = "rebuild"
    rs, ls = far.Session(rm, "In the beginning God"), Session(lm, "In the beginning God")
    rs.step(), ls.step()
    before = rs.trace.attention_tile("self", 2, 1, 0, 6, 0, 6)
    rm.set_head_gate("self", 0, 1, 0.0), lm.set_head_gate("self", 0, 1, 0.0)
    ls.recompute()
    rt = rs.trace  # recomputed on the server: new blocks, new serials
    after = rt.attention_tile("self", 2, 1, 0, 6, 0, 6)
    np.testing.assert_array_equal(after, ls.trace.attention_tile("self", 2, 1, 0, 6, 0, 6))
    assert not np.array_equal(before, after)


def test_the_same_tile_crosses_once_and_a_step_reuses_what_was_fetched(far):
    rm = far.load_model("tiny-llama", capture_mode="rebuild")
    s = far.Session(rm, list(range(10, 90)))
    t = s.trace
    conn = far.conn
    first = t.attention_overview("self", 1, rows=16, cols=16)
    got = conn.bytes_received
    again = t.attention_overview("self", 1, rows=16, cols=16)
    assert conn.bytes_received == got and again is first
    tile = t.attention_tile("self", 0, 2, 10, 40, 0, 40)
    s.step()
    t2 = s.trace
    got = conn.bytes_received
    np.testing.assert_array_equal(t2.attention_tile("self", 0, 2, 10, 40, 0, 40), tile)  # rows 10..40 did not change
    assert conn.bytes_received == got
    # the head grid's new row after a step: every layer of the kind in one request
    n = len(t2)
    sent = conn.bytes_sent
    t2.attention_pooled("self", 0, n - 1, n, n, 2)
    one_request = conn.bytes_sent - sent
    for layer in range(1, t2.n_layers["self"]):
        t2.attention_pooled("self", layer, n - 1, n, n, 2)
    assert conn.bytes_sent - sent == one_request


def _prefill_bytes(eng, model, n: int) -> int:
    before = eng.conn.bytes_received
    eng.Session(model, list(range(10, 10 + n)))
    return eng.conn.bytes_received - before


def test_prefill_bytes_do_not_grow_with_the_record(far, eng):
    """Counted at the connection: at prefill only stubs (a few numbers per layer) and the tokens cross when the
    patterns stay on the server. The prompt adds its tokens (an id, a display string, a flag: < 40 bytes each),
    never its queries and keys; the full mirror sends ~0.6 kB a token on this small model (far more on a 1B one)."""
    far.prefetch_logits = eng.prefetch_logits = False  # no vocabulary-wide row with the answer: count the trace
    try:
        far_model = far.load_model("tiny-llama", capture_mode="rebuild")
        near_model = eng.load_model("tiny-llama", capture_mode="rebuild")
        small, big = _prefill_bytes(far, far_model, 32), _prefill_bytes(far, far_model, 512)
        assert small < 8 * 1024, small
        assert big - small < 40 * (512 - 32), (small, big)
        mirrored = _prefill_bytes(eng, near_model, 512)
        assert mirrored > 10 * big, (mirrored, big)
        # a step costs the same whatever the context (the position's digits aside)
        costs = []
        for n in (20, 600):
            session = far.Session(far_model, list(range(10, 10 + n)))
            before = far.conn.bytes_sent + far.conn.bytes_received
            session.step()
            costs.append(far.conn.bytes_sent + far.conn.bytes_received - before)
        assert abs(costs[1] - costs[0]) < 64, costs
    finally:
        far.prefetch_logits = eng.prefetch_logits = True


def test_the_limit_switches_a_mirrored_session_when_a_delta_passes_it(server):
    """A session below the limit is mirrored (browsable without the server); one whose prefill passes it keeps
    its patterns on the server, with the same answers."""
    e = connect(server.address, token=server.token, mirror_limit=200_000)
    try:
        model = e.load_model("tiny-llama", capture_mode="rebuild")
        short = e.Session(model, list(range(10, 30)))
        assert not short.trace.patterns_on_server and short.trace.keys
        long = e.Session(model, list(range(10, 1010)))
        assert long.trace.patterns_on_server
        lm = load_model("tiny-llama", device="cpu")
        lm.capture_mode = "rebuild"
        lt = Session(lm, list(range(10, 1010))).trace
        np.testing.assert_array_equal(long.trace.attention_overview("self", 3, rows=64, cols=64),
                                      lt.attention_overview("self", 3, rows=64, cols=64))
    finally:
        e.close()


def test_a_dead_server_keeps_what_was_fetched_and_says_the_rest_went_away(tmp_path):
    from engine.remote import EngineGone

    srv = Server(tmp_path, extra=("--mirror-limit", "0"))
    try:
        e = connect(srv.address, token=srv.token)
        assert e.info["mirror_limit"] == 0
        s = e.Session(e.load_model("tiny-gpt"), "In the beginning God created")
        t = s.trace
        assert t.patterns_on_server
        shown = t.attention_tile("self", 1, 0, 0, len(t), 0, len(t))
        srv.proc.kill()
        srv.proc.wait(10)
        np.testing.assert_array_equal(t.attention_tile("self", 1, 0, 0, len(t), 0, len(t)), shown)
        with pytest.raises(EngineGone, match="went away"):
            t.attention_tile("self", 2, 0, 0, len(t), 0, len(t))
        e.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("arch", ["gpt_oss", "qwen3_moe"])
def test_transformers_backend_sinks_and_routing_stay_on_the_server(tmp_path_factory, arch):
    pytest.importorskip("transformers")
    from tests import hf_factories

    root = tmp_path_factory.mktemp("hf")
    hf_factories.ARCHITECTURES[arch](root / arch)
    srv = Server(tmp_path_factory.mktemp("hf-server"), models_dirs=(root,), extra=("--mirror-limit", "0"))
    try:
        e = connect(srv.address, token=srv.token)
        import torch

        torch.set_num_threads(e.info["torch_threads"])
        prompt = list(range(5, 25))
        rm, lm = e.load_model(str(root / arch)), load_model(str(root / arch), device="cpu")
        rs, ls = e.Session(rm, prompt), Session(lm, prompt)
        rs.step(), ls.step()
        rt = rs.trace
        assert any(b.what == "routing" for bs in rt.blocks.values() for b in bs)
        assert_same_everywhere(rt, ls.trace)
        e.close()
    finally:
        srv.stop()


def test_the_newest_row_a_view_reads_comes_with_the_next_step(far):
    """A view that reads the newest row in the GUI thread (head view, token strip) finds the next one cached:
    the client asked for it in the thread that stepped. A view that stops asking stops costing."""
    s = far.Session(far.load_model("tiny-llama", capture_mode="rebuild"), list(range(10, 60)))
    conn = far.conn
    t = s.trace
    t.attention_row("self", 1, len(t) - 1)
    t.attention_tile("self", 2, 3, len(t) - 1, len(t), 0, len(t))
    t.attention_pooled("self", 0, len(t) - 1, len(t), len(t), 1)  # the head grid's newest row
    t.attention_overview("self", 3, heads=[2], rows=16, cols=16)  # a view fitted to the whole pattern
    ops: list[str] = []
    real_call = conn.call
    conn.call = lambda op, *a, **kw: ops.append(op) or real_call(op, *a, **kw)
    try:
        s.step()
    finally:
        del conn.call
    assert ops == ["session"]  # the four came with the step's answer
    t = s.trace
    before = conn.bytes_sent
    for layer in range(t.n_layers["self"]):
        t.attention_pooled("self", layer, len(t) - 1, len(t), len(t), 1)
    np.testing.assert_array_equal(t.attention_overview("self", 3, heads=[2], rows=16, cols=16),
                                  t.attention_overview("self", 3, heads=[2], rows=16, cols=16))
    row = t.attention_row("self", 1, len(t) - 1)
    t.attention_tile("self", 2, 3, len(t) - 1, len(t), 0, len(t))
    assert conn.bytes_sent == before
    lm = load_model("tiny-llama", device="cpu")
    lm.capture_mode = "rebuild"
    ls = Session(lm, list(range(10, 60)))
    ls.step()
    np.testing.assert_array_equal(row, ls.trace.attention_row("self", 1, len(t) - 1))
    n = len(t)
    for layer in range(t.n_layers["self"]):  # what came with the step is what the trace answers in-process
        np.testing.assert_array_equal(t.attention_pooled("self", layer, n - 1, n, n, 1),
                                      ls.trace.attention_pooled("self", layer, n - 1, n, n, 1))
    np.testing.assert_array_equal(t.attention_overview("self", 3, heads=[2], rows=16, cols=16),
                                  ls.trace.attention_overview("self", 3, heads=[2], rows=16, cols=16))
    assert conn.bytes_sent == before
    s.step()  # the rows of this trace are fetched, though nobody reads them
    s.step()  # nobody asked of the last trace: nothing fetched
    t = s.trace
    before = conn.bytes_sent
    t.attention_row("self", 1, len(t) - 1)
    assert conn.bytes_sent > before


def test_a_recompute_past_the_limit_switches_a_mirrored_session(server):
    """A session mirrored at its prefill whose recompute (a head gate) would resend more than the limit switches to
    keeping its patterns on the server: the client drops its copy and asks, with the same answers."""
    probe = connect(server.address, token=server.token, mirror_limit=2**40)
    try:
        model = probe.load_model("tiny-llama", capture_mode="rebuild")
        size = probe.Session(model, list(range(10, 40))).trace.nbytes  # the 30-token record
    finally:
        probe.close()
    e = connect(server.address, token=server.token, mirror_limit=size + size // 4)
    try:
        rm = e.load_model("tiny-llama", capture_mode="rebuild")
        lm = load_model("tiny-llama", device="cpu")
        lm.capture_mode = "rebuild"
        rs, ls = e.Session(rm, list(range(10, 40))), Session(lm, list(range(10, 40)))
        for _ in range(12):
            rs.step(), ls.step()
        assert not rs.trace.patterns_on_server and rs.trace.keys
        rm.set_head_gate("self", 1, 0, 0.0), lm.set_head_gate("self", 1, 0, 0.0)
        ls.recompute()
        rt = rs.trace
        assert rt.patterns_on_server and rt.keys == {}
        assert_same_everywhere(rt, ls.trace)
        rs.step(), ls.step()
        assert_same_everywhere(rs.trace, ls.trace)
    finally:
        e.close()


def test_read_now_answers_what_is_here_and_fetches_the_rest_in_the_background(far):
    """Trace.read_now: an in-process trace answers at once; a trace whose patterns are on the server answers
    PENDING for what it would have to ask (no request from this thread), fetches it in a background thread, calls
    on_ready, and then answers at once with what the plain read gives."""
    import threading

    from engine import PENDING

    lm = load_model("tiny-gpt", device="cpu")
    lt = Session(lm, "In the beginning God created").trace
    assert lt.read_now("row", lambda t: t.attention_row("self", 1, 3), lambda: None).shape[1] == len(lt)

    rm = far.load_model("tiny-gpt", device="cpu")
    rt = far.Session(rm, "In the beginning God created").trace
    conn, asked_here = far.conn, []
    real_call = conn.call

    def call(op, *args, **kw):  # noqa: ANN001, ANN202
        if threading.current_thread() is threading.main_thread():
            asked_here.append(op)
        return real_call(op, *args, **kw)

    landed = threading.Event()
    conn.call = call
    try:
        read = lambda t: t.attention_row("self", 1, 3)  # noqa: E731
        assert rt.read_now("row", read, landed.set) is PENDING
        assert rt.read_now("row", read, landed.set) is PENDING or landed.is_set()  # asked once while on its way
        assert landed.wait(60)
        got = rt.read_now("row", read, landed.set)
        assert asked_here == []
    finally:
        conn.call = real_call
    np.testing.assert_allclose(got, lt.attention_row("self", 1, 3), rtol=1e-5, atol=1e-6)
