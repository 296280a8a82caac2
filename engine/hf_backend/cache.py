"""A session's KV cache on transformers' own Cache: back and branch crop it.

Attention layers use plain growing layers (sliding-window layers too: the mask rule applies the window, and
crop stays exact). Layers with recurrent state (Mamba, short convolution, linear attention) cannot be cropped:
their state is snapshotted after every forward (cloned tensors, within SNAPSHOT_BUDGET bytes, newest kept) and
restored on back(); a length whose snapshot was dropped is reached by recomputing the prefix from the tokens
(exact, slower), the next time the cache is used.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from ..rebuild import KeyArena

log = logging.getLogger(__name__)

SNAPSHOT_BUDGET = 512 * 1024 * 1024  # bytes of recurrent-state snapshots kept per session


def _new_hf_cache(config):  # noqa: ANN001, ANN202 - transformers config -> DynamicCache
    from transformers.cache_utils import (
        DynamicCache,
        DynamicLayer,
        DynamicSlidingWindowLayer,
        LinearAttentionAndFullAttentionLayer,
        LinearAttentionAndSlidingWindowAttentionLayer,
    )

    if getattr(config, "is_encoder_decoder", False):
        from transformers.cache_utils import EncoderDecoderCache

        inner = _new_hf_cache(config.get_text_config(decoder=True))
        return EncoderDecoderCache(inner, DynamicCache())
    cache = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, LinearAttentionAndSlidingWindowAttentionLayer):
            cache.layers[i] = LinearAttentionAndFullAttentionLayer(number_of_states=layer.number_of_states)
        elif type(layer) is DynamicSlidingWindowLayer:  # keeps only a window: could not be cropped back exactly
            cache.layers[i] = DynamicLayer()
    return cache


_RECURRENT: tuple[type, ...] = ()


def _recurrent(layer) -> bool:  # noqa: ANN001
    global _RECURRENT
    if not _RECURRENT:  # imported once (this runs for every layer after every forward)
        from transformers.cache_utils import LinearAttentionCacheLayerMixin

        _RECURRENT = (LinearAttentionCacheLayerMixin,)
    return isinstance(layer, _RECURRENT)


_STATE_FIELDS = ("conv_states", "recurrent_states", "is_conv_states_initialized", "is_recurrent_states_initialized",
                 "has_previous_state", "conv_kernel_size", "cumulative_length_linear", "device", "dtype")


def _clone(value):  # noqa: ANN001, ANN202
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return copy.copy(value)


def _nbytes(value) -> int:  # noqa: ANN001
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_nbytes(v) for v in value)
    return 0


class HFCache:
    """The tokens fed so far, transformers' cache for them, and (for rebuilding patterns) the keys of every
    recorded layer on the CPU. Same surface as engine.cache.KVCache: length, truncate, key_arenas, key_views."""

    rebuild = True

    def __init__(self, config) -> None:  # noqa: ANN001 - the model's transformers config
        self.config = config
        self.hf = _new_hf_cache(config)
        self.ids: list[int] = []
        self.key_arenas: dict[str, KeyArena] = {}
        self._snapshots: dict[int, dict[int, dict]] = {}  # length -> layer -> recurrent state
        self._valid = 0  # tokens the transformers cache really holds (below len(ids) after a truncate without snapshot)
        self._pending = False  # a forward is feeding tokens: the transformers cache may hold more than _valid
        self.cross_recorded = False  # encoder-decoder: the source's keys are in a recorded block already
        self._recurrent_of: tuple[list, int, bool] | None = None  # (layers list, its length, any recurrent?)

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def layers(self) -> list:
        """The self-attention (and recurrent) layers of the transformers cache."""
        return getattr(self.hf, "self_attention_cache", self.hf).layers

    @property
    def has_recurrent_layers(self) -> bool:
        layers = self.layers
        seen = self._recurrent_of
        if seen is None or seen[0] is not layers or seen[1] != len(layers):  # a new (or grown) cache: look again
            self._recurrent_of = seen = (layers, len(layers), any(_recurrent(layer) for layer in layers))
        return seen[2]

    def key_views(self) -> dict[str, np.ndarray]:
        return {name: arena.view() for name, arena in self.key_arenas.items()}

    def feeding(self, ids: list[int]) -> None:
        """Called before a forward over `ids`: they count from now on (truncate(start) undoes a failed forward)."""
        self.ids.extend(ids)
        self._pending = True

    def fed(self) -> None:
        """Called after a forward succeeded: the cache holds every token; snapshot recurrent state."""
        self._valid = len(self.ids)
        self._pending = False
        if not self.has_recurrent_layers:
            return
        snap = {i: {f: _clone(getattr(layer, f)) for f in _STATE_FIELDS if hasattr(layer, f)}
                for i, layer in enumerate(self.layers) if _recurrent(layer)}
        self._snapshots[self._valid] = snap
        total = sum(_nbytes(s) for s in self._snapshots.values())
        for length in sorted(self._snapshots):  # oldest first: back() mostly goes back one step
            if total <= SNAPSHOT_BUDGET or length == self._valid:
                break
            total -= _nbytes(self._snapshots.pop(length))

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        del self.ids[length:]
        for arena in self.key_arenas.values():
            arena.truncate(length)
        for k in [k for k in self._snapshots if k > length]:
            del self._snapshots[k]
        if length >= self._valid and not self._pending:
            return
        self._pending = False
        if length == 0:  # nothing to keep: a fresh cache (there is no snapshot of the empty state)
            self.hf = _new_hf_cache(self.config)
            self._valid = 0
            self.cross_recorded = False
            return
        snap = self._snapshots.get(length) if self.has_recurrent_layers else {}
        if snap is None:
            log.debug("no recurrent-state snapshot at %d tokens: the prefix is recomputed on the next forward", length)
            self._valid = 0
            return
        for layer in self.layers:
            if getattr(layer, "is_initialized", False) and getattr(layer, "keys", None) is not None:
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]
        for i, state in snap.items():
            for f, value in state.items():
                setattr(self.layers[i], f, _clone(value))
        self._valid = length

    def stale_prefix(self, start: int) -> list[int] | None:
        """The tokens to recompute before feeding after `start` (the cache lost them), else None."""
        if self._valid >= start:
            return None
        self.hf = _new_hf_cache(self.config)
        self._valid = 0
        self.cross_recorded = False
        return self.ids[:start]
