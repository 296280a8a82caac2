"""Saving one of our Transformers as a Hugging Face checkpoint folder (the inverse of the converters).

    save_hf(net, folder, hf_config, tokenizer)   # config.json + model.safetensors (+ tokenizer.json)
    save_hf(net, folder, hf_config, dtype=torch.bfloat16)   # tensors stored in bfloat16, as real checkpoints are

`hf_config` is the config.json the reference implementation expects (its `model_type` picks the
converter); every parameter is written under the first checkpoint name its converter lists:
"T" sources are transposed back, "cat" sources split into equal chunks along dim 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import ModelConfig
from .registry import CONVERTERS

log = logging.getLogger(__name__)

# special-token ids may come from the tokenizer rather than config.json
_LOOSE = ("mask_token_id", "extra")


def hf_state_dict(net: torch.nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """Our state dict -> tensors under the checkpoint names of `model_type` (each conversion step inverted)."""
    sources = CONVERTERS[model_type].keys(net.cfg)
    pieces: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for ours, tensor in net.state_dict().items():
        for name, first_row, part in sources[ours].from_ours(tensor.detach().to("cpu", torch.float32)):
            pieces.setdefault(name, []).append((first_row, part))
    return {name: parts[0][1] if len(parts) == 1 else torch.cat([p for _, p in sorted(parts, key=lambda x: x[0])])
            for name, parts in pieces.items()}


def _check_config(cfg: ModelConfig, hf_config: dict, keys: set[str]) -> None:
    back = CONVERTERS[hf_config["model_type"]].config(hf_config, keys)
    diff = [f for f in cfg.__dataclass_fields__ if f not in _LOOSE and getattr(cfg, f) != getattr(back, f)]
    if diff:
        raise ValueError("config.json does not describe this network: " +
                         ", ".join(f"{f}={getattr(back, f)!r} (network has {getattr(cfg, f)!r})" for f in diff))


def save_hf(net: torch.nn.Module, folder: str | Path, hf_config: dict, tokenizer=None,  # noqa: ANN001
            dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json, model.safetensors and (given a `tokenizers.Tokenizer`) tokenizer.json.
    `dtype`: the floating-point type of the stored tensors (float32, bfloat16 or float16), rounded from
    float32 once."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(net, hf_config["model_type"])
    _check_config(net.cfg, hf_config, set(tensors))
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"cannot store tensors as {dtype}; use float32, bfloat16 or float16")
    tensors = {name: t.to(dtype).contiguous() for name, t in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    log.info("saved %d tensors (%.1fM values) to %s", len(tensors), sum(t.numel() for t in tensors.values()) / 1e6, folder)
    return folder
