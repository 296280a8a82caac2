"""What the engine refuses to open, and why: unknown architectures, mixture-of-experts, quantised checkpoints.

Shared by load_model (which raises) and the cache listing (which shows the reason next to the model).
"""

from __future__ import annotations

from pathlib import Path

from .registry import SUPPORTED

# model_types of mixture-of-experts models in transformers (a router picks experts per token; our FFN is dense)
MOE_TYPES = frozenset({
    "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_vl_moe", "qwen3_omni_moe", "gpt_oss", "deepseek_v2",
    "deepseek_v3", "olmoe", "flex_olmo", "phimoe", "granitemoe", "granitemoeshared", "granitemoehybrid", "dbrx",
    "jetmoe", "llama4", "llama4_text", "switch_transformers", "nllb_moe", "ernie4_5_moe", "glm4_moe", "glm4v_moe",
    "minimax", "hunyuan_v1_moe", "dots1", "bailing_moe", "longcat_flash", "aria_text", "kimi_vl",
})
_EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def is_mixture_of_experts(hf: dict) -> bool:
    model_type = str(hf.get("model_type") or "")
    if model_type in MOE_TYPES or "moe" in model_type:
        return True
    return any(isinstance(hf.get(f), int) and hf[f] > 1 for f in _EXPERT_FIELDS)


def quantization_method(hf: dict) -> str | None:
    """The quantisation a config.json declares ("gptq", "awq", "bitsandbytes 4-bit", "fp8", ...), else None."""
    for field in ("quantization_config", "compression_config"):
        q = hf.get(field)
        if q:
            if not isinstance(q, dict):
                return str(q)
            method = str(q.get("quant_method") or q.get("format") or "unnamed method")
            if method == "bitsandbytes":
                method += " 4-bit" if q.get("load_in_4bit") else (" 8-bit" if q.get("load_in_8bit") else "")
            return method
    return None


def unsupported_model_type(hf: dict) -> str | None:
    """Why no converter handles this config (the reason, without the file name), or None."""
    model_type = hf.get("model_type")
    if model_type in SUPPORTED:
        return None
    what = f"model_type {model_type!r}" if model_type else "no model_type"
    if model_type and is_mixture_of_experts(hf):
        what += ", a mixture-of-experts model (mixture-of-experts is not supported)"
    return f"{what}; supported architectures: {', '.join(SUPPORTED)}"


def unsupported_quantization(hf: dict) -> str | None:
    method = quantization_method(hf)
    if method is None:
        return None
    return (f"a quantization_config ({method}): quantised checkpoints are not supported; "
            "open the original float16/bfloat16/float32 checkpoint")


def native_refusal(hf: dict) -> str | None:
    """The first reason the native engine cannot open this config, or None."""
    return unsupported_model_type(hf) or unsupported_quantization(hf)


def refusal(hf: dict, folder: Path | None = None) -> str | None:
    """The first reason neither backend can open this config, or None. A config the native engine refuses is
    asked of the transformers backend (which imports transformers: call it off the GUI thread)."""
    why = native_refusal(hf)
    if why is None or not (hf.get("model_type") or hf.get("auto_map")):
        return why
    from ..hf_backend.support import refusal as transformers_refusal

    return transformers_refusal(hf, folder or Path("."))
