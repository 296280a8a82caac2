"""Writing a Trace to disk: NPZ with every pattern under its capture name, tokens and logits."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .trace import Trace


def atomic_write(path: str | os.PathLike, write) -> Path:  # noqa: ANN001 - write(file object)
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a saved file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def trace_arrays(trace: Trace) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = dict(trace.patterns())
    arrays["tokens"] = np.array(trace.tokens, dtype=str)
    arrays["token_ids"] = np.array(trace.token_ids, dtype=np.int64)
    if trace.source_ids is not None:
        arrays["source_tokens"] = np.array(trace.source_tokens, dtype=str)
        arrays["source_ids"] = np.array(trace.source_ids, dtype=np.int64)
    if trace.logits is not None:
        arrays["logits"] = np.asarray(trace.logits)
    summary = {"family": trace.family, "model": trace.model_name, "n_prompt": trace.n_prompt, "n_heads": trace.n_heads,
               "layers": trace.n_layers, "patterns": trace.capture_names,
               "steps": [s.__dict__ for s in trace.steps], "gates": trace.gates}
    arrays["summary_json"] = np.array(json.dumps(summary))
    return arrays


def save_npz(trace: Trace, path: str | os.PathLike) -> Path:
    arrays = trace_arrays(trace)
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
