"""Modern decoder-only models: Llama, Mistral, Qwen 2/3, Gemma 2/3, Phi-3, OLMo 2, SmolLM 3.

They share one layout (RMSNorm, SwiGLU/GeGLU, rotary positions, grouped-query attention); what differs
between them is data in `ARCHITECTURES` — a per-architecture row of traits, read into one LayerSpec
per layer — not code paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import AttentionSpec, LayerSpec, ModelConfig, RopeSpec
from ..errors import UnsupportedArchitectureError
from .common import activation_of
from .mapping import Converter, Source, cat, rows, src

ROPE_KINDS = ("default", "linear", "dynamic", "llama3", "longrope")
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Traits:
    """What one model_type changes in the shared decoder layout."""

    norm: str = "rmsnorm"
    placement: str = "pre"  # "pre" | "sandwich" (Gemma) | "output" (OLMo 2)
    qk_norm: str | None = None  # "head" (Qwen 3, Gemma 3) | "full" (OLMo 2)
    qkv_bias: Callable[[dict], bool] = lambda hf: bool(hf.get("attention_bias", False))
    out_bias: Callable[[dict], bool] = lambda hf: bool(hf.get("attention_bias", False))
    mlp_bias: Callable[[dict], bool] = lambda hf: bool(hf.get("mlp_bias", False))
    tied: bool = False  # tie_word_embeddings when config.json does not say
    theta: float = 10_000.0  # rope_theta when config.json does not say
    activation_key: str = "hidden_act"
    gemma: bool = False  # embeddings × sqrt(d), query_pre_attn_scalar, soft-caps
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj
    layer_types: Callable[[dict, int], list[str]] = lambda hf, n: [FULL] * n
    window_all: bool = False  # Mistral / Phi-3: `sliding_window` applies to every layer
    window_flag: bool = False  # Qwen, SmolLM 3: `sliding_window` counts only when `use_sliding_window` is true
    rope_layers: Callable[[dict, int], list[bool]] = lambda hf, n: [True] * n
    extra_checks: tuple[Callable[[dict], None], ...] = field(default=())


def _qwen_layer_types(hf: dict, n: int) -> list[str]:
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    start = hf.get("max_window_layers", n)
    return [SLIDING if window is not None and i >= start else FULL for i in range(n)]


def _gemma2_layer_types(hf: dict, n: int) -> list[str]:
    return [SLIDING if (i + 1) % 2 else FULL for i in range(n)]


def _gemma3_layer_types(hf: dict, n: int) -> list[str]:
    pattern = hf.get("sliding_window_pattern", 6)
    return [SLIDING if (i + 1) % pattern else FULL for i in range(n)]


def _smollm3_rope_layers(hf: dict, n: int) -> list[bool]:
    flags = hf.get("no_rope_layers")  # 1 = this layer rotates, 0 = NoPE
    if flags is None:
        interval = hf.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n)]
    return [bool(f) for f in flags]


def _smollm3_layer_types(hf: dict, n: int) -> list[str]:
    rope = _smollm3_rope_layers(hf, n)
    sliding = hf.get("use_sliding_window", False) and hf.get("sliding_window") is not None
    return [SLIDING if sliding and not rope[i] else FULL for i in range(n)]


def _no_bidirectional(hf: dict) -> None:
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedArchitectureError("Gemma 3 with bidirectional attention (an embedding model) is not supported")


_QWEN2_BIAS = dict(qkv_bias=lambda hf: True, out_bias=lambda hf: False)
ARCHITECTURES: dict[str, Traits] = {
    "llama": Traits(),
    "mistral": Traits(window_all=True),
    "qwen2": Traits(layer_types=_qwen_layer_types, window_flag=True, **_QWEN2_BIAS),
    "qwen3": Traits(qk_norm="head", layer_types=_qwen_layer_types, window_flag=True),
    "gemma2": Traits(norm="rmsnorm_gemma", placement="sandwich", tied=True, activation_key="hidden_activation",
                     gemma=True, layer_types=_gemma2_layer_types),
    "gemma3_text": Traits(norm="rmsnorm_gemma", placement="sandwich", qk_norm="head", tied=True, theta=1_000_000.0,
                          activation_key="hidden_activation", gemma=True, layer_types=_gemma3_layer_types,
                          extra_checks=(_no_bidirectional,)),
    "phi3": Traits(fused=True, window_all=True),
    "olmo2": Traits(norm="rmsnorm_f32", placement="output", qk_norm="full"),
    "smollm3": Traits(tied=True, theta=2_000_000.0, layer_types=_smollm3_layer_types, rope_layers=_smollm3_rope_layers,
                      window_flag=True),
}


def _rope_parameters(hf: dict, traits: Traits, model_type: str) -> dict[str, dict]:
    """Rotary settings per layer type, from either config.json format: transformers 5's `rope_parameters`
    (flat, or nested by layer type) or the older `rope_theta` / `rope_scaling` / `rope_local_base_freq`."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and (SLIDING in params or FULL in params):
        out = {t: dict(params.get(t) or {}) for t in (FULL, SLIDING)}
    else:
        flat = dict(params or hf.get("rope_scaling") or {})
        out = {FULL: flat, SLIDING: dict(flat)}
        if model_type == "gemma3_text":  # scaling applies to global layers; local ones have their own base
            out[SLIDING] = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    for t, p in out.items():
        p.setdefault("rope_theta", hf.get("rope_theta", traits.theta))
        p["rope_type"] = p.get("rope_type", p.get("type", "default"))
        if "partial_rotary_factor" not in p and hf.get("partial_rotary_factor") is not None:
            p["partial_rotary_factor"] = hf["partial_rotary_factor"]
        if p["rope_type"] in ("llama3", "longrope"):
            orig = hf.get("original_max_position_embeddings") if model_type == "phi3" else None
            p["original_max_position_embeddings"] = orig or p.get("original_max_position_embeddings") or hf["max_position_embeddings"]
        out[t] = p
    return out


def _rope_spec(p: dict, head_dim: int, max_positions: int) -> RopeSpec:
    kind = p["rope_type"]
    if kind not in ROPE_KINDS:
        raise UnsupportedArchitectureError(
            f"rope scaling of type {kind!r} is not supported; supported types: {', '.join(ROPE_KINDS)}")
    dim = int(head_dim * p.get("partial_rotary_factor", 1.0))
    theta = float(p["rope_theta"])
    if kind in ("linear", "dynamic"):
        return RopeSpec(theta, dim, kind, factor=float(p["factor"]))
    if kind == "llama3":
        return RopeSpec(theta, dim, kind, factor=float(p["factor"]), low_freq_factor=float(p["low_freq_factor"]),
                        high_freq_factor=float(p["high_freq_factor"]),
                        original_max_positions=int(p["original_max_position_embeddings"]))
    if kind == "longrope":
        orig = int(p["original_max_position_embeddings"])
        factor = p.get("factor") or max_positions / orig
        attention = p.get("attention_factor")
        if attention is None:
            attention = math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1.0 else 1.0
        short = tuple(float(f) for f in p["short_factor"])
        if len(short) != dim // 2:
            raise UnsupportedArchitectureError(f"longrope short_factor has {len(short)} entries; expected {dim // 2}")
        return RopeSpec(theta, dim, kind, original_max_positions=orig, short_factor=short, attention_factor=float(attention))
    return RopeSpec(theta, dim)


def config(hf: dict, keys: set[str], model_type: str) -> ModelConfig:
    traits = ARCHITECTURES[model_type]
    for check in traits.extra_checks:
        check(hf)
    d, n, heads = hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or d // heads
    max_positions = hf.get("max_position_embeddings", 2048)
    rope = {t: _rope_spec(p, head_dim, max_positions) for t, p in _rope_parameters(hf, traits, model_type).items()}
    if any(r.kind == "longrope" for r in rope.values()):
        # beyond the original context longrope switches every position to its long factors, so a cached
        # prefix would no longer match a full recompute: the engine keeps to the original context
        max_positions = min(max_positions, min(r.original_max_positions for r in rope.values() if r.kind == "longrope"))
    types = hf.get("layer_types") or traits.layer_types(hf, n)
    if len(types) != n:
        raise UnsupportedArchitectureError(f"config.json lists {len(types)} layer_types for {n} layers")
    unknown = sorted(set(types) - {SLIDING, FULL})
    if unknown:
        raise UnsupportedArchitectureError(f"layer types {', '.join(unknown)} are not supported (only {SLIDING}, {FULL})")
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) or not traits.window_flag else None
    rope_on = traits.rope_layers(hf, n)
    scale = (hf.get("query_pre_attn_scalar", 256) if traits.gemma else head_dim) ** -0.5
    softcap = hf.get("attn_logit_softcapping") if traits.gemma else None
    layers = tuple(
        LayerSpec(AttentionSpec(
            n_heads=heads, n_kv_heads=kv, head_dim=head_dim, scale=scale, qkv_bias=traits.qkv_bias(hf),
            out_bias=traits.out_bias(hf), qk_norm=traits.qk_norm, softcap=softcap,
            window=window if window is not None and (traits.window_all or types[i] == SLIDING) else None,
            rope=rope[types[i]] if rope_on[i] else None), traits.placement)
        for i in range(n))
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else () if eos is None else (eos,)
    return ModelConfig(
        family="decoder", model_type=model_type, vocab_size=hf["vocab_size"], d_model=d, n_heads=heads, d_head=head_dim,
        d_ff=hf["intermediate_size"], n_decoder_layers=n, max_positions=max_positions, position_scheme="rotary",
        norm=traits.norm, norm_placement=traits.placement, norm_eps=hf.get("rms_norm_eps", 1e-6), final_norm=True,
        activation=activation_of(hf.get(traits.activation_key) or "silu"), gated_ffn=True, attn_bias=traits.qkv_bias(hf),
        ffn_bias=traits.mlp_bias(hf), tie_embeddings=bool(hf.get("tie_word_embeddings", traits.tied)),
        embed_scale=math.sqrt(d) if traits.gemma else 1.0,
        final_logit_softcap=hf.get("final_logit_softcapping") if traits.gemma else None,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=eos_ids[0] if eos_ids else None, extra_eos_token_ids=eos_ids[1:],
        pad_token_id=hf.get("pad_token_id"), decoder_layers=layers,
    )


def keys(cfg: ModelConfig) -> dict[str, Source]:
    traits = ARCHITECTURES[cfg.model_type]
    m = {"embed.weight": src("model.embed_tokens.weight"), "decoder.final_norm.weight": src("model.norm.weight")}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = src("lm_head.weight")
    norms = {"pre": {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"},
             "sandwich": {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
                          "ffn_norm": "pre_feedforward_layernorm", "ffn_post_norm": "post_feedforward_layernorm"},
             "output": {"attn_norm": "post_attention_layernorm", "ffn_norm": "post_feedforward_layernorm"}}
    for i, spec in enumerate(cfg.decoder_layers):
        a, h, o = spec.attention, f"model.layers.{i}.", f"decoder.layers.{i}."
        q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        for ours, theirs in norms[spec.norm_placement].items():
            m[f"{o}{ours}.weight"] = src(h + theirs + ".weight")
        if traits.fused:
            m[o + "attn.qkv.weight"] = src(h + "self_attn.qkv_proj.weight")
            gate_up = h + "mlp.gate_up_proj.weight"
            m[o + "ffn.gate.weight"] = rows(gate_up, 0, cfg.d_ff, 2 * cfg.d_ff)
            m[o + "ffn.up.weight"] = rows(gate_up, cfg.d_ff, 2 * cfg.d_ff, 2 * cfg.d_ff)
        else:
            m[o + "attn.qkv.weight"] = cat(*(f"{h}self_attn.{x}_proj.weight" for x in "qkv"), sizes=(q, kv, kv))
            for x in ("gate", "up"):
                m[f"{o}ffn.{x}.weight"] = src(f"{h}mlp.{x}_proj.weight")
        if a.qkv_bias:
            m[o + "attn.qkv.bias"] = cat(*(f"{h}self_attn.{x}_proj.bias" for x in "qkv"), sizes=(q, kv, kv))
        m[o + "attn.out.weight"] = src(h + "self_attn.o_proj.weight")
        if a.out_bias:
            m[o + "attn.out.bias"] = src(h + "self_attn.o_proj.bias")
        if a.qk_norm is not None:
            m[o + "attn.q_norm.weight"] = src(h + "self_attn.q_norm.weight")
            m[o + "attn.k_norm.weight"] = src(h + "self_attn.k_norm.weight")
        m[o + "ffn.down.weight"] = src(h + "mlp.down_proj.weight")
        if cfg.ffn_bias:
            for x in ("gate", "up", "down"):
                m[f"{o}ffn.{x}.bias"] = src(f"{h}mlp.{x}_proj.bias")
    return m


def _converter(model_type: str) -> Converter:
    return Converter(model_types=(model_type,), config=lambda hf, keys: config(hf, keys, model_type), keys=keys,
                     prefixes=("model.",), ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"))


CONVERTERS = {model_type: _converter(model_type) for model_type in ARCHITECTURES}
