"""Explanations: the chain inside one head, and which heads (and MLPs) wrote a prediction.

    inside_head(model, trace, kind, layer, head, query)   # q, k, q·k, scale, soft-cap, bias, mask, softmax, values
    attribute(model, trace, position, token_id=None)      # direct logit attribution to every head, MLP, embedding
    nearest_tokens(model, token_id, k=10)                 # the vocabulary around a token's embedding
    positions_view(model)                                 # the positional scheme as arrays to draw

Each call re-runs one forward over the trace's tokens (the Trace holds no model); everything returned is
numpy. Direct logit attribution linearises every norm at the point the forward reached (its mean and
scale are taken from the actual residual, as TransformerLens does): the parts then sum to the logit
exactly, before any final soft-cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CaptureError
from .modules import Probe, RMSNorm
from .rotary import inv_frequencies
from .trace import Trace, capture_name


@dataclass(frozen=True)
class InsideHead:
    """One query row of one head, step by step. Arrays over keys are (S,); vectors are (head size,)."""

    kind: str
    layer: int
    head: int
    kv_head: int  # the key/value head this query head reads (grouped-query attention)
    query: int
    q_before_rotation: np.ndarray
    q: np.ndarray  # as used: after QK-norm and rotation
    k_before_rotation: np.ndarray  # (S, hs)
    k: np.ndarray  # (S, hs)
    v: np.ndarray  # (S, hs)
    raw: np.ndarray  # q·k
    scale: float
    scaled: np.ndarray  # raw × scale
    softcap: float | None
    capped: np.ndarray | None  # c·tanh(scaled / c)
    bias: np.ndarray | None  # relative-position bias (T5)
    blocked: np.ndarray  # bool: keys this query may not see
    blocked_why: str  # e.g. "future tokens (causal mask)"
    scores: np.ndarray  # what enters the softmax, -inf where blocked
    pattern: np.ndarray  # softmax(scores): the model's own weights
    what_if_unscaled: np.ndarray  # softmax without the scale (a what-if, not the model)
    what_if_unmasked: np.ndarray  # softmax without the mask (a what-if, not the model)
    value_norms: np.ndarray  # ‖v_j W_O‖ per key: how much key j would write at full weight
    weighted_norms: np.ndarray  # α_ij ‖v_j W_O‖ (Kobayashi et al. 2020): what key j actually writes
    output_norm: float  # ‖Σ_j α_ij v_j W_O‖: this head's write to the residual stream at the query
    rotary_dims: int | None  # how many dims of each head rotate (None: no rotation in this layer)


@dataclass(frozen=True)
class Attribution:
    """How much each part wrote toward one token's logit at one position (direct logit attribution)."""

    position: int
    token_id: int
    token: str
    logit: float  # the model's logit for the token, before any final soft-cap
    total: float  # the sum of every part (equals `logit` up to float rounding)
    parts: tuple[tuple[str, float], ...]  # ("embeddings", x), ("L0.H3", x), ("L0.MLP", x), ("norm biases", x)...
    heads: np.ndarray  # (layers, heads) self-attention heads
    cross_heads: np.ndarray | None  # (layers, heads) cross-attention heads (encoder-decoder)
    mlps: np.ndarray  # (layers,)
    head_write_norms: np.ndarray  # (layers, heads) ‖head output‖ at the position, whatever the token
    note: str


def _out_rows(linear: nn.Module) -> Tensor:
    """The output projection as (inner, d) whatever its layout (nn.Linear or the transposed inference one)."""
    w_t = getattr(linear, "weight_t", None)
    return w_t if w_t is not None else linear.weight.t()


def _forward_inputs(model, trace: Trace, memory: bool = True):  # noqa: ANN001, ANN202
    """The trace's decoder ids on the device and (encoder-decoder) the encoder's output; call under model.guard()."""
    net, dev = model.net, model.device
    ids = torch.tensor([list(trace.token_ids)], device=dev)
    mem = None
    if memory and trace.family == "encoder-decoder":
        mem = net.encode(torch.tensor([list(trace.source_ids)], device=dev))
    return net, ids, mem


def _probe(model, trace: Trace, names: set[str]) -> dict:  # noqa: ANN001
    probe = Probe(names)
    encoder_only = all(n.startswith("encoder.") for n in names)
    with model.guard():  # inference mode; out-of-memory becomes OutOfMemoryError
        net, ids, memory = _forward_inputs(model, trace, memory=not encoder_only)
        if trace.family == "encoder":
            net.encode(ids, capture=probe)
        elif encoder_only:  # the encoder of an encoder-decoder reads the source
            net.encode(torch.tensor([list(trace.source_ids)], device=model.device), capture=probe)
        else:
            net.decode(ids, memory=memory, capture=probe)
    return probe


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.float64)
    m = np.max(s[np.isfinite(s)]) if np.isfinite(s).any() else 0.0
    e = np.exp(s - m)
    return (e / e.sum()).astype(np.float32)


def inside_head(model, trace: Trace, kind: str, layer: int, head: int, query: int) -> InsideHead:  # noqa: ANN001
    """The chain of one head for one query: q·k → scale → (soft-cap) → (+ bias) → mask → softmax → values."""
    name = trace.capture_point(kind, layer)
    n_q = len(trace.source_ids) if kind == "encoder" and trace.family == "encoder-decoder" else len(trace)
    if not 0 <= head < trace.n_heads:
        raise CaptureError(f"head {head} does not exist; heads are 0..{trace.n_heads - 1}")
    if not 0 <= query < n_q:
        raise CaptureError(f"query position {query} is outside 0..{n_q - 1}")
    module = model.attention_module(kind, layer)
    rec = _probe(model, trace, {name})[name]
    spec, rule = module.spec, model.score_rule(name)
    kvh = head // spec.group
    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    q, q_pre = as_np(rec["q"][0, head, query]), as_np(rec["q_pre"][0, head, query])
    k, k_pre, v = as_np(rec["k"][0, kvh]), as_np(rec["k_pre"][0, kvh]), as_np(rec["v"][0, kvh])
    S = k.shape[0]
    raw = k @ q
    scaled = raw * np.float32(spec.scale)
    capped = np.tanh(scaled / spec.softcap) * spec.softcap if spec.softcap is not None else None
    pre = capped if capped is not None else scaled
    keys = np.arange(S)
    bias = None
    if rule.bias_by_offset is not None:
        half = (rule.bias_by_offset.shape[1] - 1) // 2
        bias = rule.bias_by_offset[head][keys - query + half]
        pre = pre + bias
    scores = rule.scores(q[None, :], k, head, query, 0)[0]  # the engine's one definition of the scores
    blocked = np.isneginf(scores)
    why = []
    if rule.causal and blocked[query + 1 :].any():
        why.append("future tokens (causal mask)")
    if rule.window is not None and (keys <= query - rule.window).any():
        why.append(f"more than {rule.window - 1} tokens back (sliding window of {rule.window})")
    pattern = _softmax(scores)
    unscaled = raw + (bias if bias is not None else 0)
    w_o = _out_rows(module.out)[head * spec.head_dim : (head + 1) * spec.head_dim].detach().float().cpu().numpy()
    writes = v @ w_o  # (S, d): what each key's value writes through this head's slice of W_O
    value_norms = np.linalg.norm(writes, axis=1).astype(np.float32)
    return InsideHead(
        kind=kind, layer=layer, head=head, kv_head=kvh, query=query, q_before_rotation=q_pre, q=q,
        k_before_rotation=k_pre, k=k, v=v, raw=raw, scale=float(spec.scale), scaled=scaled, softcap=spec.softcap,
        capped=capped, bias=bias, blocked=blocked, blocked_why="; ".join(why) or "nothing is masked", scores=scores,
        pattern=pattern, what_if_unscaled=_softmax(np.where(blocked, -np.inf, unscaled)), what_if_unmasked=_softmax(pre),
        value_norms=value_norms, weighted_norms=(pattern * value_norms).astype(np.float32),
        output_norm=float(np.linalg.norm(pattern @ writes)),
        rotary_dims=spec.rope.rotary_dim if spec.rope is not None and kind != "cross" else None)


# -- direct logit attribution -----------------------------------------------------------------
def _linearised(norm: nn.Module, z: Tensor, parts: dict[str, Tensor], bias_name: str) -> dict[str, Tensor]:
    """Push every part of z (which sum to z) through `norm` with its mean and scale fixed at z's own."""
    if isinstance(norm, RMSNorm):
        rms = torch.sqrt(z.float().pow(2).mean() + norm.eps)
        w = norm.weight.float() + (1.0 if norm.kind == "rmsnorm_gemma" else 0.0)
        return {k: w * p / rms for k, p in parts.items()}
    sigma = torch.sqrt(z.float().var(unbiased=False) + norm.eps)
    out = {k: norm.weight.float() * (p - p.mean()) / sigma for k, p in parts.items()}
    if norm.bias is not None:
        out[bias_name] = out.get(bias_name, 0) + norm.bias.float()
    return out


def _add(parts: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    for k, v in new.items():
        parts[k] = parts[k] + v if k in parts else v


def _attention_parts(attn, h: Tensor, ctx, i: int, label: str, norms: dict | None = None  # noqa: ANN001
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """The attention output (full) and, at position i, each head's write (and the output bias); `norms`
    collects each head's write norm under the attention's capture name."""
    probe = Probe({attn.name})
    out = attn(h, ctx, None, probe)
    y = probe[attn.name]["y"][0, :, i].float()  # (nh, hs)
    w = _out_rows(attn.out).float().view(attn.n_heads, attn.head_dim, -1)  # (nh, hs, d)
    heads = torch.einsum("hs,hsd->hd", y, w)
    if norms is not None:
        norms[attn.name] = heads.norm(dim=-1)
    parts = {f"{label}{n}": heads[n] for n in range(attn.n_heads)}
    if attn.out.bias is not None:
        parts["attention output biases"] = attn.out.bias.float()
    return out, parts


def _sublayer(block, x: Tensor, run, norm, post, i: int, parts: dict[str, Tensor], label: str) -> Tensor:  # noqa: ANN001
    """One residual sublayer of `block` (its norm placement), adding the sublayer's parts at position i."""
    p = block.placement
    if p in ("pre", "sandwich"):
        out, new = run(norm(x))
    else:
        out, new = run(x)
    if p == "pre":
        _add(parts, new)
        return x + out
    if p == "post":
        _add(parts, new)
        z = x + out
        parts.update(_linearised(norm, z[0, i], parts, "norm biases"))
        return norm(z)
    post_norm = post if p == "sandwich" else norm
    _add(parts, _linearised(post_norm, out[0, i], new, "norm biases"))
    return x + post_norm(out)


def attribute(model, trace: Trace, position: int, token_id: int | None = None) -> Attribution:  # noqa: ANN001
    """Direct logit attribution at `position` for `token_id` (default: the most likely next token)."""
    if trace.family == "encoder":
        raise CaptureError("direct logit attribution needs a linear path to the logits; a masked-LM head has a "
                           "non-linear activation in between, so encoder-only models are not attributed")
    if not 0 <= position < len(trace):
        raise CaptureError(f"position {position} is outside 0..{len(trace) - 1}")
    logits = trace.logits_at(position)
    token_id = int(np.argmax(logits)) if token_id is None else int(token_id)
    if not 0 <= token_id < logits.shape[0]:
        raise CaptureError(f"token id {token_id} is outside the vocabulary (0..{logits.shape[0] - 1})")
    write_norms: dict[str, Tensor] = {}
    with model.guard():  # inference mode; out-of-memory becomes OutOfMemoryError
        net, ids, memory = _forward_inputs(model, trace)
        stack, cfg, i = net.decoder, model.config, position
        T = ids.shape[1]
        x = stack.add_positions(net.embed_tokens(ids), 0)
        parts: dict[str, Tensor] = {"embeddings": x[0, i].float()}
        if stack.embed_norm is not None:
            parts = _linearised(stack.embed_norm, x[0, i], parts, "norm biases")
            x = stack.embed_norm(x)
        ctx = stack.layer_inputs(0, T, x.dtype, x.device, memory=memory)
        for n, block in enumerate(stack.layers):
            sandwich = block.placement == "sandwich"
            x = _sublayer(block, x, lambda h, b=block, n=n: _attention_parts(b.attn, h, ctx, i, f"L{n}.H", write_norms),
                          block.attn_norm,
                          block.attn_post_norm if sandwich else None, i, parts, f"L{n}")
            if block.cross_attn is not None:
                x = _sublayer(block, x, lambda h, b=block, n=n: _attention_parts(b.cross_attn, h, ctx, i, f"L{n}.X"),
                              block.cross_norm, None, i, parts, f"L{n}")

            def mlp(h, b=block, n=n):  # noqa: ANN001, ANN202
                out = b.ffn(h)
                return out, {f"L{n}.MLP": out[0, i].float()}

            x = _sublayer(block, x, mlp, block.ffn_norm, block.ffn_post_norm if sandwich else None, i, parts, f"L{n}")
        if stack.final_norm is not None:
            parts = _linearised(stack.final_norm, x[0, i], parts, "norm biases")
        w_t = getattr(net, "unembedding_t", None)
        column = (w_t[:, token_id] if w_t is not None else net.unembedding[token_id]).float() * cfg.lm_head_scale
        values = {k: float(p @ column) for k, p in parts.items()}
    if net.final_logits_bias is not None:
        values["logits bias"] = float(net.final_logits_bias[0, token_id])
    n_layers, n_heads = len(stack.layers), model.n_heads
    heads = np.array([[values.get(f"L{n}.H{h}", 0.0) for h in range(n_heads)] for n in range(n_layers)], dtype=np.float32)
    cross = None
    if trace.family == "encoder-decoder":
        cross = np.array([[values.get(f"L{n}.X{h}", 0.0) for h in range(n_heads)] for n in range(n_layers)], dtype=np.float32)
    mlps = np.array([values.get(f"L{n}.MLP", 0.0) for n in range(n_layers)], dtype=np.float32)
    norms = np.stack([write_norms[capture_name("self", n)].cpu().numpy() for n in range(n_layers)]).astype(np.float32)
    pre_cap = float(logits[token_id])
    note = "norms linearised at this forward's own mean and scale; parts sum to the logit"
    if cfg.final_logit_softcap is not None:
        cap = cfg.final_logit_softcap
        pre_cap = float(np.arctanh(np.clip(pre_cap / cap, -1 + 1e-7, 1 - 1e-7)) * cap)
        note += f" before the final soft-cap (logit = {cap:g}·tanh(sum / {cap:g}))"
    return Attribution(position=position, token_id=token_id, token=model.tokenizer.display(token_id), logit=pre_cap,
                       total=float(sum(values.values())), parts=tuple(values.items()), heads=heads, cross_heads=cross,
                       mlps=mlps, head_write_norms=norms, note=note)


# -- embeddings and positions -------------------------------------------------------------------
def nearest_tokens(model, token_id: int, k: int = 10, metric: str = "cosine") -> list[tuple[int, str, float]]:  # noqa: ANN001
    """The k tokens whose input embeddings are nearest to `token_id`'s (itself excluded): (id, token, score)."""
    if metric not in ("cosine", "dot"):
        raise CaptureError(f"metric must be 'cosine' or 'dot', not {metric!r}")
    with torch.inference_mode():
        e = model.net.embed.weight.float()
        if not 0 <= token_id < e.shape[0]:
            raise CaptureError(f"token id {token_id} is outside the vocabulary (0..{e.shape[0] - 1})")
        if metric == "cosine":
            e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = e @ e[token_id]
        scores[token_id] = -torch.inf
        top = torch.topk(scores, min(k, e.shape[0] - 1))
    return [(int(t), model.tokenizer.display(int(t)), float(s)) for s, t in zip(top.values, top.indices)]


def positions_view(model, n: int = 128) -> dict:  # noqa: ANN001
    """The positional scheme as arrays to draw: {"scheme", "what", "array", "labels"}."""
    cfg, stack = model.config, model.net.decoder if model.net.decoder is not None else model.net.encoder
    n = min(n, cfg.max_positions)
    with torch.inference_mode():
        if cfg.position_scheme == "learned":
            p = stack.positions.weight[cfg.position_offset : cfg.position_offset + n].float()
            p = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return {"scheme": "learned", "what": f"cosine similarity of the first {n} learned position vectors",
                    "array": (p @ p.t()).cpu().numpy(), "labels": None}
        if cfg.position_scheme == "sinusoidal":
            return {"scheme": "sinusoidal", "what": f"the sinusoid added at the first {n} positions (rows) per dim",
                    "array": stack.sinusoid[:n].float().cpu().numpy(), "labels": None}
        if cfg.position_scheme == "relative":
            rule = model.score_rule(capture_name("self" if cfg.has_decoder else "encoder", 0))
            half = (rule.bias_by_offset.shape[1] - 1) // 2
            lo, hi = max(0, half - n), min(rule.bias_by_offset.shape[1], half + n + 1)
            return {"scheme": "relative", "what": "learned bias per head (rows) by key - query offset (columns)",
                    "array": rule.bias_by_offset[:, lo:hi], "labels": list(range(lo - half, hi - half))}
    ropes = stack.ropes
    if not ropes:
        return {"scheme": "none", "what": "this model adds no positional information", "array": np.zeros((0, 0)), "labels": None}
    layers = {r: [i for i, b in enumerate(stack.layers) if b.attn.spec.rope == r] for r in ropes}
    return {"scheme": "rotary", "what": "rotation frequency (radians per position) of each pair of dims, per layer type",
            "array": np.stack([inv_frequencies(r).numpy() for r in ropes]),
            "labels": [f"layers {', '.join(map(str, layers[r]))}: base {r.theta:g}, {r.kind}" for r in ropes]}
