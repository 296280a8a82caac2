"""Model: the torch network, its tokenizer and config, with forward passes that return numpy captures."""

from __future__ import annotations

import logging
import operator
from collections.abc import Collection, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .cache import KVCache
from .config import ModelConfig
from .device import is_out_of_memory, resolve_device
from .errors import CaptureError, OutOfMemoryError, PromptError
from .modules import Recorder
from .network import Transformer
from .placement import Placement, single_device
from .rebuild import KeyArena, QueryBlock, ScoreRule
from .tokenizer import Tokenizer
from .trace import KINDS, LazyLogits, PatternBlock, Trace, capture_name, mlp_name, parse_capture_name

log = logging.getLogger(__name__)

PATTERN_BUDGET = 128 * 1024 * 1024  # bytes of float32 patterns for a full context before "auto" stores float16
ROW_CHUNK = 32  # causal prefill patterns are stored in row chunks trimmed to their keys (no upper triangle)


@dataclass
class Forward:
    """What one forward pass recorded: pattern blocks per capture name, and the logits."""

    blocks: dict[str, list[PatternBlock]]
    logits: np.ndarray | None  # encoder: masked-LM logits of every position; decoder: the last position only
    hidden: torch.Tensor | None = None  # encoder output, kept on the device for cross-attention
    lazy_logits: LazyLogits | None = None  # decoder: the other fed positions, computed when asked for


class Model:
    backend = "native"  # which engine runs it: "native" (engine.network) or "transformers" (engine.hf_backend)

    def __init__(
        self,
        net: Transformer,
        tokenizer: Tokenizer,
        name: str = "model",
        folder: Path | None = None,
        capture_dtype: str = "auto",
        capture_mode: str = "auto",
    ) -> None:
        self.net = net.eval()
        self.config: ModelConfig = net.cfg
        self.tokenizer = tokenizer
        self.name = name
        self.folder = folder
        self.capture_dtype = capture_dtype
        self.capture_mode = capture_mode
        self.load_seconds: float | None = None
        self.dtype_reason = ""  # why this dtype (set by load_model), for the status bar
        self._unembedding: tuple | None = None
        self._rules: dict[str, ScoreRule] = {}
        self._gate_values: dict[str, tuple[float, ...]] = {}  # capture name -> gates, where any differs from 1
        self._neuron_gate_values: dict[str, dict[int, float]] = {}  # "decoder.3.mlp" -> {neuron: gate != 1}

    @property
    def pattern_dtype(self) -> type:
        """dtype of stored patterns. "auto": exact float32 while one full context's patterns (every layer
        and head, causal ones stored as triangles) fit in PATTERN_BUDGET bytes, float16 beyond (half the
        memory; each weight within 5e-4 of its value)."""
        if self.capture_dtype == "auto":
            c, n = self.config, self.config.max_positions
            per_head = n * n * (c.n_encoder_layers + c.n_decoder_layers / 2)  # causal self: a triangle
            if c.family == "encoder-decoder":
                per_head += n * n * c.n_decoder_layers  # cross
            return np.float16 if per_head * c.n_heads * 4 > PATTERN_BUDGET else np.float32
        try:
            dtype = np.dtype(self.capture_dtype)
        except TypeError as exc:
            raise ValueError(f"capture_dtype must be 'auto', 'float32' or 'float16', not {self.capture_dtype!r}") from exc
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"capture_dtype must be 'auto', 'float32' or 'float16', not {self.capture_dtype!r}")
        return dtype.type

    @property
    def rebuilds_patterns(self) -> bool:
        """Whether forwards keep queries, keys and row log-sum-exps (memory linear in the context; patterns
        rebuilt exactly on demand) instead of every pattern. capture_mode "auto": rebuild when one full
        context's float32 patterns would not fit in PATTERN_BUDGET and no float16 storage was asked for."""
        if self.capture_mode not in ("auto", "patterns", "rebuild"):
            raise ValueError(f"capture_mode must be 'auto', 'patterns' or 'rebuild', not {self.capture_mode!r}")
        if self.capture_mode != "auto":
            return self.capture_mode == "rebuild"
        return self.capture_dtype == "auto" and self.pattern_dtype == np.float16

    def score_rule(self, name: str) -> ScoreRule:
        """How the capture point `name` forms its scores (for rebuilding its patterns)."""
        rule = self._rules.get(name)
        if rule is None:
            kind, layer = parse_capture_name(name)
            module = self.attention_module(kind, layer)
            spec = module.spec
            stack = self.net.encoder if kind == "encoder" else self.net.decoder
            bias = None
            if stack.rel_bias is not None and kind != "cross":
                n = self.max_positions
                offsets = torch.arange(-(n - 1), n, device=stack.rel_bias.table.weight.device)
                with torch.inference_mode():
                    bias = stack.rel_bias.at_offsets(offsets).to(self.dtype).float().cpu().numpy()  # (heads, 2n-1)
                bias = _frozen(bias)
            rule = ScoreRule(scale=spec.scale, causal=kind == "self", group=spec.group, softcap=spec.softcap,
                             window=spec.window if kind != "cross" else None, bias_by_offset=bias)
            self._rules[name] = rule
        return rule

    # -- description ------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.config.family

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def layers_by_kind(self) -> dict[str, int]:
        c = self.config
        cross = c.n_decoder_layers if c.family == "encoder-decoder" else 0
        return {"encoder": c.n_encoder_layers, "self": c.n_decoder_layers, "cross": cross}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if self.layers_by_kind[k])

    @property
    def device(self) -> torch.device:
        return self.net.embed.weight.device

    @property
    def placement(self) -> str:
        """Which layers run on which device, for the status bar: "cpu layers 0–11" on one device, or
        "cuda:0 layers 0–15 · cuda:1 layers 16–31 · cpu layers 32–39" over several (encoder-decoder models name
        both stacks)."""
        spread = getattr(self.net, "placement", None)
        if spread is None:
            return single_device(self.n_layers, str(self.device)).describe()
        n_enc = self.config.n_encoder_layers if self.config.has_encoder else 0
        if self.family != "encoder-decoder":
            text = spread.describe()
        else:
            enc = Placement(spread.layers[:n_enc], spread.embed, spread.embed, {}).describe()
            dec = Placement(spread.layers[n_enc:], spread.embed, spread.head, {}).describe()
            text = f"encoder: {enc} · decoder: {dec}"
        return text + (f" · head {spread.head}" if spread.head != spread.layers[-1] else "")

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices this model's weights are on, in the order the forward meets them."""
        spread = getattr(self.net, "placement", None)
        return spread.devices if spread is not None else (str(self.device),)

    def place(self, placement: Placement | str) -> None:
        """Spread the model over the devices `placement` names (one per layer, encoder layers then decoder
        layers; see engine.placement.plan), or put all of it on one device ("cpu", "cuda:1"). Gates, the KV cache
        of later forwards and recorded traces follow; a session's existing cache stays where it was made."""
        from .multi_device import blocks, place, route

        if isinstance(placement, str):  # one device: everything there, and the forward without moves
            place(self.net, single_device(len(blocks(self.net)), str(resolve_device(placement))))
            route(self.net, None)
        else:
            place(self.net, placement)
        self._unembedding = None
        self._rules.clear()

    @property
    def dtype(self) -> torch.dtype:
        return self.net.embed.weight.dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    @property
    def has_logits(self) -> bool:
        return self.config.has_decoder or self.config.mlm_head

    @property
    def no_logits_reason(self) -> str | None:
        if self.has_logits:
            return None
        return "this checkpoint has no masked-LM head (e.g. a sentence-embedding model), so there are no token predictions"

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.family}, layers={self.n_layers}, heads={self.n_heads}, device={self.device})"

    # -- head gates (ablation) ----------------------------------------------------------------
    def attention_module(self, kind: str, layer: int):
        if kind not in self.kinds:
            raise CaptureError(f"this {self.family} model has no {kind!r} attention; choose one of {', '.join(self.kinds)}")
        n = self.layers_by_kind[kind]
        if not 0 <= layer < n:
            raise CaptureError(f"layer {layer} does not exist for {kind!r} attention; layers are 0..{n - 1}")
        stack = self.net.encoder if kind == "encoder" else self.net.decoder
        block = stack.layers[layer]
        return block.cross_attn if kind == "cross" else block.attn

    def set_head_gate(self, kind: str, layer: int, head: int, value: float) -> None:
        """Multiply one head's output by `value` (0 = ablated, 1 = untouched) in every later forward."""
        if not 0 <= head < self.n_heads:
            raise CaptureError(f"head {head} does not exist; heads are 0..{self.n_heads - 1}")
        module = self.attention_module(kind, layer)
        module.gate[head] = float(value)
        name = capture_name(kind, layer)
        values = list(self._gate_values.get(name, (1.0,) * self.n_heads))
        values[head] = float(value)
        if all(v == 1.0 for v in values):
            self._gate_values.pop(name, None)
        else:
            self._gate_values[name] = tuple(values)

    def gates(self) -> dict[str, tuple[float, ...]]:
        """Capture name -> per-head gates, for the layers where any gate differs from 1. Read from a host-side
        copy kept by set_head_gate: checking every layer's gate on a GPU cost one device sync per layer per step."""
        return dict(self._gate_values)

    def clear_gates(self) -> None:
        """Every head gate and every neuron gate back to 1."""
        for kind in self.kinds:
            for i in range(self.layers_by_kind[kind]):
                self.attention_module(kind, i).gate.fill_(1.0)
        self._gate_values.clear()
        self.clear_neuron_gates()

    # -- neuron gates (MLP ablation) ------------------------------------------------------------
    @property
    def explainer(self):  # noqa: ANN201 - engine.explain.NativeExplainer
        """The explanations (inside a head, attribution, the MLP's neurons, the logit lens) over this network."""
        from .explain import NativeExplainer

        return NativeExplainer(self)

    @property
    def patch_sites(self):  # noqa: ANN201 - engine.patching.NativeSites
        """Where activation patching hooks each component (this network's modules) and its batched forward."""
        from .patching import NativeSites

        return NativeSites(self)

    @property
    def main_stack(self) -> str:
        """"decoder", or "encoder" for an encoder-only model: the stack whose MLPs explain the predictions."""
        return "decoder" if self.config.has_decoder else "encoder"

    def mlp_module(self, layer: int, stack: str | None = None):  # noqa: ANN201 - engine.modules.FeedForward
        """The MLP (FeedForward) of `layer` in `stack` (default: the main stack)."""
        stack = stack or self.main_stack
        net_stack = {"encoder": self.net.encoder, "decoder": self.net.decoder}.get(stack)
        if net_stack is None:
            raise CaptureError(f"this {self.family} model has no {stack!r} stack; use "
                               f"{' or '.join(repr(s) for s in ('encoder', 'decoder') if getattr(self.net, s) is not None)}")
        if not 0 <= layer < len(net_stack.layers):
            raise CaptureError(f"layer {layer} does not exist in the {stack}; layers are 0..{len(net_stack.layers) - 1}")
        return net_stack.layers[layer].ffn

    def set_neuron_gate(self, layer: int, neuron: int, value: float, stack: str | None = None) -> None:
        """Multiply one MLP neuron's activation by `value` (0 = ablated, 1 = untouched) in every later forward."""
        stack = stack or self.main_stack
        ffn = self.mlp_module(layer, stack)
        d_ff = ffn.down.in_features
        if not 0 <= neuron < d_ff:
            raise CaptureError(f"neuron {neuron} does not exist; layer {layer}'s MLP has neurons 0..{d_ff - 1}")
        name = mlp_name(stack, layer)
        if not set_factor(self._neuron_gate_values, name, neuron, value):
            ffn.neuron_gate = None  # the plain forward again
            return
        if ffn.neuron_gate is None:
            ffn.neuron_gate = torch.ones(d_ff, device=ffn.down.weight.device)  # with its layer (several devices)
        ffn.neuron_gate[neuron] = float(value)

    def neuron_gates(self) -> dict[str, dict[int, float]]:
        """"decoder.3.mlp" -> {neuron: gate} for the neurons whose gate differs from 1 (a host-side copy)."""
        return {name: dict(v) for name, v in self._neuron_gate_values.items()}

    def clear_neuron_gates(self) -> None:
        for name in list(self._neuron_gate_values):
            stack, layer, _ = name.split(".")
            self.mlp_module(int(layer), stack).neuron_gate = None
        self._neuron_gate_values.clear()

    # -- ids ----------------------------------------------------------------------------------
    def check_ids(self, ids: Sequence[int], what: str = "prompt") -> list[int]:
        if isinstance(ids, (bytes, bytearray)) or not isinstance(ids, Sequence):
            raise PromptError(f"the {what} must be text or a list of whole-number token ids, not {type(ids).__name__}")
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError as exc:
            raise PromptError(f"the {what} must be text or a list of whole-number token ids ({exc})") from exc
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise PromptError(f"token id {bad[0]} in the {what} is outside this model's vocabulary (0..{self.config.vocab_size - 1})")
        if len(ids) > self.max_positions:
            raise PromptError(f"the {what} has {len(ids)} tokens but this model reads at most {self.max_positions}; shorten it")
        return ids

    def encoder_ids(self, text_or_ids: str | Sequence[int], what: str = "source") -> list[int]:
        if isinstance(text_or_ids, str):
            if not text_or_ids.strip():
                raise PromptError(f"the {what} is empty; type some text")
            ids = self.tokenizer.encode(text_or_ids, special_tokens=True)
        else:
            ids = self.check_ids(text_or_ids, what)
        if not ids:
            raise PromptError(f"the {what} is empty; give at least one token")
        return self.check_ids(ids, what)

    def decoder_ids(self, text_or_ids: str | Sequence[int] | None) -> list[int]:
        """Decoder prompt ids. Text gets the tokenizer's special tokens (decoder-only) or follows the
        decoder start token (encoder-decoder); ids are used exactly as given."""
        cfg = self.config
        if text_or_ids is None or isinstance(text_or_ids, str):
            text = text_or_ids or ""
            if cfg.family == "encoder-decoder":
                if cfg.decoder_start_token_id is None:
                    raise PromptError("config.json names no decoder_start_token_id; pass the decoder prompt as token ids")
                ids = [cfg.decoder_start_token_id] + (self.tokenizer.encode(text, special_tokens=False) if text.strip() else [])
            else:
                ids = self.tokenizer.encode(text, special_tokens=True) if text.strip() else []
        else:
            ids = self.check_ids(text_or_ids, "prompt")
        if not ids:
            if cfg.bos_token_id is None:
                raise PromptError("the prompt is empty and this model has no beginning-of-text token; type a prompt")
            ids = [cfg.bos_token_id]
        return self.check_ids(ids, "prompt")

    # -- forward passes -----------------------------------------------------------------------
    @contextmanager
    def guard(self, cache: KVCache | None = None):
        """Turn device OOM into OutOfMemoryError and roll the cache back, so nothing is lost."""
        start = cache.length if cache is not None else 0
        try:
            with torch.inference_mode():
                yield
        except Exception as exc:
            if cache is not None and cache.length != start:
                cache.truncate(start)  # the key/value buffers and the CPU key arenas alike
            if is_out_of_memory(exc):
                devices = self.devices
                if any(d.startswith("cuda") for d in devices):
                    torch.cuda.empty_cache()
                where = f"the {devices[0]} device" if len(devices) == 1 else f"one of its devices ({' + '.join(devices)})"
                raise OutOfMemoryError(
                    f"{where} ran out of memory; use a shorter prompt, fewer steps, float16, or the CPU"
                ) from exc
            raise

    def _recorder(self, capture: bool | Collection[str], rebuild: bool | None = None) -> Recorder | None:
        """capture: True (every layer), False, or the capture names to record (e.g. {"decoder.3.attn"})."""
        if not capture:
            return None
        only = None
        if not isinstance(capture, bool):
            only = frozenset(capture)
            unknown = sorted(only - {capture_name(k, i) for k in self.kinds for i in range(self.layers_by_kind[k])})
            if unknown:
                raise CaptureError(f"no capture point called {', '.join(unknown)}; names look like decoder.0.attn, "
                                   "encoder.1.attn, decoder.2.cross_attn")
        return Recorder(self.rebuilds_patterns if rebuild is None else rebuild, only)

    def _blocks(self, capture: dict | None, q_start: int) -> dict[str, list[PatternBlock | QueryBlock]]:
        if capture is None:
            return {}
        if capture.rebuild:  # one device-to-host copy each for every layer's q, keys and lse (one sync each on a GPU)
            names = list(capture)
            qs = iter(_to_host([capture[n][0][0] for n in names]))
            lses = iter(_to_host([capture[n][2][0] for n in names]))
            keyed = [n for n in names if capture[n][1] is not None]
            keys = dict(zip(keyed, _to_host([capture[n][1][0] for n in keyed])))
            out = {}
            for name in names:
                self_attention = name.startswith("decoder") and not name.endswith("cross_attn")
                k = keys.get(name)
                if k is not None and not self_attention:  # kept by the block: its own memory, not the shared buffer
                    k = _frozen(k.copy())
                out[name] = [QueryBlock(q_start, next(qs), next(lses), k, q_start if self_attention else 0)]
            return out
        dtype = self.pattern_dtype
        tdtype = torch.float16 if dtype == np.float16 else torch.float32
        out = {}
        for name, p in capture.items():
            rows = p[0].to(tdtype).cpu().numpy()  # (heads, T, S)
            T, S = rows.shape[1:]
            causal = name.startswith("decoder") and not name.endswith("cross_attn") and T > ROW_CHUNK
            if not causal:
                out[name] = [PatternBlock(q_start, _frozen(rows))]
                continue
            blocks = []
            for a in range(0, T, ROW_CHUNK):  # copy each chunk so no block keeps the square alive
                b = min(a + ROW_CHUNK, T)
                blocks.append(PatternBlock(q_start + a, _frozen(np.ascontiguousarray(rows[:, a:b, : S - T + b]))))
            out[name] = blocks
        return out

    def encode(self, ids: list[int], capture: bool = True) -> Forward:
        """Run the encoder over `ids`; masked-LM logits for encoder-only models."""
        rec = self._recorder(capture)
        with self.guard():
            x = torch.tensor([ids], device=self.device)
            h = self.net.encode(x, capture=rec)
            logits = self.net.mlm_logits(h) if self.family == "encoder" else None
            return Forward(self._blocks(rec, 0), _frozen(logits[0].cpu().numpy()) if logits is not None else None, h)

    def decode(self, ids: list[int], cache: KVCache, memory: torch.Tensor | None = None, capture: bool = True) -> Forward:
        """Feed `ids` after the cache's tokens. The last position's logits are computed now (the next
        choice needs them); the others are kept as final hidden states and unembedded on demand."""
        rec = self._recorder(capture, cache.rebuild)  # a session keeps the kind of record it started with
        start = cache.length
        with self.guard(cache):
            x = torch.tensor([ids], device=self.device)
            h = self.net.decode(x, start, cache, memory, capture=rec)
            last = _frozen(self.net.logits(h[:, -1:])[0, 0].cpu().numpy())
            lazy = None
            if len(ids) > 1:
                lazy = LazyLogits(h[0, :-1].float().cpu().numpy(), *self.unembedding_arrays())
            blocks = self._blocks(rec, start)
            if rec is not None and rec.rebuild:  # self-attention keys live once, per layer, in the cache's arena
                for name, b in blocks.items():
                    if b[0].keys is not None and name.endswith(".attn"):
                        cache.key_arenas.setdefault(name, KeyArena()).append(b[0].keys)
                        b[0] = replace(b[0], keys=None)
            return Forward(blocks, last, lazy_logits=lazy)

    def unembedding_arrays(self) -> tuple[np.ndarray, np.ndarray | None, float, float | None]:
        """(weights [d, vocab], bias or None, scale, final soft-cap) as numpy on the CPU, shared by every trace.
        On the CPU it is the model's own memory, not a copy (bfloat16 as its raw bits); from a GPU, one copy
        in the model's dtype (bfloat16 as bits), never a float32 one."""
        if self._unembedding is None:
            net = self.net
            w_t = getattr(net, "unembedding_t", None)
            w = (w_t if w_t is not None else net.unembedding.t()).detach()  # (d, vocab)
            if w.dtype == torch.bfloat16:
                w = w.cpu().view(torch.int16).numpy().view(np.uint16)
            else:
                w = w.to("cpu", torch.float32).numpy()
            bias = net.final_logits_bias.detach().to("cpu", torch.float32).numpy()[0] if net.final_logits_bias is not None else None
            self._unembedding = (_frozen(w), _frozen(bias) if bias is not None else None, self.config.lm_head_scale,
                                 self.config.final_logit_softcap)
        return self._unembedding

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_decoder_layers, rebuild=self.rebuilds_patterns)

    # -- one full forward ---------------------------------------------------------------------
    def run(self, text_or_ids: str | Sequence[int] | None, source: str | Sequence[int] | None = None) -> Trace:
        """One forward pass, no generation. Encoder-decoder: `source` feeds the encoder and the first
        argument the decoder (with no source, the first argument is the source and the decoder gets its start token)."""
        if self.family == "encoder-decoder" and source is None:
            text_or_ids, source = None, text_or_ids
            if source is None:
                raise PromptError("an encoder-decoder model needs a source text for its encoder")
        elif self.family != "encoder-decoder" and source is not None:
            raise PromptError(f"a {self.family} model has no encoder input; pass only a prompt")
        if self.family == "encoder":
            ids = self.encoder_ids(text_or_ids if text_or_ids is not None else "", "prompt")
            fwd = self.encode(ids)
            return self.record(ids, fwd.blocks, (fwd.logits,) if fwd.logits is not None else None)
        src = self.encoder_ids(source, "source") if source is not None else None
        enc = self.encode(src) if src is not None else None
        ids = self.decoder_ids(text_or_ids)
        cache = self.new_cache()
        fwd = self.decode(ids, cache, enc.hidden if enc is not None else None)
        rows = ((fwd.lazy_logits,) if fwd.lazy_logits is not None else ()) + (fwd.logits[None, :],)
        return self.record(ids, {**(enc.blocks if enc is not None else {}), **fwd.blocks}, rows, source_ids=src,
                           keys=cache.key_views())

    def record(self, ids: Sequence[int], blocks: dict, logit_rows: tuple | None, source_ids: Sequence[int] | None = None,
               n_prompt: int | None = None, steps: tuple = (), gates: dict | None = None, keys: dict | None = None) -> Trace:
        """A Trace of `ids` (and `source_ids`) with the recorded pattern blocks and logit rows."""
        tok = self.tokenizer
        src = tuple(source_ids) if source_ids is not None else None
        return self.make_trace(
            token_ids=tuple(ids), tokens=tuple(tok.token_strings(list(ids))), special=tuple(tok.is_special(i) for i in ids),
            n_prompt=len(ids) if n_prompt is None else n_prompt, blocks={k: tuple(v) for k, v in blocks.items()},
            logit_rows=logit_rows, steps=steps, gates=self.gates() if gates is None else gates, source_ids=src, keys=keys or {},
            neuron_gates=self.neuron_gates(),
            source_tokens=tuple(tok.token_strings(list(src))) if src is not None else None,
            source_special=tuple(tok.is_special(i) for i in src) if src is not None else None)

    def make_trace(self, **kw) -> Trace:
        """A Trace of this model; rebuilt capture points get their score rules (keys come from the blocks
        unless `keys` gives them)."""
        rules = {name: self.score_rule(name) for name, b in kw.get("blocks", {}).items() if b and isinstance(b[0], QueryBlock)}
        return Trace(family=self.family, model_name=self.name, n_layers=self.layers_by_kind, n_heads=self.n_heads,
                     n_kv_heads=self.config.n_kv_heads, no_logits_reason=self.no_logits_reason, rules=rules, **kw)


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Same-dtype tensors -> read-only numpy copies on the CPU, through one transfer (one sync on a GPU).
    bfloat16 is kept as its raw 16 bits (numpy has no bfloat16; rebuild.as_float32 widens them exactly)."""
    if not tensors:
        return []
    device = tensors[0].device
    if any(t.device != device for t in tensors):  # a model over several devices: one transfer per device
        groups: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(t.device, []).append(i)
        out: list = [None] * len(tensors)
        for members in groups.values():
            for i, a in zip(members, _to_host([tensors[i] for i in members])):
                out[i] = a
        return out
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    if flat.dtype == torch.bfloat16:
        host = flat.view(torch.int16).cpu().numpy().view(np.uint16)
    else:
        host = flat.cpu().numpy()
    out, at = [], 0
    for t in tensors:
        out.append(_frozen(host[at : at + t.numel()].reshape(t.shape)))
        at += t.numel()
    return out


def set_factor(tables: dict, name: object, key: int, value: float) -> dict:
    """tables[name][key] = value for a gate-like factor: 1 (no change) is never stored and an emptied table is
    dropped -> the factors left for `name` ({} when none)."""
    values = tables.setdefault(name, {})
    if float(value) == 1.0:
        values.pop(key, None)
    else:
        values[key] = float(value)
    if not values:
        del tables[name]
    return values


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
