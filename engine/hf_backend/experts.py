"""Inside the experts of one mixture-of-experts layer at one position: for each expert the token was routed to, its
neurons (the activations its down projection reads) and what each writes, weighted by the router's weight as used.

transformers 5 gives its experts classes one layout (`use_experts_implementation`): 3-D `gate_up_proj` / `up_proj`
and `down_proj` parameters (one matrix per expert, possibly transposed, with biases or not) and an `_apply_gate`
(or `act_fn`) between them. The experts module's own input (the tokens, the chosen experts, their weights) is read
by a forward pre-hook; the experts' weighted outputs must sum to the module's own output at the position, or the
answer is refused (a layout not known here is never shown wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CaptureError
from ..trace import Trace


@dataclass(frozen=True)
class ExpertNeurons:
    """One chosen expert at the position: its router weight (expert gates included), its neurons' activations
    (d_ff,), the size of each neuron's weighted write |weight · activation| · ‖down column‖ (d_ff,), and the
    expert's weighted write (d,) (its down bias included)."""

    expert: int
    weight: float
    activations: np.ndarray
    write_norms: np.ndarray
    output: np.ndarray
    top: tuple[int, ...]  # neurons by write size, largest first


@dataclass(frozen=True)
class ExpertsInside:
    layer: int
    position: int
    experts: tuple[ExpertNeurons, ...]  # in the router's order (largest weight first where it sorts)
    block_output: np.ndarray  # (d,) the experts module's own output at the position (the weighted sum)
    error: float  # |Σ expert outputs − block output|, max over entries
    note: str


def experts_module(layer: nn.Module, n: int) -> nn.Module:
    """The experts module inside a layer: transformers' common layout (3-D down_proj, is_transposed)."""
    for m in layer.modules():
        down = getattr(m, "down_proj", None)
        if isinstance(down, nn.Parameter) and down.dim() == 3 and hasattr(m, "is_transposed"):
            return m
    raise CaptureError(f"layer {n}'s experts are not stored in the layout the backend reads (3-D expert weights "
                       "with transformers' experts interface), so their neurons cannot be shown")


def _linear(x: Tensor, w: Tensor, b: Tensor | None, transposed: bool) -> Tensor:
    out = x @ w if transposed else w @ x
    return out + b if b is not None else out


def expert_neurons(explainer, trace: Trace, layer: int, position: int, k: int = 20) -> ExpertsInside:  # noqa: ANN001
    """Each chosen expert's neurons at `position` of layer `layer` (a mixture-of-experts layer), from one forward
    over the trace's tokens. Refused for a dense layer, a layout not known, or an expert norm after each expert."""
    model = explainer.model
    if layer not in model.moe_layers:
        raise CaptureError(f"layer {layer} is not a mixture-of-experts layer (those are "
                           f"{', '.join(map(str, model.moe_layers)) or 'none'}); Inside the MLP shows its neurons")
    if not 0 <= position < len(trace):
        raise CaptureError(f"position {position} is outside 0..{len(trace) - 1}")
    mod = experts_module(explainer.layers[layer], layer)
    if getattr(mod, "has_post_expert_norm", False):
        raise CaptureError(f"layer {layer}'s experts normalise each expert's output: its neurons' writes do not add")
    seen: dict[str, object] = {}

    def keep_in(_m, args, kwargs):  # noqa: ANN001, ANN202
        if "args" not in seen:
            seen["args"] = [*args, *kwargs.values()]

    def keep_out(_m, _a, out):  # noqa: ANN001, ANN202
        seen.setdefault("out", out[0] if isinstance(out, tuple) else out)

    hooks = [mod.register_forward_pre_hook(keep_in, with_kwargs=True), mod.register_forward_hook(keep_out)]
    try:
        with model.guard():
            explainer._forward(trace)
    finally:
        for h in hooks:
            h.remove()
    args = seen.get("args")
    if not args or len(args) < 3 or "out" not in seen:
        raise CaptureError(f"layer {layer}'s experts were not called with (tokens, experts, weights)")
    hidden, index, weights = (a for a in args[:3])
    if hidden.dim() == 3:
        hidden = hidden.reshape(-1, hidden.shape[-1])
    block = seen["out"].reshape(-1, hidden.shape[-1])[position].float()
    h = hidden[position].float()
    gated = getattr(mod, "has_gate", True)
    first = mod.gate_up_proj if gated else mod.up_proj
    first_b = getattr(mod, "gate_up_proj_bias" if gated else "up_proj_bias", None) if mod.has_bias else None
    down_b = getattr(mod, "down_proj_bias", None) if mod.has_bias else None
    t = bool(mod.is_transposed)
    found, total = [], torch.zeros_like(block)
    with torch.inference_mode():
        for e, w in zip(index[position].tolist(), weights[position].float().tolist()):
            if not 0 <= e < first.shape[0]:
                continue  # a sentinel slot (expert parallelism): no expert
            pre = _linear(h, first[e].float(), first_b[e].float() if first_b is not None else None, t)
            acts = (mod._apply_gate(pre[None]) if gated else mod.act_fn(pre[None]))[0].float()
            wd = mod.down_proj[e].float()  # (d, d_ff), or (d_ff, d) transposed
            cols = wd if t else wd.t()  # (d_ff, d): each neuron's write direction
            down_b_e = down_b[e].float() if down_b is not None else None
            out = _linear(acts, wd, down_b_e, t) * w
            total = total + out
            sizes = (acts * w).abs() * cols.norm(dim=-1)
            top = torch.argsort(sizes, descending=True)[:k].tolist()
            found.append(ExpertNeurons(int(e), float(w), acts.cpu().numpy(), sizes.cpu().numpy(), out.cpu().numpy(),
                                       tuple(int(j) for j in top)))
    err = float((total - block).abs().max())
    tol = (1e-4 if model.dtype == torch.float32 else 3e-2) * max(1.0, float(block.abs().max()))
    if not err <= tol:
        raise CaptureError(f"layer {layer}'s chosen experts' outputs do not sum to the experts module's own output "
                           f"(off by {err:.3g}); its layout is not the one the backend reads")
    note = (f"{len(found)} experts chosen at position {position}; each neuron's write is weighted by its expert's "
            "router weight (expert gates included)")
    return ExpertsInside(layer, position, tuple(found), block.cpu().numpy(), err, note)
