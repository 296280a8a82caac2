"""The worker's jobs that reach the model (issue 30's fit_prompt, keep_session and ungated_logits, the head
grid's statistics, the MLP and patch jobs) give with a remote engine what they give in-process: each job is run
on a worker stand-in holding a remote engine, then one holding the engine in this process."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from engine import Session, load_model
from engine.local import LocalEngine
from gui.core import jobs, mlp_jobs
from tests.remote.test_parity import same_threads  # noqa: F401 - an autouse fixture

PROMPT = "In the beginning God created the heaven"


def _workers(eng):
    """(remote, in-process) worker stand-ins (engine, model, session, cache, refused) on tiny-llama, one step taken."""
    rm, lm = eng.load_model("tiny-llama"), load_model("tiny-llama", device="cpu")
    rs, ls = eng.Session(rm, PROMPT), Session(lm, PROMPT)
    rs.step(), ls.step()
    remote = SimpleNamespace(engine=eng, model=rm, session=rs, cache={}, refused="stale prompt")
    local = SimpleNamespace(engine=LocalEngine(), model=lm, session=ls, cache={}, refused="stale prompt")
    return remote, local


def test_fit_prompt_and_keep_session(eng):
    remote, local = _workers(eng)
    long = "In the beginning God created the heaven and the earth. " * 120  # past tiny-llama's 1024 positions
    r, lo = jobs.fit_prompt(long, None)(remote), jobs.fit_prompt(long, None)(local)
    assert r == lo and r["prompt"]["tokens"] > r["max"] >= r["prompt"]["keep"]
    assert jobs.fit_prompt(PROMPT, None)(remote) == {"max": remote.model.max_positions}
    assert jobs.keep_session()(remote) == {"session": True} and remote.refused is None


def test_ungated_logits_leave_the_neuron_gates_and_put_the_head_gates_back(eng):
    remote, local = _workers(eng)
    for w in (remote, local):
        w.model.set_head_gate("self", 1, 2, 0.0)
        w.model.set_neuron_gate(0, 3, 0.0)
    rt, lt = remote.session.trace, local.session.trace
    pos = len(lt) - 1
    r, lo = jobs.ungated_logits(rt, pos)(remote), jobs.ungated_logits(lt, pos)(local)
    np.testing.assert_array_equal(r["logits"], lo["logits"])
    assert np.abs(r["logits"] - rt.logits_at(pos)).max() > 1e-5  # the head ablation did move them
    assert remote.model.gates() == local.model.gates() and remote.model.neuron_gates() == {"decoder.0.mlp": {3: 0.0}}
    assert remote.session.trace.token_ids == rt.token_ids
    np.testing.assert_array_equal(remote.session.trace.logits_at(pos), rt.logits_at(pos))


def test_head_statistics_follow_the_neuron_gates(eng):
    remote, local = _workers(eng)
    r = jobs.head_statistics(remote.session.trace)(remote)
    assert r["stats"] == jobs.head_statistics(local.session.trace)(local)["stats"]
    cached = remote.cache["induction"]
    remote.model.set_neuron_gate(1, 4, 0.0)
    jobs.head_statistics(remote.session.trace)(remote)
    assert remote.cache["induction"] is not cached  # the induction scores depend on the neuron gates too


def test_mlp_and_patch_jobs(eng):
    remote, local = _workers(eng)
    rt, lt = remote.session.trace, local.session.trace
    r = mlp_jobs.mlp_neurons(rt, 1, 3, None, "write", 5, include=(2,))(remote)
    lo = mlp_jobs.mlp_neurons(lt, 1, 3, None, "write", 5, include=(2,))(local)
    assert [n.index for n in r["neurons"].neurons] == [n.index for n in lo["neurons"].neurons]
    np.testing.assert_array_equal(r["neurons"].writes, lo["neurons"].writes)
    assert "error" in mlp_jobs.mlp_neurons(rt, 1, 3, None, "nonsense", 5)(remote)
    got = mlp_jobs.set_neuron_gates([(1, 2, 0.0)])(remote)
    assert got.neuron_gates == {"decoder.1.mlp": {2: 0.0}}
    got = mlp_jobs.set_neuron_gates([], clear=True)(remote)
    assert got.neuron_gates == {}
    p = mlp_jobs.patch(rt, "And the earth was without form", None, "L1.H0", "end")(remote)
    q = mlp_jobs.patch(lt, "And the earth was without form", None, "L1.H0", "end")(local)
    np.testing.assert_array_equal(p["patch"].after, q["patch"].after)
    assert "error" in mlp_jobs.patch(rt, "And the earth", None, "L9.H0", "end")(remote)
    seen = []
    s = mlp_jobs.patch_sweep(rt, "And the earth was without form", None, "self", 40, None, "end",
                             lambda d, t: seen.append(d), threading.Event())(remote)
    t = mlp_jobs.patch_sweep(lt, "And the earth was without form", None, "self", 40, None, "end",
                             lambda d, t: None, threading.Event())(local)
    np.testing.assert_array_equal(s["sweep"].patched, t["sweep"].patched)
    assert seen and seen[-1] == len(seen)
