"""The app's version for `attention-inspector --version`, read without importing torch (importing it takes
seconds): one source of truth, the `version` in pyproject.toml, read back from the installed metadata."""

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


def installed_version(distribution: str) -> str:
    """A dependency's version from its metadata (not by importing it), or "not installed"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """What `--version` prints: the app's version on the first line, then torch's (from its metadata) and
    Python's. The default device needs torch itself: `--version --verbose` adds it (engine.about)."""
    return (f"attention-inspector {app_version()}\n"
            f"torch {installed_version('torch')}, Python {platform.python_version()}\n")
