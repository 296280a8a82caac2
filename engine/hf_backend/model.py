"""HFModel: a transformers model behind the engine's Model interface, so Session, Trace, views and exports work
unchanged. Forwards go through transformers' own classes with our attention function registered; what they
record is the native engine's rebuild record (q as used, keys in a per-layer arena, each row's lse, the score
rule), plus the experts each token took in MoE layers."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..cancel import checkpoint
from ..config import ModelConfig
from ..errors import CaptureError, EngineError
from ..model import Forward, Model, _frozen, _to_host, set_factor
from ..placement import Placement, single_device
from ..rebuild import KeyArena, ScoreRule
from ..routing import RoutingBlock, router_name
from ..tokenizer import Tokenizer
from ..trace import LazyLogits, Trace, capture_name, mlp_name
from .attention import ForwardState, active, current
from .cache import HFCache
from .structure import text_model

log = logging.getLogger(__name__)


class HFModel(Model):
    """A Model whose network is a transformers PreTrainedModel (`hf`). `attention_names`: id(attention module) ->
    capture name; `attention_layers`: the layers that have attention (hybrids have fewer than n_layers);
    `moe_layers`: layers with a router."""

    backend = "transformers"

    def __init__(self, hf: torch.nn.Module, config: ModelConfig, tokenizer: Tokenizer, name: str, folder: Path | None,
                 attention_names: dict[int, str], moe_layers: list[int], n_experts: int | None,
                 layer_kinds: tuple[str, ...] = ()) -> None:
        self.hf = hf.eval()
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.folder = folder
        self.capture_dtype = "auto"
        self.capture_mode = "rebuild"  # always: memory linear in the context, patterns rebuilt on demand
        self.load_seconds: float | None = None
        self.dtype_reason = ""
        self._unembedding: tuple | None = None
        self._explainer = None
        self._patch_sites = None
        self._neuron_gate_values: dict[str, dict[int, float]] = {}
        self._neuron_hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._rules: dict[str, ScoreRule] = {}
        self._gate_values: dict[str, tuple[float, ...]] = {}
        self._gate_tensors: dict[str, torch.Tensor] = {}
        self._expert_gates: dict[int, dict[int, float]] = {}  # MoE layer -> {expert: factor != 1}
        self._mask_shapes: dict[str, tuple] = {}  # capture name -> (causal, window, window_ahead) of its mask rule
        # whether LazyLogits (final hidden states × the output head, scale, soft-cap) reproduce this model's logits:
        # None until checked on the first forward of two or more tokens; False: every fed position's logits are
        # kept from transformers' own head instead
        self.lazy_logits_ok: bool | None = None
        self.attention_names = attention_names
        self.attention_layers = sorted({int(n.split(".")[1]) for n in attention_names.values()})
        self.moe_layers = moe_layers
        self.n_experts = n_experts
        self.layer_kinds = layer_kinds  # per layer: "attention", or what a hybrid has instead ("Mamba", ...)
        self.quantization = ""  # e.g. "mxfp4, dequantised to bfloat16" (set by the loader)
        add_cancel_points(self.hf)
        # the final hidden states of each forward into the forward's state (decode unembeds all but the last later);
        # one hook for the model's life, not one per step
        text_model(self.hf).register_forward_hook(_keep_hidden)

    @property
    def net(self):  # noqa: ANN201 - the native engine's network: absent here
        raise EngineError(f"{self.name} runs on the transformers backend: it has no native engine network "
                          "(patching, explanations and gates go through patch_sites, explainer and the gate methods)")

    @property
    def explainer(self):  # noqa: ANN201 - engine.hf_backend.explain.HFExplainer
        """The explanations (inside a head, attribution, the MLP's neurons, the logit lens), found from transformers'
        own forward; made once (it remembers the norms it probed)."""
        if self._explainer is None:
            from .explain import HFExplainer

            self._explainer = HFExplainer(self)
        return self._explainer

    @property
    def patch_sites(self):  # noqa: ANN201 - engine.hf_backend.patching.HFSites
        """Where activation patching hooks each component in transformers' modules, found as the explainer finds
        them, and the batched forward of a patching sweep."""
        if self._patch_sites is None:
            from .patching import HFSites

            self._patch_sites = HFSites(self)
        return self._patch_sites

    # -- description --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    spread: Placement | None = None  # over several devices: the plan behind accelerate's device map (set by the loader)

    @property
    def placement(self) -> str:
        """Which layers run on which device, for the status bar (as Model.placement)."""
        if self.spread is None:
            return single_device(self.n_layers, str(self.device)).describe()
        return self.spread.describe() + (f" · head {self.spread.head}" if self.spread.head != self.spread.layers[-1] else "")

    @property
    def devices(self) -> tuple[str, ...]:
        return self.spread.devices if self.spread is not None else (str(self.device),)

    def place(self, placement: Placement | str) -> None:
        raise EngineError("a model on the transformers backend is placed when it is loaded: "
                          "load_model(..., device=placement or 'auto')")

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.hf.parameters() if p.is_floating_point()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())

    def __repr__(self) -> str:
        return (f"HFModel({self.name!r}, {self.config.model_type}, {self.family}, layers={self.n_layers}, "
                f"heads={self.n_heads}, device={self.device})")

    @property
    def stack(self) -> str:
        return "encoder" if self.family == "encoder" else "decoder"

    def score_rule(self, name: str) -> ScoreRule:
        rule = self._rules.get(name)
        if rule is None:
            raise CaptureError(f"{name} has not been recorded by any forward yet")
        return rule

    # -- head gates ---------------------------------------------------------------------------
    def attention_module(self, kind: str, layer: int):  # noqa: ANN201
        if kind not in self.kinds:
            raise CaptureError(f"this {self.family} model has no {kind!r} attention; choose one of {', '.join(self.kinds)}")
        n = self.layers_by_kind[kind]
        if not 0 <= layer < n:
            raise CaptureError(f"layer {layer} does not exist for {kind!r} attention; layers are 0..{n - 1}")
        if layer not in self.attention_layers:
            what = self.layer_kinds[layer] if layer < len(self.layer_kinds) else "no attention"
            raise CaptureError(f"layer {layer} has no attention ({what}); attention layers: "
                               f"{', '.join(map(str, self.attention_layers))}")
        return capture_name(kind, layer)

    def set_head_gate(self, kind: str, layer: int, head: int, value: float) -> None:
        if not 0 <= head < self.n_heads:
            raise CaptureError(f"head {head} does not exist; heads are 0..{self.n_heads - 1}")
        name = self.attention_module(kind, layer)
        values = list(self._gate_values.get(name, (1.0,) * self.n_heads))
        values[head] = float(value)
        if all(v == 1.0 for v in values):
            self._gate_values.pop(name, None)
            self._gate_tensors.pop(name, None)
        else:
            self._gate_values[name] = tuple(values)
            self._gate_tensors[name] = torch.tensor(values, device=self.device)

    def clear_gates(self) -> None:
        self._gate_values.clear()
        self._gate_tensors.clear()

    # -- expert gates: an expert's contribution scaled as if the router had weighted it so (0: ablated)
    def expert_gates(self) -> dict[int, dict[int, float]]:
        return {layer: dict(g) for layer, g in self._expert_gates.items()}

    def set_expert_gate(self, layer: int, expert: int, value: float) -> None:
        """Multiply the router's weight for `expert` in MoE layer `layer` by `value` wherever it is chosen (0
        ablates it; 1 restores it). The router still chooses as before: only the chosen expert's share changes."""
        if layer not in self.moe_layers:
            raise CaptureError(f"layer {layer} has no experts; the mixture-of-experts layers are "
                               f"{', '.join(map(str, self.moe_layers)) or 'none'}")
        if self.n_experts is None or not 0 <= expert < self.n_experts:
            raise CaptureError(f"expert {expert} does not exist; experts are 0..{(self.n_experts or 1) - 1}")
        set_factor(self._expert_gates, layer, expert, value)

    def clear_expert_gates(self) -> None:
        self._expert_gates.clear()

    # -- neuron gates: a dense MLP's neuron times its gate, by a pre-hook on the MLP's output projection
    def neuron_gates(self) -> dict[str, dict[int, float]]:
        """"decoder.3.mlp" -> {neuron: gate} for the neurons whose gate differs from 1 (a copy)."""
        return {name: dict(v) for name, v in self._neuron_gate_values.items()}

    def clear_neuron_gates(self) -> None:
        for hook in self._neuron_hooks.values():
            hook.remove()
        self._neuron_hooks.clear()
        self._neuron_gate_values.clear()

    def set_neuron_gate(self, layer: int, neuron: int, value: float, stack: str | None = None) -> None:
        """Multiply one neuron's activation by `value` (0 = ablated, 1 = untouched) in every later forward: the
        input of the MLP's output projection (its activations) times a gate vector. Dense MLPs only (an expert
        layer is refused, saying why)."""
        stack = stack or self.main_stack
        if stack != self.main_stack:
            raise CaptureError(f"this {self.family} model has no {stack!r} stack")
        mlp, _ = self.explainer.dense_mlp(layer)
        down = self.explainer.down(mlp, layer)
        if not 0 <= neuron < down.in_features:
            raise CaptureError(f"neuron {neuron} does not exist; layer {layer}'s MLP has neurons 0..{down.in_features - 1}")
        name = mlp_name(stack, layer)
        values = set_factor(self._neuron_gate_values, name, neuron, value)
        hook = self._neuron_hooks.pop(name, None)
        if hook is not None:
            hook.remove()
        if not values:
            return
        gate = torch.ones(down.in_features, device=self.device, dtype=self.dtype)
        for j, v in values.items():
            gate[j] = v
        self._neuron_hooks[name] = down.register_forward_pre_hook(lambda _m, args: (args[0] * gate, *args[1:]))

    # -- forwards -----------------------------------------------------------------------------
    def _state(self, recorder: dict | None, cross_keys: bool = True) -> ForwardState:
        return ForwardState(self.attention_names, dict(self._gate_tensors), self._mask_shapes, recorder,
                            cross_keys=cross_keys, expert_gates=self.expert_gates())

    def _routing_blocks(self, state: ForwardState, q_start: int) -> dict[str, list[RoutingBlock]]:
        if not state.routes:
            return {}
        layers = list(state.routes)
        # one transfer for every layer's experts and one for their weights (one sync each on a GPU)
        experts = _to_host([state.routes[n][0].to(torch.int32) for n in layers])
        weights = _to_host([state.routes[n][1].to(torch.float32) for n in layers])
        return {router_name(self.stack, layer): [RoutingBlock(q_start, e, w)]
                for layer, e, w in zip(layers, experts, weights)}

    def _keep_rules(self, state: ForwardState) -> None:
        for name, rule in state.rules.items():
            old = self._rules.get(name)
            if old is None:
                self._rules[name] = rule
            elif (old.scale, old.causal, old.window, old.window_ahead, old.chunk, old.softcap) != (
                    rule.scale, rule.causal, rule.window, rule.window_ahead, rule.chunk, rule.softcap):
                raise CaptureError(f"{name} formed its scores differently in this forward ({rule}) than before ({old})")

    def encode(self, ids: list[int], capture: bool | Collection[str] = True) -> Forward:
        """ModernBERT and other encoders: every position's masked-LM logits. Encoder-decoders: the encoder's
        output (kept on the device for cross-attention), no logits."""
        rec = self._recorder(capture, True)
        with self.guard():
            state = self._state(rec)
            if self.family == "encoder-decoder":
                with active(state):
                    out = self.hf.get_encoder()(input_ids=torch.tensor([ids], device=self.device))
                self._keep_rules(state)
                return Forward(self._blocks(rec, 0), None, hidden=_last_hidden(out))
            with active(state):
                out = self.hf(input_ids=torch.tensor([ids], device=self.device))
            self._keep_rules(state)
            logits = out.logits[0].float().cpu().numpy() if getattr(out, "logits", None) is not None else None
            blocks = self._blocks(rec, 0)
            blocks.update(self._routing_blocks(state, 0))
            return Forward(blocks, _frozen(logits) if logits is not None else None)

    def decode(self, ids: list[int], cache: HFCache, memory: torch.Tensor | None = None,
               capture: bool | Collection[str] = True) -> Forward:
        """Feed `ids` after the cache's tokens through transformers' model and cache. The last position's logits
        now; the others kept as final hidden states and unembedded on demand."""
        if (memory is None) != (self.family != "encoder-decoder"):
            raise EngineError("an encoder-decoder model decodes with its encoder's output (Model.encode first)")
        rec = self._recorder(capture, True)
        inputs = {}
        if memory is not None:
            from transformers.modeling_outputs import BaseModelOutput

            inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=memory)}
        start = cache.length
        prefix = cache.stale_prefix(start)
        if prefix:  # recurrent state lost on a back() beyond the snapshots: recompute it, recording nothing
            with self.guard(), active(self._state(None)):
                self.hf(**self._ids_input(prefix), cache=cache.hf, use_cache=True, logits_to_keep=1, **inputs)
            cache.fed()
        with self.guard(cache):
            cache.feeding(list(ids))
            state = self._state(rec, cross_keys=not cache.cross_recorded)
            hidden = state.hidden
            keep = 1 if len(ids) == 1 or self.lazy_logits_ok else 2 if self.lazy_logits_ok is None else 0
            with active(state):
                out = self.hf(**self._ids_input(ids), cache=cache.hf, use_cache=True, logits_to_keep=keep, **inputs)
            self._keep_rules(state)
            last = _frozen(out.logits[0, -1].float().cpu().numpy())
            lazy = None
            if len(ids) > 1 and keep != 0 and not (hidden and hidden[-1].shape[-1] == self.config.d_model):
                self.lazy_logits_ok = False  # no final hidden states to unembed later: keep the logits now
                cache.truncate(start)
                return self.decode(ids, cache, memory, capture)
            if len(ids) > 1 and keep == 0:
                lazy = _frozen(out.logits[0, :-1].float().cpu().numpy())
            elif len(ids) > 1 and hidden and hidden[-1].shape[-1] == self.config.d_model:
                lazy = LazyLogits(hidden[-1][0, :-1].float().cpu().numpy(), *self.unembedding_arrays())
                if keep == 2 and not self._lazy_logits_agree(lazy, out.logits[0, 0]):
                    cache.truncate(start)
                    return self.decode(ids, cache, memory, capture)
            blocks = self._blocks(rec, start)
            if rec is not None:
                for name, b in blocks.items():  # self-attention keys live once, per layer, in the cache's arena
                    if b[0].keys is not None and name.startswith("decoder.") and name.endswith(".attn"):
                        cache.key_arenas.setdefault(name, KeyArena()).append(b[0].keys)
                        b[0] = replace(b[0], keys=None)
                blocks.update(self._routing_blocks(state, start))
                cache.cross_recorded = cache.cross_recorded or any(n.endswith(".cross_attn") for n in blocks)
            cache.fed()
        return Forward(blocks, last, lazy_logits=lazy)

    def _ids_input(self, ids: list[int]) -> dict:
        key = "decoder_input_ids" if self.family == "encoder-decoder" else "input_ids"
        return {key: torch.tensor([ids], device=self.device)}

    def _lazy_logits_agree(self, lazy: LazyLogits, exact: torch.Tensor) -> bool:
        """Check once, on the second-to-last fed position, that LazyLogits give transformers' own logits (an
        architecture may post-process them in a way unembedding_arrays does not know)."""
        exact = exact.float().cpu().numpy()
        ours = lazy.rows(lazy.shape[0] - 1)[0]
        err = float(np.abs(ours - exact).max())
        # float32: agreement to rounding; 16-bit heads round their own logits (~2^-8 relative), a missed scale or
        # soft-cap is off by far more
        rel = 1e-3 if self.dtype == torch.float32 else 3e-2
        self.lazy_logits_ok = err <= rel * max(1.0, float(np.abs(exact).max()))
        if not self.lazy_logits_ok:
            log.warning("%s: logits from the final hidden states differ from the model's own by %.3g; keeping every "
                        "fed position's logits instead", self.name, err)
        return self.lazy_logits_ok

    def unembedding_arrays(self) -> tuple[np.ndarray, np.ndarray | None, float, float | None]:
        """(Wᵀ [d, vocab], bias, scale, final soft-cap) of the output head, as LazyLogits computes logits."""
        if self._unembedding is None:
            head = self.hf.get_output_embeddings()
            w = head.weight.detach().t()
            if w.dtype == torch.bfloat16:
                w = w.cpu().view(torch.int16).numpy().view(np.uint16)
            else:
                w = w.to("cpu", torch.float32).numpy()
            bias = getattr(head, "bias", None)
            bias = bias.detach().to("cpu", torch.float32).numpy() if bias is not None else None
            text = self.hf.config.get_text_config()
            scale = 1.0
            if getattr(text, "logits_scaling", None):  # Granite divides the logits
                scale = 1.0 / float(text.logits_scaling)
            if getattr(text, "logit_scale", None):  # Cohere multiplies them
                scale *= float(text.logit_scale)
            if getattr(text, "lm_head_multiplier", None):  # Falcon-H1 too
                scale *= float(text.lm_head_multiplier)
            if bias is not None and scale != 1.0:
                bias = bias * scale
            cap = getattr(text, "final_logit_softcapping", None)
            self._unembedding = (_frozen(w), _frozen(bias) if bias is not None else None, scale,
                                 float(cap) if cap else None)
        return self._unembedding

    def new_cache(self) -> HFCache:
        return HFCache(self.hf.config)

    def make_trace(self, **kw) -> Trace:
        kw.setdefault("expert_gates", self.expert_gates())  # Model.run's traces too (a Session passes its own)
        rules = {name: self.score_rule(name) for name, b in kw.get("blocks", {}).items()
                 if b and name in self._rules}
        return Trace(family=self.family, model_name=self.name, n_layers=self.layers_by_kind, n_heads=self.n_heads,
                     n_kv_heads=self.config.n_kv_heads, no_logits_reason=self.no_logits_reason, rules=rules,
                     n_experts=self.n_experts if self.moe_layers else None, no_attention=self.no_attention, **kw)

    @property
    def no_attention(self) -> dict[str, str]:
        """capture name -> the layer type of each layer without attention (hybrids)."""
        kinds = self.layer_kinds
        main = "encoder" if self.family == "encoder" else "self"
        return {capture_name(main, i): (kinds[i] if i < len(kinds) else "non-attention")
                for i in range(self.n_layers) if i not in self.attention_layers}


def add_cancel_points(hf: torch.nn.Module) -> int:
    """A forward pre-hook on every numbered layer (…layers.N, h.N, layer.N, block.N) that raises Cancelled when
    the enclosing engine.cancel.cancellable() flag is set, so a long prefill stops between layers (guard()
    rolls the cache back). Returns how many layers got one."""
    n = 0
    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "layer", "h", "block"):
            for layer in module:
                layer.register_forward_pre_hook(lambda _m, _a: checkpoint())
                n += 1
    return n


def _keep_hidden(_module: torch.nn.Module, _inputs: tuple, out: object) -> None:
    state = current()
    if state is not None:
        state.hidden.append(_last_hidden(out))


def _last_hidden(out: object) -> torch.Tensor:
    h = getattr(out, "last_hidden_state", None)
    return h if h is not None else out[0]
