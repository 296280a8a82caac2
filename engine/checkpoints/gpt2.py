"""GPT-2 (and distilgpt2): learned positions, pre-LN, Conv1D weights stored transposed, tied unembedding."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UnsupportedArchitectureError
from .common import activation_of
from .mapping import Converter, Source, src


def config(hf: dict, keys: set[str]) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx"):
        raise UnsupportedArchitectureError("GPT-2 with scale_attn_by_inverse_layer_idx=true is not supported")
    d = hf["n_embd"]
    return ModelConfig(
        family="decoder", model_type="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, n_decoder_layers=hf["n_layer"], max_positions=hf.get("n_positions", 1024),
        position_scheme="learned", norm="layernorm", norm_placement="pre", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        final_norm=True, activation=activation_of(hf.get("activation_function", "gelu_new")),
        attn_scale=hf.get("scale_attn_weights", True), tie_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"),
    )


def keys(cfg: ModelConfig) -> dict[str, Source]:
    t = "transformer."
    m = {"embed.weight": src(t + "wte.weight"), "decoder.positions.weight": src(t + "wpe.weight"),
         "decoder.final_norm.weight": src(t + "ln_f.weight"), "decoder.final_norm.bias": src(t + "ln_f.bias")}
    for i in range(cfg.n_decoder_layers):
        h, o = f"{t}h.{i}.", f"decoder.layers.{i}."
        for ours, theirs in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            m[f"{o}{ours}.weight"], m[f"{o}{ours}.bias"] = src(f"{h}{theirs}.weight"), src(f"{h}{theirs}.bias")
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.out", "attn.c_proj"), ("ffn.up", "mlp.c_fc"),
                             ("ffn.down", "mlp.c_proj")):
            m[f"{o}{ours}.weight"] = src(f"{h}{theirs}.weight", op="T")
            m[f"{o}{ours}.bias"] = src(f"{h}{theirs}.bias")
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = src("lm_head.weight")
    return m


CONVERTER = Converter(
    model_types=("gpt2",), config=config, keys=keys, prefixes=("transformer.",),
    ignore=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),
)
