"""What the transformers backend refuses, and why: remote code without consent, a model_type the installed
transformers does not know, quantised weights it cannot run here. Reads config.json only (and asks transformers
which model_types it knows)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# quantisations transformers runs on any machine (MXFP4 is dequantised to bfloat16 where no kernel exists)
RUNS_ANYWHERE = {"mxfp4"}
# quantisations that need a GPU and their package: method -> (package to import, what to tell the person)
NEEDS_KERNELS = {
    "gptq": ("gptqmodel", "GPTQ needs the gptqmodel kernels and a CUDA GPU"),
    "awq": ("awq", "AWQ needs the autoawq kernels and a CUDA GPU"),
    "bitsandbytes": ("bitsandbytes", "bitsandbytes 4/8-bit weights need the bitsandbytes package and a CUDA GPU"),
    "fp8": (None, "FP8 weights need a CUDA GPU with FP8 support"),
}


def remote_code_files(hf: dict, folder: Path) -> list[str] | None:
    """The .py files a checkpoint with `auto_map` would run (None when it names none)."""
    auto_map = hf.get("auto_map")
    if not auto_map:
        return None
    refs = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    files = set()
    for ref in refs:
        for r in ref if isinstance(ref, (list, tuple)) else [ref]:
            if isinstance(r, str) and "." in r:
                module = r.split("--")[-1].rsplit(".", 1)[0]
                files.add(module.replace(".", "/") + ".py")
    files.update(p.name for p in folder.glob("*.py"))
    return sorted(files)


def known_model_types() -> frozenset[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def quantization_refusal(hf: dict, device_type: str) -> str | None:
    """Why these quantised weights cannot run here (None: not quantised, or runnable)."""
    q = hf.get("quantization_config")
    if not q:
        return None
    method = str(q.get("quant_method", "unnamed")) if isinstance(q, dict) else str(q)
    if method in RUNS_ANYWHERE:
        return None
    package, why = NEEDS_KERNELS.get(method, (None, f"transformers has no way to run {method!r} weights here"))
    if device_type == "cuda" and method in NEEDS_KERNELS and (package is None or importlib.util.find_spec(package)):
        return None
    if method == "bitsandbytes" and isinstance(q, dict):
        method += " 4-bit" if q.get("load_in_4bit") else (" 8-bit" if q.get("load_in_8bit") else "")
    return (f"a quantization_config ({method}): quantised checkpoints are not supported on this machine ({why}); "
            "open the original float16/bfloat16/float32 checkpoint")


def refusal(hf: dict, folder: Path, trust_remote_code: bool = False, device_type: str = "cpu") -> str | None:
    """The first reason the transformers backend cannot open this config, or None."""
    files = remote_code_files(hf, folder)
    if files and not trust_remote_code:
        return (f"its own code (auto_map in config.json): opening it would run {', '.join(files)}. Read them, then open "
                "it with trust_remote_code=True (--trust-remote-code) if you trust their author")
    model_type = hf.get("model_type")
    if not files and model_type not in known_model_types():
        return (f"model_type {model_type!r}, which the installed transformers {transformers_version()} does not know; "
                "update transformers, or open a checkpoint of a known architecture")
    return quantization_refusal(hf, device_type)
