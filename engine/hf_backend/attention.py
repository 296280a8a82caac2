"""Our attention function in transformers' AttentionInterface: eager attention's numbers, never a T × S tensor per
layer (the CPU's fused kernel where it forms the same scores, else float32 row chunks), recording what rebuilds
every pattern (q as used, the keys it added, each row's log-sum-exp) and applying the head gates.

Every attention call of every transformers model passes through `inspector_attention(module, query, key, value,
attention_mask, **kwargs)` once `model.set_attn_implementation(NAME)`: query (B, nh, T, hs) after QK-norm and
RoPE, key/value (B, nkv, S, hs) with the cache included and key/value heads not repeated. What to record and
which gates to apply comes from the forward in progress on this thread (`active`), never from globals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import CaptureError
from ..rebuild import ScoreRule
from .masks import MaskRule, inspector_mask

NAME = "attention_inspector"  # the name registered in AttentionInterface and AttentionMaskInterface
SCORE_CHUNK_BYTES = 64 * 1024 * 1024  # float32 scores of one chunk of query rows: never T × S per layer at once

_local = threading.local()
# the CPU's fused attention that also returns each row's log-sum-exp (a private op: absent -> explicit chunks)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass
class ForwardState:
    """What one forward on this thread records and applies. `names`: id(attention module) -> capture name;
    `gates`: capture name -> per-head gate tensor (only where one differs from 1); `recorder`: the Recorder
    (capture name -> (q, new keys, lse)) or None; `rules`: capture name -> the ScoreRule seen in this forward;
    `routes`: MoE layer -> (experts, weights) tensors; `shapes`: capture name -> the mask rule's (causal, window,
    window_ahead, chunk), kept by the model across forwards (probing a rule costs more than checking it)."""

    names: dict[int, str]
    gates: dict[str, Tensor]
    shapes: dict[str, tuple] = field(default_factory=dict)
    recorder: dict | None = None
    cross_keys: bool = True  # cross-attention: record the encoder's keys (the first decode of a session only)
    rules: dict[str, ScoreRule] = field(default_factory=dict)
    routes: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # MoE layer -> {expert: factor != 1}: the router's weight for that expert is multiplied by it (expert ablation)
    expert_gates: dict[int, dict[int, float]] = field(default_factory=dict)
    hidden: list[Tensor] = field(default_factory=list)  # the text stack's final hidden states (HFModel's hook)
    # explanations: capture name -> (query, key, value) as the attention function received them, for the names
    # asked (engine.hf_backend.explain fills the keys with None before the forward)
    taps: dict[str, tuple[Tensor, Tensor, Tensor] | None] = field(default_factory=dict)


@contextmanager
def active(state: ForwardState) -> Iterator[ForwardState]:
    previous = getattr(_local, "state", None)
    _local.state = state
    try:
        yield state
    finally:
        _local.state = previous


def current() -> ForwardState | None:
    return getattr(_local, "state", None)


def register() -> None:
    """Register the attention and mask functions under NAME (idempotent). A name with no mask function would get
    no mask at all from transformers, so both are registered together."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, inspector_attention)
    AttentionMaskInterface.register(NAME, inspector_mask)


def _rows_mask(mask: object, a: int, n: int, device: torch.device) -> Tensor | None:
    """Rows a..a+n of the mask as bool (B|1, 1, n, S) (True = may look), or None for no mask."""
    if mask is None:
        return None
    if isinstance(mask, MaskRule):
        return mask.allowed(a, n, device)
    if isinstance(mask, Tensor):  # a 4-d mask the caller prepared itself: bool, or additive float
        rows = mask[..., a : a + n, :]
        return rows if rows.dtype == torch.bool else rows > torch.finfo(rows.dtype).min / 2
    raise TypeError(f"unexpected attention mask {type(mask).__name__}")


def _mask_shape(state: ForwardState | None, name: str | None, mask: MaskRule) -> tuple:
    """(causal, window, window_ahead, chunk) of a layer's mask rule, probed once per layer (per rule without a name)."""
    if state is None or name is None:
        return mask.describe()
    shape = state.shapes.get(name)
    if shape is None:
        shape = state.shapes[name] = mask.describe()
    return shape


def _fused_alignment(mask: object, shape: tuple | None, T: int, S: int) -> bool | None:
    """is_causal for the CPU's fused attention (which also returns each row's lse) when it forms exactly these
    scores, else None: no soft-cap, and a mask that is plain causal over a fresh prefill, plain causal for one
    query at the end, or no mask at all."""
    if _FLASH_CPU is None or not isinstance(mask, MaskRule) or mask.padding is not None or shape is None:
        return None
    causal, window, ahead, chunk = shape
    if window is not None or ahead is not None or chunk is not None:
        return None
    if not causal:
        return False
    if T == S and mask.q_offset == mask.kv_offset == 0:
        return True
    if T == 1 and mask.q_offset == mask.kv_offset + S - 1:
        return False  # the last query sees every key
    return None


def _attend_fused(query: Tensor, key: Tensor, value: Tensor, scaling: float, is_causal: bool) -> tuple[Tensor, Tensor]:
    B, nh, T, hs = query.shape
    nkv = key.shape[1]
    g = nh // nkv
    if g > 1 and not is_causal:
        # no mask between rows (a decode step, an encoder): the g query heads sharing a key/value head are g × T rows
        # of that head (transformers' pack_gqa), so its keys and values are not copied g times every step
        y, lse = _FLASH_CPU(query.reshape(B, nkv, g * T, hs), key, value, 0.0, False, attn_mask=None, scale=scaling)
        return y.reshape(B, nh, T, y.shape[-1]), lse.reshape(B, nh, T).float()
    k, v = (key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)) if g > 1 else (key, value)
    y, lse = _FLASH_CPU(query, k, v, 0.0, is_causal, attn_mask=None, scale=scaling)
    return y, lse.float()


def _attend_chunked(query: Tensor, key: Tensor, value: Tensor, mask: object, scaling: float, softcap: float | None,
                    check) -> tuple[Tensor, Tensor]:  # noqa: ANN001 - check(allowed rows, first row) or None
    """Scores in float32 one chunk of query rows at a time: -> output (B, nh, T, hv), lse (B, nh, T) without sinks."""
    B, nh, T, hs = query.shape
    nkv, S = key.shape[1], key.shape[2]
    g = nh // nkv
    kf = key.float().transpose(-2, -1)  # (B, nkv, hs, S)
    chunk = max(1, SCORE_CHUNK_BYTES // (4 * nh * max(1, S)))
    ys, lses = [], []
    for a in range(0, T, chunk):
        n = min(chunk, T - a)
        s = (query[:, :, a : a + n].float().reshape(B, nkv, g * n, hs) @ kf).view(B, nh, n, S)
        s.mul_(scaling)
        if softcap is not None:
            s = torch.tanh(s.div_(softcap)).mul_(softcap)
        allowed = _rows_mask(mask, a, n, query.device)
        if allowed is not None:
            if check is not None:
                check(allowed, a)
            s.masked_fill_(~allowed, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s.sub_(lse[..., None])).to(value.dtype)
        ys.append((p.reshape(B, nkv, g * n, S) @ value).view(B, nh, n, value.shape[-1]))  # MLA: v heads differ in size
        lses.append(lse)
    return (ys[0], lses[0]) if len(ys) == 1 else (torch.cat(ys, dim=2), torch.cat(lses, dim=2))


def inspector_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: object,
                        scaling: float | None = None, dropout: float = 0.0, softcap: float | None = None,
                        s_aux: Tensor | None = None, **_kwargs) -> tuple[Tensor, None]:
    """softmax(soft-cap(q·kᵀ·scale) + mask [+ sink]) v, exactly as transformers' eager functions form it, never
    a T × S tensor per layer: the CPU's fused kernel where it forms the same scores, else float32 chunks of query
    rows. -> (output (B, T, nh, hs), None)."""
    state = current()
    B, nh, T, _hs = query.shape
    nkv, S = key.shape[1], key.shape[2]
    if scaling is None:
        scaling = module.head_dim**-0.5
    name = state.names.get(id(module)) if state is not None else None
    if name is not None and name in state.taps:
        state.taps[name] = (query, key, value)
    recorder = state.recorder if state is not None else None
    record = recorder is not None and name is not None and (recorder.only is None or name in recorder.only)
    if record and attention_mask is not None and not isinstance(attention_mask, MaskRule):
        raise CaptureError(f"{name} was handed a ready-made mask tensor, whose rule cannot be rebuilt; "
                           "run with capture=False")
    rule = attention_mask if isinstance(attention_mask, MaskRule) else None
    shape = _mask_shape(state, name, rule) if rule is not None else None
    fused = None
    if softcap is None and query.device.type == "cpu" and value.shape[-1] == query.shape[-1]:  # MLA: v heads differ
        fused = _fused_alignment(attention_mask, shape, T, S)
    # what is recorded must be rebuilt by the rule's description: evaluated rows are checked against it, except for
    # transformers' own plain causal / bidirectional rules, whose description is known exactly (MaskRule.known)
    verify = record and rule is not None and rule.known != shape
    if fused is not None:
        if verify:  # the rule's first rows against its description (the fused kernel never evaluates the rule)
            n = min(T, 64)
            rule.check_chunk(rule.allowed(0, n, query.device), 0, name, shape)
        y, lse = _attend_fused(query, key, value, float(scaling), fused)
    else:
        check = (lambda allowed, a: rule.check_chunk(allowed, a, name, shape)) if verify else None
        y, lse = _attend_chunked(query, key, value, attention_mask, float(scaling), softcap, check)
    if s_aux is not None:  # gpt-oss: one more logit per head in the denominator, with no value
        total = torch.logaddexp(lse, s_aux.float().view(1, nh, 1).expand_as(lse))
        y = y * torch.exp(lse - total)[..., None].to(y.dtype)
        lse = total
    if state is not None and name in state.gates:  # ablation: each query head's output times its gate
        y = y * state.gates[name].view(1, nh, 1, 1).to(y.device, y.dtype)  # a no-op on one device
    if record:
        if name.endswith(".cross_attn"):  # the source's keys, once per session (later calls reuse the cached ones)
            new_keys = key if state.cross_keys else None
        elif name.startswith("encoder."):
            new_keys = key
        else:  # decoder self-attention: the cache holds the keys before these T
            new_keys = key[:, :, S - T :]
        recorder[name] = (query, new_keys, lse)
        if name not in state.rules:
            causal, window, ahead, chunk = shape if shape is not None else (False, None, None, None)
            sinks = None
            if s_aux is not None:
                sinks = s_aux.detach().float().cpu().numpy().copy()
                sinks.flags.writeable = False
            state.rules[name] = ScoreRule(scale=float(scaling), causal=causal, group=nh // nkv,
                                          softcap=float(softcap) if softcap is not None else None, window=window,
                                          window_ahead=ahead, chunk=chunk, sinks=sinks)
    return y.transpose(1, 2).contiguous(), None
