"""BART and Marian: post-LN encoder-decoders with a shared, tied embedding and a final logits bias.
BART: learned positions offset by 2 and a LayerNorm on the embeddings. Marian (and the original
Transformer in Marian format): sinusoidal positions and embeddings scaled by sqrt(d_model)."""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..errors import UnsupportedArchitectureError
from .common import activation_of, fused, linear
from .mapping import Converter, Source, src


def _config(hf: dict, model_type: str) -> ModelConfig:
    heads = hf.get("encoder_attention_heads", 16)
    if heads != hf.get("decoder_attention_heads", heads) or hf.get("encoder_ffn_dim") != hf.get("decoder_ffn_dim"):
        raise UnsupportedArchitectureError(f"{model_type} with different encoder and decoder widths is not supported")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise UnsupportedArchitectureError(f"pre-LN {model_type} variants (mBART style) are not supported")
    d = hf["d_model"]
    marian = model_type == "marian"
    if marian and (not hf.get("share_encoder_decoder_embeddings", True)
                   or hf.get("decoder_vocab_size", hf["vocab_size"]) != hf["vocab_size"]):
        raise UnsupportedArchitectureError("Marian checkpoints with separate source and target vocabularies are not supported")
    max_pos = hf.get("max_position_embeddings", 1024)
    pad = hf.get("pad_token_id", 1)
    return ModelConfig(
        family="encoder-decoder", model_type=model_type, vocab_size=hf["vocab_size"], d_model=d, n_heads=heads,
        d_ff=hf["encoder_ffn_dim"], n_encoder_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"],
        max_positions=max_pos, position_scheme="sinusoidal" if marian else "learned",
        position_offset=0 if marian else 2, embed_scale=math.sqrt(d) if hf.get("scale_embedding", marian) else 1.0,
        embed_norm=not marian, norm="layernorm", norm_placement="post", norm_eps=1e-5, final_norm=False,
        activation=activation_of(hf.get("activation_function", "swish" if marian else "gelu")),
        tie_embeddings=hf.get("tie_word_embeddings", True), final_logits_bias=True,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id", 2), pad_token_id=pad,
        decoder_start_token_id=hf.get("decoder_start_token_id", pad if marian else 2),
    )


def keys(cfg: ModelConfig) -> dict[str, Source]:
    m = {"embed.weight": src("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"),
         "final_logits_bias": src("final_logits_bias")}
    for stack, n in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        s = f"model.{stack}."
        if cfg.position_scheme == "learned":
            m[f"{stack}.positions.weight"] = src(s + "embed_positions.weight")
        if cfg.embed_norm:
            linear(m, f"{stack}.embed_norm", s + "layernorm_embedding")
        for i in range(n):
            h, o = f"{s}layers.{i}.", f"{stack}.layers.{i}."
            fused(m, o + "attn.qkv", [f"{h}self_attn.{x}_proj" for x in "qkv"])
            linear(m, o + "attn.out", h + "self_attn.out_proj")
            linear(m, o + "attn_norm", h + "self_attn_layer_norm")
            if stack == "decoder":
                linear(m, o + "cross_attn.q", h + "encoder_attn.q_proj")
                fused(m, o + "cross_attn.kv", [f"{h}encoder_attn.{x}_proj" for x in "kv"])
                linear(m, o + "cross_attn.out", h + "encoder_attn.out_proj")
                linear(m, o + "cross_norm", h + "encoder_attn_layer_norm")
            linear(m, o + "ffn.up", h + "fc1")
            linear(m, o + "ffn.down", h + "fc2")
            linear(m, o + "ffn_norm", h + "final_layer_norm")
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = src("lm_head.weight")
    return m


_IGNORE = (r"^(model\.)?(encoder|decoder)\.embed_tokens\.weight$", r"^lm_head\.weight$")
BART = Converter(model_types=("bart",), config=lambda hf, keys: _config(hf, "bart"), keys=keys, ignore=_IGNORE,
                 prefixes=("model.",))
MARIAN = Converter(model_types=("marian",), config=lambda hf, keys: _config(hf, "marian"), keys=keys, prefixes=("model.",),
                   ignore=(*_IGNORE, r"embed_positions\.weight$"))
