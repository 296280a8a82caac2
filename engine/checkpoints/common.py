"""Small helpers shared by the converters."""

from __future__ import annotations

from ..errors import UnsupportedArchitectureError
from .mapping import Source, cat, src

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
                "gelu_fast": "gelu_new", "silu": "silu", "swish": "silu"}


def activation_of(name: str) -> str:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"activation {name!r} is not supported; supported: {', '.join(sorted(_ACTIVATIONS))}") from None


def linear(m: dict[str, Source], ours: str, theirs: str, bias: bool = True) -> None:
    """A Linear or LayerNorm: weight (and bias) copied under the same suffixes."""
    m[f"{ours}.weight"] = src(f"{theirs}.weight")
    if bias:
        m[f"{ours}.bias"] = src(f"{theirs}.bias")


def fused(m: dict[str, Source], ours: str, theirs: list[str], bias: bool = True) -> None:
    """Separate checkpoint projections (q, k, v or k, v) concatenated into one of ours."""
    m[f"{ours}.weight"] = cat(*(f"{t}.weight" for t in theirs))
    if bias:
        m[f"{ours}.bias"] = cat(*(f"{t}.bias" for t in theirs))
