"""Mapping checkpoint tensors onto our parameters, checking every name and shape."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import CheckpointError


@dataclass(frozen=True)
class Source:
    """Where one of our parameters comes from: one or several checkpoint keys and how to combine them.
    Each op has its inverse (`from_ours`), so saving a checkpoint is the same table read backwards.

    `alternatives` are tried in order (tied weights are often saved under only one name).
    op: "copy"; "T" (GPT-2's Conv1D stores weights transposed); "cat" (separate q, k, v -> fused, `sizes`
    the rows each key gives, equal parts when empty); "rows" (rows `sizes` = (start, stop, total) of one
    fused checkpoint tensor, e.g. Phi-3's gate_up_proj -> our gate and up).
    """

    alternatives: tuple[tuple[str, ...], ...]
    op: str = "copy"
    sizes: tuple[int, ...] = ()

    def _cat_sizes(self, rows: int) -> list[int]:
        n = len(self.alternatives[0])
        return list(self.sizes) if self.sizes else [rows // n] * n

    def hf_shapes(self, ours: list[int]) -> list[list[int]]:
        if self.op == "T":
            return [list(reversed(ours))]
        if self.op == "cat":
            return [[s, *ours[1:]] for s in self._cat_sizes(ours[0])]
        if self.op == "rows":
            return [[self.sizes[2], *ours[1:]]]
        return [list(ours)]

    def to_ours(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Checkpoint tensors (in `alternatives` order) -> our parameter."""
        if self.op == "T":
            return parts[0].t().contiguous()
        if self.op == "cat":
            return torch.cat(parts, dim=0)
        if self.op == "rows":
            return parts[0][self.sizes[0] : self.sizes[1]].clone()  # a copy: the fused tensor can be freed
        return parts[0]

    def from_ours(self, t: torch.Tensor) -> list[tuple[str, int, torch.Tensor]]:
        """Our parameter -> (checkpoint name, first row, tensor) pieces under the first alternative's names;
        pieces of one name ("rows") are stacked by their first row."""
        names = self.alternatives[0]
        if self.op == "T":
            return [(names[0], 0, t.t().contiguous())]
        if self.op == "cat":
            return [(n, 0, part.contiguous()) for n, part in zip(names, t.split(self._cat_sizes(t.shape[0]), dim=0))]
        if self.op == "rows":
            return [(names[0], self.sizes[0], t.contiguous())]
        return [(names[0], 0, t.contiguous())]


def src(*names: str | tuple[str, ...], op: str = "copy") -> Source:
    return Source(tuple((n,) if isinstance(n, str) else tuple(n) for n in names), op)


def cat(*names: str, sizes: tuple[int, ...] = ()) -> Source:
    return Source((tuple(names),), "cat", tuple(sizes))


def rows(name: str, start: int, stop: int, total: int) -> Source:
    return Source(((name,),), "rows", (start, stop, total))


@dataclass(frozen=True)
class Converter:
    """One architecture: its HF config -> ModelConfig, and our parameter names -> checkpoint keys."""

    model_types: tuple[str, ...]
    config: Callable[[dict, set[str]], ModelConfig]
    keys: Callable[[ModelConfig], dict[str, Source]]
    ignore: tuple[str, ...] = ()  # regexes of keys a checkpoint may hold that we do not need
    prefixes: tuple[str, ...] = ()  # base-model prefixes that headless checkpoints leave out

    def ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignore)


def _lookup(name: str, available: dict[str, list[int]], prefixes: tuple[str, ...]) -> str | None:
    if name in available:
        return name
    for p in prefixes:
        if name.startswith(p) and name[len(p):] in available:
            return name[len(p):]
    return None


def plan(conv: Converter, cfg: ModelConfig, expected: dict[str, list[int]], available: dict[str, list[int]]
         ) -> dict[str, tuple[Source, tuple[str, ...]]]:
    """Resolve every parameter to checkpoint keys and check shapes; raise one error listing every problem."""
    sources = conv.keys(cfg)
    unknown = set(expected) - set(sources)
    if unknown:  # a converter bug, not a checkpoint problem
        raise RuntimeError(f"converter for {conv.model_types} does not map {sorted(unknown)}")
    resolved: dict[str, tuple[Source, tuple[str, ...]]] = {}
    missing, misshaped, used = [], [], set()
    for ours, shape in expected.items():
        source = sources[ours]
        found = None
        for alt in source.alternatives:
            keys = tuple(_lookup(k, available, conv.prefixes) for k in alt)
            if all(keys):
                found = keys
                break
        if found is None:
            missing.append(" + ".join(source.alternatives[0]))
            continue
        used.update(found)
        for key, want in zip(found, source.hf_shapes(shape)):
            if list(available[key]) != want:
                misshaped.append(f"{key}: found {list(available[key])}, expected {want}")
        resolved[ours] = (source, found)
    unexpected = sorted(k for k in available if k not in used and not conv.ignored(k))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if misshaped:
        problems.append(f"{len(misshaped)} tensor(s) with the wrong shape for this config.json: {'; '.join(misshaped[:8])}"
                        f"{' …' if len(misshaped) > 8 else ''}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
    if problems:
        raise CheckpointError("the weights do not match config.json (" + "; ".join(problems) +
                              "). Check that config.json and the weight files belong to the same model")
    return resolved


def build_state_dict(resolved: dict[str, tuple[Source, tuple[str, ...]]], tensors: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    return {ours: source.to_ours([tensors[k] for k in keys]) for ours, (source, keys) in resolved.items()}
