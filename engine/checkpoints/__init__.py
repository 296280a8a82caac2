"""load_model: folder (or bundled name, or HF cache id) -> Model, through one converter per architecture.

Loading streams: the network is built on the meta device in its inference layout, every parameter gets
uninitialised storage of the final dtype on the final device, and checkpoint tensors are read a few MB
of rows at a time straight into it (converting dtype and layout on the way). Peak memory is the model
plus one small buffer, and progress and cancellation are checked between chunks.

What needs torch (the converters, the network, the weight readers) is imported inside load_model, so importing
this package (for engine.checkpoints.resolve: bundled models, the cache listing) does not import torch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..errors import (
    CheckpointError,
    LoadCancelled,
    OutOfMemoryError,
    TokenizerError,
    UnsupportedArchitectureError,
)
from ..lazy_torch import torch
from ..placement import Placement
from .resolve import CachedModel, bundled_models, cached_model_infos, cached_models, resolve

if TYPE_CHECKING:
    from ..model import Model
    from ..tokenizer import Tokenizer
    from .registry import SUPPORTED
    from .weights import WeightFiles

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED", "CachedModel", "Progress", "bundled_models", "cached_model_infos", "cached_models",
           "load_model", "read_config", "resolve"]



def __getattr__(name: str) -> Any:
    if name == "SUPPORTED":  # the converters' model_types: importing them imports torch
        from .registry import SUPPORTED

        return SUPPORTED
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MASK_TOKENS = ("[MASK]", "<mask>")
Progress = Callable[[float, str], None]  # (fraction done 0..1, short message)
Cancel = threading.Event | Callable[[], bool] | None


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


def _converter(hf: dict, folder: Path):  # noqa: ANN202 - a mapping.Converter
    from .registry import CONVERTERS
    from .support import unsupported_model_type, unsupported_quantization

    why = unsupported_model_type(hf) or unsupported_quantization(hf)
    if why:
        raise UnsupportedArchitectureError(f"{folder / 'config.json'} has {why}")
    return CONVERTERS[hf["model_type"]]


def _transformers_may_open(hf: dict) -> bool:
    """Whether a config the native engine refuses goes to the transformers backend (which gives its own refusal:
    remote code, unknown model_type, quantisation it cannot run). Only a config with no model_type at all
    keeps the native refusal."""
    return bool(hf.get("model_type")) or bool(hf.get("auto_map"))


def _special_ids(cfg: ModelConfig, tok: Tokenizer) -> ModelConfig:
    if cfg.mask_token_id is None:
        for t in MASK_TOKENS:
            if tok.token_to_id(t) is not None:
                return cfg.with_(mask_token_id=tok.token_to_id(t))
    return cfg


def _config_dtype(hf: dict) -> torch.dtype | None:
    """config.json's `dtype` (transformers 5) or `torch_dtype` (4.x), when it names a float dtype."""
    name = hf.get("dtype") or hf.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _cancel_check(cancel: Cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    return is_set if callable(is_set) else cancel


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n < 1e10 else f"{n / 1e9:.1f} GB"


class _Meter:
    """Bytes done -> progress callback (at most every 0.5%) and the cancel check (every chunk)."""

    def __init__(self, total: int, progress: Progress | None, cancelled: Callable[[], bool], name: str) -> None:
        self.total, self.done, self.last = max(1, total), 0, -1.0
        self.progress, self.cancelled, self.name = progress, cancelled, name

    def check(self) -> None:
        if self.cancelled():
            raise LoadCancelled(f"loading {self.name} was cancelled")

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, max(0.0, fraction)), message)
            self.last = fraction

    def __call__(self, nbytes: int, file: str) -> None:
        self.done += nbytes
        fraction = self.done / self.total
        if fraction - self.last >= 0.005 or self.done >= self.total:
            self.report(fraction, f"{file}: {_gb(self.done)} of {_gb(self.total)}")
        self.check()


def _dest(net: torch.nn.Module, name: str) -> torch.Tensor:
    """The tensor that receives our parameter `name` (plain-layout name), in the plain [out, in] orientation:
    a TransposedLinear's weight is the transposed view of its weight_t."""
    module_name, _, attr = name.rpartition(".")
    module = net.get_submodule(module_name) if module_name else net
    return getattr(module, attr)


def _fill(net: torch.nn.Module, resolved: dict, weights: WeightFiles, meter: _Meter) -> None:
    from .weights import fill_piece, fill_whole, pieces

    plans = []
    for ours, (source, keys) in resolved.items():
        dest = _dest(net, ours)
        ps = pieces(source, keys, dest)
        size = (sum((p.stop - p.start) * weights.row_bytes(p.key) for p in ps) if ps is not None
                else sum(weights.nbytes(k) for k in keys))
        plans.append((ours, source, keys, dest, ps, size))
    meter.total = max(1, sum(p[-1] for p in plans))
    # file order, then offset order: each shard is read front to back, once
    order = {f.name: i for i, f in enumerate(weights.files)}

    def where(p: tuple) -> tuple:
        key = p[2][0]
        e = weights.entries.get(key)
        return (order.get(e.path.name, 0), e.start) if e is not None else (0, 0)

    with torch.no_grad():
        for _ours, source, keys, dest, ps, _size in sorted(plans, key=where):
            if ps is None:
                fill_whole(weights, source, keys, dest, meter)
            else:
                for piece in ps:
                    fill_piece(weights, piece, meter)


def load_model(
    source: str | Path,
    device: str | torch.device | Placement | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    cancel: Cancel = None,
    backend: str = "auto",
    trust_remote_code: bool = False,
) -> Model:
    """A bundled model name, a checkpoint folder, or a Hugging Face cache id -> Model on `device`.

    backend "auto": the native engine for the model_types it converts (unquantised), transformers' own model
    classes (engine.hf_backend) for every other type transformers knows; "native" / "transformers" force one.
    trust_remote_code: allow a checkpoint's own code (auto_map), which is refused otherwise.

    device: a device name ("cpu", "cuda:1"; None: CUDA when present); "auto": over this machine's GPUs in order,
    then the CPU, by their free memory (engine.multi_device; one device when it fits there); or an
    engine.placement.Placement naming the device of each layer (encoder layers, then decoder layers).

    dtype None: the checkpoint's own dtype on CUDA; on the CPU float32 where it fits in RAM, else bfloat16
    (`model.dtype_reason` says which and why). `progress(fraction, message)` is called as bytes are read;
    `cancel` (a threading.Event, or a callable returning True) stops the load with LoadCancelled, having
    freed what it allocated."""
    from .. import multi_device
    from ..device import choose_dtype, is_out_of_memory, resolve_device
    from ..inference_layout import materialize, prefers_transposed, release, to_inference_layout
    from ..model import Model
    from ..network import Transformer
    from ..tokenizer import Tokenizer
    from .mapping import plan
    from .support import native_refusal
    from .weights import WeightFiles

    t0 = time.perf_counter()
    cancelled = _cancel_check(cancel)
    spread = device if isinstance(device, Placement) else None  # a model over several devices, as planned
    auto = isinstance(device, str) and device == "auto"  # plan over the GPUs (then the CPU) by their free memory
    dev = resolve_device(spread.embed if spread is not None else device)
    folder, name = resolve(source)
    meter = _Meter(1, progress, cancelled, name)
    meter.report(0.0, f"opening {name}")
    meter.check()
    hf = read_config(folder)
    if backend not in ("auto", "native", "transformers"):
        raise ValueError(f"backend must be 'auto', 'native' or 'transformers', not {backend!r}")
    if backend == "transformers" or (backend == "auto" and native_refusal(hf) is not None and _transformers_may_open(hf)):
        from ..hf_backend import load_transformers_model

        meter.report(0.0, f"opening {name} through transformers")
        model = load_transformers_model(folder, name, hf, dev, dtype, trust_remote_code, _config_dtype(hf),
                                        placement=spread if spread is not None else "auto" if auto else None)
        model.load_seconds = time.perf_counter() - t0
        meter.report(1.0, f"{name} ready")
        return model
    conv = _converter(hf, folder)
    tokenizer = Tokenizer.from_folder(folder)
    with WeightFiles(folder, allow_pickle=allow_pickle) as weights:
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
        state = net.state_dict()
        expected = {k: list(v.shape) for k, v in state.items()}
        resolved = plan(conv, cfg, expected, weights.shapes)
        used = {k for _, keys in resolved.values() for k in keys}
        weights.check_floats(used)
        n_params = sum(v.numel() for v in state.values() if v.is_floating_point())
        del state
        torch_dtype, reason = choose_dtype(dtype, dev, _config_dtype(hf) or weights.dominant_float_dtype(used), n_params)
        meter.check()
        weight_bytes, dtype_name = n_params * torch_dtype.itemsize, str(torch_dtype).removeprefix("torch.")
        if auto and dev.type == "cuda":
            spread = multi_device.auto_placement(net, torch_dtype)
        if spread is not None:
            spread = multi_device.check(net, spread)
            if len(spread.devices) == 1:  # it all fits on one device: the plain single-device model
                dev, spread = torch.device(spread.devices[0]), None
        if spread is None:
            _check_fits(name, weight_bytes, dev, dtype_name)
            transposed = prefers_transposed(dev, torch_dtype)
        else:
            _check_fits(name, multi_device.bytes_on(net, spread, torch_dtype.itemsize, "cpu"), torch.device("cpu"), dtype_name)
            transposed = all(prefers_transposed(torch.device(d), torch_dtype) for d in spread.devices)
            log.info("%s over %s", name, spread.describe())
        net = to_inference_layout(net, transposed=transposed)  # meta: structure only
        where = multi_device.device_for(multi_device.module_devices(net, spread)) if spread is not None else None
        try:
            materialize(net, where or dev, torch_dtype)
            meter.report(0.0, f"reading {name} ({_gb(sum(weights.nbytes(k) for k in used))}) as {dtype_name}")
            _fill(net, resolved, weights, meter)
            if where is None:
                net.init_buffers(dev)
            else:
                for module_name, module in net.named_modules():
                    if module is not net and hasattr(module, "init_buffers"):
                        module.init_buffers(where(module_name))
                multi_device.route(net, spread)
            _cast_buffers(net, torch_dtype)
        except BaseException as exc:
            release(net)  # the traceback keeps this frame (and `net`) alive: leave it nothing to pin
            traceback.clear_frames(exc.__traceback__)
            if isinstance(exc, Exception) and is_out_of_memory(exc):
                raise OutOfMemoryError(f"{dev} ran out of memory loading {name} in {dtype_name} ({_gb(weight_bytes)}); "
                                       "close other programs or models, or load it in bfloat16") from None
            raise
    model = Model(net, tokenizer, name=name, folder=folder)
    model.dtype_reason = reason
    model.load_seconds = time.perf_counter() - t0
    meter.report(1.0, f"{name} ready")
    log.info("loaded %s (%s, %.1fM parameters) on %s as %s in %.2fs", name, cfg.model_type, model.n_params / 1e6,
             model.placement, reason, model.load_seconds)
    return model


def _check_fits(name: str, nbytes: int, dev: torch.device, dtype: str) -> None:
    """Refuse a CPU load whose weights alone exceed the free RAM (Linux would overcommit the allocation,
    then kill the app part-way through the fill)."""
    from ..device import available_memory

    if dev.type != "cpu":
        return  # CUDA refuses an allocation that does not fit by itself
    free = available_memory()
    if free is not None and nbytes > free:
        hint = "" if dtype in ("bfloat16", "float16") else " or load it with dtype='bfloat16' (half the bytes)"
        raise OutOfMemoryError(f"{name} needs {_gb(nbytes)} in {dtype} but only {_gb(free)} of RAM is free; "
                               f"close other programs or models{hint}")


def _cast_buffers(net: torch.nn.Module, dtype: torch.dtype) -> None:
    """Float buffers built by init_buffers (float32) take the model's dtype, as Module.to(dtype) would do."""
    for module in net.modules():
        for name, b in list(module._buffers.items()):
            if b is None:
                continue
            if b.is_meta:
                raise RuntimeError(f"buffer {name} of {type(module).__name__} was not initialised by init_buffers")
            if b.is_floating_point() and b.dtype != dtype:
                module._buffers[name] = b.to(dtype)
