"""Where the parts of a transformers model are, found from its modules rather than its class."""

from __future__ import annotations

import torch


def text_model(hf: torch.nn.Module) -> torch.nn.Module:
    """The text stack (decoder, or an encoder-only model's encoder) whose output's last_hidden_state feeds the
    output head, after the final norm: the first of get_decoder(), base_model, .model that holds numbered layers
    (ModernBertForMaskedLM's get_decoder() is its output head)."""
    candidates = [hf.get_decoder() if hasattr(hf, "get_decoder") else None, getattr(hf, "base_model", None),
                  getattr(hf, "model", None)]
    for module in candidates:
        if isinstance(module, torch.nn.Module) and module is not hf and any(
                name.startswith("layers.") or ".layers." in name for name, _ in module.named_modules()):
            return module
    return hf
