"""Tiny random checkpoints of architectures only the transformers backend opens (mixture of experts, attention
sinks, hybrids with convolution / linear-attention layers, a multimodal class fed text, ModernBERT), built offline
from config objects, weights re-initialised with std 0.2 so patterns and routing have structure. Every sliding
window is 5 tokens, so a 20-token prompt runs past it."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.factories import _init, _save, byte_level_tokenizer

WINDOW = 5
DECODER = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
               max_position_embeddings=256)


def _decoder(folder: Path, config_cls: str, model_cls: str, seed: int, **kw) -> Path:
    import transformers

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = getattr(transformers, config_cls)(vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos,
                                            pad_token_id=eos, **{**DECODER, **kw})
    model = _init(getattr(transformers, model_cls)(cfg), seed)
    for name, p in model.named_parameters():
        if name.endswith("sinks"):  # sink logits large enough to take a visible share of each row
            with torch.no_grad():
                p.copy_(torch.linspace(-1.0, 2.0, p.numel()))
    return _save(model, tok, folder)


def gemma3_multimodal(folder: Path) -> Path:
    """Gemma3ForConditionalGeneration (model_type gemma3, what Gemma 3 4B-27B checkpoints are), fed text only."""
    import transformers

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    n = tok.get_vocab_size()
    text = dict(vocab_size=n, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=96, sliding_window=WINDOW, query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=256,
                bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    boi_token_index=n - 3, eoi_token_index=n - 2, image_token_index=n - 1)
    cfg.eos_token_id = eos
    model = _init(transformers.Gemma3ForConditionalGeneration(cfg), 41)
    return _save(model, tok, folder)


def modernbert(folder: Path) -> Path:
    import transformers

    tok = byte_level_tokenizer(300, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    ids = {t: tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>")}
    cfg = transformers.ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, intermediate_size=96, max_position_embeddings=256,
                                        local_attention=6, global_attn_every_n_layers=2, pad_token_id=ids["<pad>"],
                                        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], cls_token_id=ids["<s>"],
                                        sep_token_id=ids["</s>"])
    model = _init(transformers.ModernBertForMaskedLM(cfg), 42)
    return _save(model, tok, folder)


def mistral3_multimodal(folder: Path) -> Path:
    """Mistral3ForConditionalGeneration (model_type mistral3: Mistral Small 3.x), fed text only."""
    import transformers

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    n = tok.get_vocab_size()
    text = dict(vocab_size=n, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, intermediate_size=96, sliding_window=WINDOW, max_position_embeddings=256,
                bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                  image_size=28, patch_size=14)
    cfg = transformers.Mistral3Config(text_config={"model_type": "mistral", **text},
                                      vision_config={"model_type": "pixtral", **vision}, image_token_index=n - 1)
    cfg.eos_token_id = eos
    model = _init(transformers.Mistral3ForConditionalGeneration(cfg), 43)
    return _save(model, tok, folder)


def t5gemma(folder: Path) -> Path:
    """T5Gemma: an encoder-decoder (bidirectional sliding / full encoder layers, causal decoder, cross-attention)."""
    import transformers

    tok = byte_level_tokenizer(300, ["<pad>", "<bos>", "<eos>"])
    ids = {t: tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")}
    module = dict(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                  layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
                  max_position_embeddings=256, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                  eos_token_id=ids["<eos>"])
    cfg = transformers.T5GemmaConfig(encoder=module, decoder=module, vocab_size=tok.get_vocab_size(),
                                     pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                                     decoder_start_token_id=ids["<bos>"])
    model = _init(transformers.T5GemmaForConditionalGeneration(cfg), 45)
    return _save(model, tok, folder)


ARCHITECTURES = {
    "gpt_oss": lambda f: _decoder(f, "GptOssConfig", "GptOssForCausalLM", 31, num_hidden_layers=2, head_dim=16,
                                  num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
                                  layer_types=["sliding_attention", "full_attention"]),
    "qwen3_moe": lambda f: _decoder(f, "Qwen3MoeConfig", "Qwen3MoeForCausalLM", 32, num_hidden_layers=2, num_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
    "mixtral": lambda f: _decoder(f, "MixtralConfig", "MixtralForCausalLM", 33, num_hidden_layers=2,
                                  num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW),
    "olmo3": lambda f: _decoder(f, "Olmo3Config", "Olmo3ForCausalLM", 34, num_hidden_layers=2, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"]),
    "lfm2": lambda f: _decoder(f, "Lfm2Config", "Lfm2ForCausalLM", 35, num_hidden_layers=3,
                               layer_types=["conv", "full_attention", "conv"]),
    "qwen3_next": lambda f: _decoder(f, "Qwen3NextConfig", "Qwen3NextForCausalLM", 36, num_hidden_layers=2, head_dim=16,
                                     num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                     shared_expert_intermediate_size=32, linear_num_key_heads=2,
                                     linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                                     layer_types=["linear_attention", "full_attention"]),
    "olmoe": lambda f: _decoder(f, "OlmoeConfig", "OlmoeForCausalLM", 37, num_hidden_layers=2, num_experts=4,
                                num_experts_per_tok=2),
    "deepseek_v3": lambda f: _decoder(f, "DeepseekV3Config", "DeepseekV3ForCausalLM", 38, num_hidden_layers=2,
                                      num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4,
                                      n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
                                      first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                                      qk_nope_head_dim=16, v_head_dim=12),
    "granitemoehybrid": lambda f: _decoder(f, "GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", 39,
                                           num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                                           shared_intermediate_size=32, layer_types=["mamba", "attention"],
                                           mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=8, mamba_d_head=32,
                                           mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8, logits_scaling=2.0,
                                           embedding_multiplier=2.0, residual_multiplier=0.5,
                                           attention_multiplier=0.3),
    "falcon_h1": lambda f: _decoder(f, "FalconH1Config", "FalconH1ForCausalLM", 40, num_hidden_layers=2, head_dim=16,
                                    mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
                                    mamba_d_state=8, mamba_d_conv=4, mamba_expand=1, mamba_chunk_size=8,
                                    lm_head_multiplier=0.5),
    "llama4_text": lambda f: _decoder(f, "Llama4TextConfig", "Llama4ForCausalLM", 44, num_hidden_layers=2, head_dim=16,
                                      intermediate_size_mlp=96, num_local_experts=4, num_experts_per_tok=1,
                                      interleave_moe_layer_step=1, attention_chunk_size=8, no_rope_layers=[1, 0]),
    "mistral3": mistral3_multimodal,
    "gemma3": gemma3_multimodal,
    "modernbert": modernbert,
    "t5gemma": t5gemma,
}
