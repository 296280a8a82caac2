"""Inside the experts of one mixture-of-experts layer at one position: for each expert the token was routed to, its
neurons (the activations its down projection reads) and what each writes, weighted by the router's weight as used.

transformers 5 gives its experts classes one layout (`use_experts_implementation`): 3-D `gate_up_proj` / `up_proj`
and `down_proj` parameters (one matrix per expert, possibly transposed, with biases or not) and an `_apply_gate`
(or `act_fn`) between them. The experts module's own input (the tokens, the chosen experts, their weights) is read
by a forward pre-hook; the experts' weighted outputs must sum to the module's own output at the position, or the
answer is refused (a layout not known here is never shown wrong).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CaptureError
from ..routing import ExpertNeurons, ExpertsInside
from ..trace import Trace


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


def expert_neurons(explainer, trace: Trace, layer: int, position: int, k: int = 20,  # noqa: ANN001
                   token_id: int | None = None) -> ExpertsInside:
    """Each chosen expert's neurons at `position` of layer `layer` (a mixture-of-experts layer), from one forward
    over the trace's tokens. Refused for a dense layer, a layout not known, or an expert norm after each expert.
    With a decoder, each neuron's direct effect on `token_id`'s logit (default: the most likely next token) from a
    second forward, read through the linearised norms as attribute() reads the layer's MLP."""
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
    found, total, rows = [], torch.zeros_like(block), []
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
            rows.append((acts, cols * w, down_b_e * w if down_b_e is not None else None))
            found.append(ExpertNeurons(int(e), float(w), acts.cpu().numpy(), sizes.cpu().numpy(), out.cpu().numpy(),
                                       tuple(int(j) for j in top)))
    err = float((total - block).abs().max())
    tol = (1e-4 if model.dtype == torch.float32 else 3e-2) * max(1.0, float(block.abs().max()))
    if not err <= tol:
        raise CaptureError(f"layer {layer}'s chosen experts' outputs do not sum to the experts module's own output "
                           f"(off by {err:.3g}); its layout is not the one the backend reads")
    note = (f"{len(found)} experts chosen at position {position}; each neuron's write is weighted by its expert's "
            "router weight (expert gates included)")
    inside = ExpertsInside(layer, position, tuple(found), block.cpu().numpy(), err, note)
    if trace.family == "encoder":
        return replace(inside, note=note + "; no direct effects: a masked-LM head is not linear")
    return _with_effects(explainer, trace, inside, rows, token_id)


def _with_effects(explainer, trace: Trace, inside: ExpertsInside, rows: list, token_id: int | None) -> ExpertsInside:  # noqa: ANN001
    """Each chosen expert's neurons' direct effects: their weighted write rows (and down bias) carried through the
    layer's post-MLP norm, the later layers' frozen norms and the unembedding, as attribute() carries the MLP's write.
    A neuron's effect is its activation × its row's effect, so an expert's neurons (+ bias) add to its part exactly."""
    stacked = [r for _acts, cols, b in rows for r in ([cols] if b is None else [cols, b[None]])]
    if not stacked:
        return inside
    try:
        effects, mlp_part, token_id = explainer.probe_effects(trace, inside.position, token_id, inside.layer,
                                                              torch.cat(stacked, dim=0))
    except CaptureError as exc:
        return replace(inside, note=f"{inside.note}; no direct effects: {exc}")
    out, at = [], 0
    for e, (acts, cols, b) in zip(inside.experts, rows):
        per = acts.double().cpu().numpy() * effects[at:at + cols.shape[0]]
        at += cols.shape[0]
        bias = 0.0
        if b is not None:
            bias, at = float(effects[at]), at + 1
        out.append(replace(e, effects=per.astype(np.float32), bias_effect=bias, effect=float(per.sum()) + bias))
    token = explainer.model.tokenizer.display(token_id)
    chosen = sum(e.effect for e in out)
    rest = mlp_part - chosen
    note = (f"{inside.note}; direct effects on “{token}”: norms linearised at this forward's own scale; the chosen "
            f"experts wrote {chosen:+.4f} of the layer's MLP part {mlp_part:+.4f}"
            + (f" (the rest, {rest:+.4f}, is a shared expert or a bias beside them)" if abs(rest) > 1e-4 else ""))
    return replace(inside, experts=tuple(out), note=note, token_id=token_id, token=token, mlp_effect=mlp_part)
