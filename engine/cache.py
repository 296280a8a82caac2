"""KV cache: preallocated per-layer buffers that grow by doubling and truncate in O(1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .rebuild import KeyArena


class LayerCache:
    """Keys and values of one decoder layer's self-attention, plus its cross-attention K/V."""

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, nh, capacity, hs)
        self.v: Tensor | None = None
        self.length = 0
        self.cross: tuple[Tensor, Tensor] | None = None  # encoder K/V, computed once per source

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) after the current length; return every key/value so far."""
        new_len = self.length + k.shape[2]
        if self.k is None or new_len > self.k.shape[2]:
            capacity = max(64, new_len, 2 * (self.k.shape[2] if self.k is not None else 0))
            self.k = self._grown(self.k, k, capacity)
            self.v = self._grown(self.v, v, capacity)
        self.k[:, :, self.length : new_len] = k
        self.v[:, :, self.length : new_len] = v
        self.length = new_len
        return self.k[:, :, :new_len], self.v[:, :, :new_len]

    def _grown(self, old: Tensor | None, like: Tensor, capacity: int) -> Tensor:
        B, nh, _, hs = like.shape
        buf = torch.empty(B, nh, capacity, hs, dtype=like.dtype, device=like.device)
        if old is not None and self.length:
            buf[:, :, : self.length] = old[:, :, : self.length]
        return buf


class KVCache:
    def __init__(self, n_layers: int, rebuild: bool = False) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.rebuild = rebuild  # forwards through this cache keep what rebuilds patterns, not the patterns
        self.key_arenas: dict[str, KeyArena] = {}  # capture name -> keys on the CPU for rebuilding (rebuild only)

    def key_views(self) -> dict[str, np.ndarray]:
        """capture name -> read-only keys (kv heads, length, hs) so far, for a Trace."""
        return {name: arena.view() for name, arena in self.key_arenas.items()}

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens; the buffers stay for reuse."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        for layer in self.layers:
            layer.length = length
        for arena in self.key_arenas.values():
            arena.truncate(length)
