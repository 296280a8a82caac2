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


def _dense_scores(parts: tuple, n_experts: int | None, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scores, logits) of a dense router's output: the scores are the [tokens, experts] tensor with at most top_k
    nonzero entries per row, the logits the other one (None where absent)."""
    dense = [t for t in parts if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 2
             and t.shape[1] == n_experts]
    if top_k is not None and len(dense) > 1:
        sparse = [t for t in dense if len(t) == 0 or int((t != 0).sum(-1).max()) <= top_k]
        if len(sparse) == 1:
            return sparse[0], next(t for t in dense if t is not sparse[0])
    return (dense[0], None) if dense else (None, None)


def _indices_and_weights(output: object, n_experts: int | None, top_k: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    parts = output if isinstance(output, tuple) else (output,)
    tensors = [t for t in parts if isinstance(t, torch.Tensor)]
    idx = next((t for t in tensors if not t.is_floating_point() and t.dim() == 2), None)
    if idx is None:  # only dense scores (Llama 4): see _dense_choice
        return _dense_choice(parts, n_experts, top_k)
    weights = next((t for t in tensors if t.is_floating_point() and t.shape == idx.shape), None)
    if weights is None:  # dense scores over every expert: the chosen ones' weights
        dense = next((t for t in tensors if t.is_floating_point() and t.dim() == 2 and t.shape[0] == idx.shape[0]
                      and t.shape[1] == n_experts), None)
        if dense is None:
            return None
        weights = dense.gather(1, idx.long())
    return idx, weights


def _dense_choice(parts: tuple, n_experts: int | None, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A router that returns (scores over every expert, zero where not chosen; its logits), as Llama 4's does
    (sigmoid of the top-k logits, scattered into a row of zeros; the experts' *inputs* are multiplied by them).
    The chosen experts are the top-k of the logits, taken exactly as the router took them (an expert gated to 0
    still counts as chosen: its weight is 0); without the logits, the k nonzero scores of each row."""
    scores, logits = _dense_scores(parts, n_experts, top_k)
    if scores is None:
        return None
    if logits is not None and 0 < top_k <= scores.shape[1]:
        idx = torch.topk(logits, top_k, dim=1).indices
        return idx, scores.gather(1, idx)
    chosen = (scores != 0).sum(-1)
    k = int(chosen[0]) if len(chosen) else 0
    if not 0 < k < scores.shape[1] or bool((chosen != k).any()):
        return None
    weights, idx = torch.topk(scores, k, dim=-1)
    return idx, weights


def gate_router_output(output: object, gates: dict[int, float], n_experts: int | None = None,
                       top_k: int | None = None) -> object:
    """The router's output with the weight of each gated expert multiplied by its factor, wherever the router chose
    it: the experts are then weighted exactly as if the router had given it that weight. Routers that return
    (…, weights, indices) of the chosen experts (the transformers 5 TopKRouter form), and routers that return dense
    scores over every expert, zero where not chosen (Llama 4: that expert's column scaled)."""
    parts = output if isinstance(output, tuple) else (output,)
    idx_at = next((i for i, t in enumerate(parts) if isinstance(t, torch.Tensor) and not t.is_floating_point()
                   and t.dim() == 2), None)
    w_at = None if idx_at is None else next(
        (i for i, t in enumerate(parts) if isinstance(t, torch.Tensor) and t.is_floating_point()
         and t.shape == parts[idx_at].shape), None)
    scores = _dense_scores(parts, n_experts, top_k)[0] if idx_at is None else None
    if scores is not None:
        at = next(i for i, t in enumerate(parts) if t is scores)
        factor = torch.ones(scores.shape[1], dtype=scores.dtype, device=scores.device)
        for expert, value in gates.items():
            factor[expert] = value
        out = list(parts)
        out[at] = scores * factor
        return tuple(out) if isinstance(output, tuple) else out[0]
    if w_at is None:
        raise CaptureError("this model's router does not return the chosen experts' weights beside their indices, "
                           "nor dense scores over every expert; expert ablation works for routers that do (gpt-oss, "
                           "Qwen3-MoE, Mixtral, OLMoE, Llama 4)")
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
            top_k = getattr(_module, "top_k", None)
            if gates:  # recorded as used: the gated expert's weight scaled
                output = gate_router_output(output, gates, n_experts, top_k)
            if state.recorder is None:
                return output if gates else None
            found = _indices_and_weights(output, n_experts, top_k)
            if found is None:
                log.debug("router of layer %d returned no (indices, weights)", layer)
                return
            state.routes[layer] = found
            return output if gates else None

        module.register_forward_hook(hook)
        layers.append(layer)
    return sorted(set(layers))
