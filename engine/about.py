"""Versions, for `attention-inspector --version --verbose` and Help → About: the app's own
(attention_inspector.version, which reads it without torch) and the engine's (torch, CUDA, device)."""

from __future__ import annotations

import platform

from attention_inspector.version import app_version

__all__ = ["app_version", "engine_versions", "version_text"]


def engine_versions() -> dict[str, str]:
    """{"python", "torch", "cuda", "device"}: what the engine runs on here; "device" is the one a model opens
    on by default (CUDA when present, else the CPU), with the GPU's name; without torch installed, says so."""
    try:
        import torch
    except ImportError:  # a client-only install: models run on an engine server
        return {"python": platform.python_version(), "torch": "not installed", "cuda": "none",
                "device": "none: torch is not installed (connect to an engine server)"}

    from .device import resolve_device

    device = resolve_device(None)
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)}; {torch.cuda.device_count()} GPU(s))"
    else:
        where = "cpu (no CUDA GPU)" if not torch.cuda.is_available() else "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "device": where}


def version_text() -> str:
    """What `attention-inspector --version --verbose` prints: the version on the first line, then the engine's
    (this imports torch: seconds; plain `--version` is attention_inspector.version's)."""
    v = engine_versions()
    return (f"attention-inspector {app_version()}\n"
            f"torch {v['torch']} (CUDA {v['cuda']}), default device {v['device']}, Python {v['python']}\n")
