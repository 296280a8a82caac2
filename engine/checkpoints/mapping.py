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

    `alternatives` are tried in order (tied weights are often saved under only one name).
    op: "copy"; "T" (GPT-2's Conv1D stores weights transposed); "cat" (separate q, k, v -> fused).
    """

    alternatives: tuple[tuple[str, ...], ...]
    op: str = "copy"

    def hf_shapes(self, ours: list[int]) -> list[list[int]]:
        n = len(self.alternatives[0])
        if self.op == "T":
            return [list(reversed(ours))]
        if self.op == "cat":
            return [[ours[0] // n, *ours[1:]]] * n
        return [list(ours)]


def src(*names: str | tuple[str, ...], op: str = "copy") -> Source:
    return Source(tuple((n,) if isinstance(n, str) else tuple(n) for n in names), op)


def cat(*names: str) -> Source:
    return Source((tuple(names),), "cat")


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
    out = {}
    for ours, (source, keys) in resolved.items():
        parts = [tensors[k] for k in keys]
        if source.op == "T":
            out[ours] = parts[0].t().contiguous()
        elif source.op == "cat":
            out[ours] = torch.cat(parts, dim=0)
        else:
            out[ours] = parts[0]
    return out
