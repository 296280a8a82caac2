"""Activation patching's sites on the transformers backend: where each component (engine.patching.Component) lives
in transformers' modules, found as the explainer finds them (engine.hf_backend.explain) rather than by
architecture, and the batched forward of a patching sweep through transformers' own forward with our attention
function. engine.patching hooks these sites exactly as it hooks the native engine's modules.

- a head: its slice of the input of the attention's output projection (the last linear map inside the attention
  module that writes the model width, as called; its input holds the heads side by side);
- a layer's attention: the attention module's output (before any post-norm, as on the native engine);
- an MLP: the output of the layer's MLP children (a mixture-of-experts block as a whole; two side by side, e.g.
  Granite's experts and shared MLP, both patched);
- a neuron: one entry of the input of a dense MLP's output projection (experts refused, saying why);
- the residual stream: the numbered layer's output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import CaptureError
from ..patching import WHATS, Component, Site, _Prompt
from .attention import active
from .explain import MLP_NAMES


class HFSites:
    """engine.patching's sites and batched forward for an HFModel (the methods of engine.patching.NativeSites)."""

    PROBE_TOKENS = 4  # the forward that shows which linear map is each attention's output projection

    def __init__(self, model) -> None:  # noqa: ANN001 - engine.hf_backend.HFModel
        self.model = model
        self._out_proj: dict[int, nn.Linear] | None = None

    @property
    def _explainer(self):  # noqa: ANN202 - engine.hf_backend.explain.HFExplainer
        return self.model.explainer

    # -- structure ------------------------------------------------------------------------------------------------
    def output_projection(self, layer: int) -> nn.Linear:
        """The attention of `layer`'s output projection: the last linear map writing the model width that its
        forward calls (q_proj may write the width too, so the order of calls decides, not the shapes)."""
        if self._out_proj is None:
            ex = self._explainer
            ids = tuple(range(min(self.PROBE_TOKENS, self.model.config.vocab_size)))
            with self.model.guard():
                seen = ex._forward(_Ids(ids))
            self._out_proj = {n: ex._attention_out(seen, n).module for n in ex.attn_modules if seen.out_linears.get(n)}
        o = self._out_proj.get(layer)
        if o is None:
            raise CaptureError(f"layer {layer}: no linear map writing the model width inside "
                               f"{type(self._explainer.attn_modules[layer]).__name__}; its output projection was "
                               "not found, so its heads cannot be patched")
        if o.in_features % self.model.n_heads:
            raise CaptureError(f"layer {layer}: the output projection reads {o.in_features} values, not "
                               f"{self.model.n_heads} heads side by side")
        return o

    def _mlps(self, layer: int) -> list[nn.Module]:
        return [m for name, m in self._explainer.layers[layer].named_children() if name in MLP_NAMES]

    def head_width(self, kind: str, layer: int) -> int:
        return self.output_projection(layer).in_features // self.model.n_heads

    # -- engine.patching's interface ------------------------------------------------------------------------------
    def check(self, c: Component) -> None:
        model = self.model
        if c.what not in WHATS:
            raise CaptureError(f"component kind must be one of {', '.join(WHATS)}, not {c.what!r}")
        if model.family == "encoder-decoder":
            raise CaptureError("activation patching on the transformers backend covers decoder-only and encoder-only "
                               "models; this encoder-decoder is not patched")
        if model.family == "encoder" and c.kind != "encoder":
            raise CaptureError("an encoder-only model's layers are the encoder's: use kind 'encoder' (E1.MLP)")
        if model.family != "encoder" and c.kind != "self":
            raise CaptureError(f"this {model.family} model has only its decoder's layers (L3.H7, L3.MLP, ...)")
        n = len(self._explainer.layers)
        if not 0 <= c.layer < n:
            raise CaptureError(f"layer {c.layer} does not exist; layers are 0..{n - 1}")
        if c.what in ("head", "attn"):
            model.attention_module(c.kind, c.layer)  # a hybrid's layer without attention: refused by what it has
            if c.what == "head":
                if not 0 <= (c.index if c.index is not None else -1) < model.n_heads:
                    raise CaptureError(f"head {c.index} does not exist; heads are 0..{model.n_heads - 1}")
                self.output_projection(c.layer)
        elif c.what == "mlp":
            if not self._mlps(c.layer):
                children = ", ".join(name for name, _ in self._explainer.layers[c.layer].named_children())
                raise CaptureError(f"layer {c.layer} has no MLP to patch (its parts: {children})")
        elif c.what == "neuron":
            if c.layer in model.moe_layers:
                raise CaptureError(f"layer {c.layer} is a mixture of experts: its neurons belong to {model.n_experts} "
                                   "experts, each token reading only the ones the router chose, so a neuron has no "
                                   f"one activation to patch; patch L{c.layer}.MLP (the whole expert block) instead")
            mlp, _ = self._explainer.dense_mlp(c.layer)
            down = self._explainer.down(mlp, c.layer)
            if not 0 <= (c.index if c.index is not None else -1) < down.in_features:
                raise CaptureError(f"neuron {c.index} does not exist; layer {c.layer}'s MLP has neurons "
                                   f"0..{down.in_features - 1}")

    def sites(self, c: Component) -> list[Site]:
        ex = self._explainer
        if c.what == "attn":
            return [Site(ex.attn_modules[c.layer], False)]
        if c.what == "head":
            o = self.output_projection(c.layer)
            if c.index is None:
                return [Site(o, True)]
            hv = o.in_features // self.model.n_heads
            return [Site(o, True, slice(c.index * hv, (c.index + 1) * hv))]
        if c.what == "mlp":
            return [Site(m, False) for m in self._mlps(c.layer)]
        if c.what == "neuron":
            mlp, _ = ex.dense_mlp(c.layer)
            return [Site(ex.down(mlp, c.layer), True, slice(c.index, c.index + 1))]
        return [Site(ex.layers[c.layer], False)]

    def batched_logits(self, prompt: _Prompt, position: int, n: int) -> np.ndarray:
        """(n, vocab) float64 logits at `position` of n copies of the prompt in one batch, through transformers'
        forward with our attention function (head, expert and neuron gates in force), no cache."""
        model = self.model
        if model.family == "encoder-decoder":
            raise CaptureError("activation patching on the transformers backend covers decoder-only and encoder-only "
                               "models")
        encoder = model.family == "encoder"
        ids = torch.tensor([prompt.ids if encoder else prompt.ids[: position + 1]] * n, device=model.device)
        kwargs = {} if encoder else {"use_cache": False, "logits_to_keep": 1}
        with active(model._state(None)):
            out = model.hf(input_ids=ids, **kwargs)
        logits = getattr(out, "logits", None)
        if logits is None:
            raise CaptureError(model.no_logits_reason or "this model has no predictions to patch")
        return (logits[:, position] if encoder else logits[:, -1]).double().cpu().numpy()


class _Ids:
    """Token ids where the explainer's forward reads a trace's."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.token_ids = ids


__all__ = ["HFSites"]
