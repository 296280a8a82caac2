"""One dataclass that describes every supported transformer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Family = Literal["decoder", "encoder", "encoder-decoder"]
PositionScheme = Literal["learned", "sinusoidal", "relative"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


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
