"""Mixture-of-experts routing read from the routers as the forward used them.

transformers 5 gives every MoE layer a router module (`…TopKRouter`) that returns (router logits, the weights of
the chosen experts, their indices); the experts are weighted with exactly those. A forward hook copies the
indices and weights of each layer's router into the forward in progress (only while recording).
"""

from __future__ import annotations

import logging
import re

import torch

from ..errors import CaptureError
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


def gate_router_output(output: object, gates: dict[int, float]) -> object:
    """The router's output with the weight of each gated expert multiplied by its factor, wherever the router chose
    it: the experts are then weighted exactly as if the router had given it that weight. Routers that return
    (…, weights, indices) of the chosen experts (the transformers 5 TopKRouter form) only."""
    parts = output if isinstance(output, tuple) else (output,)
    idx_at = next((i for i, t in enumerate(parts) if isinstance(t, torch.Tensor) and not t.is_floating_point()
                   and t.dim() == 2), None)
    w_at = None if idx_at is None else next(
        (i for i, t in enumerate(parts) if isinstance(t, torch.Tensor) and t.is_floating_point()
         and t.shape == parts[idx_at].shape), None)
    if w_at is None:
        raise CaptureError("this model's router does not return the chosen experts' weights beside their indices; "
                           "expert ablation works for routers that do (gpt-oss, Qwen3-MoE, Mixtral, OLMoE)")
    idx, weights = parts[idx_at], parts[w_at]
    factor = torch.ones_like(weights)
    for expert, value in gates.items():
        factor = torch.where(idx == expert, torch.as_tensor(value, dtype=weights.dtype, device=weights.device), factor)
    out = list(parts)
    out[w_at] = weights * factor
    return tuple(out) if isinstance(output, tuple) else out[0]


def install_router_hooks(model: torch.nn.Module, n_experts: int | None) -> list[int]:
    """Hook every router; -> the layers that have one."""
    layers = []
    for qualname, module in model.named_modules():
        if not type(module).__name__.endswith("Router"):
            continue
        layer = layer_of(qualname)
        if layer is None:
            continue

        def hook(_module: torch.nn.Module, _inputs: tuple, output: object, layer: int = layer) -> object:
            state = current()
            if state is None:
                return None
            gates = state.expert_gates.get(layer)
            if gates:
                output = gate_router_output(output, gates)  # recorded as used: the gated expert's weight scaled
            if state.recorder is None:
                return output if gates else None
            found = _indices_and_weights(output, n_experts)
            if found is None:
                log.debug("router of layer %d returned no (indices, weights)", layer)
                return
            state.routes[layer] = found
            return output if gates else None

        module.register_forward_hook(hook)
        layers.append(layer)
    return sorted(set(layers))
