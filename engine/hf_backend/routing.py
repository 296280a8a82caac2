"""Mixture-of-experts routing read from the routers as the forward used them.

transformers 5 gives every MoE layer a router module (`…TopKRouter`) that returns (router logits, the weights of
the chosen experts, their indices); the experts are weighted with exactly those. A forward hook copies the
indices and weights of each layer's router into the forward in progress (only while recording).
"""

from __future__ import annotations

import logging
import re

import torch

from .attention import current

log = logging.getLogger(__name__)

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(qualname: str) -> int | None:
    m = _LAYER.search(qualname + ".")
    return int(m.group(1)) if m else None


def _indices_and_weights(output: object, n_experts: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    parts = output if isinstance(output, tuple) else (output,)
    tensors = [t for t in parts if isinstance(t, torch.Tensor)]
    idx = next((t for t in tensors if not t.is_floating_point() and t.dim() == 2), None)
    if idx is None:  # only dense scores (Llama 4): the chosen experts are the k nonzero ones of each row
        dense = next((t for t in tensors if t.is_floating_point() and t.dim() == 2 and t.shape[1] == n_experts), None)
        if dense is None:
            return None
        chosen = (dense != 0).sum(-1)
        k = int(chosen[0]) if len(chosen) else 0
        if not 0 < k < dense.shape[1] or bool((chosen != k).any()):
            return None
        weights, idx = torch.topk(dense, k, dim=-1)
        return idx, weights
    weights = next((t for t in tensors if t.is_floating_point() and t.shape == idx.shape), None)
    if weights is None:  # dense scores over every expert: the chosen ones' weights
        dense = next((t for t in tensors if t.is_floating_point() and t.dim() == 2 and t.shape[0] == idx.shape[0]
                      and t.shape[1] == n_experts), None)
        if dense is None:
            return None
        weights = dense.gather(1, idx.long())
    return idx, weights


def install_router_hooks(model: torch.nn.Module, n_experts: int | None) -> list[int]:
    """Hook every router; -> the layers that have one."""
    layers = []
    for qualname, module in model.named_modules():
        if not type(module).__name__.endswith("Router"):
            continue
        layer = layer_of(qualname)
        if layer is None:
            continue

        def hook(_module: torch.nn.Module, _inputs: tuple, output: object, layer: int = layer) -> None:
            state = current()
            if state is None or state.recorder is None:
                return
            found = _indices_and_weights(output, n_experts)
            if found is None:
                log.debug("router of layer %d returned no (indices, weights)", layer)
                return
            state.routes[layer] = found

        module.register_forward_hook(hook)
        layers.append(layer)
    return sorted(set(layers))
