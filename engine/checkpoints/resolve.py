"""Where a model lives: a bundled name, a checkpoint folder, or a Hugging Face cache id (offline only)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

RESOURCES = Path(__file__).resolve().parents[2] / "resources" / "models"


def bundled_models() -> list[str]:
    if not RESOURCES.is_dir():
        return []
    return sorted(p.name for p in RESOURCES.iterdir() if (p / "config.json").is_file())


def hf_cache_dirs() -> list[Path]:
    """The folders the Hugging Face hub would cache into, in its own order of precedence."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        dirs.append(Path(os.environ["HUGGINGFACE_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    return dirs


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` (e.g. "gpt2", "google-t5/t5-small") in a local HF cache."""
    folder_name = "models--" + repo_id.replace("/", "--")
    for cache in hf_cache_dirs():
        repo = cache / folder_name
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / "main"
        if ref.is_file():
            candidate = snapshots / ref.read_text().strip()
            if (candidate / "config.json").exists():
                return candidate
        complete = [s for s in snapshots.iterdir() if (s / "config.json").exists()]
        if complete:
            return max(complete, key=lambda s: s.stat().st_mtime)
    return None


def cached_models() -> list[str]:
    """Repo ids of the models in the local HF caches."""
    out = set()
    for cache in hf_cache_dirs():
        if cache.is_dir():
            for repo in cache.glob("models--*"):
                if (repo / "snapshots").is_dir():
                    out.add(repo.name[len("models--"):].replace("--", "/"))
    return sorted(out)


def resolve(source: str | os.PathLike) -> tuple[Path, str]:
    """-> (folder, display name). Bundled names first, then paths, then the HF cache."""
    text = os.fspath(source)
    if not text.strip():
        raise CheckpointError("no model given; name a bundled model, a checkpoint folder or a Hugging Face cache id")
    if text in bundled_models():
        return RESOURCES / text, text
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; choose the checkpoint folder that holds config.json")
        if not any(path.iterdir()):
            raise CheckpointError(f"{path} is empty; a checkpoint folder holds config.json, weights and a tokenizer")
        return path, path.name
    looks_like_path = os.sep in text and not (text.count("/") == 1 and not text.startswith((".", "/", "~")))
    if not looks_like_path:
        snap = hf_cache_snapshot(text)
        if snap is not None:
            return snap, text
    bundled = ", ".join(bundled_models()) or "none installed"
    raise CheckpointError(
        f"no model called {text!r}: it is not a bundled model ({bundled}), not an existing folder, and not in the "
        f"local Hugging Face cache ({', '.join(str(d) for d in hf_cache_dirs())}). Nothing is downloaded; give a folder path"
    )
