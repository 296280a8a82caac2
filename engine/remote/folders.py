"""What the server lists for *Open model folder*: its --models-dir folders, and the sub-folders under one of them
(each marked when it is a checkpoint: it holds config.json). Nothing outside those folders is listed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import CheckpointError

MAX_ENTRIES = 2000  # a folder with more sub-folders than this is cut (a models folder, not a home directory)


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def list_folders(roots: Sequence[Path], path: str | None = None) -> list[dict]:
    """[{"path", "name", "checkpoint"}]: the roots themselves (path None), or the visible sub-folders of `path`,
    which must lie under a root (after resolving links); CheckpointError otherwise."""
    if path is None:
        return [{"path": str(r), "name": str(r), "checkpoint": (r / "config.json").is_file()} for r in roots if r.is_dir()]
    real = Path(path).expanduser().resolve()
    if not is_under(real, roots):
        where = ", ".join(str(r) for r in roots) or "none: start the server with --models-dir FOLDER"
        raise CheckpointError(f"the server lists folders only under its --models-dir folders ({where}); {path} is not under one")
    if not real.is_dir():
        raise CheckpointError(f"{path} is not a folder on the server (removed since it was listed?)")
    out = []
    for p in sorted(real.iterdir(), key=lambda p: p.name.lower()):
        if p.name.startswith(".") or not p.is_dir() or not is_under(p.resolve(), roots):
            continue  # hidden folders, files, and links that lead outside the allowed folders
        out.append({"path": str(p), "name": p.name, "checkpoint": (p / "config.json").is_file()})
        if len(out) >= MAX_ENTRIES:
            break
    return out
