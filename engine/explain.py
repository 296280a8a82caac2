"""Explanations: the chain inside one head, and which heads (and MLPs) wrote a prediction.

    inside_head(model, trace, kind, layer, head, query)   # q, k, q·k, scale, soft-cap, bias, mask, softmax, values
    attribute(model, trace, position, token_id=None)      # direct logit attribution to every head, MLP, embedding
    mlp_neurons(model, trace, layer, position, token_id=None, k=20)   # one MLP's neurons: question, answer, writes
    expert_neurons(model, trace, layer, position, k=20, token_id=None)  # a MoE layer: chosen experts' neurons
    residual_stream(model, trace, position, token_id=None) # per layer: what attention and the MLP added
    nearest_tokens(model, token_id, k=10)                 # the vocabulary around a token's embedding
    positions_view(model)                                 # the positional scheme as arrays to draw

Each call re-runs one forward over the trace's tokens (the Trace holds no model); everything returned is
numpy. Direct logit attribution linearises every norm at the point the forward reached (its mean and
scale are taken from the actual residual, as TransformerLens does): the parts then sum to the logit
exactly, before any final soft-cap.

Each function asks `model.explainer` (NativeExplainer below for the native engine's network;
engine.hf_backend.explain.HFExplainer for a transformers model), so the same calls and the same dataclasses serve
both backends, in process and over the remote engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import CaptureError
from .lazy_torch import torch
from .trace import Trace, capture_name

if TYPE_CHECKING:
    from torch import Tensor, nn


@dataclass(frozen=True)
class InsideHead:
    """One query row of one head, step by step. Arrays over keys are (S,); vectors are (head size,)."""

    kind: str
    layer: int
    head: int
    kv_head: int  # the key/value head this query head reads (grouped-query attention)
    query: int
    q_before_rotation: np.ndarray | None  # None where the backend cannot tell (a fused or latent projection)
    q: np.ndarray  # as used: after QK-norm and rotation
    k_before_rotation: np.ndarray | None  # (S, hs)
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
    pattern: np.ndarray  # softmax(scores): the model's own weights (with a sink: they sum to 1 − sink_share)
    what_if_unscaled: np.ndarray  # softmax without the scale (a what-if, not the model)
    what_if_unmasked: np.ndarray  # softmax without the mask (a what-if, not the model)
    value_norms: np.ndarray  # ‖v_j W_O‖ per key: how much key j would write at full weight
    weighted_norms: np.ndarray  # α_ij ‖v_j W_O‖ (Kobayashi et al. 2020): what key j actually writes
    output_norm: float  # ‖Σ_j α_ij v_j W_O‖: this head's write to the residual stream at the query
    rotary_dims: int | None  # how many dims of each head rotate (None: no rotation in this layer)
    sink_share: float | None = None  # attention sinks (gpt-oss): what the sink (a key with a zero value) took
    note: str = ""  # what this backend could not show (e.g. q and k before rotation)


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
    from .modules import Probe  # needs torch: imported when used

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


def _native_inside_head(model, trace: Trace, kind: str, layer: int, head: int, query: int) -> InsideHead:  # noqa: ANN001
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
    w_o = _out_rows(module.out)[head * spec.head_dim : (head + 1) * spec.head_dim].detach().float().cpu().numpy()
    return head_chain(kind=kind, layer=layer, head=head, kv_head=kvh, query=query, q=q, q_pre=q_pre, k=k, k_pre=k_pre,
                      v=v, w_o=w_o, rule=rule, scale=float(spec.scale), softcap=spec.softcap,
                      rotary_dims=spec.rope.rotary_dim if spec.rope is not None and kind != "cross" else None)


def head_chain(*, kind: str, layer: int, head: int, kv_head: int, query: int, q: np.ndarray, q_pre: np.ndarray | None,
               k: np.ndarray, k_pre: np.ndarray | None, v: np.ndarray, w_o: np.ndarray, rule, scale: float,  # noqa: ANN001
               softcap: float | None, rotary_dims: int | None, output: np.ndarray | None = None,
               note: str = "") -> InsideHead:
    """The chain from one head's q (hs,), keys k (S, hs), values v (S, hv) and its slice of W_O (hv, d), whatever
    backend found them. A sink (rule.sinks) is one more logit in the softmax's denominator with a zero value: the
    pattern sums to 1 − its share, and it writes nothing. `output`: the head's actual write (d,) at the query
    where the backend saw it (else pattern · v · W_O)."""
    S = k.shape[0]
    raw = k @ q
    scaled = raw * np.float32(scale)
    capped = np.tanh(scaled / softcap) * softcap if softcap is not None else None
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
    if rule.window_ahead is not None and (keys >= query + rule.window_ahead).any():
        why.append(f"{rule.window_ahead} or more tokens ahead (sliding window)")
    sink = float(rule.sinks[head]) if getattr(rule, "sinks", None) is not None else None
    pattern, sink_share = _softmax_with_sink(scores, sink)
    unscaled = raw + (bias if bias is not None else 0)
    writes = v @ w_o  # (S, d): what each key's value writes through this head's slice of W_O
    value_norms = np.linalg.norm(writes, axis=1).astype(np.float32)
    out = pattern @ writes if output is None else output
    return InsideHead(
        kind=kind, layer=layer, head=head, kv_head=kv_head, query=query, q_before_rotation=q_pre, q=q,
        k_before_rotation=k_pre, k=k, v=v, raw=raw, scale=float(scale), scaled=scaled, softcap=softcap,
        capped=capped, bias=bias, blocked=blocked, blocked_why="; ".join(why) or "nothing is masked", scores=scores,
        pattern=pattern, what_if_unscaled=_softmax_with_sink(np.where(blocked, -np.inf, unscaled), sink)[0],
        what_if_unmasked=_softmax_with_sink(pre, sink)[0], value_norms=value_norms,
        weighted_norms=(pattern * value_norms).astype(np.float32), output_norm=float(np.linalg.norm(out)),
        rotary_dims=rotary_dims, sink_share=sink_share, note=note)


def _softmax_with_sink(s: np.ndarray, sink: float | None) -> tuple[np.ndarray, float | None]:
    """softmax(s), with a sink logit as one more term in the denominator: (weights over the keys, the sink's share)."""
    if sink is None:
        return _softmax(s), None
    full = _softmax(np.append(s.astype(np.float64), sink))
    return full[:-1], float(full[-1])


# -- direct logit attribution -----------------------------------------------------------------
PROBE = "~"  # parts whose names start with this ride along through the norms but are not summed (neuron rows)


def _linearised(norm: nn.Module, z: Tensor, parts: dict[str, Tensor], bias_name: str) -> dict[str, Tensor]:
    """Push every part of z (which sum to z) through `norm` with its mean and scale fixed at z's own. A part
    may be a stack of vectors (n, d): each row is pushed through on its own."""
    from .modules import RMSNorm

    if isinstance(norm, RMSNorm):
        rms = torch.sqrt(z.float().pow(2).mean() + norm.eps)
        w = norm.weight.float() + (1.0 if norm.kind == "rmsnorm_gemma" else 0.0)
        return {k: w * p / rms for k, p in parts.items()}
    sigma = torch.sqrt(z.float().var(unbiased=False) + norm.eps)
    out = {k: norm.weight.float() * (p - p.mean(-1, keepdim=True)) / sigma for k, p in parts.items()}
    if norm.bias is not None:
        out[bias_name] = out.get(bias_name, 0) + norm.bias.float()
    return out


def _add(parts: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    for k, v in new.items():
        parts[k] = parts[k] + v if k in parts else v


def _attention_parts(attn, h: Tensor, ctx, i: int, label: str, norms: dict | None = None  # noqa: ANN001
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """The attention output (full) and, at position i, each head's write (and the output bias, as
    "{label}bias"); `norms` collects each head's write norm under the attention's capture name."""
    from .modules import Probe  # needs torch: imported when used

    probe = Probe({attn.name})
    out = attn(h, ctx, None, probe)
    y = probe[attn.name]["y"][0, :, i].float()  # (nh, hs)
    w = _out_rows(attn.out).float().view(attn.n_heads, attn.head_dim, -1)  # (nh, hs, d)
    heads = torch.einsum("hs,hsd->hd", y, w)
    if norms is not None:
        norms[attn.name] = heads.norm(dim=-1)
    parts = {f"{label}{n}": heads[n] for n in range(attn.n_heads)}
    if attn.out.bias is not None:
        parts[f"{label}bias"] = attn.out.bias.float()
    return out, parts


def _sublayer(block, x: Tensor, run, norm, post, i: int, parts: dict[str, Tensor]) -> tuple[Tensor, float]:  # noqa: ANN001
    """One residual sublayer of `block` (its norm placement), adding the sublayer's parts at position i.
    -> the new residual stream and the norm of what the sublayer added to it at i (post-norm: its output
    before the norm, since the norm then rescales the whole stream)."""
    p = block.placement
    if p in ("pre", "sandwich"):
        out, new = run(norm(x))
    else:
        out, new = run(x)
    if p == "pre":
        _add(parts, new)
        return x + out, float(out[0, i].float().norm())
    if p == "post":
        _add(parts, new)
        z = x + out
        parts.update(_linearised(norm, z[0, i], parts, "norm biases"))
        return norm(z), float(out[0, i].float().norm())
    post_norm = post if p == "sandwich" else norm
    _add(parts, _linearised(post_norm, out[0, i], new, "norm biases"))
    added = post_norm(out)
    return x + added, float(added[0, i].float().norm())


@dataclass
class _Walk:
    """What one linearised forward to `position` found: each part's vector after the final norm (and the
    neuron rows of one MLP, if asked), the unembedding column of the token, the norms written per sublayer."""

    parts: dict[str, Tensor]
    column: Tensor  # (d,) the token's unembedding column, times lm_head_scale
    added: dict[str, float]  # "L3.attn" / "L3.cross" / "L3.MLP" / "embeddings" -> norm of what it added at i
    resid_norms: list[float]  # ‖residual stream‖ at i after each layer
    write_norms: dict[str, Tensor]  # capture name -> (heads,) ‖head write‖
    mlp_input: Tensor | None = None  # (T, d) what the asked MLP read (after its norm)
    mlp_acts: Tensor | None = None  # (T, d_ff) its neurons' activations


def _check_position(trace: Trace, position: int, token_id: int | None) -> tuple[np.ndarray, int]:
    if trace.family == "encoder":
        raise CaptureError("direct logit attribution needs a linear path to the logits; a masked-LM head has a "
                           "non-linear activation in between, so encoder-only models are not attributed")
    if not 0 <= position < len(trace):
        raise CaptureError(f"position {position} is outside 0..{len(trace) - 1}")
    logits = trace.logits_at(position)
    token_id = int(np.argmax(logits)) if token_id is None else int(token_id)
    if not 0 <= token_id < logits.shape[0]:
        raise CaptureError(f"token id {token_id} is outside the vocabulary (0..{logits.shape[0] - 1})")
    return logits, token_id


def _walk(model, trace: Trace, i: int, token_id: int, neuron_layer: int | None = None) -> _Walk:  # noqa: ANN001
    """The decoder forward over the trace's tokens, splitting the residual stream at position i into parts;
    with `neuron_layer`, that layer's MLP is split into its neurons' unit rows (PROBE "rows", (d_ff, d)) and
    its output bias. Call under model.guard()."""
    net, ids, memory = _forward_inputs(model, trace)
    stack, cfg = net.decoder, model.config
    T = ids.shape[1]
    x = net.embed_tokens(ids)
    if stack.entry is not None:  # over several devices: the stack's inputs are where its first layer is
        x = x.to(stack.entry)
    x = stack.add_positions(x, 0)
    parts: dict[str, Tensor] = {"embeddings": x[0, i].float()}
    added = {"embeddings": float(x[0, i].float().norm())}
    if stack.embed_norm is not None:
        parts = _linearised(stack.embed_norm, x[0, i], parts, "norm biases")
        x = stack.embed_norm(x)
    ctx = stack.layer_inputs(0, T, x.dtype, x.device, memory=memory)
    if stack.entry is not None:
        ctx = ctx.to(stack.entry)
    walk = _Walk(parts, torch.empty(0), added, [], {})
    for n, block in enumerate(stack.layers):
        if n in stack.moves:  # a device boundary: the stream, the shared inputs and the parts so far move once
            dev = stack.moves[n]
            x, ctx = x.to(dev), ctx.to(dev)
            for key in parts:
                parts[key] = parts[key].to(dev)
        sandwich = block.placement == "sandwich"
        x, added[f"L{n}.attn"] = _sublayer(
            block, x, lambda h, b=block, n=n, c=ctx: _attention_parts(b.attn, h, c, i, f"L{n}.H", walk.write_norms),
            block.attn_norm, block.attn_post_norm if sandwich else None, i, parts)
        if block.cross_attn is not None:
            x, added[f"L{n}.cross"] = _sublayer(
                block, x, lambda h, b=block, n=n, c=ctx: _attention_parts(b.cross_attn, h, c, i, f"L{n}.X"),
                block.cross_norm, None, i, parts)

        def mlp(h, b=block, n=n):  # noqa: ANN001, ANN202
            if n != neuron_layer:
                out = b.ffn(h)
                return out, {f"L{n}.MLP": out[0, i].float()}
            acts = b.ffn.activations(h)
            out = b.ffn.down(acts)
            walk.mlp_input, walk.mlp_acts = h[0], acts[0]
            new = {PROBE + "rows": _out_rows(b.ffn.down).float()}  # (d_ff, d): each neuron's row of W_out
            if b.ffn.down.bias is not None:
                new[f"L{n}.MLP bias"] = b.ffn.down.bias.float()
            return out, new

        x, added[f"L{n}.MLP"] = _sublayer(block, x, mlp, block.ffn_norm, block.ffn_post_norm if sandwich else None, i, parts)
        walk.resid_norms.append(float(x[0, i].float().norm()))
    if stack.final_norm is not None:
        parts = _linearised(stack.final_norm, x[0, i], parts, "norm biases")
    w_t = getattr(net, "unembedding_t", None)
    walk.column = (w_t[:, token_id] if w_t is not None else net.unembedding[token_id]).float().to(x.device) * cfg.lm_head_scale
    walk.parts = parts
    return walk


def _values(model, walk: _Walk, token_id: int) -> dict[str, float]:  # noqa: ANN001
    """Each part's contribution to the token's logit (PROBE parts left out)."""
    values = {k: float(p @ walk.column) for k, p in walk.parts.items() if not k.startswith(PROBE)}
    bias = model.net.final_logits_bias
    if bias is not None:
        values["logits bias"] = float(bias[0, token_id])
    return values


def _pre_cap(model, logits: np.ndarray, token_id: int) -> tuple[float, str]:  # noqa: ANN001
    pre_cap = float(logits[token_id])
    note = "norms linearised at this forward's own mean and scale; parts sum to the logit"
    cap = model.config.final_logit_softcap
    if cap is not None:
        pre_cap = float(np.arctanh(np.clip(pre_cap / cap, -1 + 1e-7, 1 - 1e-7)) * cap)
        note += f" before the final soft-cap (logit = {cap:g}·tanh(sum / {cap:g}))"
    return pre_cap, note


def _native_attribute(model, trace: Trace, position: int, token_id: int | None = None) -> Attribution:  # noqa: ANN001
    """Direct logit attribution at `position` for `token_id` (default: the most likely next token)."""
    logits, token_id = _check_position(trace, position, token_id)
    with model.guard():  # inference mode; out-of-memory becomes OutOfMemoryError
        walk = _walk(model, trace, position, token_id)
        raw = _values(model, walk, token_id)
    values: dict[str, float] = {}
    for k, v in raw.items():  # the attention output biases of every layer as one part, as before
        bias = k.endswith(".Hbias") or k.endswith(".Xbias")
        key = "attention output biases" if bias else k
        values[key] = values.get(key, 0.0) + v
    n_layers, n_heads = len(model.net.decoder.layers), model.n_heads
    heads = np.array([[values.get(f"L{n}.H{h}", 0.0) for h in range(n_heads)] for n in range(n_layers)], dtype=np.float32)
    cross = None
    if trace.family == "encoder-decoder":
        cross = np.array([[values.get(f"L{n}.X{h}", 0.0) for h in range(n_heads)] for n in range(n_layers)], dtype=np.float32)
    mlps = np.array([values.get(f"L{n}.MLP", 0.0) for n in range(n_layers)], dtype=np.float32)
    norms = np.stack([walk.write_norms[capture_name("self", n)].cpu().numpy() for n in range(n_layers)]).astype(np.float32)
    pre_cap, note = _pre_cap(model, logits, token_id)
    return Attribution(position=position, token_id=token_id, token=model.tokenizer.display(token_id), logit=pre_cap,
                       total=float(sum(values.values())), parts=tuple(values.items()), heads=heads, cross_heads=cross,
                       mlps=mlps, head_write_norms=norms, note=note)


# -- inside the MLP -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Neuron:
    """One MLP neuron at one position: the question it asks (its input row), its answer here (the activation)
    and what it writes (activation × its output row, read through the final norm and the unembedding)."""

    index: int
    activation: float  # act(x·w_in), or act(x·w_gate)·(x·w_up) when gated (times its gate, if ablated)
    pre_activation: float  # x·w_in, or x·w_gate: what enters the activation function
    up: float | None  # x·w_up (gated MLPs), else None
    write: float  # its direct effect on the chosen token's logit (nan for encoder-only models)
    input_row: np.ndarray  # (d,) w_in, or w_gate for gated MLPs: the question
    up_row: np.ndarray | None  # (d,) w_up (gated MLPs)
    output_row: np.ndarray  # (d,) its row of W_out: what it adds per unit of activation
    pushes_up: tuple[tuple[int, str, float], ...]  # (id, token, logit change) it raises most here
    pushes_down: tuple[tuple[int, str, float], ...]  # ... and lowers most
    per_unit: bool  # True when the neuron is silent here (activation 0): the pushes are per unit of activation
    strip: np.ndarray  # (T,) its activation at every position of the sequence


@dataclass(frozen=True)
class LayerWrites:
    """What each sublayer added to the residual stream at one position: norms, and direct effects on the token."""

    embeddings_norm: float
    embeddings_effect: float
    attn_norms: np.ndarray  # (layers,)
    attn_effects: np.ndarray  # (layers,) every head's part plus the output bias
    cross_norms: np.ndarray | None  # (layers,) encoder-decoder
    cross_effects: np.ndarray | None
    mlp_norms: np.ndarray  # (layers,)
    mlp_effects: np.ndarray  # (layers,)
    resid_norms: np.ndarray  # (layers,) ‖residual stream‖ after each layer
    other_effect: float  # norm biases and the logits bias (not written by any layer)
    logit: float  # the sum of everything: the token's logit before any final soft-cap


@dataclass(frozen=True)
class MlpNeurons:
    stack: str
    layer: int
    position: int
    token_id: int | None  # the token whose logit the writes explain (None for encoder-only models)
    token: str
    rank_by: str  # "write" | "abs_write" | "activation"
    gated: bool
    activation_function: str
    d_ff: int
    neurons: tuple[Neuron, ...]  # the k ranked first
    mlp_effect: float  # the whole MLP's direct effect (= attribute(...).mlps[layer]); nan for encoder-only
    bias_effect: float  # its output bias's share (0 without a bias)
    neurons_effect: float  # every neuron's write summed (mlp_effect = neurons_effect + bias_effect)
    activations: np.ndarray  # (d_ff,) every neuron's activation at the position
    writes: np.ndarray  # (d_ff,) every neuron's write (nan for encoder-only models)
    residual: LayerWrites | None  # None for encoder-only models and encoder stacks
    note: str


RANKINGS = ("write", "abs_write", "activation")
PUSHED = 5  # tokens listed as pushed up and down per neuron


def _mlp_inputs_by_hook(model, trace: Trace, stack: str, layer: int) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """(what the MLP read (T, d), its activations (T, d_ff)) from one plain forward (encoder stacks)."""
    ffn = model.mlp_module(layer, stack)
    seen: dict[str, Tensor] = {}
    hook = ffn.register_forward_pre_hook(lambda _m, args: seen.setdefault("h", args[0]))
    try:
        with model.guard():
            ids = trace.source_ids if trace.family == "encoder-decoder" else trace.token_ids
            model.net.encode(torch.tensor([list(ids)], device=model.device))
            acts = ffn.activations(seen["h"])
    finally:
        hook.remove()
    return seen["h"][0], acts[0]


def _rank(acts: np.ndarray, writes: np.ndarray, rank_by: str, k: int) -> np.ndarray:
    if rank_by == "write":
        key = -writes
    elif rank_by == "abs_write":
        key = -np.abs(writes)
    else:
        key = -np.abs(acts)
    return np.argsort(key, kind="stable")[:k]


def _native_mlp_neurons(model, trace: Trace, layer: int, position: int, token_id: int | None = None, k: int = 20,  # noqa: ANN001
                rank_by: str = "write", stack: str | None = None, include: Sequence[int] = ()) -> MlpNeurons:
    """mlp_neurons() on the native engine's own modules (the public function says what it answers)."""
    if rank_by not in RANKINGS:
        raise CaptureError(f"rank_by must be one of {', '.join(RANKINGS)}, not {rank_by!r}")
    stack = stack or model.main_stack
    ffn = model.mlp_module(layer, stack)  # checks the stack and the layer
    n_pos = len(trace.source_ids) if stack == "encoder" and trace.family == "encoder-decoder" else len(trace)
    if not 0 <= position < n_pos:
        raise CaptureError(f"position {position} is outside 0..{n_pos - 1}")
    if k < 1:
        raise CaptureError(f"k must be at least 1, not {k}")
    direct = stack == "decoder"
    residual, rows_t = None, None
    note = ""
    if direct:
        logits, token_id = _check_position(trace, position, token_id)
        with model.guard():
            walk = _walk(model, trace, position, token_id, neuron_layer=layer)
            h, acts_t = walk.mlp_input, walk.mlp_acts
            rows_t = walk.parts[PROBE + "rows"]  # (d_ff, d) through every later norm
            unit = rows_t @ walk.column  # (d_ff,) logit change per unit of activation
            writes = (acts_t[position].float().to(unit.device) * unit).cpu().numpy()
            values = _values(model, walk, token_id)
        bias_effect = values.get(f"L{layer}.MLP bias", 0.0)
        neurons_effect = float(writes.astype(np.float64).sum())
        values[f"L{layer}.MLP"] = neurons_effect + values.pop(f"L{layer}.MLP bias", 0.0)
        residual = _layer_writes(model, walk, values, trace, logits, token_id)
        token = model.tokenizer.display(token_id)
        note = "writes: direct effect on the logit, norms linearised at this forward's own mean and scale"
    else:
        h, acts_t = _mlp_inputs_by_hook(model, trace, stack, layer)
        writes = np.full(acts_t.shape[1], np.nan, dtype=np.float32)
        bias_effect = neurons_effect = float("nan")
        token_id, token, rank_by = None, "", "activation"
        note = ("the neurons' writes reach the predictions through non-linear layers (a masked-LM head, or the "
                "decoder's cross-attention), so they are ranked by |activation| and have no direct effect")
    w_t = getattr(model.net, "unembedding_t", None) if rows_t is not None else None
    if rows_t is not None and w_t is None:
        w_t = model.net.unembedding.t()
    return neuron_answer(stack=stack, layer=layer, position=position, token_id=token_id, token=token, rank_by=rank_by,
                         k=k, include=include, h=h, acts_t=acts_t, writes=writes, rows_t=rows_t, gate=ffn.gate,
                         up=ffn.up, down_rows=_out_rows(ffn.down), unembedding_t=w_t,
                         logit_scale=model.config.lm_head_scale, display=model.tokenizer.display,
                         activation_function=model.config.activation, bias_effect=bias_effect,
                         neurons_effect=neurons_effect, residual=residual, note=note)


def neuron_answer(*, stack: str, layer: int, position: int, token_id: int | None, token: str, rank_by: str, k: int,
                  include: Sequence[int], h: Tensor, acts_t: Tensor, writes: np.ndarray, rows_t: Tensor | None,
                  gate: nn.Module | None, up: nn.Module, down_rows: Tensor, unembedding_t: Tensor | None,
                  logit_scale: float, display, activation_function: str, bias_effect: float,  # noqa: ANN001
                  neurons_effect: float, residual: LayerWrites | None, note: str) -> MlpNeurons:
    """Rank one MLP's neurons and describe the k first, whichever backend found them: h (T, d) what the MLP read,
    acts_t (T, d_ff) its activations, writes (d_ff,) at the position, rows_t (d_ff, d) each neuron's row through
    every later norm (None: no direct path to the logits), gate/up the linear maps it reads with (gate None:
    not gated), down_rows (d_ff, d) W_out, unembedding_t (d, vocab)."""
    with torch.inference_mode():
        acts_all = acts_t.float().cpu().numpy()  # (T, d_ff)
        acts = acts_all[position]
        order = _rank(acts, writes, rank_by, k)
        bad = [j for j in include if not 0 <= int(j) < acts.shape[0]]
        if bad:
            raise CaptureError(f"neuron {bad[0]} does not exist; this MLP has neurons 0..{acts.shape[0] - 1}")
        extra = [int(j) for j in dict.fromkeys(include) if int(j) not in set(order.tolist())]
        order = np.concatenate([order, np.array(extra, dtype=order.dtype)]) if extra else order
        sel = torch.as_tensor(order, device=h.device)
        hp = h[position].float()
        first = gate if gate is not None else up  # the linear map the activation function reads
        gate_rows = first.weight.index_select(0, sel).float()  # (k, d)
        pre = gate_rows @ hp + (first.bias.float()[sel] if first.bias is not None else 0)
        up_rows = up.weight.index_select(0, sel).float() if gate is not None else None
        up_v = (up_rows @ hp + (up.bias.float()[sel] if up.bias is not None else 0)) if up_rows is not None else None
        out_rows = down_rows.index_select(0, sel).float()  # (k, d)
        pushed = None
        if rows_t is not None:
            a_sel = torch.as_tensor(acts[order], device=rows_t.device)
            scale = torch.where(a_sel != 0, a_sel, torch.ones_like(a_sel))  # a silent neuron: per unit of activation
            rows_sel = (rows_t.index_select(0, sel.to(rows_t.device)) * scale[:, None]).to(unembedding_t.device)
            pushed = rows_sel @ unembedding_t.float() * logit_scale  # (k, vocab)
            top = torch.topk(pushed, PUSHED, dim=1)
            bottom = torch.topk(-pushed, PUSHED, dim=1)
    as_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    neurons = []
    for r, j in enumerate(order):
        up_list = down_list = ()
        if pushed is not None:
            up_list = tuple((int(t), display(int(t)), float(v)) for v, t in zip(top.values[r], top.indices[r]))
            down_list = tuple((int(t), display(int(t)), -float(v)) for v, t in zip(bottom.values[r], bottom.indices[r]))
        neurons.append(Neuron(
            index=int(j), activation=float(acts[j]), pre_activation=float(pre[r]),
            up=float(up_v[r]) if up_v is not None else None, write=float(writes[j]), input_row=as_np(gate_rows[r]),
            up_row=as_np(up_rows[r]) if up_rows is not None else None, output_row=as_np(out_rows[r]),
            pushes_up=up_list, pushes_down=down_list, per_unit=bool(acts[j] == 0),
            strip=np.ascontiguousarray(acts_all[:, j])))
    direct = rows_t is not None
    mlp_effect = float(neurons_effect + bias_effect) if direct else float("nan")
    return MlpNeurons(stack=stack, layer=layer, position=position, token_id=token_id, token=token, rank_by=rank_by,
                      gated=gate is not None, activation_function=activation_function, d_ff=int(acts.shape[0]),
                      neurons=tuple(neurons), mlp_effect=mlp_effect, bias_effect=float(bias_effect),
                      neurons_effect=float(neurons_effect), activations=acts.astype(np.float32),
                      writes=writes.astype(np.float32), residual=residual, note=note)


def _layer_writes(model, walk: _Walk, values: dict[str, float], trace: Trace, logits: np.ndarray,  # noqa: ANN001
                  token_id: int) -> LayerWrites:
    n = len(walk.resid_norms)

    def per_layer(prefix: str) -> np.ndarray:
        out = np.zeros(n, dtype=np.float64)
        for key, v in values.items():
            layer, _, rest = key[1:].partition(".")
            if key.startswith("L") and layer.isdigit() and rest[:1] == prefix and (rest[1:].isdigit() or rest[1:] == "bias"):
                out[int(layer)] += v
        return out.astype(np.float32)

    enc_dec = trace.family == "encoder-decoder"
    mlp = np.array([values.get(f"L{i}.MLP", 0.0) for i in range(n)], dtype=np.float32)
    attn, cross = per_layer("H"), per_layer("X") if enc_dec else None
    layer_sum = float(attn.sum(dtype=np.float64) + mlp.sum(dtype=np.float64) + (cross.sum(dtype=np.float64) if enc_dec else 0))
    other = float(sum(values.values())) - values.get("embeddings", 0.0) - layer_sum
    return LayerWrites(
        embeddings_norm=walk.added["embeddings"], embeddings_effect=values.get("embeddings", 0.0),
        attn_norms=np.array([walk.added[f"L{i}.attn"] for i in range(n)], dtype=np.float32), attn_effects=attn,
        cross_norms=np.array([walk.added[f"L{i}.cross"] for i in range(n)], dtype=np.float32) if enc_dec else None,
        cross_effects=cross, mlp_norms=np.array([walk.added[f"L{i}.MLP"] for i in range(n)], dtype=np.float32),
        mlp_effects=mlp, resid_norms=np.array(walk.resid_norms, dtype=np.float32), other_effect=other,
        logit=_pre_cap(model, logits, token_id)[0])


def _native_residual_stream(model, trace: Trace, position: int, token_id: int | None = None) -> LayerWrites:  # noqa: ANN001
    """Per layer, what attention (and cross-attention) and the MLP added to the residual stream at `position`:
    their norms and their direct effects on `token_id`'s logit (default: the most likely next token)."""
    logits, token_id = _check_position(trace, position, token_id)
    with model.guard():
        walk = _walk(model, trace, position, token_id)
        values = _values(model, walk, token_id)
    return _layer_writes(model, walk, values, trace, logits, token_id)


# -- embeddings and positions -------------------------------------------------------------------
def _native_nearest_tokens(model, token_id: int, k: int = 10, metric: str = "cosine") -> list[tuple[int, str, float]]:  # noqa: ANN001
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


def _native_positions_view(model, n: int = 128) -> dict:  # noqa: ANN001
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
    from .rotary import inv_frequencies

    return {"scheme": "rotary", "what": "rotation frequency (radians per position) of each pair of dims, per layer type",
            "array": np.stack([inv_frequencies(r).numpy() for r in ropes]),
            "labels": [f"layers {', '.join(map(str, layers[r]))}: base {r.theta:g}, {r.kind}" for r in ropes]}


# -- one interface, one implementation per backend ----------------------------------------------
class NativeExplainer:
    """The explanations over the native engine's network (model.net). Every model has an `explainer` with these
    methods (engine.hf_backend.explain.HFExplainer for transformers' models); the functions below dispatch to it."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model = model

    def inside_head(self, trace: Trace, kind: str, layer: int, head: int, query: int) -> InsideHead:
        return _native_inside_head(self.model, trace, kind, layer, head, query)

    def attribute(self, trace: Trace, position: int, token_id: int | None = None) -> Attribution:
        return _native_attribute(self.model, trace, position, token_id)

    def mlp_neurons(self, trace: Trace, layer: int, position: int, token_id: int | None = None, k: int = 20,
                    rank_by: str = "write", stack: str | None = None, include: Sequence[int] = ()) -> MlpNeurons:
        return _native_mlp_neurons(self.model, trace, layer, position, token_id, k, rank_by, stack, include)

    def residual_stream(self, trace: Trace, position: int, token_id: int | None = None) -> LayerWrites:
        return _native_residual_stream(self.model, trace, position, token_id)

    def nearest_tokens(self, token_id: int, k: int = 10, metric: str = "cosine") -> list[tuple[int, str, float]]:
        return _native_nearest_tokens(self.model, token_id, k, metric)

    def positions_view(self, n: int = 128) -> dict:
        return _native_positions_view(self.model, n)

    def lens_logits(self, trace: Trace, position: int) -> Tensor:
        """(layers, vocab) logits read off the residual stream after each layer of the main stack at `position`:
        the final norm (where the model has one) and the output head. Call under model.guard()."""
        model, net = self.model, self.model.net
        residuals: list = []
        ids = torch.tensor([list(trace.token_ids)], device=model.device)
        if model.family == "encoder":
            net.encode(ids, residuals=residuals)
            stack = net.encoder
        else:
            memory = None
            if trace.source_ids is not None:
                memory = net.encode(torch.tensor([list(trace.source_ids)], device=model.device))
            net.decode(ids, memory=memory, residuals=residuals)
            stack = net.decoder
        last = residuals[-1].device  # over several devices: every layer's row where the final norm is
        rows = torch.stack([r[0, position].to(last) for r in residuals])  # (layers, d)
        if stack.final_norm is not None:
            rows = stack.final_norm(rows)
        return net.mlm_logits(rows) if model.family == "encoder" else net.logits(rows)


def inside_head(model, trace: Trace, kind: str, layer: int, head: int, query: int) -> InsideHead:  # noqa: ANN001
    """The chain of one head for one query: q·k → scale → (soft-cap) → (+ bias) → mask → softmax → values."""
    return model.explainer.inside_head(trace, kind, layer, head, query)


def attribute(model, trace: Trace, position: int, token_id: int | None = None) -> Attribution:  # noqa: ANN001
    """Direct logit attribution at `position` for `token_id` (default: the most likely next token)."""
    return model.explainer.attribute(trace, position, token_id)


def mlp_neurons(model, trace: Trace, layer: int, position: int, token_id: int | None = None, k: int = 20,  # noqa: ANN001
                rank_by: str = "write", stack: str | None = None, include: Sequence[int] = ()) -> MlpNeurons:
    """The neurons of one MLP at one position, ranked by their write toward `token_id` (default: the most likely
    next token; rank_by "write": most positive first, "abs_write": largest either way) or by |activation|
    ("activation"; the only ranking for encoder-only models and encoder stacks, whose MLPs reach the logits
    through non-linear layers). With the residual stream at the position: per layer, what attention and the
    MLP added. Writes are direct logit attribution (norms linearised as attribute() does): every neuron's write
    plus the output bias equal attribute()'s part for this MLP. `include`: neurons listed after the k ranked
    ones even when they rank lower (e.g. the ablated ones, whose activation is now 0)."""
    return model.explainer.mlp_neurons(trace, layer, position, token_id, k, rank_by, stack, include)


def expert_neurons(model, trace: Trace, layer: int, position: int, k: int = 20,  # noqa: ANN001, ANN201
                   token_id: int | None = None):
    """A mixture-of-experts layer at `position`: the experts the router chose, their weights, and each one's
    neurons with their direct effects on `token_id`'s logit (default: the most likely next token; a decoder's
    parts only), adding up to the expert's part of attribute()'s MLP part (engine.routing.ExpertsInside). Only the
    transformers backend has MoE layers; others refuse."""
    explain = getattr(model.explainer, "expert_neurons", None)
    if explain is None:
        raise CaptureError(f"{model.name} has no mixture-of-experts layers; Inside the MLP shows its neurons")
    return explain(trace, int(layer), int(position), int(k), None if token_id is None else int(token_id))


def residual_stream(model, trace: Trace, position: int, token_id: int | None = None) -> LayerWrites:  # noqa: ANN001
    """Per layer, what attention (and cross-attention) and the MLP added to the residual stream at `position`:
    their norms and their direct effects on `token_id`'s logit (default: the most likely next token)."""
    return model.explainer.residual_stream(trace, position, token_id)


def nearest_tokens(model, token_id: int, k: int = 10, metric: str = "cosine") -> list[tuple[int, str, float]]:  # noqa: ANN001
    """The k tokens whose input embeddings are nearest to `token_id`'s (itself excluded): (id, token, score)."""
    return model.explainer.nearest_tokens(token_id, k, metric)


def positions_view(model, n: int = 128) -> dict:  # noqa: ANN001
    """The positional scheme as arrays to draw: {"scheme", "what", "array", "labels"}."""
    return model.explainer.positions_view(n)
