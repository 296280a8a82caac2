"""Writing a Trace to disk: NPZ with every pattern under its capture name, tokens and logits."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import CaptureError
from .trace import Trace, parse_capture_name


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


def pattern_names(trace: Trace, layers: Iterable[str] | None = None) -> list[str]:
    """The capture names an export writes: `layers` (capture names, e.g. "decoder.3.attn") in the trace's
    order, or every recorded one. A name the trace does not have is refused by name."""
    recorded = [n for n in trace.capture_names if n in trace.blocks]
    if layers is None:
        return recorded
    chosen = set(layers)
    unknown = sorted(chosen - set(recorded))
    if unknown:
        raise CaptureError(f"{', '.join(unknown)} not recorded in this trace; it has {', '.join(recorded) or 'no patterns'}")
    return [n for n in recorded if n in chosen]


def pattern_bytes(trace: Trace, name: str) -> int:
    """float32 bytes of one capture point's whole pattern (what an export writes before compression)."""
    heads, n_q, n_k = trace.attention_shape(*parse_capture_name(name))
    return 4 * heads * n_q * n_k


def trace_arrays(trace: Trace, layers: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Tokens, logits, a JSON summary and the patterns of `layers` (capture names; default every recorded one)."""
    names = pattern_names(trace, layers)
    arrays: dict[str, np.ndarray] = {n: trace.attention(*parse_capture_name(n)) for n in names}
    arrays["tokens"] = np.array(trace.tokens, dtype=str)
    arrays["token_ids"] = np.array(trace.token_ids, dtype=np.int64)
    if trace.source_ids is not None:
        arrays["source_tokens"] = np.array(trace.source_tokens, dtype=str)
        arrays["source_ids"] = np.array(trace.source_ids, dtype=np.int64)
    if trace.logits is not None:
        arrays["logits"] = np.asarray(trace.logits)
    summary = {"family": trace.family, "model": trace.model_name, "n_prompt": trace.n_prompt, "n_heads": trace.n_heads,
               "layers": trace.n_layers, "patterns": names,
               "steps": [s.__dict__ for s in trace.steps], "gates": trace.gates,
               "neuron_gates": {name: {str(j): v for j, v in g.items()} for name, g in trace.neuron_gates.items()}}
    arrays["summary_json"] = np.array(json.dumps(summary))
    return arrays


def save_npz(trace: Trace, path: str | os.PathLike, layers: Iterable[str] | None = None) -> Path:
    """Write trace_arrays(trace, layers) compressed; `layers` (capture names) limits the patterns written."""
    arrays = trace_arrays(trace, layers)
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
