"""Transformer building blocks with an explicit attention softmax, so every pattern exists.

Shapes: B batch, T query tokens, S key tokens, nh heads, hs head size, d model width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import LayerCache
from .config import ModelConfig

Capture = dict | None  # capture name -> pattern (B, nh, T, S); None turns capture off


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
    """T5's norm: scale only, no mean subtraction and no bias; computed in float32."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps).to(x.dtype)
        return self.weight * x


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


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

    def forward(self, q_start: int, n_q: int, n_k: int) -> Tensor:
        device = self.table.weight.device
        q_pos = torch.arange(q_start, q_start + n_q, device=device)[:, None]
        k_pos = torch.arange(n_k, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.n_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, nh, T, S)


class Attention(nn.Module):
    """Multi-head attention: softmax(Q Kᵀ · scale + bias) V, with the pattern captured by name.

    `gate` multiplies each head's output (1 = untouched, 0 = ablated) before the output projection.
    """

    def __init__(self, cfg: ModelConfig, name: str, cross: bool = False) -> None:
        super().__init__()
        d, inner = cfg.d_model, cfg.inner_dim
        self.name = name
        self.cross = cross
        self.n_heads, self.head_dim, self.inner = cfg.n_heads, cfg.head_dim, inner
        self.scale = cfg.head_dim**-0.5 if cfg.attn_scale else 1.0
        if cross:
            self.q = nn.Linear(d, inner, bias=cfg.attn_bias)
            self.kv = nn.Linear(d, 2 * inner, bias=cfg.attn_bias)
        else:
            self.qkv = nn.Linear(d, 3 * inner, bias=cfg.attn_bias)
        self.out = nn.Linear(inner, d, bias=cfg.attn_bias)
        self.register_buffer("gate", torch.ones(cfg.n_heads), persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        self.gate = torch.ones(self.n_heads, device=device)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None = None,
        cache: LayerCache | None = None,
        memory: Tensor | None = None,
        capture: Capture = None,
    ) -> Tensor:
        B, T, _ = x.shape
        if self.cross:
            q = self._heads(self.q(x))
            if cache is not None and cache.cross is not None:
                k, v = cache.cross
            else:
                k, v = (self._heads(t) for t in self.kv(memory).split(self.inner, dim=-1))
                if cache is not None:
                    cache.cross = (k, v)
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(self.inner, dim=-1))
            if cache is not None:
                k, v = cache.append(k, v)
        if capture is None:  # nothing to record: let torch pick a fused kernel
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype), scale=self.scale)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1))  # (B, nh, T, S)
            if self.scale != 1.0:
                scores = scores * self.scale
            if bias is not None:
                scores = scores + bias
            pattern = torch.softmax(scores.float(), dim=-1)
            capture[self.name] = pattern
            y = torch.matmul(pattern.to(v.dtype), v)  # (B, nh, T, hs)
        y = y * self.gate.view(1, -1, 1, 1).to(y.dtype)
        return self.out(y.transpose(1, 2).reshape(B, T, self.inner))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = activation(cfg.activation)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias) if cfg.gated_ffn else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ffn_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:  # T5 v1.1: act(x W_0) * (x W_1)
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """One layer: self-attention, optional cross-attention, feed-forward; pre- or post-norm residuals."""

    def __init__(self, cfg: ModelConfig, stack: str, index: int, cross: bool) -> None:
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.attn = Attention(cfg, f"{stack}.{index}.attn")
        self.attn_norm = make_norm(cfg)
        self.cross_attn = Attention(cfg, f"{stack}.{index}.cross_attn", cross=True) if cross else None
        self.cross_norm = make_norm(cfg) if cross else None
        self.ffn = FeedForward(cfg)
        self.ffn_norm = make_norm(cfg)

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None,
        cache: LayerCache | None = None,
        memory: Tensor | None = None,
        memory_bias: Tensor | None = None,
        capture: Capture = None,
    ) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), bias, cache, capture=capture)
            if self.cross_attn is not None:
                x = x + self.cross_attn(self.cross_norm(x), memory_bias, cache, memory, capture)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, bias, cache, capture=capture))
        if self.cross_attn is not None:
            x = self.cross_norm(x + self.cross_attn(x, memory_bias, cache, memory, capture))
        return self.ffn_norm(x + self.ffn(x))


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
    q_start: int, n_q: int, n_k: int, causal: bool, key_mask: Tensor | None, device: torch.device
) -> Tensor | None:
    """-inf where a query may not look: future keys (causal) and padding keys. (B|1, 1, T, S)"""
    blocked = None
    if causal and (n_q > 1 or q_start + n_q < n_k):
        q_pos = torch.arange(q_start, q_start + n_q, device=device)[:, None]
        k_pos = torch.arange(n_k, device=device)[None, :]
        blocked = (k_pos > q_pos)[None, None]
    if key_mask is not None:
        pad = ~key_mask.bool()[:, None, None, :]
        blocked = pad if blocked is None else blocked | pad
    if blocked is None:
        return None
    return torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))
