"""Sampling checked by value: temperature, top-k, top-p and seeded draws against answers worked out here
with plain Python (a loop over sorted probabilities, math.exp), on logits set by hand so that each
setting visibly changes the outcome."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from engine import Session, load_model
from engine.sampling import SamplingError, SamplingSettings, choose, distribution
from tests.engine.values_models import LazyCheckpoints, checkpoint_root

# a distribution with structure: one clear favourite, a runner-up, a tail
LOGITS = np.array([3.0, 2.0, 1.0, 0.0, -1.0, -2.0], dtype=np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Only the checkpoints this module uses, built on first use (values_models.LazyCheckpoints)."""
    return LazyCheckpoints(checkpoint_root(tmp_path_factory, "ckpt"))


@pytest.fixture(scope="module")
def gpt(folders):
    return load_model(folders["gpt2"], device="cpu")


def softmax_by_hand(logits, temperature: float = 1.0) -> list[float]:
    z = [math.exp(float(v) / temperature) for v in logits]
    total = sum(z)
    return [v / total for v in z]


def filtered_by_hand(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> list[float]:
    """Temperature, then keep the k best, then the smallest set of the best whose mass reaches p, renormalised."""
    probs = softmax_by_hand(logits, temperature)
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept = ranked[:top_k] if top_k is not None else ranked
    mass = sum(probs[i] for i in kept)
    probs = [probs[i] / mass if i in kept else 0.0 for i in range(len(probs))]
    if top_p is not None:
        nucleus, total = [], 0.0
        for i in kept:
            nucleus.append(i)
            total += probs[i]
            if total >= top_p:
                break
        mass = sum(probs[i] for i in nucleus)
        probs = [probs[i] / mass if i in nucleus else 0.0 for i in range(len(probs))]
    return probs


def draws(logits, settings: SamplingSettings, n: int = 4000) -> np.ndarray:
    """Empirical frequency of each token over n positions (each position is its own seeded stream)."""
    counts = Counter(choose(logits, settings, position)[0] for position in range(n))
    return np.array([counts[i] / n for i in range(len(logits))])


@pytest.mark.parametrize("temperature", [0.25, 0.5, 1.0, 2.0, 5.0])
def test_temperature_scales_the_logits(temperature):
    np.testing.assert_allclose(distribution(LOGITS, temperature), softmax_by_hand(LOGITS, temperature), atol=1e-6)


def test_temperature_changes_the_distribution_a_lot():
    cold, warm, hot = (distribution(LOGITS, t) for t in (0.5, 1.0, 3.0))
    assert cold[0] == pytest.approx(1 / (1 + math.exp(-2) + math.exp(-4) + math.exp(-6) + math.exp(-8) + math.exp(-10)), abs=1e-6)
    assert cold[0] > warm[0] + 0.2 and warm[0] > hot[0] + 0.2
    assert hot[-1] > 10 * warm[-1]


def test_temperature_towards_zero_is_the_argmax():
    p = distribution(LOGITS, 1e-4)
    assert p[0] == pytest.approx(1.0) and p[1:].sum() == pytest.approx(0.0)
    np.testing.assert_array_equal(distribution(LOGITS[::-1].copy(), 0.0), [0, 0, 0, 0, 0, 1])


def test_defaults_and_dtypes():
    np.testing.assert_allclose(distribution(LOGITS), softmax_by_hand(LOGITS, 1.0), atol=1e-6)  # temperature 1
    assert distribution(LOGITS, 0.7).dtype == distribution(LOGITS, 0.0).dtype == np.float32
    # computed in float64 whatever the input: half-precision logits give the same answer
    np.testing.assert_allclose(distribution(LOGITS.astype(np.float16), 0.5), softmax_by_hand(LOGITS, 0.5), atol=1e-6)


def test_a_vanishing_temperature_does_not_overflow():
    with np.errstate(over="raise", invalid="raise"):  # the shift and division stay quiet even where errors are on
        p = distribution(LOGITS[::-1].copy(), 1e-308)
    np.testing.assert_array_equal(p, [0, 0, 0, 0, 0, 1])


@pytest.mark.parametrize("top_k", [1, 2, 3, 5])
@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_top_k_keeps_the_k_best_renormalised(top_k, temperature):
    expected = filtered_by_hand(LOGITS, temperature, top_k=top_k)
    got = distribution(LOGITS, temperature, top_k=top_k)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.count_nonzero(got) == top_k


# probabilities at temperature 1 are about 0.636, 0.234, 0.086, 0.032, 0.012, 0.004 (cumulative 0.636, 0.870,
# 0.956, 0.988, 0.996, 1): each p below sits well inside one step, so the size of the nucleus is unambiguous
@pytest.mark.parametrize("top_p, n_kept", [(0.3, 1), (0.62, 1), (0.65, 2), (0.8, 2), (0.9, 3), (0.95, 3), (0.97, 4),
                                           (0.99, 5), (0.999, 6)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, n_kept):
    expected = filtered_by_hand(LOGITS, 1.0, top_p=top_p)
    got = distribution(LOGITS, 1.0, top_p=top_p)
    assert np.count_nonzero(got) == n_kept == np.count_nonzero(expected)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    kept = sorted(softmax_by_hand(LOGITS), reverse=True)[:n_kept]
    assert sum(kept) >= top_p > sum(kept[:-1])  # reaches p, and one fewer would not


def test_top_p_of_one_keeps_every_token():
    # the cumulative sum reaches 1.0 (in float64) before the tail; top-p 1 still keeps the tail
    p = distribution(np.array([0.0, -40.0, -45.0]), top_p=1.0)
    assert np.all(p > 0) and p[1] == pytest.approx(math.exp(-40), rel=1e-4)


def test_top_p_breaks_ties_by_token_id():
    logits = np.random.default_rng(0).integers(0, 3, size=64).astype(np.float32)  # many tokens share each value
    best = np.flatnonzero(logits == 2)
    assert len(best) > 12
    p_best = softmax_by_hand(logits)[best[0]]
    got = distribution(logits, 1.0, top_p=9.5 * p_best)  # ten of the tied best tokens are needed
    np.testing.assert_allclose(got, filtered_by_hand(logits, 1.0, top_p=9.5 * p_best), atol=1e-6)
    assert list(np.flatnonzero(got)) == list(best[:10])  # the ten with the lowest ids


def test_top_p_follows_the_temperature():
    # at temperature 1 the favourite alone reaches 0.6; at 3 it holds only ~0.30, so more tokens are needed
    assert np.count_nonzero(distribution(LOGITS, 1.0, top_p=0.6)) == 1
    hot = distribution(LOGITS, 3.0, top_p=0.6)
    np.testing.assert_allclose(hot, filtered_by_hand(LOGITS, 3.0, top_p=0.6), atol=1e-6)
    assert np.count_nonzero(hot) == 3


def test_top_k_then_top_p():
    for t, k, p in ((1.0, 3, 0.9), (2.0, 4, 0.7), (0.5, 2, 0.99), (4.0, 5, 0.5)):
        np.testing.assert_allclose(distribution(LOGITS, t, k, p), filtered_by_hand(LOGITS, t, k, p), atol=1e-6)


def test_top_p_with_shuffled_logits_keeps_the_best_not_the_first():
    order = np.array([4, 0, 5, 2, 1, 3])
    shuffled = LOGITS[order]
    got = distribution(shuffled, 1.0, top_p=0.8)
    expected = filtered_by_hand(shuffled, 1.0, top_p=0.8)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert set(np.flatnonzero(got)) == {1, 4}  # where logits 3 and 2 went


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_sampled_tokens_follow_the_tempered_distribution(temperature):
    settings = SamplingSettings(temperature=temperature, greedy=False, seed=7)
    freq = draws(LOGITS, settings)
    expected = np.array(softmax_by_hand(LOGITS, temperature))
    assert np.abs(freq - expected).max() < 0.03, (freq, expected)
    if temperature != 1.0:  # and clearly not the distribution at temperature 1
        assert np.abs(freq - np.array(softmax_by_hand(LOGITS, 1.0))).max() > 0.1


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    for settings, expected in (
        (SamplingSettings(temperature=2.0, top_k=3, greedy=False, seed=1), filtered_by_hand(LOGITS, 2.0, top_k=3)),
        (SamplingSettings(temperature=1.0, top_p=0.9, greedy=False, seed=2), filtered_by_hand(LOGITS, 1.0, top_p=0.9)),
        (SamplingSettings(temperature=3.0, top_k=4, top_p=0.6, greedy=False, seed=3), filtered_by_hand(LOGITS, 3.0, 4, 0.6)),
    ):
        freq = draws(LOGITS, settings)
        expected = np.array(expected)
        assert np.all(freq[expected == 0] == 0)
        assert np.abs(freq - expected).max() < 0.03, (settings, freq, expected)


def test_greedy_ignores_the_temperature_but_reports_tempered_probabilities():
    shuffled = LOGITS[[3, 1, 0, 2, 5, 4]]
    for t in (0.3, 1.0, 4.0):
        token, probs = choose(shuffled, SamplingSettings(temperature=t, greedy=True), 0)
        assert token == 2
        np.testing.assert_allclose(probs, softmax_by_hand(shuffled, t), atol=1e-6)


def test_seed_and_position_pick_the_stream():
    s = SamplingSettings(temperature=3.0, greedy=False, seed=5)
    a = [choose(LOGITS, s, i)[0] for i in range(200)]
    assert a == [choose(LOGITS, s, i)[0] for i in range(200)]
    other = SamplingSettings(temperature=3.0, greedy=False, seed=6)
    assert a != [choose(LOGITS, other, i)[0] for i in range(200)]


# -- through a Session on the tiny random GPT-2 ----------------------------------------------------------


def test_session_step_probabilities_follow_every_setting(gpt):
    s = Session(gpt, "In the beginning", greedy=False, temperature=0.6, top_k=20, top_p=0.7, seed=4)
    step = s.step()
    expected = filtered_by_hand(step.logits, 0.6, top_k=20, top_p=0.7)
    np.testing.assert_allclose(step.probs, expected, atol=1e-6)
    assert expected[step.token_id] > 0 and step.how == "sampled"
    assert s.trace.steps[-1].prob == pytest.approx(expected[step.token_id], abs=1e-6)
    s.set_sampling(temperature=2.0, top_k=None, top_p=None)  # re-coloured without a forward pass
    np.testing.assert_allclose(s.distribution(), softmax_by_hand(s.trace.logits[-1], 2.0), atol=1e-6)


def test_session_samples_at_its_temperature(gpt):
    # the random model's logits are nearly flat (spread ~0.4), so a low temperature is what gives them structure
    s = Session(gpt, "In the beginning", greedy=False, temperature=0.02)
    logits = s.trace.logits[-1]
    cold, warm = np.array(softmax_by_hand(logits, 0.02)), np.array(softmax_by_hand(logits, 1.0))
    assert cold.max() > 0.25 > 0.01 > warm.max()
    n = 200
    counts = Counter()
    for seed in range(n):
        s.set_sampling(seed=seed)
        counts[s.step().token_id] += 1
        s.back()
    freq = np.array([counts[i] / n for i in range(len(logits))])
    assert np.abs(freq - cold).max() < 0.1, (freq.max(), cold.max())


# -- which settings are accepted ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(temperature=0.0, greedy=True), dict(temperature=1e-3, greedy=False), dict(temperature=7, greedy=False),
    dict(top_k=1), dict(top_k=2.0), dict(top_k=50), dict(top_p=1.0), dict(top_p=0.01), dict(seed=0), dict(seed=2**40),
])
def test_settings_that_are_accepted(kw):
    s = SamplingSettings(**kw)
    for key, value in kw.items():
        assert getattr(s, key) == value
    if "top_k" in kw:
        assert type(s.top_k) is int


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0.0, greedy=False), "temperature"), (dict(temperature=-0.5, greedy=True), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=True), "temperature"),
    (dict(temperature="1"), "temperature"), (dict(top_k=0), "top-k"), (dict(top_k=-3), "top-k"),
    (dict(top_k=2.5), "top-k"), (dict(top_k=True), "top-k"), (dict(top_k="3"), "top-k"),
    (dict(top_p=0.0), "top-p"), (dict(top_p=1.01), "top-p"), (dict(top_p="0.5"), "top-p"),
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed="0"), "seed"),
])
def test_settings_that_are_refused(kw, match):
    with pytest.raises(SamplingError, match=match):
        SamplingSettings(**kw)
