"""The explanations of engine.explain (inside a head, direct logit attribution, the residual stream, the MLP's
neurons, the logit lens) for a transformers model, found from the model's own forward rather than from its code.

One forward over the trace's tokens, with our attention function handing over q, keys and values as used and
forward hooks on each numbered layer and its direct children, shows everything the explanations need:
- the residual stream before and after every layer, and what each sublayer (attention or the layer type a
  hybrid has instead, the MLP or experts) returned;
- the attention's output projection: the last linear map inside the attention module that writes the model
  width (o_proj, out_proj, dense, Wo ...); its input holds each head's output side by side;
- norms applied to a sublayer's output before it joins the stream (Gemma's and OLMo's post-norms): a norm
  child of the layer whose input is that output;
- how the layer adds its sublayers (x + a + m, or scaled, e.g. Granite's residual multiplier): fitted over every
  position and checked to rounding, so an unrecognised layout is refused by name, never silently misattributed.
Norms are linearised at the point the forward reached (TransformerLens' frozen scale): a norm module is probed
once for its gain, centring and bias (RMSNorm w, Gemma's 1 + w, LayerNorm with bias alike), and its scale at a
vector is read from its own output there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CaptureError
from ..explain import (
    PROBE,
    RANKINGS,
    Attribution,
    InsideHead,
    LayerWrites,
    MlpNeurons,
    _check_position,
    _pre_cap,
    head_chain,
    neuron_answer,
)
from ..trace import Trace, mlp_name
from .attention import active
from .linearise import NormMap, fit_factors, probe_norm
from .structure import text_model

# direct children of a layer that are its MLP (summed when a layer has two, e.g. Granite's experts + shared MLP)
MLP_NAMES = frozenset({"mlp", "feed_forward", "block_sparse_moe", "shared_mlp", "ffn", "moe", "mlp_block"})
GATE_NAMES, UP_NAMES = ("gate_proj", "w1", "gate"), ("up_proj", "w3", "fc1", "c_fc", "up", "Wi")
def _first_tensor(x: object) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    return getattr(x, "last_hidden_state", None) if not isinstance(x, (tuple, list)) else None


def _input(args: tuple, kwargs: dict) -> Tensor | None:
    return args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Tensor | None
    output: Tensor | None


@dataclass
class _Seen:
    """What one forward showed: per layer its input and output (1, T, d), its direct children's calls in order,
    the linear maps writing the width inside its attention; the text stack's children and output."""

    inputs: dict[int, Tensor] = field(default_factory=dict)
    outputs: dict[int, Tensor] = field(default_factory=dict)
    children: dict[int, list[_Call]] = field(default_factory=dict)
    out_linears: dict[int, list[_Call]] = field(default_factory=dict)
    inner: dict[str, Tensor] = field(default_factory=dict)  # "q_proj"/"q_norm"/... outputs of one attention module
    mlp_linears: list[_Call] = field(default_factory=list)  # the linear maps inside one asked MLP
    text_children: list[_Call] = field(default_factory=list)
    last_hidden: Tensor | None = None
    taps: dict = field(default_factory=dict)


@dataclass
class _Layer:
    """One layer's sublayers as the forward ran them: (name, output) of the mixer (attention, or Mamba, ...),
    the MLP output (summed over MLP children), their post-norms (or None) and how the stream adds them."""

    mixer: _Call | None
    mlps: list[_Call]
    mixer_post: _Call | None
    mlp_post: _Call | None
    alpha: float
    beta: float
    beside: list[tuple[_Call, float]] = field(default_factory=list)  # token mixers beside attention, with their factor


class HFExplainer:
    """engine.explain's explanations for an HFModel (the same methods as engine.explain.NativeExplainer)."""

    def __init__(self, model) -> None:  # noqa: ANN001 - engine.hf_backend.HFModel
        self.model = model
        self.text = text_model(model.hf)
        self.layers = self._numbered_layers()
        self.attn_modules: dict[int, nn.Module] = {}
        for n, layer in enumerate(self.layers):
            for m in layer.modules():
                name = model.attention_names.get(id(m))
                if name is not None and not name.endswith("cross_attn"):
                    self.attn_modules[n] = m
                    break
        self._norms: dict[int, NormMap] = {}

    # -- the model's structure ---------------------------------------------------------------------------------
    def _numbered_layers(self) -> nn.ModuleList:
        n = self.model.n_layers
        lists = [(name, m) for name, m in self.text.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
        for name, m in lists:
            if name.rsplit(".", 1)[-1] in ("layers", "layer", "h", "block"):
                return m
        if lists:
            return lists[0][1]
        raise CaptureError(f"{self.model.name}: no list of {n} layers found in {type(self.text).__name__}")

    def _check_family(self) -> None:
        if self.model.family == "encoder-decoder":
            raise CaptureError("the explanations on the transformers backend cover decoder-only and encoder-only "
                               "models; this encoder-decoder shows its patterns, statistics and logit lens only")

    @property
    def _tol(self) -> float:
        return 1e-4 if self.model.dtype == torch.float32 else 3e-2

    def _norm(self, module: nn.Module, name: str) -> NormMap:
        found = self._norms.get(id(module))
        if found is None:
            found = self._norms[id(module)] = probe_norm(module, self.model.config.d_model, self.model.device,
                                                         self.model.dtype, f"{name} ({type(module).__name__})")
        return found

    # -- one forward with hooks --------------------------------------------------------------------------------
    def _forward(self, trace: Trace, taps: Sequence[str] = (), inner_of: int | None = None,
                 mlp_of: nn.Module | None = None) -> _Seen:
        """The model over the trace's tokens (head and expert gates applied, as in the trace), recording what the
        explanations read. `taps`: capture names whose (q, k, v) to keep; `inner_of`: a layer whose attention's
        q/k projections and norms to keep; `mlp_of`: an MLP module whose linear maps to keep. Under guard()."""
        seen, hooks = _Seen(), []
        d = self.model.config.d_model
        for n, layer in enumerate(self.layers):
            hooks.append(layer.register_forward_pre_hook(
                lambda _m, a, kw, n=n: _keep(seen.inputs, n, _input(a, kw)), with_kwargs=True))
            hooks.append(layer.register_forward_hook(
                lambda _m, _a, out, n=n: _keep(seen.outputs, n, _first_tensor(out))))
            seen.children[n], seen.out_linears[n] = [], []
            for cname, child in layer.named_children():
                hooks.append(child.register_forward_hook(
                    lambda m, a, kw, out, n=n, cname=cname: seen.children[n].append(
                        _Call(cname, m, _input(a, kw), _first_tensor(out))), with_kwargs=True))
            attn = self.attn_modules.get(n)
            if attn is not None:
                for lname, lin in attn.named_modules():
                    if isinstance(lin, nn.Linear) and lin.out_features == d:
                        hooks.append(lin.register_forward_hook(
                            lambda m, a, out, n=n, lname=lname: seen.out_linears[n].append(_Call(lname, m, a[0], out))))
            if n == inner_of and attn is not None:
                for cname, child in attn.named_children():
                    if cname in ("q_proj", "k_proj", "q_norm", "k_norm", "q_layernorm", "k_layernorm"):
                        hooks.append(child.register_forward_hook(
                            lambda _m, _a, out, cname=cname: seen.inner.__setitem__(cname, _first_tensor(out))))
        if mlp_of is not None:
            for lname, lin in mlp_of.named_modules():
                if isinstance(lin, nn.Linear):
                    hooks.append(lin.register_forward_hook(
                        lambda m, a, out, lname=lname: seen.mlp_linears.append(_Call(lname, m, a[0], out))))
        for cname, child in self.text.named_children():
            if child is not self.layers:
                hooks.append(child.register_forward_hook(
                    lambda m, a, kw, out, cname=cname: seen.text_children.append(
                        _Call(cname, m, _input(a, kw), _first_tensor(out))), with_kwargs=True))
        hooks.append(self.text.register_forward_hook(
            lambda _m, _a, out: setattr(seen, "last_hidden", _first_tensor(out))))
        state = self.model._state(None)
        state.taps = dict.fromkeys(taps)
        ids = torch.tensor([list(trace.token_ids)], device=self.model.device)
        kwargs = {} if self.model.family == "encoder" else {"use_cache": False}
        try:
            with active(state):
                self.model.hf(input_ids=ids, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        seen.taps = state.taps
        return seen

    def _final_norm(self, seen: _Seen) -> _Call | None:
        """The text stack's child whose output is its last hidden state (the final norm), or None."""
        for call in reversed(seen.text_children):
            if call.output is not None and call.output is seen.last_hidden:
                return call
        return None

    def _attention_out(self, seen: _Seen, n: int) -> _Call:
        calls = seen.out_linears.get(n) or []
        if not calls:
            raise CaptureError(f"layer {n}: no linear map writing the model width inside "
                               f"{type(self.attn_modules[n]).__name__}; its output projection was not found")
        return calls[-1]

    def _layer(self, seen: _Seen, n: int) -> _Layer:
        """Which children of layer n wrote what, and how the stream adds them (checked over every position)."""
        attn = self.attn_modules.get(n)
        mixer, mlps, norms, beside = None, [], [], []
        for call in seen.children[n]:
            if _is_norm(call.module):
                norms.append(call)
            elif call.name in MLP_NAMES:
                mlps.append(call)
            elif call.output is not None and call.output.numel() == seen.inputs[n].numel() and not isinstance(
                    call.module, (nn.Identity, nn.Dropout)):
                if attn is not None and not any(m is attn for m in call.module.modules()):
                    beside.append(call)  # Falcon-H1's Mamba beside attention (or a module that writes no stream)
                    continue
                if mixer is not None:
                    raise CaptureError(f"layer {n} has two token mixers ({mixer.name}, {call.name}) writing the "
                                       "stream side by side; direct logit attribution does not know this layout")
                mixer = call
        post = lambda out: next((c for c in norms if out is not None and c.input is out), None)  # noqa: E731
        mixer_post = post(mixer.output) if mixer is not None else None
        mlp_post = post(mlps[0].output) if len(mlps) == 1 else None
        shape = seen.inputs[n].shape
        for call in [c for c in (mixer, mixer_post, mlp_post, *mlps, *beside) if c is not None]:
            if call.output is not None and call.output.shape != shape:  # Llama 4's experts return (T, d)
                if call.output.numel() != seen.inputs[n].numel():
                    raise CaptureError(f"layer {n}'s {call.name} returned {tuple(call.output.shape)}, not the "
                                       f"stream's {tuple(shape)}")
                call.output = call.output.reshape(shape)
            if call.input is not None and call.input.shape != shape and call.input.numel() == seen.inputs[n].numel():
                call.input = call.input.reshape(shape)
        a = mixer_post.output if mixer_post is not None else (mixer.output if mixer is not None else None)
        m = mlp_post.output if mlp_post is not None else (sum(c.output for c in mlps) if mlps else None)
        delta = (seen.outputs[n] - seen.inputs[n]).double().reshape(-1)
        writers = [t for t in (a, m) if t is not None]
        if not writers:
            raise CaptureError(f"layer {n}: no sublayer found that writes the residual stream")
        coef, err = fit_factors(writers, delta)
        extra: list[_Call] = []
        if not err <= self._tol * max(1.0, float(delta.abs().max())) and beside:
            coef, err = fit_factors(writers + [c.output for c in beside], delta)  # sublayers side by side (Falcon-H1)
            extra = beside
        if not err <= self._tol * max(1.0, float(delta.abs().max())):
            raise CaptureError(f"layer {n} ({type(self.layers[n]).__name__}) does not add its sublayers to the "
                               f"residual stream in a way direct logit attribution knows (off by {err:.3g})")
        alpha = coef.pop(0) if a is not None else 0.0
        beta = coef.pop(0) if m is not None else 0.0
        return _Layer(mixer, mlps, mixer_post, mlp_post, alpha, beta, list(zip(extra, coef)))

    # -- direct logit attribution ------------------------------------------------------------------------------
    def _walk(self, trace: Trace, i: int, token_id: int, neuron_layer: int | None = None,
              probe: tuple[int, Tensor] | None = None) -> dict:
        """Every part of the residual stream at position i through the final norm, with the token's column.
        `probe` (layer, rows (m, d)): rows written beside that layer's MLP output, carried through the same
        linearised norms as parts[PROBE + "experts"] but not counted in the stream (an expert's neurons' writes).
        -> {"parts", "column", "added", "resid_norms", "write_norms", "mixers", "mlp_input", "mlp_acts"}."""
        model, tol = self.model, self._tol
        if model.lazy_logits_ok is False:
            raise CaptureError(f"{model.name}'s output head post-processes the final hidden state in a way the "
                               "backend does not know, so its logits cannot be split into parts")
        mlp_module = self.dense_mlp(neuron_layer)[0] if neuron_layer is not None else None
        seen = self._forward(trace, mlp_of=mlp_module)
        nh = model.n_heads
        parts: dict[str, Tensor] = {"embeddings": seen.inputs[0][0, i].float()}
        added = {"embeddings": float(parts["embeddings"].norm())}
        resid_norms, write_norms, mixers = [], {}, {}
        mlp_input = mlp_acts = None
        for n in range(len(self.layers)):
            lay = self._layer(seen, n)
            new: dict[str, Tensor] = {}
            if n in self.attn_modules:
                o = self._attention_out(seen, n)
                if not torch.allclose(o.output, lay.mixer.output, atol=1e-6, rtol=1e-5):
                    raise CaptureError(f"layer {n}: the attention's output is not its projection {o.name}'s output")
                hv = o.module.in_features // nh
                x = o.input[0, i].float().view(nh, hv)
                w = o.module.weight.float().view(-1, nh, hv)  # (d, nh, hv)
                heads = torch.einsum("hs,dhs->hd", x, w)
                write_norms[n] = heads.norm(dim=-1)
                new = {f"L{n}.H{h}": heads[h] for h in range(nh)}
                if o.module.bias is not None:
                    new[f"L{n}.Hbias"] = o.module.bias.float()
            elif lay.mixer is not None:
                kind = model.layer_kinds[n] if n < len(model.layer_kinds) else "mixer"
                mixers[n] = [f"L{n}.{kind}"]
                new = {mixers[n][0]: lay.mixer.output[0, i].float()}
            if lay.mixer_post is not None:
                new = self._norm(lay.mixer_post.module, f"layer {n}'s {lay.mixer_post.name}").linear(
                    lay.mixer.output[0, i], lay.mixer_post.output[0, i], new, f"layer {n}'s {lay.mixer_post.name}",
                    "norm biases", tol)
            new = {k: lay.alpha * v for k, v in new.items()}
            for call, factor in lay.beside:  # a token mixer beside attention: one part
                key = f"L{n}.{call.name}"
                mixers.setdefault(n, []).append(key)
                new[key] = factor * call.output[0, i].float()
            written = sum((v for v in new.values()), torch.zeros_like(parts["embeddings"]))
            added[f"L{n}.attn"] = float(written.norm())
            _add(parts, new)
            if n == neuron_layer:
                down = seen.mlp_linears[-1]
                mlp_input, mlp_acts = seen.mlp_linears[0].input[0], down.input[0]
                new = {PROBE + "rows": down.module.weight.float().t()}  # (d_ff, d)
                if down.module.bias is not None:
                    new[f"L{n}.MLP bias"] = down.module.bias.float()
            else:
                new = {f"L{n}.MLP": sum(c.output for c in lay.mlps)[0, i].float()} if lay.mlps else {}
                if probe is not None and n == probe[0] and new:
                    new[PROBE + "experts"] = probe[1]
            if lay.mlp_post is not None and new:
                new = self._norm(lay.mlp_post.module, f"layer {n}'s {lay.mlp_post.name}").linear(
                    lay.mlps[0].output[0, i], lay.mlp_post.output[0, i], new, f"layer {n}'s {lay.mlp_post.name}",
                    "norm biases", tol)
            new = {k: lay.beta * v for k, v in new.items()}
            if lay.mlps:
                out = lay.mlp_post.output if lay.mlp_post is not None else sum(c.output for c in lay.mlps)
                added[f"L{n}.MLP"] = float((lay.beta * out[0, i].float()).norm())
            else:
                added[f"L{n}.MLP"] = 0.0
            _add(parts, new)
            resid_norms.append(float(seen.outputs[n][0, i].float().norm()))
        last = seen.outputs[len(self.layers) - 1]
        stream = sum(v for k, v in parts.items() if not k.startswith(PROBE))
        if mlp_acts is not None:  # the asked MLP's neurons ride along as rows: their activations weigh them
            stream = stream + mlp_acts[i].float() @ parts[PROBE + "rows"]
        err = float((stream - last[0, i].float()).abs().max())
        if not err <= tol * max(1.0, float(last[0, i].abs().max())):  # every part found, none counted twice
            raise CaptureError(f"the parts found do not sum to the residual stream at position {i} (off by "
                               f"{err:.3g}); direct logit attribution does not know this model's layout")
        final = self._final_norm(seen)
        if final is not None:
            if final.input is None or not torch.allclose(final.input, last, atol=1e-6, rtol=1e-5):
                raise CaptureError(f"the final norm ({final.name}) does not read the last layer's output")
            parts = self._norm(final.module, final.name).linear(final.input[0, i], final.output[0, i], parts,
                                                                  final.name, "norm biases", tol)
        _w, _bias, scale, _cap = model.unembedding_arrays()
        head = model.hf.get_output_embeddings()
        column = head.weight[token_id].float() * scale
        return {"parts": parts, "column": column, "added": added, "resid_norms": resid_norms,
                "write_norms": write_norms, "mixers": mixers, "mlp_input": mlp_input, "mlp_acts": mlp_acts,
                "bias": float(head.bias[token_id].float()) * scale if getattr(head, "bias", None) is not None else None}

    @staticmethod
    def _values(walk: dict) -> dict[str, float]:
        values = {k: float(p @ walk["column"]) for k, p in walk["parts"].items() if not k.startswith(PROBE)}
        if walk["bias"] is not None:
            values["logits bias"] = walk["bias"]
        return values

    def _check_sum(self, values: dict[str, float], logits: np.ndarray, token_id: int, extra: float = 0.0) -> None:
        """The parts must sum to the model's own (pre-soft-cap) logit: an output head that post-processes in a way
        the backend does not know, or a trace from other gates, is refused rather than shown wrong."""
        total = float(sum(values.values())) + extra
        logit = _pre_cap(self.model, logits, token_id)[0]
        scale = sum(abs(v) for v in values.values()) + abs(extra) + 1.0
        if not abs(total - logit) <= self._tol * scale:
            raise CaptureError(f"the parts sum to {total:.4g}, not the model's logit {logit:.4g}: the trace may "
                               "come from other head or neuron gates (step or run again), or the output head does "
                               "something the backend does not know")

    def attribute(self, trace: Trace, position: int, token_id: int | None = None) -> Attribution:
        self._check_family()
        logits, token_id = _check_position(trace, position, token_id)
        with self.model.guard():
            walk = self._walk(trace, position, token_id)
            raw = self._values(walk)
        self._check_sum(raw, logits, token_id)
        values: dict[str, float] = {}
        for k, v in raw.items():  # the attention output biases of every layer as one part, as the native engine
            key = "attention output biases" if k.endswith(".Hbias") else k
            values[key] = values.get(key, 0.0) + v
        n_layers, nh = len(self.layers), self.model.n_heads
        heads = np.array([[values.get(f"L{n}.H{h}", 0.0) for h in range(nh)] for n in range(n_layers)], dtype=np.float32)
        mlps = np.array([values.get(f"L{n}.MLP", 0.0) for n in range(n_layers)], dtype=np.float32)
        norms = np.zeros((n_layers, nh), dtype=np.float32)
        for n, v in walk["write_norms"].items():
            norms[n] = v.cpu().numpy()
        pre_cap, note = _pre_cap(self.model, logits, token_id)
        if walk["mixers"]:
            note += ("; token mixers other than attention (" + ", ".join(k for v in walk["mixers"].values() for k in v)
                     + ") have no heads: each one's whole write is one part")
        return Attribution(position=position, token_id=token_id, token=self.model.tokenizer.display(token_id),
                           logit=pre_cap, total=float(sum(values.values())), parts=tuple(values.items()), heads=heads,
                           cross_heads=None, mlps=mlps, head_write_norms=norms, note=note)

    def _layer_writes(self, walk: dict, values: dict[str, float], logits: np.ndarray, token_id: int) -> LayerWrites:
        n = len(self.layers)
        attn = np.zeros(n, dtype=np.float64)
        for key, v in values.items():
            layer, _, rest = key[1:].partition(".")
            if key.startswith("L") and layer.isdigit() and (
                    (rest[:1] == "H" and (rest[1:].isdigit() or rest[1:] == "bias")) or key in walk["mixers"].get(int(layer), ())):
                attn[int(layer)] += v
        mlp = np.array([values.get(f"L{i}.MLP", 0.0) for i in range(n)], dtype=np.float64)
        other = float(sum(values.values())) - values.get("embeddings", 0.0) - float(attn.sum() + mlp.sum())
        added = walk["added"]
        return LayerWrites(
            embeddings_norm=added["embeddings"], embeddings_effect=values.get("embeddings", 0.0),
            attn_norms=np.array([added[f"L{i}.attn"] for i in range(n)], dtype=np.float32),
            attn_effects=attn.astype(np.float32), cross_norms=None, cross_effects=None,
            mlp_norms=np.array([added[f"L{i}.MLP"] for i in range(n)], dtype=np.float32),
            mlp_effects=mlp.astype(np.float32), resid_norms=np.array(walk["resid_norms"], dtype=np.float32),
            other_effect=other, logit=_pre_cap(self.model, logits, token_id)[0])

    def residual_stream(self, trace: Trace, position: int, token_id: int | None = None) -> LayerWrites:
        self._check_family()
        logits, token_id = _check_position(trace, position, token_id)
        with self.model.guard():
            walk = self._walk(trace, position, token_id)
            values = self._values(walk)
        self._check_sum(values, logits, token_id)
        return self._layer_writes(walk, values, logits, token_id)

    # -- the logit lens ----------------------------------------------------------------------------------------
    def lens_logits(self, trace: Trace, position: int) -> Tensor:
        """(layers, vocab): the residual stream after each layer at `position`, through the final norm and then
        whatever the model does after its text stack (output head, logit scale, soft-cap, a masked-LM head), by
        handing those rows to the model's own head in place of the last hidden state. Call under guard().
        An encoder-decoder's lens reads its decoder (the text stack), the encoder run on the trace's source."""
        rows: dict[int, Tensor] = {}
        calls: list[_Call] = []
        hooks = [layer.register_forward_hook(lambda _m, _a, out, n=n: _keep(rows, n, _first_tensor(out)))
                 for n, layer in enumerate(self.layers)]
        for cname, child in self.text.named_children():
            if child is not self.layers:
                hooks.append(child.register_forward_hook(
                    lambda m, a, kw, out, cname=cname: calls.append(_Call(cname, m, _input(a, kw), _first_tensor(out))),
                    with_kwargs=True))

        def swap(_m, _a, out):  # noqa: ANN001, ANN202 - the text stack's output: its last hidden state replaced
            last = _first_tensor(out)
            final = next((c for c in reversed(calls) if c.output is not None and c.output is last  # eval dropout
                          and not isinstance(c.module, (nn.Dropout, nn.Identity))), None)  # passes its input on
            stack = torch.stack([rows[n][0, position] for n in range(len(self.layers))])[None]  # (1, layers, d)
            lens = final.module(stack) if final is not None else stack
            if isinstance(out, tuple):
                return (lens, *out[1:])
            out.last_hidden_state = lens
            return out

        hooks.append(self.text.register_forward_hook(swap))
        try:
            with active(self.model._state(None)):
                logits = self.model.hf(**self._lens_inputs(trace)).logits
        finally:
            for h in hooks:
                h.remove()
        if logits.shape[1] != len(self.layers):
            raise CaptureError(f"{self.model.name}'s output head did not read the lens rows as positions")
        return logits[0]

    def _lens_inputs(self, trace: Trace) -> dict:
        ids = torch.tensor([list(trace.token_ids)], device=self.model.device)
        if self.model.family == "encoder":
            return {"input_ids": ids}
        if self.model.family == "encoder-decoder":
            if not trace.source_ids:
                raise CaptureError("this encoder-decoder trace has no source tokens to run the encoder on")
            source = torch.tensor([list(trace.source_ids)], device=self.model.device)
            return {"input_ids": source, "decoder_input_ids": ids, "use_cache": False}
        return {"input_ids": ids, "use_cache": False}

    # -- inside one head ---------------------------------------------------------------------------------------
    def inside_head(self, trace: Trace, kind: str, layer: int, head: int, query: int) -> InsideHead:
        self._check_family()
        name = trace.capture_point(kind, layer)
        self.model.attention_module(kind, layer)  # refuses a layer without attention by what it has instead
        if not 0 <= head < trace.n_heads:
            raise CaptureError(f"head {head} does not exist; heads are 0..{trace.n_heads - 1}")
        if not 0 <= query < len(trace):
            raise CaptureError(f"query position {query} is outside 0..{len(trace) - 1}")
        with self.model.guard():
            seen = self._forward(trace, taps=[name], inner_of=layer)
            return self._chain(seen, name, kind, layer, head, query)

    def _chain(self, seen: _Seen, name: str, kind: str, layer: int, head: int, query: int) -> InsideHead:
        tap = seen.taps.get(name)
        if tap is None:
            raise CaptureError(f"{name}: the attention function was not called for this layer")
        qs, ks, vs = tap
        nh, nkv = qs.shape[1], ks.shape[1]
        kvh = head // (nh // nkv)
        o = self._attention_out(seen, layer)
        hv = o.module.in_features // nh
        if hv != vs.shape[-1]:
            raise CaptureError(f"layer {layer}: the output projection {o.name} reads {o.module.in_features} values, "
                               f"not {nh} heads × {vs.shape[-1]}")
        as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        w = o.module.weight.float()[:, head * hv : (head + 1) * hv]  # (d, hv)
        output = as_np(w @ o.input[0, query, head * hv : (head + 1) * hv].float())  # the head's actual write
        q_all, k_all = as_np(qs[0, head]), as_np(ks[0, kvh])  # (T, hs), (S, hs)
        q_pre, k_pre, rotary = self._before_rotation(seen, q_all, k_all, head, kvh)
        rule = self.model.score_rule(name)
        note = "" if q_pre is not None else ("q and k before rotation are not shown: this attention forms them in a "
                                             "way the backend cannot separate (fused or latent projections)")
        return head_chain(kind=kind, layer=layer, head=head, kv_head=kvh, query=query, q=q_all[query],
                          q_pre=q_pre[query] if q_pre is not None else None, k=k_all, k_pre=k_pre, v=as_np(vs[0, kvh]),
                          w_o=as_np(w.t()), rule=rule, scale=rule.scale, softcap=rule.softcap, rotary_dims=rotary,
                          output=output, note=note)

    def _before_rotation(self, seen: _Seen, q: np.ndarray, k: np.ndarray, head: int, kvh: int
                         ) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
        """q (T, hs) and k (S, hs) before the rotary embedding, from the attention's q/k norm or projection
        outputs, and how many dims rotate; (None, None, None) where they cannot be identified (a rotation keeps
        each vector's length: anything else between them is not a rotation)."""
        T, hs = q.shape

        def pick(names: tuple[str, ...], idx: int, n_rows: int) -> np.ndarray | None:
            for nm in names:  # (1, T, heads·hs), (1, T, heads, hs) or (1, heads, T, hs)
                t = seen.inner.get(nm)
                if t is None or t.numel() % (n_rows * hs):
                    continue
                if t.dim() == 4 and t.shape[2] == n_rows and t.shape[3] == hs:
                    t = t.transpose(1, 2)
                elif t.shape[1] != n_rows:
                    continue
                heads = t.numel() // (n_rows * hs)
                if idx < heads:
                    return t.detach().float().cpu().reshape(n_rows, heads, hs)[:, idx].numpy()
            return None

        q_pre = pick(("q_norm", "q_layernorm", "q_proj"), head, T)
        k_pre = pick(("k_norm", "k_layernorm", "k_proj"), kvh, k.shape[0])
        if q_pre is None or k_pre is None:
            return None, None, None
        ratios = []
        for pre, used in ((q_pre, q), (k_pre, k)):  # a rotation keeps lengths (YaRN: times one constant factor)
            a, b = np.linalg.norm(pre, axis=1), np.linalg.norm(used, axis=1)
            ok = a > 1e-6
            ratios.append(b[ok] / a[ok])
        r = np.concatenate(ratios)
        if r.size == 0 or float(r.max() - r.min()) > 1e-3 * float(r.mean()):
            return None, None, None
        moved = (np.abs(q_pre * r.mean() - q) > 1e-5 * max(1.0, float(np.abs(q).max()))).any(0) | (
            np.abs(k_pre * r.mean() - k) > 1e-5 * max(1.0, float(np.abs(k).max()))).any(0)
        if not moved.any():  # a layer without rotary embedding (Llama 4's NoPE layers)
            return q_pre, k_pre, None
        text = self.model.hf.config.get_text_config()
        return q_pre, k_pre, int(hs * float(getattr(text, "partial_rotary_factor", None) or 1.0))

    # -- inside the MLP ----------------------------------------------------------------------------------------
    def dense_mlp(self, layer: int) -> tuple[nn.Module, str]:
        """(the MLP module of `layer`, its name) when it is one dense MLP; CaptureError saying why not."""
        if not 0 <= layer < len(self.layers):
            raise CaptureError(f"layer {layer} does not exist; layers are 0..{len(self.layers) - 1}")
        if layer in self.model.moe_layers:
            dense = [n for n in range(len(self.layers)) if n not in self.model.moe_layers]
            raise CaptureError(f"layer {layer} is a mixture of experts: its neurons belong to "
                               f"{self.model.n_experts} experts, each token reading only the ones the router chose. "
                               "mlp_neurons explains dense MLPs" + (
                                   f" (here layers {', '.join(map(str, dense))})" if dense else " (this model has none)")
                               + "; expert_neurons opens the chosen experts' neurons")
        found = [(n, m) for n, m in self.layers[layer].named_children() if n in MLP_NAMES]
        if len(found) != 1:
            raise CaptureError(f"layer {layer} has no single MLP to open ({', '.join(n for n, _ in found) or 'none'})")
        return found[0][1], found[0][0]

    def mlp_neurons(self, trace: Trace, layer: int, position: int, token_id: int | None = None, k: int = 20,
                    rank_by: str = "write", stack: str | None = None, include: Sequence[int] = ()) -> MlpNeurons:
        self._check_family()
        if rank_by not in RANKINGS:
            raise CaptureError(f"rank_by must be one of {', '.join(RANKINGS)}, not {rank_by!r}")
        stack = stack or self.model.main_stack
        if stack != self.model.main_stack:
            raise CaptureError(f"this model has no {stack!r} stack")
        mlp, _ = self.dense_mlp(layer)
        if not 0 <= position < len(trace):
            raise CaptureError(f"position {position} is outside 0..{len(trace) - 1}")
        if k < 1:
            raise CaptureError(f"k must be at least 1, not {k}")
        gate, up = self._gate_up(mlp, layer)
        direct = self.model.family != "encoder"
        residual, rows_t, w_t = None, None, None
        if direct:
            logits, token_id = _check_position(trace, position, token_id)
            with self.model.guard():
                walk = self._walk(trace, position, token_id, neuron_layer=layer)
                h, acts_t = walk["mlp_input"], walk["mlp_acts"]
                rows_t = walk["parts"][PROBE + "rows"]
                writes = (acts_t[position].float() * (rows_t @ walk["column"])).cpu().numpy()
                values = self._values(walk)
                w_t = self.model.hf.get_output_embeddings().weight.t()
            bias_effect = values.get(f"L{layer}.MLP bias", 0.0)
            neurons_effect = float(writes.astype(np.float64).sum())
            self._check_sum(values, logits, token_id, extra=neurons_effect)
            values[f"L{layer}.MLP"] = neurons_effect + values.pop(f"L{layer}.MLP bias", 0.0)
            residual = self._layer_writes(walk, values, logits, token_id)
            token = self.model.tokenizer.display(token_id)
            note = "writes: direct effect on the logit, norms linearised at this forward's own mean and scale"
        else:
            with self.model.guard():
                seen = self._forward(trace, mlp_of=mlp)
            h, acts_t = seen.mlp_linears[0].input[0], seen.mlp_linears[-1].input[0]
            writes = np.full(acts_t.shape[1], np.nan, dtype=np.float32)
            bias_effect = neurons_effect = float("nan")
            token_id, token, rank_by = None, "", "activation"
            note = ("the neurons' writes reach the predictions through a non-linear masked-LM head, so they are "
                    "ranked by |activation| and have no direct effect")
        down = self.down(mlp, layer)
        scale = self.model.unembedding_arrays()[2]
        gated = self.model.neuron_gates().get(mlp_name(stack, layer), {})
        ungated = torch.tensor([j for j in range(acts_t.shape[1]) if j not in gated], device=acts_t.device)
        act = _activation_name(gate, up, h[position], acts_t[position], ungated)
        return neuron_answer(stack=stack, layer=layer, position=position, token_id=token_id, token=token,
                             rank_by=rank_by, k=k, include=include, h=h, acts_t=acts_t, writes=writes, rows_t=rows_t,
                             gate=gate, up=up, down_rows=down.weight.t(), unembedding_t=w_t, logit_scale=scale,
                             display=self.model.tokenizer.display, activation_function=act, bias_effect=bias_effect,
                             neurons_effect=neurons_effect, residual=residual, note=note)

    def expert_neurons(self, trace: Trace, layer: int, position: int, k: int = 20,  # noqa: ANN201
                       token_id: int | None = None):
        """engine.hf_backend.experts.expert_neurons: each chosen expert's neurons in a mixture-of-experts layer."""
        from .experts import expert_neurons

        self._check_family()
        return expert_neurons(self, trace, layer, position, k, token_id)

    def probe_effects(self, trace: Trace, position: int, token_id: int | None, layer: int,
                      rows: Tensor) -> tuple[np.ndarray, float, int]:
        """Each row (m, d), written at `layer` beside its MLP, read through the linearised norms and the unembedding
        as attribute() reads the MLP's own write: -> (effects (m,), that MLP's whole part, token id). The parts
        (the MLP's included) must sum to the model's logit, or it is refused."""
        logits, token_id = _check_position(trace, position, token_id)
        with self.model.guard():
            walk = self._walk(trace, position, token_id, probe=(layer, rows))
            values = self._values(walk)
            effects = (walk["parts"][PROBE + "experts"] @ walk["column"]).cpu().numpy()
        self._check_sum(values, logits, token_id)
        return effects.astype(np.float64), values.get(f"L{layer}.MLP", 0.0), token_id

    def _gate_up(self, mlp: nn.Module, layer: int) -> tuple[object | None, object]:
        """(the map the activation function reads, the one it multiplies; None for an ungated MLP), each with
        .weight (d_ff, d) and .bias; a fused gate-and-up projection (ModernBERT's Wi, Phi-3's gate_up_proj: the
        first half activated) is split in two."""
        children = dict(mlp.named_children())
        gate = next((children[n] for n in GATE_NAMES if isinstance(children.get(n), nn.Linear)), None)
        up = next((children[n] for n in UP_NAMES if isinstance(children.get(n), nn.Linear)), None)
        d, d_ff = self.model.config.d_model, self.down(mlp, layer).in_features
        fused = up if up is not None and gate is None else children.get("gate_up_proj")
        if gate is None and isinstance(fused, nn.Linear) and fused.out_features == 2 * d_ff and fused.in_features == d:
            half = lambda t, i: t[i * d_ff : (i + 1) * d_ff] if t is not None else None  # noqa: E731
            return (_Rows(half(fused.weight, 0), half(fused.bias, 0)), _Rows(half(fused.weight, 1), half(fused.bias, 1)))
        if up is None or up.in_features != d or up.out_features != d_ff or (
                gate is not None and gate.out_features != d_ff):
            raise CaptureError(f"layer {layer}'s MLP ({type(mlp).__name__}: {', '.join(children)}) has no up (and "
                               "gate) projection the backend recognises to read its neurons from")
        return gate, up

    def down(self, mlp: nn.Module, layer: int) -> nn.Linear:
        d = self.model.config.d_model
        outs = [m for m in mlp.children() if isinstance(m, nn.Linear) and m.out_features == d]
        if len(outs) != 1:
            raise CaptureError(f"layer {layer}'s MLP ({type(mlp).__name__}) has no single output projection")
        return outs[0]

    # -- embeddings and positions ------------------------------------------------------------------------------
    def nearest_tokens(self, token_id: int, k: int = 10, metric: str = "cosine") -> list[tuple[int, str, float]]:
        if metric not in ("cosine", "dot"):
            raise CaptureError(f"metric must be 'cosine' or 'dot', not {metric!r}")
        with torch.inference_mode():
            e = self.model.hf.get_input_embeddings().weight.float()
            if not 0 <= token_id < e.shape[0]:
                raise CaptureError(f"token id {token_id} is outside the vocabulary (0..{e.shape[0] - 1})")
            if metric == "cosine":
                e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            scores = e @ e[token_id]
            scores[token_id] = -torch.inf
            top = torch.topk(scores, min(k, e.shape[0] - 1))
        return [(int(t), self.model.tokenizer.display(int(t)), float(s)) for s, t in zip(top.values, top.indices)]

    def positions_view(self, n: int = 128) -> dict:
        """Rotary frequencies as transformers' own rotary embeddings hold them: one row per inv_freq buffer (Gemma 3
        keeps one per layer type), shorter rows padded with NaN."""
        rows: dict[str, np.ndarray] = {}
        for name, buf in self.model.hf.named_buffers():
            if name.endswith("inv_freq") and "vision" not in name:
                freq = buf.detach().float().cpu().numpy()
                if not any(f.shape == freq.shape and np.array_equal(f, freq) for f in rows.values()):
                    rows[name] = freq
        if not rows:
            return {"scheme": "none", "what": "no rotary embedding found in this model (see its model card for its "
                    "positional scheme)", "array": np.zeros((0, 0)), "labels": None}
        width = max(f.shape[0] for f in rows.values())
        array = np.full((len(rows), width), np.nan, dtype=np.float32)
        for r, f in enumerate(rows.values()):
            array[r, : f.shape[0]] = f
        return {"scheme": "rotary", "what": "rotation frequency (radians per position) of each pair of dims",
                "array": array, "labels": [".".join(name.split(".")[-2:]) for name in rows]}


_ACTIVATIONS = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
                "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "relu": torch.relu}


def _activation_name(gate: object | None, up: object, h: Tensor, acts: Tensor, neurons: Tensor) -> str:
    """Which activation function the MLP applied, told from what it did at one position on `neurons` (the ones
    not ablated; a config names it under several keys, and some modules hard-code it)."""
    with torch.inference_mode():
        first = gate if gate is not None else up
        lin = lambda m: (h.float() @ m.weight.float().t() + (m.bias.float() if m.bias is not None else 0))[neurons]  # noqa: E731
        pre, mult = lin(first), (lin(up) if gate is not None else 1.0)
        target = acts.float()[neurons]
        for name, fn in _ACTIVATIONS.items():
            if torch.allclose(fn(pre) * mult, target, rtol=1e-4, atol=1e-5 * max(1.0, float(target.abs().max()))):
                return name
    return "activation"


@dataclass(frozen=True)
class _Rows:
    """Half of a fused linear map: its rows (d_ff, d) and bias."""

    weight: Tensor
    bias: Tensor | None


def _keep(where: dict, key: object, value: object) -> None:
    """Keep the first value seen under `key` (a hook must return None, or it replaces the module's output)."""
    where.setdefault(key, value)


def _add(parts: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    for k, v in new.items():
        parts[k] = parts[k] + v if k in parts else v


__all__ = ["HFExplainer"]
