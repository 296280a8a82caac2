"""Activation patching: run one prompt (clean) with one component's output taken from another (corrupt), and see
what the prediction does. What "which heads wrote it" suggests, patching tests: if taking a head's output from
a prompt without the pattern makes the prediction fall, the head carries it.

    patch(model, clean, corrupt, "L3.H7")              # -> PatchResult: distributions before / after, movers
    patch(model, clean, corrupt, "L3.H3, L3.H7")       # several components in one run
    patch_sweep(model, clean, corrupt, token_a, token_b)  # every layer x head, on logit(a) - logit(b)

Components (Component.parse): "L3.H7" a head (its output before W_O), "L3.attn" a layer's attention output,
"L3.X2" / "L3.cross" cross-attention (encoder-decoder), "L3.MLP" an MLP's output, "L3.N120" one neuron's
activation, "L3.resid" the residual stream after the layer; "E1.H0", "E1.MLP", ... the encoder's (of an
encoder-decoder). Positions are aligned at the end by default (the last token of each prompt pair up, then
backwards), or at the start; `pairs` in the result says which clean position took which corrupt one.

The patch is a forward hook on the model's own modules, keyed by absolute position, so it holds through the
KV cache (a prompt fed in pieces, each piece at its start) and in both capture modes; the rest of the forward
is the model's own. Which module, its input or output, and which slice: `model.patch_sites` (NativeSites here for
the native network; engine.hf_backend.patching.HFSites for a transformers model, found from its forward).
Everything returned is numpy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CaptureError, PromptError
from .lazy_torch import torch
from .sampling import distribution
from .trace import Trace

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

WHATS = ("head", "attn", "mlp", "neuron", "resid")
N_MOVERS = 8
SWEEP_TOKENS = 16384  # positions per batched sweep forward, all rows together
_PATTERN = re.compile(r"^(?P<stack>[LE])(?P<layer>\d+)\.(?:(?P<head>[HX])(?P<h>\d+)|N(?P<n>\d+)|(?P<what>attn|cross|MLP|mlp|resid))$")


@dataclass(frozen=True)
class Component:
    """What to patch. `what`: "head" | "attn" | "mlp" | "neuron" | "resid"; `kind`: the attention kind the
    layer belongs to ("self" = the decoder, "cross" = the decoder's cross-attention, "encoder"); `index`: the
    head or the neuron."""

    what: str
    layer: int
    index: int | None = None
    kind: str = "self"

    @classmethod
    def parse(cls, text: str, family: str = "decoder") -> Component:
        m = _PATTERN.match(text.strip())
        if m is None:
            raise CaptureError(f"{text!r} is not a component; write L3.H7 (a head), L3.attn, L3.MLP, L3.N120 (a neuron), "
                               "L3.resid, L3.X2 / L3.cross (cross-attention), or E1.H0 ... for the encoder")
        layer = int(m["layer"])
        enc = m["stack"] == "E" or family == "encoder"
        if m["head"]:
            kind = "cross" if m["head"] == "X" else "encoder" if enc else "self"
            return cls("head", layer, int(m["h"]), kind)
        if m["n"] is not None:
            return cls("neuron", layer, int(m["n"]), "encoder" if enc else "self")
        what = m["what"].lower()
        if what == "cross":
            return cls("attn", layer, None, "cross")
        return cls(what, layer, None, "encoder" if enc else "self")

    @property
    def label(self) -> str:
        stack = "E" if self.kind == "encoder" else "L"
        if self.what == "head":
            return f"{stack}{self.layer}.{'X' if self.kind == 'cross' else 'H'}{self.index}"
        if self.what == "attn":
            return f"{stack}{self.layer}.{'cross' if self.kind == 'cross' else 'attn'}"
        if self.what == "neuron":
            return f"{stack}{self.layer}.N{self.index}"
        return f"{stack}{self.layer}.{'MLP' if self.what == 'mlp' else 'resid'}"

    @property
    def stack(self) -> str:
        return "encoder" if self.kind == "encoder" else "decoder"


@dataclass(frozen=True)
class PatchResult:
    component: Component  # the first of `components`
    components: tuple[Component, ...]  # everything patched in this run
    position: int  # the clean position whose next-token distribution is read
    pairs: tuple[tuple[int, int], ...]  # (clean position, corrupt position) patched, in the component's stack
    align: str  # "end" | "start"
    clean_tokens: tuple[str, ...]  # the component's stack (the source for encoder components)
    corrupt_tokens: tuple[str, ...]
    before: np.ndarray  # clean next-token probabilities (T=1)
    after: np.ndarray  # patched
    corrupt: np.ndarray  # the corrupt prompt's own, at its aligned position
    before_logits: np.ndarray
    after_logits: np.ndarray
    movers: tuple[tuple[int, str, float, float], ...]  # (id, token, p before, p after), largest |change| first
    trace: Trace | None  # the patched run (patterns as recorded in the model's capture mode)
    note: str

    @property
    def label(self) -> str:
        return ", ".join(c.label for c in self.components)

    @property
    def total_variation(self) -> float:
        return 0.5 * float(np.abs(self.after - self.before).sum())


@dataclass(frozen=True)
class SweepResult:
    """Patching every head of every layer in turn, measured on logit(token_a) - logit(token_b)."""

    kind: str
    position: int
    token_a: int
    token_b: int | None
    clean_metric: float
    corrupt_metric: float
    patched: np.ndarray  # (layers, heads) the metric with that head patched (nan: not computed, cancelled)
    pairs: tuple[tuple[int, int], ...]
    cancelled: bool
    note: str

    @property
    def effect(self) -> np.ndarray:
        """(patched - clean): how far patching each head moved the metric."""
        return (self.patched - self.clean_metric).astype(np.float32)

    @property
    def normalised(self) -> np.ndarray:
        """(patched - clean) / (corrupt - clean): 1 = the head alone carries the whole difference."""
        gap = self.corrupt_metric - self.clean_metric
        if abs(gap) < 1e-9:
            return np.full_like(self.patched, np.nan)
        return ((self.patched - self.clean_metric) / gap).astype(np.float32)


# -- inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prompt:
    ids: list[int]  # the main sequence: decoder ids, or the encoder's for an encoder-only model
    source: list[int] | None  # encoder ids (encoder-decoder)


def _prompt(model, x: Trace | str | Sequence[int], what: str) -> _Prompt:  # noqa: ANN001
    if isinstance(x, Trace):
        if x.model_name != model.name or x.family != model.family:
            raise PromptError(f"the {what} trace comes from {x.model_name}, not from the open model {model.name}")
        return _Prompt(list(x.token_ids), list(x.source_ids) if x.source_ids is not None else None)
    if model.family == "encoder":
        return _Prompt(model.encoder_ids(x, what), None)
    if model.family == "encoder-decoder":  # text or ids feed the encoder; the decoder gets its start token
        return _Prompt(model.decoder_ids(None), model.encoder_ids(x, what))
    return _Prompt(model.decoder_ids(x), None)


def align_positions(n_clean: int, n_corrupt: int, align: str = "end") -> list[tuple[int, int]]:
    """(clean position, corrupt position) pairs: "end" pairs the last tokens and goes backwards, "start" the first."""
    if align not in ("end", "start"):
        raise CaptureError(f"align must be 'end' or 'start', not {align!r}")
    n = min(n_clean, n_corrupt)
    if align == "start":
        return [(p, p) for p in range(n)]
    return [(n_clean - n + j, n_corrupt - n + j) for j in range(n)]


def _read_position(model, prompt: _Prompt, position: int | None) -> int:  # noqa: ANN001
    n = len(prompt.ids)
    if position is None:
        if model.family == "encoder":
            mask = model.config.mask_token_id
            return next((i for i, t in enumerate(prompt.ids) if t == mask), n - 1)
        return n - 1
    if not 0 <= position < n:
        raise CaptureError(f"position {position} is outside 0..{n - 1}")
    return int(position)


# -- where each component lives: the backend's sites ----------------------------------------------
@dataclass(frozen=True)
class Site:
    """One hook point of a component: a module, whether the value is its input (a pre-hook) rather than its
    output, and the slice of the value's last dim."""

    module: torch.nn.Module
    pre: bool
    part: slice = field(default_factory=lambda: slice(None))


class NativeSites:
    """The native engine's sites (model.net's own modules) and its batched forward. Every Model has
    `patch_sites` with these methods (engine.hf_backend.patching.HFSites for transformers' models)."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model = model

    def check(self, c: Component) -> None:
        model = self.model
        if c.what not in WHATS:
            raise CaptureError(f"component kind must be one of {', '.join(WHATS)}, not {c.what!r}")
        if c.what in ("head", "attn"):
            model.attention_module(c.kind, c.layer)  # checks the kind and the layer
            if c.what == "head" and not 0 <= (c.index if c.index is not None else -1) < model.n_heads:
                raise CaptureError(f"head {c.index} does not exist; heads are 0..{model.n_heads - 1}")
        else:
            if c.kind == "cross":
                raise CaptureError("cross-attention has heads and an output, not an MLP or a residual stream of its own")
            if model.family == "encoder" and c.kind != "encoder":
                raise CaptureError("an encoder-only model's layers are the encoder's: use kind 'encoder' (E1.MLP)")
            ffn = model.mlp_module(c.layer, c.stack)
            if c.what == "neuron" and not 0 <= (c.index if c.index is not None else -1) < ffn.down.in_features:
                raise CaptureError(f"neuron {c.index} does not exist; layer {c.layer}'s MLP has neurons "
                                   f"0..{ffn.down.in_features - 1}")

    def head_width(self, kind: str, layer: int) -> int:
        """How many entries of the output projection's input each head owns."""
        return self.model.attention_module(kind, layer).head_dim

    def sites(self, c: Component) -> list[Site]:
        model = self.model
        if c.what in ("head", "attn"):
            attn = model.attention_module(c.kind, c.layer)
            if c.what == "attn":
                return [Site(attn, False)]
            if c.index is None:  # every head's output side by side (what W_O reads)
                return [Site(attn.out, True)]
            hs = attn.head_dim
            return [Site(attn.out, True, slice(c.index * hs, (c.index + 1) * hs))]
        ffn = model.mlp_module(c.layer, c.stack)
        if c.what == "mlp":
            return [Site(ffn, False)]
        if c.what == "neuron":
            return [Site(ffn.down, True, slice(c.index, c.index + 1))]
        stack = model.net.encoder if c.stack == "encoder" else model.net.decoder
        return [Site(stack.layers[c.layer], False)]

    def batched_logits(self, prompt: _Prompt, position: int, n: int) -> np.ndarray:
        """(n, vocab) float64 logits at `position` of n copies of the prompt in one batch (no cache, no capture)."""
        model = self.model
        net, dev = model.net, model.device
        if model.family == "encoder":
            h = net.encode(torch.tensor([prompt.ids] * n, device=dev))
            logits = net.mlm_logits(h[:, position])
            if logits is None:
                raise CaptureError(model.no_logits_reason or "this model has no predictions to patch")
            return logits.double().cpu().numpy()
        memory = None
        if prompt.source is not None:
            memory = net.encode(torch.tensor([prompt.source] * n, device=dev))
        h = net.decode(torch.tensor([prompt.ids[: position + 1]] * n, device=dev), 0, None, memory)
        return net.logits(h[:, position : position + 1])[:, 0].double().cpu().numpy()


def _check(model, c: Component) -> None:  # noqa: ANN001
    model.patch_sites.check(c)


def _value(out: object) -> Tensor:
    """The tensor a module returned (a tuple's first: attention modules also return their weights)."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(t, torch.Tensor):
        raise CaptureError(f"a patched module returned {type(out).__name__}, not a tensor to patch")
    return t


def _with_value(out: object, t: Tensor) -> object:
    return (t, *out[1:]) if isinstance(out, tuple) else [t, *out[1:]] if isinstance(out, list) else t


class _Hooks:
    """Forward hooks for one patching run's forwards: record a component's value by absolute position,
    or replace it. `start`: the absolute position of the forward's first token (set by _forward from the cache
    before each piece), so a prompt fed through the KV cache in pieces is patched at the right positions;
    `batch`: rows per forward (a module returning (rows·T, X), Llama 4's experts, is read as (rows, T, X))."""

    def __init__(self, model, stack: str) -> None:  # noqa: ANN001
        self.model, self.stack, self.start, self.batch, self.handles = model, stack, 0, 1, []

    def _rows(self, t: Tensor) -> Tensor:
        return t.view(self.batch, -1, t.shape[-1]) if t.dim() == 2 else t

    def record(self, c: Component) -> list[list[Tensor]]:
        """Per site, chunks (T_chunk, X) of the component's value in forward order (batch row 0)."""
        out: list[list[Tensor]] = []
        for site in self.model.patch_sites.sites(c):
            chunks: list[Tensor] = []
            out.append(chunks)

            def keep(t: Tensor, chunks: list = chunks, sl: slice = site.part) -> None:
                chunks.append(self._rows(t)[0, :, sl].detach().clone())

            if site.pre:
                self.handles.append(site.module.register_forward_pre_hook(lambda _m, args, keep=keep: keep(args[0])))
            else:
                self.handles.append(site.module.register_forward_hook(lambda _m, _a, out, keep=keep: keep(_value(out))))
        return out

    def replace(self, c: Component, values: Sequence[Tensor], pairs: Sequence[tuple[int, int]],
                rows: Sequence[int] | None = None) -> None:
        """Write values[site][corrupt position] at each clean position of `pairs` (batch rows `rows`, default all)."""
        mapping = dict(pairs)
        for site, site_values in zip(self.model.patch_sites.sites(c), values):

            def swap(t: Tensor, sl: slice = site.part, site_values: Tensor = site_values) -> Tensor:
                shape, orig = t.shape, t
                t = self._rows(t)
                T = t.shape[1]
                local = [p - self.start for p in mapping if self.start <= p < self.start + T]
                if not local:
                    return orig
                src = torch.tensor([mapping[p + self.start] for p in local], device=t.device)
                t = t.clone()
                idx = torch.tensor(local, device=t.device)
                new = site_values.to(t.device).index_select(0, src).to(t.dtype)  # (n, X)
                for b in (range(t.shape[0]) if rows is None else rows):
                    view = t[b, :, sl]
                    view[idx] = new
                return t.view(shape)

            if site.pre:
                self.handles.append(site.module.register_forward_pre_hook(
                    lambda _m, args, swap=swap: (swap(args[0]), *args[1:])))
            else:
                self.handles.append(site.module.register_forward_hook(
                    lambda _m, _a, out, swap=swap: _with_value(out, swap(_value(out)))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> _Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# -- forwards -----------------------------------------------------------------------------------
def _forward(model, prompt: _Prompt, position: int, hooks: _Hooks | None = None, capture: bool = False,  # noqa: ANN001
             split: int | None = None) -> tuple[np.ndarray, Trace | None]:
    """Logits at `position` (vocab,) of one forward, through the KV cache for decoders (in two pieces at
    `split` when given), and its Trace when `capture`. Call inside the hooks' context: `hooks` learn where each
    piece starts."""
    if model.family == "encoder":
        fwd = model.encode(prompt.ids, capture)
        if fwd.logits is None:
            raise CaptureError(model.no_logits_reason or "this model has no predictions to patch")
        trace = model.record(prompt.ids, fwd.blocks, (fwd.logits,)) if capture else None
        return np.array(fwd.logits[position]), trace
    enc = model.encode(prompt.source, capture) if prompt.source is not None else None
    memory = enc.hidden if enc is not None else None
    cache = model.new_cache()
    ids = prompt.ids[: position + 1]
    pieces = [ids] if split is None or not 0 < split < len(ids) else [ids[:split], ids[split:]]
    blocks: dict = {}
    rows: list = []
    for piece in pieces:
        if hooks is not None and hooks.stack == "decoder":
            hooks.start = cache.length
        fwd = model.decode(piece, cache, memory, capture)
        for name, b in fwd.blocks.items():
            blocks.setdefault(name, []).extend(b)
        if fwd.lazy_logits is not None:
            rows.append(fwd.lazy_logits)
        rows.append(fwd.logits[None, :])
    trace = None
    if capture:
        if enc is not None:
            blocks = {**enc.blocks, **blocks}
        trace = model.record(ids, blocks, tuple(rows), source_ids=prompt.source, keys=cache.key_views())
    return np.array(fwd.logits), trace


def _stack_tokens(model, prompt: _Prompt, stack: str) -> list[int]:  # noqa: ANN001
    return prompt.source if stack == "encoder" and prompt.source is not None else prompt.ids


def _movers(model, before: np.ndarray, after: np.ndarray, n: int = N_MOVERS) -> tuple:  # noqa: ANN001
    order = np.argsort(-np.abs(after - before), kind="stable")[:n]
    return tuple((int(i), model.tokenizer.display(int(i)), float(before[i]), float(after[i])) for i in order)


def _pairs(model, clean: _Prompt, corrupt: _Prompt, c: Component, align: str, positions: Sequence[int] | None,  # noqa: ANN001
           read_at: int, corrupt_read: int) -> list[tuple[int, int]]:
    if c.stack == "decoder":  # a decoder runs up to the position read: later positions cannot matter
        n_a, n_b = read_at + 1, corrupt_read + 1
    else:  # an encoder reads its whole input
        n_a, n_b = len(_stack_tokens(model, clean, c.stack)), len(_stack_tokens(model, corrupt, c.stack))
    pairs = align_positions(n_a, n_b, align)
    if positions is not None:
        mapping = dict(pairs)
        missing = [p for p in positions if p not in mapping]
        if missing:
            raise CaptureError(f"clean position {missing[0]} has no aligned corrupt position (aligned at the {align}: "
                               f"clean {pairs[0][0]}..{pairs[-1][0]} ↔ corrupt {pairs[0][1]}..{pairs[-1][1]})")
        pairs = [(p, mapping[p]) for p in positions]
    return pairs


def components(model, component: Component | str | Sequence[Component | str]) -> tuple[Component, ...]:  # noqa: ANN001
    """One component, several, or a comma-separated text ("L3.H3, L3.H7") -> checked Components of one stack."""
    items = component.split(",") if isinstance(component, str) else [component] if isinstance(component, Component) else component
    out = tuple(Component.parse(c, model.family) if isinstance(c, str) else c for c in items if not isinstance(c, str) or c.strip())
    if not out:
        raise CaptureError("name at least one component to patch, e.g. L3.H7")
    for c in out:
        _check(model, c)
    if len({c.stack for c in out}) > 1:
        raise CaptureError("patch the encoder's components and the decoder's in separate runs (their positions differ)")
    return out


def patch(model, clean: Trace | str | Sequence[int], corrupt: Trace | str | Sequence[int],  # noqa: ANN001
          component: Component | str | Sequence[Component | str], positions: Sequence[int] | None = None,
          align: str = "end", position: int | None = None, capture: bool = True, split: int | None = None) -> PatchResult:
    """Run `clean` with `component`'s value (or several components' values: a list, or "L3.H3, L3.H7") taken
    from `corrupt` at the aligned positions (all of them, or the clean `positions` given) and compare its
    next-token distribution at `position` (default: the last token; the first [MASK] of an encoder-only prompt)
    with the clean one. `split`: feed the clean prompt through the KV cache in two pieces at that position (the
    result is the same; a check that patches hold under the cache). The head and neuron gates in force on the
    model apply to every run."""
    comps = components(model, component)
    c = comps[0]
    a, b = _prompt(model, clean, "clean prompt"), _prompt(model, corrupt, "corrupt prompt")
    read_at = _read_position(model, a, position)
    offset = len(b.ids) - len(a.ids)
    corrupt_read = read_at + offset if align == "end" else read_at
    if not 0 <= corrupt_read < len(b.ids):
        raise CaptureError(f"clean position {read_at} has no aligned position in the corrupt prompt ({len(b.ids)} tokens)")
    pairs = _pairs(model, a, b, c, align, positions, read_at, corrupt_read)
    with _Hooks(model, c.stack) as hooks, model.guard():  # the corrupt run, recording every component at once
        recorded = [hooks.record(x) for x in comps]
        corrupt_logits, _ = _forward(model, b, corrupt_read, hooks)
    values = [[torch.cat(chunks, dim=0) for chunks in sites] for sites in recorded]
    with model.guard():
        before_logits, _ = _forward(model, a, read_at)
    with _Hooks(model, c.stack) as hooks, model.guard():
        for x, v in zip(comps, values):
            hooks.replace(x, v, pairs)
        after_logits, trace = _forward(model, a, read_at, hooks, capture, split)
    before, after = distribution(before_logits, 1.0), distribution(after_logits, 1.0)
    corrupt_p = distribution(corrupt_logits, 1.0)
    toks = model.tokenizer.token_strings
    n_shown = len(pairs)
    label = ", ".join(x.label for x in comps)
    note = (f"{label} at {n_shown} position{'s' if n_shown != 1 else ''} taken from the corrupt prompt, aligned at "
            f"the {align}" + (f" (clean {pairs[0][0]}..{pairs[-1][0]} ↔ corrupt {pairs[0][1]}..{pairs[-1][1]})" if pairs else ""))
    return PatchResult(component=c, components=comps, position=read_at, pairs=tuple(pairs), align=align,
                       clean_tokens=tuple(toks(_stack_tokens(model, a, c.stack))),
                       corrupt_tokens=tuple(toks(_stack_tokens(model, b, c.stack))), before=before, after=after,
                       corrupt=corrupt_p, before_logits=before_logits, after_logits=after_logits,
                       movers=_movers(model, before, after), trace=trace, note=note)


def _metric(logits: np.ndarray | Tensor, a: int, b: int | None) -> Any:
    return logits[..., a] - (logits[..., b] if b is not None else 0)


def patch_sweep(model, clean: Trace | str | Sequence[int], corrupt: Trace | str | Sequence[int], token_a: int,  # noqa: ANN001
                token_b: int | None = None, kind: str = "self", align: str = "end", position: int | None = None,
                positions: Sequence[int] | None = None, progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | Any = None, batch: int | None = None) -> SweepResult:
    """Patch every head of every layer of `kind` in turn from `corrupt` into `clean` and measure
    logit(token_a) - logit(token_b) (token_b None: logit(token_a)) at `position`. One forward per layer:
    its heads are the rows of one batch (`batch` rows at most; default: as many as fit SWEEP_TOKENS positions).
    `progress(done, total)` after each forward; `cancel` (a callable, or a threading.Event) is checked between
    forwards: a cancelled sweep returns what it computed, the rest nan, cancelled=True."""
    vocab = model.config.vocab_size
    for t in (token_a, token_b):
        if t is not None and not 0 <= int(t) < vocab:
            raise CaptureError(f"token id {t} is outside the vocabulary (0..{vocab - 1})")
    if kind not in model.kinds:
        raise CaptureError(f"this {model.family} model has no {kind!r} attention; choose one of {', '.join(model.kinds)}")
    a, b = _prompt(model, clean, "clean prompt"), _prompt(model, corrupt, "corrupt prompt")
    read_at = _read_position(model, a, position)
    corrupt_read = read_at + len(b.ids) - len(a.ids) if align == "end" else read_at
    if not 0 <= corrupt_read < len(b.ids):
        raise CaptureError(f"clean position {read_at} has no aligned position in the corrupt prompt ({len(b.ids)} tokens)")
    is_cancelled = cancel.is_set if hasattr(cancel, "is_set") else cancel
    n_layers, n_heads = model.layers_by_kind[kind], model.n_heads
    stack = "encoder" if kind == "encoder" else "decoder"
    pairs = _pairs(model, a, b, Component("head", 0, 0, kind), align, positions, read_at, corrupt_read)
    sites = model.patch_sites
    with_heads, without = [], {}
    for n in range(n_layers):  # a hybrid's layers without attention have no heads: nan, said in the note
        try:
            sites.check(Component("head", n, 0, kind))
            with_heads.append(n)
        except CaptureError as exc:
            without[n] = str(exc)
    if not with_heads:
        raise CaptureError(f"no layer of {kind!r} attention has heads to patch: {next(iter(without.values()), '')}")
    # the corrupt run once: every layer's heads (the input of each W_O)
    with _Hooks(model, stack) as hooks, model.guard():
        recorded = {n: hooks.record(Component("head", n, None, kind))[0] for n in with_heads}
        corrupt_logits, _ = _forward(model, b, corrupt_read, hooks)
    with model.guard():
        clean_logits, _ = _forward(model, a, read_at)
    values = {n: torch.cat(chunks, 0) for n, chunks in recorded.items()}
    patched = np.full((n_layers, n_heads), np.nan, dtype=np.float64)
    if batch is None:  # heads per forward: a batch of at most SWEEP_TOKENS positions (memory of a long prompt)
        batch = max(1, SWEEP_TOKENS // max(read_at + 1, len(a.source or ())))
    rows = max(1, min(batch, n_heads))
    total = len(with_heads) * -(-n_heads // rows)
    done, cancelled = 0, False
    for n in with_heads:
        hs = sites.head_width(kind, n)
        for h0 in range(0, n_heads, rows):
            if is_cancelled is not None and is_cancelled():
                cancelled = True
                break
            heads = list(range(h0, min(h0 + rows, n_heads)))
            with _Hooks(model, stack) as hooks, model.guard():
                hooks.batch = len(heads)
                for r, h in enumerate(heads):
                    hooks.replace(Component("head", n, h, kind), [values[n][:, h * hs : (h + 1) * hs]], pairs, rows=[r])
                logits = sites.batched_logits(a, read_at, len(heads))
            patched[n, heads] = _metric(logits, int(token_a), None if token_b is None else int(token_b))
            done += 1
            if progress is not None:
                progress(done, total)
        if cancelled:
            break
    clean_m = float(_metric(clean_logits, int(token_a), token_b))
    corrupt_m = float(_metric(corrupt_logits, int(token_a), token_b))
    what = f"logit({model.tokenizer.display(int(token_a))})" + (
        f" − logit({model.tokenizer.display(int(token_b))})" if token_b is not None else "")
    note = (f"{what} at clean position {read_at} with each head's output taken from the corrupt prompt at "
            f"{len(pairs)} aligned positions (aligned at the {align})" + (" — cancelled" if cancelled else ""))
    if without:
        note += f"; layers {', '.join(map(str, without))} have no heads (nan): " + next(iter(without.values()))
    return SweepResult(kind=kind, position=read_at, token_a=int(token_a), token_b=None if token_b is None else int(token_b),
                       clean_metric=clean_m, corrupt_metric=corrupt_m, patched=patched.astype(np.float32),
                       pairs=tuple(pairs), cancelled=cancelled, note=note)
