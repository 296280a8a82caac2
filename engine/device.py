"""Choosing and checking the torch device and dtype."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .cpu_threads import apply_pending, share_cpu_with_ui, usable_cores
from .errors import DeviceError

log = logging.getLogger(__name__)

__all__ = ["available_devices", "available_memory", "choose_dtype", "is_out_of_memory", "resolve_device", "resolve_dtype",
           "share_cpu_with_ui", "usable_cores"]
apply_pending()  # torch is imported now: the thread count a window asked for before it was

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when present, else CPU. A device that does not exist here is a DeviceError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"{device!r} is not a device name; use one of {', '.join(available_devices())}") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{device!r} was requested but this machine has no CUDA GPU (or torch was built without CUDA); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise DeviceError(f"device {device!r} is not available here; use one of {', '.join(available_devices())}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise DeviceError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


GiB = 1024**3
CPU_HEADROOM = 1.25  # float32 must fit with a quarter to spare (load buffers, KV cache, traces) ...
CPU_RESERVE = 1 * GiB  # ... plus this for the app itself


def available_memory() -> int | None:
    """Bytes of RAM a new allocation can get: Linux MemAvailable, lowered to a cgroup v2 limit's headroom
    (a container's /proc/meminfo shows the host's memory); None when unknown."""
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii"))
            free = min(free, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return free


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def choose_dtype(
    dtype: str | torch.dtype | None,
    device: torch.device,
    checkpoint_dtype: torch.dtype | None,
    n_params: int,
    available: int | None = None,
) -> tuple[torch.dtype, str]:
    """-> (dtype, reason for the status bar). `dtype` given: that one. CUDA: the checkpoint's own dtype.
    CPU (and others): float32 where it fits in RAM with a margin (exact arithmetic, and the fastest layout
    on the CPU), else bfloat16. `available` (bytes) defaults to MemAvailable."""
    if dtype is not None:
        chosen = resolve_dtype(dtype, device)
        return chosen, f"{_name(chosen)}, as asked"
    own = checkpoint_dtype if checkpoint_dtype in DTYPES.values() else None
    if device.type == "cuda":
        if own is None:
            return torch.float32, "float32 on CUDA (the checkpoint names no float16/bfloat16/float32 dtype)"
        return own, f"{_name(own)}, the checkpoint's own dtype, on CUDA"
    need = 4 * n_params
    if available is None:
        available = available_memory()
    if available is None:
        return torch.float32, f"float32 on the {device.type.upper()} (free memory unknown; {_gb(need)} of weights)"
    if need * CPU_HEADROOM + CPU_RESERVE <= available:
        return torch.float32, f"float32 on the {device.type.upper()} ({_gb(need)} of weights, {_gb(available)} free)"
    return torch.bfloat16, (f"bfloat16 on the {device.type.upper()}: float32 would need {_gb(need)} of weights, "
                            f"{_gb(available)} free ({_gb(2 * n_params)} in bfloat16)")
