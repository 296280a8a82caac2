"""Transformer building blocks with an explicit attention softmax, so every pattern exists.

Shapes: B batch, T query tokens, S key tokens, nh heads, hs head size, d model width.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import LayerCache
from .cancel import checkpoint
from .config import AttentionSpec, ModelConfig, RopeSpec
from .rotary import apply_rotary

log = logging.getLogger(__name__)

Capture = dict | None  # capture name -> pattern (B, nh, T, S); None turns capture off
SCORE_CHUNK_BYTES = 64 * 1024 * 1024  # float32 scores of one chunk of query rows when attention is explicit


class Probe(dict):
    """A capture that records the insides of chosen attention points (engine.explain): capture name ->
    {"q_pre", "k_pre": before the rotation; "q", "k", "v": as used; "y": each head's output (B, nh, T, hs)}.
    The forward itself runs as without capture."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names


class Recorder(dict):
    """A capture: capture name -> the pattern (B, nh, T, S), or with `rebuild` what rebuilds it:
    (q (B, nh, T, hs), the keys this forward added (B, nkv, S, hs) or None, row log-sum-exp (B, nh, T)).
    `only`: the capture names to record (None: all); the other layers run as without capture."""

    def __init__(self, rebuild: bool = False, only: frozenset[str] | None = None) -> None:
        super().__init__()
        self.rebuild = rebuild
        self.only = only


def activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    raise ValueError(f"unknown activation {name!r}")


class RMSNorm(nn.Module):
    """Scale-only norm (no mean, no bias), normalised in float32. `kind` says where the weight is applied:
    "rmsnorm" after casting back (T5, Llama), "rmsnorm_f32" before (OLMo 2), "rmsnorm_gemma" before, as (1 + w)."""

    def __init__(self, d: int, eps: float, kind: str = "rmsnorm") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d) if kind == "rmsnorm_gemma" else torch.ones(d))
        self.eps = eps
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.kind == "rmsnorm":
            return self.weight * normed.to(x.dtype)
        w = self.weight.float()
        return (normed * (1.0 + w if self.kind == "rmsnorm_gemma" else w)).to(x.dtype)


def make_norm(cfg: ModelConfig, d: int | None = None) -> nn.Module:
    d = cfg.d_model if d is None else d
    if cfg.norm == "layernorm":
        return nn.LayerNorm(d, eps=cfg.norm_eps)
    return RMSNorm(d, cfg.norm_eps, cfg.norm)


def relative_position_bucket(relative: Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> Tensor:
    """T5's bucketing of (key - query) distances: exact for small ones, logarithmic up to max_distance."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets += (relative > 0).long() * n_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = n_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (
        torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact) * (n_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=n_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to the scores of every layer of one stack."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.table = nn.Embedding(cfg.relative_buckets, cfg.n_heads)
        self.bidirectional = bidirectional
        self.n_buckets = cfg.relative_buckets
        self.max_distance = cfg.relative_max_distance

    def at_offsets(self, offsets: Tensor) -> Tensor:
        """The bias for key - query distances `offsets` (n,) -> (heads, n)."""
        buckets = relative_position_bucket(offsets, self.bidirectional, self.n_buckets, self.max_distance)
        return self.table(buckets).t()

    def forward(self, q_start: int, n_q: int, n_k: int) -> Tensor:
        device = self.table.weight.device
        q_pos = torch.arange(q_start, q_start + n_q, device=device)[:, None]
        k_pos = torch.arange(n_k, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.n_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, nh, T, S)


class _Causal:
    """LayerInputs.masks value: leave causal masking to the kernels (a T x T float mask is 4 GB at 32k)."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _Causal()
# the CPU's fused attention that also returns each row's log-sum-exp (a private op: absent -> explicit chunks)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def mask_rows(mask: Tensor | _Causal | None, a: int, n: int, n_keys: int, device: torch.device) -> Tensor | None:
    """Rows a..a+n of an additive mask (made on the fly for CAUSAL)."""
    if mask is CAUSAL:
        return additive_mask(a, n, n_keys, True, None, device)
    return None if mask is None else mask[..., a : a + n, :]


@dataclass
class LayerInputs:
    """What one forward hands to every layer, built once by the stack: the additive masks (one per
    sliding window; None = full), the rotary tables (one per RopeSpec), and the encoder memory."""

    masks: dict[int | None, Tensor | _Causal | None]  # CAUSAL: a plain causal mask from position 0, never materialised
    rotary: dict[RopeSpec, tuple[Tensor, Tensor]] = field(default_factory=dict)
    memory: Tensor | None = None
    memory_bias: Tensor | None = None

    def to(self, device: torch.device) -> LayerInputs:
        """The same inputs on `device` (a forward over several devices crossing a boundary)."""
        def move(t):  # noqa: ANN001, ANN202
            return t.to(device) if isinstance(t, Tensor) else t

        return LayerInputs({w: move(m) for w, m in self.masks.items()},
                           {r: (move(c), move(s)) for r, (c, s) in self.rotary.items()},
                           move(self.memory), move(self.memory_bias))


class Attention(nn.Module):
    """Multi-head attention: softmax(soft-cap(Q Kᵀ · scale) + mask) V, with the pattern captured by name.

    Grouped-query attention keeps K and V at `n_kv_heads`; each group of query heads reads its shared
    key/value head without copying it. The pattern is recorded per query head.
    `gate` multiplies each query head's output (1 = untouched, 0 = ablated) before the output projection.
    """

    def __init__(self, cfg: ModelConfig, spec: AttentionSpec, name: str, cross: bool = False) -> None:
        super().__init__()
        d, hs = cfg.d_model, spec.head_dim
        self.name, self.cross, self.spec = name, cross, spec
        self.n_heads, self.n_kv, self.head_dim = spec.n_heads, spec.n_kv_heads, hs
        self.inner, self.kv_inner = spec.n_heads * hs, spec.n_kv_heads * hs
        if cross:
            self.q = nn.Linear(d, self.inner, bias=spec.qkv_bias)
            self.kv = nn.Linear(d, 2 * self.kv_inner, bias=spec.qkv_bias)
        else:
            self.qkv = nn.Linear(d, self.inner + 2 * self.kv_inner, bias=spec.qkv_bias)
        self.out = nn.Linear(self.inner, d, bias=spec.out_bias)
        if spec.qk_norm == "head":
            self.q_norm, self.k_norm = make_norm(cfg, hs), make_norm(cfg, hs)
        elif spec.qk_norm == "full":
            self.q_norm, self.k_norm = make_norm(cfg, self.inner), make_norm(cfg, self.kv_inner)
        self.register_buffer("gate", torch.ones(spec.n_heads), persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        self.gate = torch.ones(self.n_heads, device=device)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hs)

    def _project(self, x: Tensor, ctx: LayerInputs, cache: LayerCache | None, probe: dict | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """-> q (B, nh, T, hs), every key and value so far (B, nkv, S, hs), normed and rotated, and the keys
        this call computed (None when they came from the cache)."""
        spec = self.spec
        if self.cross:
            q = self.q(x)
            new = None
            if cache is not None and cache.cross is not None:
                k, v = cache.cross
            else:
                k, v = (self._heads(t, self.n_kv) for t in self.kv(ctx.memory).split(self.kv_inner, dim=-1))
                new = k
                if cache is not None:
                    cache.cross = (k, v)
            return self._heads(q, self.n_heads), k, v, new
        q, k, v = self.qkv(x).split((self.inner, self.kv_inner, self.kv_inner), dim=-1)
        if spec.qk_norm == "full":  # OLMo 2: over the whole projection, before splitting into heads
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv), self._heads(v, self.n_kv)
        if spec.qk_norm == "head":  # Qwen 3, Gemma 3: per head, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        if probe is not None:
            probe["q_pre"], probe["k_pre"] = q, k
        if spec.rope is not None:
            cos, sin = ctx.rotary[spec.rope]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        new = k
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v, new

    def _grouped(self, x: Tensor) -> Tensor:
        """(B, nh, T, X) -> (B, nkv, g·T, X): the rows of the query heads that share a key/value head, stacked,
        so one plain batched matmul per key/value head serves them all (no copy of K or V per query head)."""
        B, _, T, X = x.shape
        return x.reshape(B, self.n_kv, self.spec.group * T, X)

    def _attend_with_lse(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """softmax attention without keeping the pattern: -> output (B, nh, T, hs) and each row's log-sum-exp
        (B, nh, T) in float32, from which any pattern entry is exp(score - lse). Scores are formed in float32."""
        spec = self.spec
        B, nh, T, hs = q.shape
        S = k.shape[2]
        if _FLASH_CPU is not None and q.device.type == "cpu" and spec.softcap is None and T > 1:
            kk, vv = (k.repeat_interleave(spec.group, dim=1), v.repeat_interleave(spec.group, dim=1)) if spec.group > 1 else (k, v)
            causal = mask is CAUSAL
            try:
                y, lse = _FLASH_CPU(q, kk, vv, 0.0, causal, attn_mask=None if mask is None or causal else mask.to(q.dtype),
                                    scale=spec.scale)
                return y, lse.float()
            except (RuntimeError, TypeError) as exc:  # another torch's signature: the explicit chunks give the same
                log.debug("fused CPU attention with lse unavailable (%s); using explicit row chunks", exc)
        kf = k.float().transpose(-2, -1)  # (B, nkv, hs, S)
        chunk = max(1, SCORE_CHUNK_BYTES // (4 * nh * S))
        ys, lses = [], []
        for a in range(0, T, chunk):  # rows in chunks: never T x S per head at once
            if a:
                checkpoint()  # a very long prefill can also stop between row chunks of one layer
            n = min(chunk, T - a)
            s = self._grouped(q[:, :, a : a + n].float()) @ kf  # (B, nkv, g·n, S)
            s = s.view(B, nh, n, S)
            if spec.scale != 1.0:
                s = s * spec.scale
            if spec.softcap is not None:
                s = torch.tanh(s / spec.softcap) * spec.softcap
            rows = mask_rows(mask, a, n, S, q.device)
            if rows is not None:
                s = s + rows
            lse = torch.logsumexp(s, dim=-1)
            p = torch.exp(s - lse[..., None]).to(v.dtype)
            ys.append((self._grouped(p) @ v).view(B, nh, n, hs))
            lses.append(lse)
        return (ys[0], lses[0]) if len(ys) == 1 else (torch.cat(ys, dim=2), torch.cat(lses, dim=2))

    def forward(self, x: Tensor, ctx: LayerInputs, cache: LayerCache | None = None, capture: Capture = None) -> Tensor:
        B, T, _ = x.shape
        spec = self.spec
        probe = None
        only = getattr(capture, "only", None)
        if only is not None and self.name not in only:
            capture = None
        if isinstance(capture, Probe):
            probe = {} if self.name in capture.names else None
            if probe is not None:
                capture[self.name] = probe
            capture = None
        q, k, v, new_keys = self._project(x, ctx, cache, probe)
        mask = ctx.memory_bias if self.cross else ctx.masks[spec.window]
        if capture is None and spec.softcap is None:  # nothing to record: let torch pick a fused kernel
            causal = mask is CAUSAL
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None or causal else mask.to(q.dtype),
                                               is_causal=causal, scale=spec.scale, enable_gqa=self.n_kv != self.n_heads)
        elif capture is None or getattr(capture, "rebuild", False):
            y, lse = self._attend_with_lse(q, k, v, mask)
            if capture is not None:
                capture[self.name] = (q, new_keys, lse)
        else:
            S = k.shape[2]
            scores = (self._grouped(q) @ k.transpose(-2, -1)).view(B, self.n_heads, T, S)  # (B, nh, T, S)
            if spec.scale != 1.0:
                scores = scores * spec.scale
            if spec.softcap is not None:
                scores = torch.tanh(scores / spec.softcap) * spec.softcap
            full = mask_rows(mask, 0, T, S, q.device)
            if full is not None:
                scores = scores + full
            pattern = torch.softmax(scores.float(), dim=-1)
            if capture is not None:
                capture[self.name] = pattern
            y = (self._grouped(pattern.to(v.dtype)) @ v).view(B, self.n_heads, T, self.head_dim)  # (B, nh, T, hs)
        y = y * self.gate.view(1, -1, 1, 1).to(y.dtype)
        if probe is not None:
            probe.setdefault("q_pre", q)
            probe.setdefault("k_pre", k)
            probe.update(q=q, k=k, v=v, y=y)
        return self.out(y.transpose(1, 2).reshape(B, T, self.inner))


class FeedForward(nn.Module):
    """The MLP: each of its d_ff neurons reads the vector (a row of W_in, or W_gate and W_up), answers with one
    number (its activation: act(x·w_in), or act(x·w_gate)·(x·w_up) when gated) and writes that number times
    its row of W_out. `neuron_gate` (None, or a (d_ff,) tensor) multiplies each activation: 0 ablates a neuron."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = activation(cfg.activation)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias) if cfg.gated_ffn else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ffn_bias)
        self.neuron_gate: Tensor | None = None  # not a buffer: None costs nothing in the forward

    def activations(self, x: Tensor) -> Tensor:
        """(B, T, d) -> the neurons' activations (B, T, d_ff), gated as `neuron_gate` says."""
        if self.gate is not None:  # T5 v1.1 / SwiGLU: act(x W_gate) * (x W_up)
            h = self.act(self.gate(x)) * self.up(x)
        else:
            h = self.act(self.up(x))
        if self.neuron_gate is not None:
            h = h * self.neuron_gate.to(h.dtype)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.activations(x))


class Block(nn.Module):
    """One layer: self-attention, optional cross-attention, feed-forward, each wrapped in a residual with
    its norm placed as the layer spec says (pre, post, sandwich or output)."""

    def __init__(self, cfg: ModelConfig, stack: str, index: int, cross: bool) -> None:
        super().__init__()
        spec = cfg.layer_spec(stack, index)
        self.placement = spec.norm_placement
        self.attn = Attention(cfg, spec.attention, f"{stack}.{index}.attn")
        self.attn_norm = make_norm(cfg)
        self.cross_attn = Attention(cfg, spec.attention, f"{stack}.{index}.cross_attn", cross=True) if cross else None
        self.cross_norm = make_norm(cfg) if cross else None
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)
        if self.placement == "sandwich":  # Gemma: a second norm on each sublayer's output
            self.attn_post_norm, self.ffn_post_norm = make_norm(cfg), make_norm(cfg)

    def _residual(self, x: Tensor, f, norm: nn.Module, post_norm: nn.Module | None = None) -> Tensor:  # noqa: ANN001
        p = self.placement
        if p == "pre":
            return x + f(norm(x))
        if p == "post":
            return norm(x + f(x))
        if p == "sandwich":
            return x + post_norm(f(norm(x)))
        return x + norm(f(x))  # "output"

    def forward(self, x: Tensor, ctx: LayerInputs, cache: LayerCache | None = None, capture: Capture = None) -> Tensor:
        sandwich = self.placement == "sandwich"
        x = self._residual(x, lambda h: self.attn(h, ctx, cache, capture), self.attn_norm,
                           self.attn_post_norm if sandwich else None)
        if self.cross_attn is not None:
            x = self._residual(x, lambda h: self.cross_attn(h, ctx, cache, capture), self.cross_norm)
        return self._residual(x, self.ffn, self.ffn_norm, self.ffn_post_norm if sandwich else None)


def sinusoidal_table(n_positions: int, dim: int) -> Tensor:
    """Fixed positions as Marian/fairseq lay them out: sines in the first half, cosines in the second."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    half = (dim + 1) // 2
    out = np.empty((n_positions, dim), dtype=np.float64)
    out[:, :half] = np.sin(angle[:, 0::2])
    out[:, half:] = np.cos(angle[:, 1::2])
    return torch.from_numpy(out).float()


def additive_mask(
    q_start: int, n_q: int, n_k: int, causal: bool, key_mask: Tensor | None, device: torch.device,
    window: int | None = None,
) -> Tensor | None:
    """-inf where a query may not look: future keys (causal), keys `window` or more positions back
    (sliding window), and padding keys. (B|1, 1, T, S); None when nothing is blocked."""
    q_pos = torch.arange(q_start, q_start + n_q, device=device)[:, None]
    k_pos = torch.arange(n_k, device=device)[None, :]
    blocked = None
    if causal and (n_q > 1 or q_start + n_q < n_k):
        blocked = k_pos > q_pos
    if window is not None and q_start + n_q > window:
        far = k_pos <= q_pos - window
        blocked = far if blocked is None else blocked | far
    if blocked is not None:
        blocked = blocked[None, None]
    if key_mask is not None:
        pad = ~key_mask.bool()[:, None, None, :]
        blocked = pad if blocked is None else blocked | pad
    if blocked is None:
        return None
    return torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))
