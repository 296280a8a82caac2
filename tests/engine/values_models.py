"""For the value tests (tests/*/test_values_*.py): a tiny random GPT-2 whose heads differ from each other, and
reference answers written with plain loops.

factories.gpt2 leaves its layer norms (ln_1, ln_2, ln_f) scaled near 0, so its patterns are close to uniform
and every head looks alike: a statistic moved to another head, or a value lost at a chunk edge, changes
little. Here the norms scale by about 1 and the query/key weights are larger, so the patterns are peaked and
each head has its own; the context is long enough for prompts of several storage chunks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tests import factories

N_POSITIONS = 192
CACHE_ENV = "VALUE_TESTS_CHECKPOINTS"  # a folder to keep built checkpoints in between runs (mutation testing)


def checkpoint_root(tmp_path_factory, name: str) -> Path:
    """A module's checkpoint folder: fresh and temporary, or, when $VALUE_TESTS_CHECKPOINTS names a folder,
    a subfolder of it that later runs reuse (a mutation run starts the tests once per mutant)."""
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        return tmp_path_factory.mktemp(name)
    root = Path(cache) / name
    root.mkdir(parents=True, exist_ok=True)
    return root


def _built(folder: Path, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` unless a complete checkpoint is already there; built beside it and renamed into
    place, so runs side by side never see half a folder."""
    if (folder / "tokenizer.json").exists():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=folder.name, dir=folder.parent))
    build(tmp / "ckpt")
    try:
        os.rename(tmp / "ckpt", folder)
    except OSError:  # another run got there first
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


class LazyCheckpoints:
    """factories.ARCHITECTURES built on first use only (the shared `folders` fixture builds all ten, which
    is most of the time a mutation-testing run spends per mutant)."""

    def __init__(self, root: Path) -> None:
        self.root, self._built = root, {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._built:
            self._built[name] = _built(self.root / name, factories.ARCHITECTURES[name])
        return self._built[name]


def sharp_gpt2(folder: Path, n_layer: int = 3, n_head: int = 4, n_positions: int = N_POSITIONS, seed: int = 11) -> Path:
    return _built(folder, lambda f: _sharp_gpt2(f, n_layer, n_head, n_positions, seed))


def _sharp_gpt2(folder: Path, n_layer: int, n_head: int, n_positions: int, seed: int) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = factories.byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                     bos_token_id=eos, eos_token_id=eos, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                std = 0.5 if "c_attn" in name else 0.3
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_((1 + torch.randn(p.shape, generator=g) * 0.1) if name.endswith("weight") else p * 0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return factories._save(model.eval(), tok, folder)


def rollout_by_loops(layers: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema with explicit sums: r_l[i, j] = sum_k Ã_l[i, k] r_{l-1}[k, j], Ã = rows of (mean + I)/2
    renormalised. `layers`: patterns [heads, n, n] from layer 0 up."""
    n = layers[0].shape[-1]
    r = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for pattern in layers:
        mean = np.asarray(pattern, dtype=np.float64).mean(0)
        a = [[0.5 * mean[i, j] + (0.5 if i == j else 0.0) for j in range(n)] for i in range(n)]
        a = [[v / sum(row) for v in row] for row in a]
        r = [[sum(a[i][k] * r[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    return np.array(r)
