"""Tiny random modern decoders (Llama, Mistral, Qwen 2/3, Gemma 2/3, Phi-3, OLMo 2, SmolLM 3) built offline by
`transformers` from config objects, with settings that make every difference show in a short prompt:
grouped-query attention (4 query heads on 2 key/value heads), sliding windows of 5 tokens, soft-caps that
bind, rotary scaling, partial rotation, NoPE layers."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.factories import _init, _save, byte_level_tokenizer

WINDOW = 5
COMMON = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
              max_position_embeddings=128, attn_implementation="eager")


def _build(folder: Path, config_cls: str, model_cls: str, seed: int, dtype: torch.dtype = torch.float32, **kw) -> Path:
    import transformers

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = getattr(transformers, config_cls)(vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos,
                                            pad_token_id=eos, **{**COMMON, **kw})
    model = _init(getattr(transformers, model_cls)(cfg), seed).to(dtype)
    return _save(model, tok, folder)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def llama(folder: Path, **kw) -> Path:
    return _build(folder, "LlamaConfig", "LlamaForCausalLM", 11, rope_parameters=dict(LLAMA3_ROPE), **kw)


def phi3_longrope(folder: Path) -> Path:
    half = 8 // 2  # head 16, partial rotary 0.5 -> 8 rotary dims, 4 frequencies
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "short_factor": [1.0, 1.5, 2.0, 3.0][:half], "long_factor": [2.0, 4.0, 8.0, 16.0][:half]}
    return _build(folder, "Phi3Config", "Phi3ForCausalLM", 17, rope_parameters=rope, original_max_position_embeddings=64,
                  max_position_embeddings=256)


ARCHITECTURES = {
    "llama": llama,
    "llama-bias-tied": lambda f: _build(f, "LlamaConfig", "LlamaForCausalLM", 12, attention_bias=True, mlp_bias=True,
                                        head_dim=24, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
    "llama-dynamic": lambda f: _build(f, "LlamaConfig", "LlamaForCausalLM", 13,
                                      rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    "mistral": lambda f: _build(f, "MistralConfig", "MistralForCausalLM", 14, sliding_window=WINDOW),
    "qwen2": lambda f: _build(f, "Qwen2Config", "Qwen2ForCausalLM", 15, use_sliding_window=True, sliding_window=WINDOW,
                              max_window_layers=1),
    "qwen3": lambda f: _build(f, "Qwen3Config", "Qwen3ForCausalLM", 16, head_dim=16, use_sliding_window=True,
                              sliding_window=WINDOW, max_window_layers=2),
    "gemma2": lambda f: _build(f, "Gemma2Config", "Gemma2ForCausalLM", 18, head_dim=16, sliding_window=WINDOW,
                               query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3_text": lambda f: _build(f, "Gemma3TextConfig", "Gemma3ForCausalLM", 19, head_dim=16, sliding_window=WINDOW,
                                    query_pre_attn_scalar=16,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                     "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                        "rope_theta": 1000000.0}}),
    "phi3": lambda f: _build(f, "Phi3Config", "Phi3ForCausalLM", 20, sliding_window=WINDOW,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "phi3-longrope": phi3_longrope,
    "olmo2": lambda f: _build(f, "Olmo2Config", "Olmo2ForCausalLM", 21),
    "smollm3": lambda f: _build(f, "SmolLM3Config", "SmolLM3ForCausalLM", 22, no_rope_layers=[1, 0, 1]),
}

REFERENCE = {
    "llama": "LlamaForCausalLM", "llama-bias-tied": "LlamaForCausalLM", "llama-dynamic": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
    "phi3-longrope": "Phi3ForCausalLM", "olmo2": "Olmo2ForCausalLM", "smollm3": "SmolLM3ForCausalLM",
}
