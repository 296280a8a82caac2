"""Versions, for `attention-inspector --version` and Help → About: the app's own (one source of truth: the
`version` in pyproject.toml, read back from the installed metadata) and the engine's (torch, CUDA, device)."""

from __future__ import annotations

import importlib.metadata
import platform
import re
from pathlib import Path

DISTRIBUTION = "attention-inspector"


def app_version() -> str:
    """The installed version; in a checkout that was never pip-installed, pyproject.toml's, marked so."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        found = None
    return f"{found.group(1)} (not installed)" if found else "unknown"


def engine_versions() -> dict[str, str]:
    """{"python", "torch", "cuda", "device"}: what the engine runs on here; "device" is the one a model opens
    on by default (CUDA when present, else the CPU), with the GPU's name."""
    import torch

    from .device import resolve_device

    device = resolve_device(None)
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)}; {torch.cuda.device_count()} GPU(s))"
    else:
        where = "cpu (no CUDA GPU)" if not torch.cuda.is_available() else "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "device": where}


def version_text() -> str:
    """What `attention-inspector --version` prints: the version on the first line, then the engine's."""
    v = engine_versions()
    return (f"attention-inspector {app_version()}\n"
            f"torch {v['torch']} (CUDA {v['cuda']}), default device {v['device']}, Python {v['python']}\n")
