"""Rotary positions (RoPE): frequencies from a RopeSpec, cos/sin tables for a span of positions, the rotation.

Formulas follow `transformers`' modeling_rope_utils exactly (same dtypes, same order of operations), so
patterns agree to float32 rounding. "dynamic" NTK scaling only changes frequencies beyond the trained
context, which the engine never exceeds (the context limit is max_position_embeddings), so inside it it
is the default rotation. "longrope" uses its short factors; its long factors apply only beyond the
original context, which the converter makes the limit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import RopeSpec


def inv_frequencies(spec: RopeSpec) -> Tensor:
    """(rotary_dim / 2,) float32 inverse frequencies on the CPU."""
    dim = spec.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    if spec.kind == "longrope":
        return 1.0 / (torch.tensor(spec.short_factor, dtype=torch.float32) * spec.theta**exponents)
    inv = 1.0 / (spec.theta**exponents)
    if spec.kind == "linear":
        return inv / spec.factor
    if spec.kind == "llama3":
        return _llama3(inv, spec)
    return inv  # "default", "dynamic"


def _llama3(inv: Tensor, spec: RopeSpec) -> Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, the band between interpolated."""
    old = spec.original_max_positions
    low_wavelen, high_wavelen = old / spec.low_freq_factor, old / spec.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / spec.factor, inv)
    smooth = (old / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
    smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def cos_sin(inv_freq: Tensor, start: int, stop: int, attention_factor: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin (T, rotary_dim) of positions start..stop-1, computed in float32, cast to `dtype`."""
    positions = torch.arange(start, stop, device=inv_freq.device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, T, hs) by position; only the first cos.shape[-1] dims when the rotation is partial."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)
