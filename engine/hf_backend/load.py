"""Open a checkpoint folder through transformers' Auto classes, with our attention and mask functions registered.

transformers is imported here, only when such a checkpoint is opened (the app's start-up never imports it).
Multimodal checkpoints (gemma3, mistral3, ...) open their whole model but are fed text only.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from pathlib import Path

import torch

from ..config import AttentionSpec, LayerSpec, ModelConfig
from ..device import available_memory, choose_dtype, is_out_of_memory
from ..errors import CheckpointError, DeviceError, EngineError, OutOfMemoryError, UnsupportedArchitectureError
from ..multi_device import free_memory
from ..placement import Placement
from ..tokenizer import Tokenizer
from .attention import NAME, register
from .device_map import describe_map, device_map, placement_for
from .model import HFModel
from .routing import install_router_hooks, layer_of
from .structure import text_model
from .support import refusal

log = logging.getLogger(__name__)

_NOT_ATTENTION = re.compile(r"Linear|Lightning|DeltaNet|Mamba|Conv", re.IGNORECASE)
MASK_TOKENS = ("[MASK]", "<mask>")


def _family(hf: dict) -> str:
    if hf.get("is_encoder_decoder"):
        return "encoder-decoder"
    archs = [str(a) for a in hf.get("architectures") or []]
    if hf.get("model_type") in _ENCODER_TYPES or any(a.endswith("ForMaskedLM") for a in archs):
        return "encoder"
    return "decoder"


_ENCODER_TYPES = {"modernbert", "bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta",
                  "camembert", "albert", "neobert", "eurobert"}


def _auto_model(family: str, folder: Path, **kw):  # noqa: ANN003, ANN202
    import transformers

    if family == "encoder":
        return transformers.AutoModelForMaskedLM.from_pretrained(folder, **kw)
    if family == "encoder-decoder":
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, **kw)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, **kw)
    except ValueError as exc:  # a multimodal type with no causal-LM class: its image-text-to-text class, fed text
        if "Unrecognized configuration class" not in str(exc):
            raise
        return transformers.AutoModelForImageTextToText.from_pretrained(folder, **kw)


def _ids(value: object) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _model_config(hf_model: torch.nn.Module, family: str, tokenizer: Tokenizer) -> ModelConfig:
    top = hf_model.config
    text = top.get_text_config(decoder=True)
    heads = int(text.num_attention_heads)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    n_layers = int(text.num_hidden_layers)
    eos = _ids(getattr(top, "eos_token_id", None)) or _ids(getattr(text, "eos_token_id", None))
    bos = _ids(getattr(top, "bos_token_id", None)) or _ids(getattr(text, "bos_token_id", None))
    pad = _ids(getattr(top, "pad_token_id", None)) or _ids(getattr(text, "pad_token_id", None))
    mask = next((tokenizer.token_to_id(t) for t in MASK_TOKENS if tokenizer.token_to_id(t) is not None), None)
    spec = LayerSpec(AttentionSpec(n_heads=heads, n_kv_heads=kv, head_dim=head_dim, scale=head_dim**-0.5))
    layers = {"n_encoder_layers": n_layers} if family == "encoder" else {"n_decoder_layers": n_layers,
                                                                         "decoder_layers": (spec,) * n_layers}
    start = None
    if family == "encoder-decoder":
        encoder = getattr(top, "encoder", None)
        layers["n_encoder_layers"] = int(getattr(encoder, "num_hidden_layers", None) or getattr(top, "num_layers", n_layers))
        start = getattr(top, "decoder_start_token_id", None)
        start = start if start is not None else (bos[0] if bos else pad[0] if pad else None)
    return ModelConfig(
        family=family, vocab_size=int(text.vocab_size), d_model=int(text.hidden_size), n_heads=heads,
        d_ff=int(getattr(text, "intermediate_size", None) or 4 * text.hidden_size), d_head=head_dim,
        max_positions=int(getattr(text, "max_position_embeddings", None) or 131072),
        bos_token_id=bos[0] if bos else None, eos_token_id=eos[0] if eos else None,
        extra_eos_token_ids=tuple(eos[1:]), pad_token_id=pad[0] if pad else None, mask_token_id=mask,
        final_logit_softcap=getattr(text, "final_logit_softcapping", None), model_type=str(top.model_type),
        position_scheme="rotary", decoder_start_token_id=start,
        mlm_head=family == "encoder",  # encoders open as AutoModelForMaskedLM: the logit lens reads its head
        **layers)


def _attention_names(hf_model: torch.nn.Module, stack: str) -> dict[int, str]:
    """id(attention module) -> capture name, for the modules transformers sends through the attention interface
    (a decoder's cross-attention: decoder.{i}.cross_attn)."""
    names = {}
    for qualname, module in hf_model.named_modules():
        cls = type(module).__name__
        if not cls.endswith("Attention") or _NOT_ATTENTION.search(cls) or "vision" in qualname or "visual" in qualname:
            continue
        layer = layer_of(qualname)
        if layer is not None:
            cross = stack == "decoder" and ("Cross" in cls or qualname.rsplit(".", 1)[-1] in ("cross_attn", "encoder_attn"))
            names[id(module)] = f"{stack}.{layer}.{'cross_attn' if cross else 'attn'}"
    return names


_MIXERS = (("mamba", "Mamba"), ("deltanet", "Gated DeltaNet"), ("shortconv", "short convolution"),
           ("conv", "convolution"), ("linearattention", "linear attention"), ("lightning", "linear attention"))


def _layer_kinds(hf_model: torch.nn.Module, n_layers: int, config_types: tuple) -> tuple[str, ...]:
    """Per layer, what mixes its tokens: "attention", or what a hybrid has instead ("Mamba", "short convolution",
    "Gated DeltaNet"), read from the class names of the layer's parts (configs call all of them linear_attention)."""
    found: dict[int, str] = {}
    for qualname, module in hf_model.named_modules():
        layer = layer_of(qualname)
        if layer is None or "vision" in qualname or layer in found:
            continue
        cls = type(module).__name__.lower()
        for key, label in _MIXERS:
            if key in cls:
                found[layer] = label
                break
    return tuple(found.get(i) or (config_types[i] if i < len(config_types) else "attention") for i in range(n_layers))


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _planned_params(family: str, folder: Path, trust_remote_code: bool) -> int:
    """Parameters the config describes, counted on a model built on the meta device (no memory, no weights)."""
    return sum(p.numel() for p in _meta_model(family, folder, trust_remote_code).parameters())


def _meta_model(family: str, folder: Path, trust_remote_code: bool) -> torch.nn.Module:
    """The model the config describes, built on the meta device (no memory, no weights)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError, TypeError for bad configs
        raise CheckpointError(f"transformers cannot read {folder / 'config.json'}: {type(exc).__name__}: {exc}") from exc
    auto = {"encoder": transformers.AutoModelForMaskedLM, "encoder-decoder": transformers.AutoModelForSeq2SeqLM}.get(
        family, transformers.AutoModelForCausalLM)
    try:
        with torch.device("meta"):
            try:
                meta = auto.from_config(config, trust_remote_code=trust_remote_code)
            except ValueError:
                meta = transformers.AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"transformers cannot build the model {folder / 'config.json'} describes: "
                              f"{type(exc).__name__}: {exc}") from exc
    return meta


def _check_weights_and_memory(name: str, folder: Path, n_params: int, quantised: bool, checkpoint_dtype: torch.dtype | None,
                              torch_dtype: torch.dtype, device: torch.device | None) -> None:
    """Before anything is allocated: refuse weights that cannot hold what the config describes (a missing or
    truncated shard, a config that belongs to another model) and a model that would not fit in free RAM."""
    on_disk = _weights_bytes(folder)
    if not quantised and on_disk:
        expected = n_params * (checkpoint_dtype.itemsize if checkpoint_dtype is not None else 2)
        if on_disk < 0.9 * expected:
            raise CheckpointError(f"{folder} holds {_gb(on_disk)} of safetensors weights but its config.json describes "
                                  f"{n_params / 1e6:.1f}M parameters ({_gb(expected)}): a shard is missing or truncated, "
                                  "or config.json belongs to another model; re-download it")
    if device is None:  # over several devices: the plan was made from their free memory
        return
    need = n_params * torch_dtype.itemsize
    if device.type == "cuda":
        free, where = torch.cuda.mem_get_info(device)[0], f"memory on {device}"
    else:
        free, where = available_memory(), "RAM"
    if free is not None and need > free:
        raise OutOfMemoryError(f"{name} needs {_gb(need)} in {str(torch_dtype).removeprefix('torch.')} but only "
                               f"{_gb(free)} of {where} is free; close other programs or models, or load it in "
                               "bfloat16")


def _has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def _spread(meta: torch.nn.Module, placement: Placement | str | None, device: torch.device, itemsize: int,
            name: str) -> tuple[Placement | None, dict | None]:
    """(placement, accelerate device map) for a model over several devices; (None, None) on one device."""
    if placement == "auto":
        if device.type != "cuda":
            return None, None
        placement = placement_for(meta, itemsize, free_memory())
    if not isinstance(placement, Placement) or len(placement.devices) < 2:
        return None, None
    if not _has_accelerate():
        raise DeviceError(f"{name} would go over {', '.join(placement.devices)} ({placement.describe()}); transformers "
                          "needs accelerate for that: pip install accelerate (or load it on one device)")
    return placement, device_map(meta, placement)


def quantization_note(hf_model: torch.nn.Module, method: str | None) -> str:
    """What became of quantised weights, read off the loaded model: "mxfp4, dequantised to bfloat16" when the
    quantised parameters are floating point now, "mxfp4, kept quantised" when some are still packed integers."""
    packed = [n for n, p in hf_model.named_parameters() if not p.is_floating_point()]
    if packed:
        return f"{method}, kept quantised ({len(packed)} packed tensors)"
    params = dict(hf_model.named_parameters())
    experts = [p for n, p in params.items() if ".experts." in n and n.endswith("proj")] or list(params.values())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in experts})
    return f"{method}, dequantised to {'/'.join(dtypes)}"


def load_transformers_model(folder: Path, name: str, hf: dict, device: torch.device, dtype: str | torch.dtype | None,
                            trust_remote_code: bool = False, checkpoint_dtype: torch.dtype | None = None,
                            placement: Placement | str | None = None) -> HFModel:
    """config.json `hf` of `folder` -> HFModel on `device`, or over several devices: `placement` "auto" (the GPUs
    in order, then the CPU, by free memory; needs CUDA) or an engine.placement.Placement naming each layer's device
    (the model's blocks in order), given to transformers as accelerate's device map. Refusals raise
    UnsupportedArchitectureError."""
    t0 = time.perf_counter()
    why = refusal(hf, folder, trust_remote_code, device.type)
    if why:
        raise UnsupportedArchitectureError(f"{folder / 'config.json'} has {why}")
    family = _family(hf)
    tokenizer = Tokenizer.from_folder(folder)
    quantised = hf.get("quantization_config")
    meta = _meta_model(family, folder, trust_remote_code)
    n_params = sum(p.numel() for p in meta.parameters())
    torch_dtype, reason = choose_dtype(dtype, device, checkpoint_dtype, n_params)
    method = str(quantised.get("quant_method")) if isinstance(quantised, dict) else None
    extra = {}
    if method == "mxfp4":
        # always dequantised (transformers' own choice on a CPU, or a GPU without triton and the `kernels` hub
        # download): its triton path swaps the experts for kernels this backend's router hooks and expert gates are
        # not checked against, and fetches them from the Hub, which an offline machine cannot
        from transformers import Mxfp4Config

        extra["quantization_config"] = Mxfp4Config(dequantize=True)
        if dtype is None:
            torch_dtype = torch.bfloat16  # the checkpoint's other weights are bfloat16; FP4 × 2^e is exact in it
            reason = "mxfp4 weights dequantised to bfloat16 by transformers"
    spread, mapping = _spread(meta, placement, device, torch_dtype.itemsize, name)
    if spread is not None:
        _check_weights_and_memory(name, folder, n_params, bool(quantised), checkpoint_dtype, torch_dtype, None)
        spread = describe_map(meta, mapping, spread)
        log.info("%s over %s (device map of %d entries)", name, spread.describe(), len(mapping))
    else:
        _check_weights_and_memory(name, folder, n_params, bool(quantised), checkpoint_dtype, torch_dtype, device)
    del meta
    if mapping is None and device.type != "cpu":
        # straight onto the device (a GPU load never holds the whole model in RAM first); transformers needs
        # accelerate for a device map, without it the model is read into RAM and moved
        mapping = {"": str(device)} if _has_accelerate() else None
    register()
    try:
        hf_model = _auto_model(family, folder, dtype=torch_dtype, attn_implementation=NAME,
                               trust_remote_code=trust_remote_code, local_files_only=True, device_map=mapping, **extra)
    except EngineError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise OutOfMemoryError(f"{device} ran out of memory loading {name}; close other programs or models, or "
                                   "load it in bfloat16") from None
        raise CheckpointError(f"transformers could not open {folder}: {type(exc).__name__}: {exc}") from exc
    hf_model = (hf_model if spread is not None else hf_model.to(device)).eval()  # accelerate's hooks forbid .to()
    try:  # every sub-model (a multimodal model's text model too) through our attention and mask functions
        hf_model.set_attn_implementation(NAME)
    except (ValueError, AttributeError) as exc:
        log.debug("set_attn_implementation(%s): %s", NAME, exc)
    config = _model_config(hf_model, family, tokenizer)
    if tokenizer.max_id >= config.vocab_size:
        raise CheckpointError(f"the tokenizer in {folder} knows ids up to {tokenizer.max_id} but the model's vocabulary "
                              f"has {config.vocab_size} rows; the tokenizer belongs to another model")
    text = hf_model.config.get_text_config()
    n_experts = next((int(getattr(text, f)) for f in ("num_local_experts", "num_experts", "n_routed_experts")
                      if isinstance(getattr(text, f, None), int)), None)
    stack = "encoder" if family == "encoder" else "decoder"
    text_stack = text_model(hf_model)  # the text stack only: a vision or audio tower's layers are not the text's
    moe = install_router_hooks(text_stack, n_experts)
    names = _attention_names(text_stack, stack)
    if family == "encoder-decoder":
        names.update(_attention_names(hf_model.get_encoder(), "encoder"))
    if not names:
        raise UnsupportedArchitectureError(f"{name}: found no attention modules in its {type(hf_model).__name__}")
    model = HFModel(hf_model, config, tokenizer, name, folder, names, moe, n_experts,
                    _layer_kinds(text_stack, config.n_layers, tuple(getattr(text, "layer_types", None) or ())))
    model.spread = spread
    model.dtype_reason = reason
    model.quantization = quantization_note(hf_model, method) if quantised else ""
    model.load_seconds = time.perf_counter() - t0
    log.info("loaded %s (%s) through transformers on %s as %s in %.2fs", name, hf.get("model_type"), model.placement,
             reason, model.load_seconds)
    return model
