"""Looking deeper: head statistics, induction scores, attention rollout and the logit lens.

Pattern statistics are plain numpy on [heads, queries, keys] arrays, so they can be checked on patterns
built by hand; induction scores and the logit lens run the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .chunked_analysis import pattern_statistics_chunked
from .errors import CaptureError, SessionError
from .lazy_torch import torch
from .trace import Trace, capture_name

if TYPE_CHECKING:
    from .model import Model

WHOLE_PATTERN_BYTES = 256 * 1024 * 1024  # float64 copy of a layer's pattern beyond which statistics go by chunks
STATISTICS = ("entropy", "prev_token", "induction", "sink", "distance")


@dataclass(frozen=True)
class HeadStat:
    kind: str
    layer: int
    head: int
    entropy: float  # mean row entropy in bits (0 = always one key)
    entropy_norm: float  # entropy / entropy of a uniform row over the same keys (1 = uniform)
    prev_token: float  # mean weight on the key right before the query (causal) / next to it
    induction: float  # mean weight on the token after the previous occurrence, on a repeated random sequence
    sink: float  # mean weight on the first key
    distance: float  # mean |query - key| weighted by attention
    # mean share of a row that went to the attention sink (gpt-oss: a softmax term with no value); None without one
    # (not NaN: records must compare equal, e.g. across the remote engine)
    sink_share: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["sink_share"] is None:  # a model without attention sinks (the JSON stays as it was)
            del d["sink_share"]
        return d


def pattern_statistics(pattern: np.ndarray, causal: bool = True) -> dict[str, np.ndarray]:
    """Per-head statistics of a pattern [heads, queries, keys] whose query i sits at key position i."""
    p = np.asarray(pattern, dtype=np.float64)
    h, q, k = p.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ent_rows = -np.where(p > 0, p * np.log2(p), 0.0).sum(-1)  # [h, q]
    n_keys = np.arange(1, q + 1) if causal and q == k else np.full(q, k)
    max_ent = np.log2(np.maximum(n_keys, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(max_ent > 0, ent_rows / max_ent, 0.0)
    valid = n_keys > 1  # the first row of a causal pattern has one key: no choice, no information
    entropy = ent_rows[:, valid].mean(-1) if valid.any() else np.zeros(h)
    entropy_norm = norm[:, valid].mean(-1) if valid.any() else np.zeros(h)
    rows = np.arange(1, min(q, k))
    prev = p[:, rows, rows - 1].mean(-1) if rows.size else np.zeros(h)
    sink = p[:, 1:, 0].mean(-1) if q > 1 else p[:, :, 0].mean(-1)
    qi = np.arange(q)[:, None]
    kj = np.arange(k)[None, :]
    distance = (p * np.abs(qi - kj)).sum(-1).mean(-1)
    return {"entropy": entropy, "entropy_norm": entropy_norm, "prev_token": prev, "sink": sink, "distance": distance}


def induction_pattern_score(pattern: np.ndarray, period: int, offset: int = 0) -> np.ndarray:
    """Mean weight, over queries in the second copy of a repeated sequence, on the key one after the
    query token's first occurrence. pattern [heads, q, k]; the first copy starts at `offset`."""
    q = pattern.shape[1]
    queries = np.arange(offset + period, q)
    keys = queries - period + 1
    return pattern[:, queries, keys].mean(-1)


def repeated_random_ids(model: Model, period: int = 16, seed: int = 0) -> tuple[list[int], int]:
    """[prefix] + R + R with R `period` random ordinary tokens; returns (ids, offset of the first copy)."""
    rng = np.random.default_rng(seed)
    special = model.tokenizer.special_ids
    vocab = min(model.config.vocab_size, model.tokenizer.vocab_size)
    pool = np.array([i for i in range(vocab) if i not in special])
    seq = rng.choice(pool, size=period, replace=False).tolist()
    cfg = model.config
    if model.family == "encoder":
        prefix = model.tokenizer.encode("", special_tokens=True)[:1]  # [CLS]
    elif model.family == "encoder-decoder":
        prefix = [cfg.decoder_start_token_id]
    else:
        prefix = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    return prefix + seq + seq, len(prefix)


def induction_scores(model: Model, periods: Sequence[int] = (8, 13, 21), seed: int = 0) -> np.ndarray:
    """Induction score [layers, heads] of the main stack (decoder self, or encoder), averaged over
    repeats of several lengths so that a head keyed to one fixed offset does not pass."""
    kind = "encoder" if model.family == "encoder" else "self"
    scores = []
    for i, period in enumerate(periods):
        period = min(period, (model.max_positions - 2) // 2)
        ids, offset = repeated_random_ids(model, period, seed + i)
        source = ids[offset:offset + period] if model.family == "encoder-decoder" else None
        trace = model.run(ids, source=source) if source else model.run(ids)
        scores.append([induction_pattern_score(trace.attention(kind, layer), period, offset)
                       if capture_name(kind, layer) not in trace.no_attention else np.full(model.n_heads, np.nan)
                       for layer in range(model.layers_by_kind[kind])])
    return np.mean(np.array(scores), axis=0)


def head_statistics(model: Model, trace: Trace, induction: np.ndarray | None = None) -> list[HeadStat]:
    """Statistics of every head of every kind on `trace`, plus the induction score of the main stack. Layers
    without attention (hybrids' Mamba, convolution, linear-attention layers) have no heads: they are skipped."""
    if induction is None:
        induction = induction_scores(model)
    main_kind = "encoder" if model.family == "encoder" else "self"
    out = []
    for kind in trace.kinds:
        for layer in range(trace.n_layers[kind]):
            if capture_name(kind, layer) in trace.no_attention:
                continue
            heads, n_q, n_k = trace.attention_shape(kind, layer)
            if heads * n_q * n_k * 8 <= WHOLE_PATTERN_BYTES:
                stats = pattern_statistics(trace.attention(kind, layer), causal=kind == "self")
            else:  # a long context: the same statistics a chunk of rows at a time
                stats = pattern_statistics_chunked(trace, kind, layer)
            share = trace.sink_share(kind, layer)  # [heads, queries], O(T) from each row's lse; None without sinks
            sink_share = share.mean(axis=1, dtype=np.float64) if share is not None else None
            for head in range(trace.n_heads):
                ind = float(induction[layer, head]) if kind == main_kind else float("nan")
                out.append(HeadStat(kind, layer, head, float(stats["entropy"][head]), float(stats["entropy_norm"][head]),
                                    float(stats["prev_token"][head]), ind, float(stats["sink"][head]),
                                    float(stats["distance"][head]),
                                    float(sink_share[head]) if sink_share is not None else None))
    return out


def mean_of_heads(trace: Trace, kind: str, layer: int) -> np.ndarray:
    return trace.attention(kind, layer).mean(0)


def rollout(trace: Trace, kind: str, upto: int | None = None) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): per layer 0.5·mean-of-heads + 0.5·I (the residual),
    rows renormalised, multiplied through the layers. [queries, queries]; every row is a distribution.
    Layers without attention (hybrids) are skipped: what their Mamba / convolution mixes is not a pattern."""
    if kind == "cross":
        raise CaptureError("rollout follows one stack's self-attention; choose 'self' or 'encoder'")
    n = trace.n_layers.get(kind, 0)
    if not n:
        raise CaptureError(f"this model has no {kind!r} attention")
    upto = n - 1 if upto is None else upto
    on_server = getattr(trace, "rollout_on_server", None)  # a remote trace whose patterns stayed on its server
    if on_server is not None:
        found = on_server(kind, upto)
        if found is not None:
            return found
    result = None
    for layer in range(upto + 1):
        if capture_name(kind, layer) in trace.no_attention:
            continue
        a = trace.attention(kind, layer).mean(0).astype(np.float64)
        a = 0.5 * a + 0.5 * np.eye(a.shape[0], a.shape[1])
        a /= a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    if result is None:
        raise CaptureError(f"layers 0..{upto} have no attention to roll out")
    return result.astype(np.float32)


def logit_lens(model: Model, trace: Trace, position: int, top: int = 10) -> dict:
    """For one position, the prediction read off the residual stream after each layer of the main
    stack (decoder, or encoder for masked-LM models): final norm (where the model has one) + unembedding.

    Returns {"probs": float32 [layers, vocab], "top_ids": int [layers, top], "top_probs": [layers, top]}.
    The last layer equals the model's own logits (softmax at temperature 1).
    """
    if not model.has_logits:
        raise SessionError(model.no_logits_reason)
    if not 0 <= position < len(trace):
        raise SessionError(f"position {position} is outside 0..{len(trace) - 1}")
    with model.guard():  # inference mode; out-of-memory becomes OutOfMemoryError
        logits = model.explainer.lens_logits(trace, position)  # (layers, vocab), whichever backend runs the model
        probs = torch.softmax(logits.float(), -1).cpu().numpy()
    order = np.argsort(-probs, axis=-1)[:, :top]
    return {"probs": probs, "top_ids": order, "top_probs": np.take_along_axis(probs, order, -1)}
