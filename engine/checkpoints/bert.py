"""BERT and RoBERTa: post-LN encoders with learned positions and an optional masked-LM head."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UnsupportedArchitectureError
from .common import activation_of, fused, linear
from .mapping import Converter, Source, src


def _config(hf: dict, keys: set[str], model_type: str, head_prefix: str) -> ModelConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedArchitectureError(f"{model_type} with position_embedding_type={hf['position_embedding_type']!r} "
                                           "is not supported; only 'absolute'")
    roberta = model_type == "roberta"
    table = hf.get("max_position_embeddings", 512)
    offset = hf.get("pad_token_id", 1) + 1 if roberta else 0  # RoBERTa counts positions from padding_idx + 1
    return ModelConfig(
        family="encoder", model_type=model_type, vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"], n_encoder_layers=hf["num_hidden_layers"],
        max_positions=table - offset, position_scheme="learned", position_offset=offset, position_table_size=table,
        token_types=hf.get("type_vocab_size", 2), embed_norm=True, norm="layernorm", norm_placement="post",
        norm_eps=hf.get("layer_norm_eps", 1e-12), final_norm=False, activation=activation_of(hf.get("hidden_act", "gelu")),
        mlm_head=any(k.startswith(head_prefix) for k in keys),
        # BERT's prediction head uses hidden_act; RoBERTa's is hard-wired to gelu
        mlm_activation="gelu" if roberta else activation_of(hf.get("hidden_act", "gelu")),
        pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id") if roberta else None,
        eos_token_id=hf.get("eos_token_id") if roberta else None,
    )


def _keys(cfg: ModelConfig, base: str, head: dict[str, str]) -> dict[str, Source]:
    e = f"{base}embeddings."
    m = {"embed.weight": src(e + "word_embeddings.weight"), "encoder.positions.weight": src(e + "position_embeddings.weight"),
         "encoder.token_type.weight": src(e + "token_type_embeddings.weight")}
    linear(m, "encoder.embed_norm", e + "LayerNorm")
    for i in range(cfg.n_encoder_layers):
        h, o = f"{base}encoder.layer.{i}.", f"encoder.layers.{i}."
        fused(m, o + "attn.qkv", [f"{h}attention.self.{x}" for x in ("query", "key", "value")])
        linear(m, o + "attn.out", h + "attention.output.dense")
        linear(m, o + "attn_norm", h + "attention.output.LayerNorm")
        linear(m, o + "ffn.up", h + "intermediate.dense")
        linear(m, o + "ffn.down", h + "output.dense")
        linear(m, o + "ffn_norm", h + "output.LayerNorm")
    if cfg.mlm_head:
        linear(m, "mlm.dense", head["dense"])
        linear(m, "mlm.norm", head["norm"])
        m["mlm.bias"] = src(*head["bias"])
    return m


def bert_config(hf: dict, keys: set[str]) -> ModelConfig:
    return _config(hf, keys, "bert", "cls.predictions.")


def bert_keys(cfg: ModelConfig) -> dict[str, Source]:
    return _keys(cfg, "bert.", {"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm",
                                "bias": ("cls.predictions.bias", "cls.predictions.decoder.bias")})


def roberta_config(hf: dict, keys: set[str]) -> ModelConfig:
    return _config(hf, keys, "roberta", "lm_head.")


def roberta_keys(cfg: ModelConfig) -> dict[str, Source]:
    return _keys(cfg, "roberta.", {"dense": "lm_head.dense", "norm": "lm_head.layer_norm",
                                   "bias": ("lm_head.bias", "lm_head.decoder.bias")})


BERT = Converter(
    model_types=("bert",), config=bert_config, keys=bert_keys, prefixes=("bert.",),
    ignore=(r"pooler\.", r"position_ids$", r"^cls\.predictions\.decoder\.(weight|bias)$", r"^cls\.seq_relationship\."),
)
ROBERTA = Converter(
    model_types=("roberta",), config=roberta_config, keys=roberta_keys, prefixes=("roberta.",),
    ignore=(r"pooler\.", r"position_ids$", r"^lm_head\.decoder\.(weight|bias)$"),
)
