"""Where a model lives: a bundled name, a checkpoint folder, or a Hugging Face cache id (offline only).

The cache's layout (models--org--name, refs, snapshots, blobs) is huggingface_hub's business: we ask it
(`snapshot_download(local_files_only=True)`, `scan_cache_dir`) and never download anything.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

log = logging.getLogger(__name__)

RESOURCE_PACKAGE = "attention_inspector_resources"  # the repo's resources/ folder, installed as package data
CHECKOUT_RESOURCES = Path(__file__).resolve().parents[2] / "resources"  # the same folder in a source checkout


def resources_dir() -> Path:
    """The bundled resources (models/, icons/, the desktop entry): the package `attention_inspector_resources`
    found with importlib.resources, which pyproject maps onto the repo's top-level resources/ folder (a wheel
    carries it; an editable install points at the checkout), else resources/ beside engine/ in a checkout
    that was never pip-installed (or whose editable install predates the mapping)."""
    try:
        root = importlib.resources.files(RESOURCE_PACKAGE)
    except ModuleNotFoundError:
        root = None
    if isinstance(root, Path) and root.is_dir():
        return root
    if root is not None:  # a zip import or an odd loader: its files are not a folder the engine can open
        log.warning("the %s package is not a folder on disk (%r); using %s", RESOURCE_PACKAGE, root, CHECKOUT_RESOURCES)
    return CHECKOUT_RESOURCES


RESOURCES = resources_dir() / "models"


def bundled_models() -> list[str]:
    if not RESOURCES.is_dir():
        return []
    return sorted(p.name for p in RESOURCES.iterdir() if (p / "config.json").is_file())


def hf_cache_dirs() -> list[Path]:
    """The hub cache folders to search, the one huggingface_hub uses first. Read from the environment at
    each call: huggingface_hub reads it once, at import, and the app (or a test) may set HF_HOME later."""
    from huggingface_hub import constants

    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        dirs.append(Path(os.environ["HUGGINGFACE_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    dirs.append(Path(constants.HF_HUB_CACHE))
    return list(dict.fromkeys(d.expanduser() for d in dirs))


def _scan(cache: Path):  # noqa: ANN202 - huggingface_hub.HFCacheInfo | None
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    if not cache.is_dir():
        return None
    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, CorruptedCacheException, OSError) as exc:
        log.warning("cannot scan the Hugging Face cache %s: %s", cache, exc)
        return None
    for warning in info.warnings:
        log.debug("hub cache %s: %s", cache, warning)
    return info


def _newest_revision(repo):  # noqa: ANN001, ANN202 - CachedRepoInfo -> CachedRevisionInfo | None
    """The revision `main` points at when it has a config.json, else the newest one that has."""
    complete = [r for r in repo.revisions if (Path(r.snapshot_path) / "config.json").exists()]
    main = [r for r in complete if "main" in r.refs]
    if main:
        return main[0]
    return max(complete, key=lambda r: r.last_modified) if complete else None


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of `repo_id` (e.g. "gpt2", "google-t5/t5-small") in a local HF cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    for cache in hf_cache_dirs():
        if not cache.is_dir():
            continue
        try:
            snap = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
            if (snap / "config.json").exists():
                return snap
        except HFValidationError:
            return None  # not a repo id at all
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
        # no refs/main (fetched at a pinned revision, or copied by hand), or main is incomplete
        info = _scan(cache)
        repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None) if info else None
        revision = _newest_revision(repo) if repo else None
        if revision is not None:
            return Path(revision.snapshot_path)
    return None


def cached_models() -> list[str]:
    """Repo ids of the models in the local HF caches."""
    out = set()
    for cache in hf_cache_dirs():
        info = _scan(cache)
        if info is not None:
            out.update(r.repo_id for r in info.repos if r.repo_type == "model")
    return sorted(out)


@dataclass(frozen=True)
class CachedModel:
    """One model in the local Hugging Face cache, for File → Open from cache."""

    repo_id: str  # what load_model takes
    path: Path | None  # its snapshot folder (None: no complete snapshot)
    size_bytes: int  # on disk, that snapshot
    model_type: str | None
    supported: bool  # load_model can open it
    reason: str  # why not ("" when supported)


def _weights_problem(files: set[str]) -> str | None:
    if "model.safetensors" in files or "model.safetensors.index.json" in files:
        return None
    if any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files):
        return "only pickle weights (pytorch_model.bin); convert them to safetensors, or load with allow_pickle=True"
    return "no model.safetensors in the snapshot (weights not downloaded?)"


def _describe(repo) -> CachedModel:  # noqa: ANN001 - huggingface_hub.CachedRepoInfo
    from .support import refusal

    revision = _newest_revision(repo)
    if revision is None:
        return CachedModel(repo.repo_id, None, repo.size_on_disk, None, False, "no config.json in any snapshot")
    path = Path(revision.snapshot_path)
    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not isinstance(hf, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return CachedModel(repo.repo_id, path, revision.size_on_disk, None, False, f"config.json is unreadable ({exc})")
    model_type = hf.get("model_type") if isinstance(hf.get("model_type"), str) else None
    files = {Path(f.file_path).relative_to(path).as_posix() for f in revision.files}
    why = refusal(hf, path)
    why = f"it has {why}" if why else _weights_problem(files)
    return CachedModel(repo.repo_id, path, revision.size_on_disk, model_type, why is None, why or "")


def cached_model_infos() -> list[CachedModel]:
    """Every model in the local HF caches with its size and whether load_model can open it (sorted by id;
    the first cache folder wins when two hold the same id). Scans the cache: call it off the GUI thread."""
    seen: dict[str, CachedModel] = {}
    for cache in hf_cache_dirs():
        info = _scan(cache)
        for repo in info.repos if info is not None else ():
            if repo.repo_type == "model" and repo.repo_id not in seen:
                seen[repo.repo_id] = _describe(repo)
    return sorted(seen.values(), key=lambda m: m.repo_id.lower())


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
