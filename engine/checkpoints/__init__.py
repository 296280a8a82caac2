"""load_model: folder (or bundled name, or HF cache id) -> Model, through one converter per architecture."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..config import ModelConfig
from ..device import resolve_device, resolve_dtype
from ..errors import CheckpointError, TokenizerError, UnsupportedArchitectureError
from ..inference_layout import to_inference_layout
from ..model import Model
from ..network import Transformer
from ..tokenizer import Tokenizer
from .mapping import build_state_dict, plan
from .registry import CONVERTERS, SUPPORTED
from .resolve import bundled_models, cached_models, resolve
from .weights import WeightFiles

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED", "bundled_models", "cached_models", "load_model", "read_config", "resolve"]

MASK_TOKENS = ("[MASK]", "<mask>")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; a Hugging Face checkpoint folder needs one")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); repair or re-download it") from exc
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return hf


def _converter(hf: dict, folder: Path):
    model_type = hf.get("model_type")
    if model_type not in CONVERTERS:
        what = f"model_type {model_type!r}" if model_type else "no model_type"
        raise UnsupportedArchitectureError(
            f"{folder / 'config.json'} has {what}; supported architectures: {', '.join(SUPPORTED)}")
    return CONVERTERS[model_type]


def _special_ids(cfg: ModelConfig, tok: Tokenizer) -> ModelConfig:
    if cfg.mask_token_id is None:
        for t in MASK_TOKENS:
            if tok.token_to_id(t) is not None:
                return cfg.with_(mask_token_id=tok.token_to_id(t))
    return cfg


def load_model(source, device=None, dtype=None, allow_pickle: bool = False) -> Model:  # noqa: ANN001
    """A bundled model name, a checkpoint folder, or a Hugging Face cache id -> Model on `device`."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    folder, name = resolve(source)
    hf = read_config(folder)
    conv = _converter(hf, folder)
    tokenizer = Tokenizer.from_folder(folder)
    weights = WeightFiles(folder, allow_pickle=allow_pickle)
    try:
        cfg = conv.config(hf, set(weights.shapes))
        with torch.device("meta"):
            net = Transformer(cfg)
    except KeyError as exc:
        raise CheckpointError(f"{folder / 'config.json'} lacks the field {exc} that a {hf['model_type']} config needs") from exc
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise CheckpointError(f"{folder / 'config.json'} has invalid values ({exc}); repair it or re-download it") from exc
    cfg = _special_ids(cfg, tokenizer)
    net.cfg = cfg
    if tokenizer.max_id >= cfg.vocab_size:
        raise TokenizerError(f"the tokenizer in {folder} knows ids up to {tokenizer.max_id} but the model's vocabulary "
                             f"has {cfg.vocab_size} rows; the tokenizer belongs to another model")
    expected = {k: list(v.shape) for k, v in net.state_dict().items()}
    resolved = plan(conv, cfg, expected, weights.shapes)
    state = build_state_dict(resolved, weights.load())
    net.load_state_dict(state, assign=True, strict=True)
    net.init_buffers(torch.device("cpu"))
    net = to_inference_layout(net.to(device=dev, dtype=torch_dtype))
    model = Model(net, tokenizer, name=name, folder=folder)
    model.load_seconds = time.perf_counter() - t0
    log.info("loaded %s (%s, %.1fM parameters) on %s in %.2fs", name, cfg.model_type, model.n_params / 1e6, dev,
             model.load_seconds)
    return model
