"""The torch module: embeddings, an encoder and/or a decoder stack of Blocks, and the output heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cache import KVCache
from .cancel import checkpoint
from .config import ModelConfig
from .modules import (
    CAUSAL,
    Block,
    Capture,
    LayerInputs,
    RelativePositionBias,
    activation,
    additive_mask,
    make_norm,
    sinusoidal_table,
)
from .rotary import cos_sin, inv_frequencies
from .trace import softcap


class Stack(nn.Module):
    """Positions + layers + final norm. `name` ("encoder"/"decoder") prefixes every capture name."""

    def __init__(self, cfg: ModelConfig, name: str, n_layers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.causal = name == "decoder"
        cross = name == "decoder" and cfg.family == "encoder-decoder"
        if cfg.position_scheme == "learned":
            self.positions = nn.Embedding(cfg.table_size, cfg.d_model)
        elif cfg.position_scheme == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)
        self.rel_bias = RelativePositionBias(cfg, bidirectional=not self.causal) if cfg.position_scheme == "relative" else None
        self.token_type = nn.Embedding(cfg.token_types, cfg.d_model) if cfg.token_types else None
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.layers = nn.ModuleList(Block(cfg, name, i, cross) for i in range(n_layers))
        self.final_norm = make_norm(cfg) if cfg.final_norm else None
        specs = [cfg.layer_spec(name, i).attention for i in range(n_layers)]
        self.windows = sorted({a.window for a in specs}, key=lambda w: -1 if w is None else w)
        self.ropes = list(dict.fromkeys(a.rope for a in specs if a.rope is not None))  # distinct, in layer order
        self.inv_freqs = [inv_frequencies(r) for r in self.ropes]
        # set by engine.multi_device.route when the layers span devices (None / {}: one device, no moves):
        self.entry: torch.device | None = None  # where this stack's inputs, positions and first layer are
        self.moves: dict[int, torch.device] = {}  # layer index -> the device the residual stream moves to first

    def init_buffers(self, device: torch.device) -> None:
        if self.cfg.position_scheme == "sinusoidal":
            self.sinusoid = sinusoidal_table(self.cfg.max_positions, self.cfg.d_model).to(device)
        self.inv_freqs = [inv_frequencies(r).to(device) for r in self.ropes]

    def add_positions(self, x: Tensor, start: int) -> Tensor:
        """Token embeddings (B, T, d) -> plus learned or sinusoidal positions (and BERT's segment 0)."""
        S = start + x.shape[1]
        if self.cfg.position_scheme == "learned":
            x = x + self.positions(torch.arange(start, S, device=x.device) + self.cfg.position_offset)
        elif self.cfg.position_scheme == "sinusoidal":
            x = x + self.sinusoid[start:S].to(x.dtype)
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        return x

    def layer_inputs(self, start: int, T: int, dtype: torch.dtype, device: torch.device, key_mask: Tensor | None = None,
                     memory: Tensor | None = None, memory_mask: Tensor | None = None) -> LayerInputs:
        """What every layer of one forward over positions start..start+T-1 shares: masks, rotary tables, memory."""
        S = start + T
        rel = self.rel_bias(start, T, S).to(dtype) if self.rel_bias is not None else None
        masks = {}
        for window in self.windows:  # one mask per layer type, shared by every layer of that type
            if window is None and self.causal and start == 0 and T > 1 and key_mask is None and rel is None:
                masks[window] = CAUSAL  # the kernels mask it themselves; never a T x T tensor
                continue
            mask = additive_mask(start, T, S, self.causal, key_mask, device, window)
            masks[window] = rel if mask is None else mask if rel is None else rel + mask
        ctx = LayerInputs(masks, memory=memory)
        for rope, inv in zip(self.ropes, self.inv_freqs):
            ctx.rotary[rope] = cos_sin(inv, start, S, rope.attention_factor, dtype)
        if memory_mask is not None:
            ctx.memory_bias = additive_mask(0, T, memory_mask.shape[1], False, memory_mask, device)
        return ctx

    def forward(
        self,
        x: Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        key_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        capture: Capture = None,
        residuals: list | None = None,
    ) -> Tensor:
        """x: token embeddings (B, T, d) of positions start..start+T-1 -> hidden states (B, T, d) (on the device of
        the last layer when the layers span devices)."""
        if self.entry is not None:  # over several devices: the inputs go where the first layer is
            x, key_mask, memory_mask = (t.to(self.entry) if t is not None else None for t in (x, key_mask, memory_mask))
        x = self.add_positions(x, start)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        ctx = self.layer_inputs(start, x.shape[1], x.dtype, x.device, key_mask, memory, memory_mask)
        if self.entry is not None:
            ctx = ctx.to(self.entry)  # the encoder's memory, from wherever the encoder ended
        moves = self.moves
        for i, layer in enumerate(self.layers):
            checkpoint()  # a long prefill can be stopped between layers (Model.guard rolls the cache back)
            if moves and i in moves:  # a device boundary: the residual stream and what every layer shares move once
                x, ctx = x.to(moves[i]), ctx.to(moves[i])
            x = layer(x, ctx, cache.layers[i] if cache is not None else None, capture)
            if residuals is not None:
                residuals.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class MaskedLMHead(nn.Module):
    """BERT/RoBERTa prediction head: dense + activation + norm, then the tied unembedding plus a bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = activation(cfg.mlm_activation)
        self.norm = make_norm(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(h)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by encoder and decoder
        self.encoder = Stack(cfg, "encoder", cfg.n_encoder_layers) if cfg.has_encoder else None
        self.decoder = Stack(cfg, "decoder", cfg.n_decoder_layers) if cfg.has_decoder else None
        self.lm_head = None if cfg.tie_embeddings or not cfg.has_decoder else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.final_logits_bias = nn.Parameter(torch.zeros(1, cfg.vocab_size)) if cfg.final_logits_bias else None
        self.mlm = MaskedLMHead(cfg) if cfg.mlm_head else None
        self.head_device: torch.device | None = None  # over several devices: where the output head is (multi_device)
        self.placement = None  # engine.placement.Placement over several devices, else None (one device)

    def init_buffers(self, device: torch.device) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "init_buffers"):
                module.init_buffers(device)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        if self.cfg.embed_scale == 1.0:
            return x
        return x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)  # rounded to the weights' dtype, as Gemma does

    def encode(self, ids: Tensor, key_mask: Tensor | None = None, capture: Capture = None, residuals: list | None = None) -> Tensor:
        return self.encoder(self.embed_tokens(ids), key_mask=key_mask, capture=capture, residuals=residuals)

    def decode(
        self,
        ids: Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        capture: Capture = None,
        residuals: list | None = None,
    ) -> Tensor:
        return self.decoder(self.embed_tokens(ids), start, cache, None, memory, memory_mask, capture, residuals)

    @property
    def unembedding(self) -> Tensor:
        """(vocab, d). After to_inference_layout, read `unembedding_t` (d, vocab) instead."""
        return self.lm_head.weight if self.lm_head is not None else self.embed.weight

    def _unembed(self, h: Tensor) -> Tensor:
        w_t = getattr(self, "unembedding_t", None)  # set by to_inference_layout
        return h @ (w_t if w_t is not None else self.unembedding.t())

    def logits(self, h: Tensor) -> Tensor:
        """Next-token logits (decoder) from final hidden states (B, T, d) -> (B, T, vocab), float32."""
        if self.head_device is not None:
            h = h.to(self.head_device)
        if self.cfg.lm_head_scale != 1.0:
            h = h * self.cfg.lm_head_scale
        out = self._unembed(h)
        if self.final_logits_bias is not None:
            out = out + self.final_logits_bias
        return softcap(out.float(), self.cfg.final_logit_softcap)

    def mlm_logits(self, h: Tensor) -> Tensor | None:
        """Masked-LM logits (encoder) or None when the checkpoint has no prediction head."""
        if self.mlm is None:
            return None
        if self.head_device is not None:
            h = h.to(self.head_device)
        return (self._unembed(self.mlm(h)) + self.mlm.bias).float()
