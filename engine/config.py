"""One dataclass that describes every supported transformer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Family = Literal["decoder", "encoder", "encoder-decoder"]
PositionScheme = Literal["learned", "sinusoidal", "relative", "rotary"]  # rotary: per layer, in each RopeSpec
# rmsnorm: T5 / Llama (normalise in float32, cast, then the weight); rmsnorm_f32: the weight applied in float32
# before the cast (OLMo 2); rmsnorm_gemma: like rmsnorm_f32 with (1 + weight) (Gemma stores the offset)
NormKind = Literal["layernorm", "rmsnorm", "rmsnorm_f32", "rmsnorm_gemma"]
# pre: x + f(norm(x)); post: norm(x + f(x)) (BERT, BART); sandwich: x + norm2(f(norm1(x))) (Gemma 2/3);
# output: x + norm(f(x)) (OLMo 2)
NormPlacement = Literal["pre", "post", "sandwich", "output"]
RopeKind = Literal["default", "linear", "dynamic", "llama3", "longrope"]

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclass(frozen=True)
class RopeSpec:
    """Rotary positions of one layer type: the base, how many dims of each head rotate, and the scaling."""

    theta: float
    rotary_dim: int  # the first `rotary_dim` dims of each head rotate (partial rotary: fewer than the head size)
    kind: RopeKind = "default"
    factor: float = 1.0  # linear / llama3
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_positions: int | None = None  # llama3 / longrope
    short_factor: tuple[float, ...] = ()  # longrope, per frequency
    attention_factor: float = 1.0  # multiplies cos and sin (longrope)


@dataclass(frozen=True)
class AttentionSpec:
    """One layer's self-attention: heads, sizes, scale and what is done to the scores."""

    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads; n_heads // n_kv_heads query heads share each (grouped-query attention)
    head_dim: int
    scale: float  # scores = q·k * scale (1/sqrt(head_dim), or query_pre_attn_scalar ** -0.5, or 1 for T5)
    qkv_bias: bool = True
    out_bias: bool = True
    qk_norm: Literal["head", "full"] | None = None  # RMSNorm on q and k: per head (Qwen3, Gemma 3) or whole projection (OLMo 2)
    softcap: float | None = None  # scores -> c·tanh(scores / c) before the mask (Gemma 2)
    window: int | None = None  # sliding window: a query sees the last `window` keys, itself included
    rope: RopeSpec | None = None  # None: no rotation in this layer (learned / relative positions, NoPE layers)

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class LayerSpec:
    """What varies from layer to layer, grouped by sublayer."""

    attention: AttentionSpec
    norm_placement: NormPlacement = "pre"


@dataclass(frozen=True)
class ModelConfig:
    family: Family
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_encoder_layers: int = 0
    n_decoder_layers: int = 0
    d_head: int | None = None  # per-head size; None -> d_model // n_heads (T5 sets d_kv)
    max_positions: int = 1024  # context window (tokens); relative schemes have no table but keep a limit
    # positions
    position_scheme: PositionScheme = "learned"
    position_offset: int = 0  # BART/RoBERTa store positions shifted by 2
    position_table_size: int | None = None  # rows in a learned table (defaults to max_positions + offset)
    relative_buckets: int = 32
    relative_max_distance: int = 128
    token_types: int = 0  # BERT's token_type_embeddings rows; segment 0 is added to every token
    embed_scale: float = 1.0  # Marian / scaled BART multiply token embeddings by sqrt(d_model)
    embed_norm: bool = False  # LayerNorm right after the embeddings (BERT, BART)
    # blocks
    norm: NormKind = "layernorm"
    norm_placement: NormPlacement = "pre"
    norm_eps: float = 1e-5
    final_norm: bool = True  # a norm after the last block of each stack (pre-LN models)
    activation: str = "gelu_new"
    gated_ffn: bool = False  # T5 v1.1 gated-gelu: act(x W0) * (x W1)
    attn_bias: bool = True
    ffn_bias: bool = True
    attn_scale: bool = True  # divide scores by sqrt(d_head); T5 folds this into its weights
    # heads
    tie_embeddings: bool = True
    lm_head_scale: float = 1.0  # tied T5 scales the decoder output by d_model ** -0.5
    final_logits_bias: bool = False  # BART / Marian
    mlm_head: bool = False  # encoder: dense + act + norm, then the (tied) decoder with a bias
    mlm_activation: str = "gelu"
    # special tokens
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra_eos_token_ids: tuple[int, ...] = ()  # config.json may list several ids that end generation (Llama 3)
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    decoder_start_token_id: int | None = None
    # modern decoders: explicit per-layer specs of the decoder stack; empty -> derived from the fields above
    decoder_layers: tuple[LayerSpec, ...] = ()
    final_logit_softcap: float | None = None  # logits -> c·tanh(logits / c) (Gemma 2)
    model_type: str = "custom"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.family not in ("decoder", "encoder", "encoder-decoder"):
            raise ValueError(f"unknown family {self.family!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.family == "decoder" and self.n_decoder_layers < 1:
            raise ValueError("a decoder model needs n_decoder_layers >= 1")
        if self.family == "encoder" and self.n_encoder_layers < 1:
            raise ValueError("an encoder model needs n_encoder_layers >= 1")
        if self.decoder_layers and len(self.decoder_layers) != self.n_decoder_layers:
            raise ValueError(f"{len(self.decoder_layers)} layer specs for {self.n_decoder_layers} decoder layers")
        for spec in self.decoder_layers:
            a = spec.attention
            if a.n_kv_heads < 1 or a.n_heads % a.n_kv_heads:
                raise ValueError(f"{a.n_heads} query heads cannot share {a.n_kv_heads} key/value heads evenly")
            if a.rope is not None and (a.rope.rotary_dim % 2 or not 0 < a.rope.rotary_dim <= a.head_dim):
                raise ValueError(f"rotary dims {a.rope.rotary_dim} must be even and at most the head size {a.head_dim}")

    def layer_spec(self, stack: str, index: int) -> LayerSpec:
        """The spec of layer `index` of the "encoder" or "decoder" stack."""
        if stack == "decoder" and self.decoder_layers:
            return self.decoder_layers[index]
        return LayerSpec(
            AttentionSpec(n_heads=self.n_heads, n_kv_heads=self.n_heads, head_dim=self.head_dim,
                          scale=self.head_dim**-0.5 if self.attn_scale else 1.0, qkv_bias=self.attn_bias,
                          out_bias=self.attn_bias),
            self.norm_placement)

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads of the main stack (fewer than n_heads with grouped-query attention)."""
        stack = "encoder" if self.family == "encoder" else "decoder"
        return self.layer_spec(stack, 0).attention.n_kv_heads
    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: eos_token_id first, then the others config.json lists."""
        first = () if self.eos_token_id is None else (self.eos_token_id,)
        return first + tuple(i for i in self.extra_eos_token_ids if i != self.eos_token_id)

    @property
    def inner_dim(self) -> int:
        return self.head_dim * self.n_heads

    @property
    def table_size(self) -> int:
        return self.position_table_size or (self.max_positions + self.position_offset)

    @property
    def has_encoder(self) -> bool:
        return self.family in ("encoder", "encoder-decoder")

    @property
    def has_decoder(self) -> bool:
        return self.family in ("decoder", "encoder-decoder")

    @property
    def n_layers(self) -> int:
        """Layers of the main stack: the decoder's, or the encoder's for encoder-only models."""
        return self.n_encoder_layers if self.family == "encoder" else self.n_decoder_layers

    def with_(self, **changes: object) -> ModelConfig:
        return replace(self, **changes)
