"""A tiny gpt-oss checkpoint with MXFP4 expert weights, laid out as the real gpt-oss-20b safetensors are, built
offline; and the same model as a plain bfloat16 checkpoint whose expert weights are the dequantised values, computed
here by our own FP4 decoder (not transformers' lookup table).

MXFP4 (OCP microscaling): each block of 32 weights along a row's input dimension is 16 bytes of FP4 e2m1 pairs (the
low nibble is the earlier weight) and one E8M0 scale byte (2^(byte − 127)). In the checkpoint an expert projection
`W` that the model uses as [experts, in, out] is stored as `…_blocks` uint8 [experts, out, in / 32, 16] and
`…_scales` uint8 [experts, out, in / 32]; biases stay float (`…_bias`), and config.json says
`"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [...]}`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.factories import _init, byte_level_tokenizer

PROJECTIONS = ("gate_up_proj", "down_proj")
# what gpt-oss-20b's config.json lists (its attention, routers, embeddings and head are bfloat16)
NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def fp4_e2m1(nibbles: np.ndarray) -> np.ndarray:
    """FP4 e2m1 codes (0..15) -> float64: sign bit 3, exponent bits 2–1 (bias 1), mantissa bit 0; exponent 0 is
    subnormal (0 or 0.5). So 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives."""
    nibbles = nibbles.astype(np.int64)
    sign, exponent, mantissa = (nibbles >> 3) & 1, (nibbles >> 1) & 3, nibbles & 1
    magnitude = np.where(exponent == 0, 0.5 * mantissa, 2.0 ** (exponent - 1) * (1.0 + 0.5 * mantissa))
    return np.where(sign == 1, -magnitude, magnitude)


def dequantise(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks uint8 [E, out, in/32, 16], scales uint8 [E, out, in/32] -> float64 [E, in, out] (as the model uses it)."""
    pairs = np.stack([fp4_e2m1(blocks & 0x0F), fp4_e2m1(blocks >> 4)], axis=-1)  # low nibble first
    values = pairs.reshape(*blocks.shape[:-1], 32) * np.exp2(scales.astype(np.int64) - 127)[..., None]
    return values.reshape(*blocks.shape[:-2], -1).swapaxes(-1, -2)


def build(root: Path, seed: int = 61) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """-> (the MXFP4 folder, the bfloat16 reference folder, {parameter name: its dequantised value (float64)})."""
    import transformers
    from safetensors.torch import load_file, save_file

    tok = byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GptOssConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                    num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
                                    layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                                    bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = _init(transformers.GptOssForCausalLM(cfg), seed)
    for name, p in model.named_parameters():
        if name.endswith("sinks"):
            with torch.no_grad():
                p.copy_(torch.linspace(-1.0, 2.0, p.numel()))
    rng = np.random.default_rng(seed)
    packed: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    params = dict(model.named_parameters())
    for layer in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts."
        for proj in PROJECTIONS:
            n_exp, n_in, n_out = params[prefix + proj].shape
            blocks = rng.integers(0, 256, size=(n_exp, n_out, n_in // 32, 16), dtype=np.uint8)
            scales = rng.integers(122, 126, size=(n_exp, n_out, n_in // 32), dtype=np.uint8)  # 2^-5 .. 2^-2
            packed[prefix + proj + "_blocks"], packed[prefix + proj + "_scales"] = blocks, scales
            values[prefix + proj] = w = dequantise(blocks, scales)
            with torch.no_grad():
                params[prefix + proj].copy_(torch.from_numpy(w))
    model = model.to(torch.bfloat16)
    stored = dict(model.named_parameters())
    for name, w in values.items():  # FP4 × 2^e with a small exponent: exact in bfloat16
        assert np.array_equal(stored[name].detach().float().numpy(), w), name

    reference = root / "gpt-oss-bf16"
    model.save_pretrained(reference, safe_serialization=True)
    tok.save(str(reference / "tokenizer.json"))

    folder = root / "gpt-oss-mxfp4"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for f in sorted(reference.glob("*.safetensors")):
        weights.update(load_file(f))
    for name in values:
        del weights[name]
    weights.update({k: torch.from_numpy(v) for k, v in packed.items()})
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((reference / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": NOT_CONVERTED}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for extra in ("generation_config.json", "tokenizer.json"):
        if (reference / extra).exists():
            (folder / extra).write_bytes((reference / extra).read_bytes())
    return folder, reference, values
