"""T5 (1.0: ReLU, tied head scaled by d_model^-0.5; 1.1: gated-GELU, separate head): pre-RMSNorm,
relative position buckets, no biases, no 1/sqrt(d_k) scaling."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UnsupportedArchitectureError
from .common import activation_of, fused, linear
from .mapping import Converter, Source, src


def config(hf: dict, keys: set[str]) -> ModelConfig:
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = proj.split("-", 1)[1] if gated else proj
    if act == "gelu" and gated:
        act = "gelu_new"  # T5 v1.1's "gated-gelu" means the tanh approximation
    # T5 v1.1 checkpoints saved by transformers 4 say tie_word_embeddings=false and carry lm_head.weight;
    # transformers 5 always ties and records whether to scale the decoder output separately.
    tied = hf.get("tie_word_embeddings", True) or "lm_head.weight" not in keys
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    d = hf["d_model"]
    if hf.get("is_decoder_only") or hf.get("is_encoder_decoder") is False:
        raise UnsupportedArchitectureError("only encoder-decoder T5 checkpoints are supported")
    return ModelConfig(
        family="encoder-decoder", model_type="t5", vocab_size=hf["vocab_size"], d_model=d, d_head=hf.get("d_kv", 64),
        n_heads=hf["num_heads"], d_ff=hf["d_ff"], n_encoder_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], max_positions=hf.get("n_positions", 512),
        position_scheme="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm", norm_placement="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), final_norm=True, activation=activation_of(act), gated_ffn=gated,
        attn_bias=False, ffn_bias=False, attn_scale=False, tie_embeddings=tied, lm_head_scale=d**-0.5 if scale else 1.0,
        pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
    )


def keys(cfg: ModelConfig) -> dict[str, Source]:
    m = {"embed.weight": src("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    for stack, n in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        m[f"{stack}.rel_bias.table.weight"] = src(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        m[f"{stack}.final_norm.weight"] = src(f"{stack}.final_layer_norm.weight")
        for i in range(n):
            b, o = f"{stack}.block.{i}.layer.", f"{stack}.layers.{i}."
            fused(m, o + "attn.qkv", [f"{b}0.SelfAttention.{x}" for x in "qkv"], bias=False)
            linear(m, o + "attn.out", f"{b}0.SelfAttention.o", bias=False)
            linear(m, o + "attn_norm", f"{b}0.layer_norm", bias=False)
            f = 1
            if stack == "decoder":
                linear(m, o + "cross_attn.q", f"{b}1.EncDecAttention.q", bias=False)
                fused(m, o + "cross_attn.kv", [f"{b}1.EncDecAttention.{x}" for x in "kv"], bias=False)
                linear(m, o + "cross_attn.out", f"{b}1.EncDecAttention.o", bias=False)
                linear(m, o + "cross_norm", f"{b}1.layer_norm", bias=False)
                f = 2
            ff = f"{b}{f}.DenseReluDense."
            if cfg.gated_ffn:
                linear(m, o + "ffn.gate", ff + "wi_0", bias=False)
                linear(m, o + "ffn.up", ff + "wi_1", bias=False)
            else:
                linear(m, o + "ffn.up", ff + "wi", bias=False)
            linear(m, o + "ffn.down", ff + "wo", bias=False)
            linear(m, o + "ffn_norm", f"{b}{f}.layer_norm", bias=False)
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = src("lm_head.weight")
    return m


CONVERTER = Converter(model_types=("t5",), config=config, keys=keys,
                      ignore=(r"^(encoder|decoder)\.embed_tokens\.weight$", r"^lm_head\.weight$"))
