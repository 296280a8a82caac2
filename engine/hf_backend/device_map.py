"""A transformers model over several devices: accelerate's device map, made from the same plan as the native
engine's (engine.placement.plan: GPUs in order, then the CPU; consecutive layers per device).

The layers are the model's own unsplittable blocks (`_no_split_modules`: LlamaDecoderLayer, T5Block, ...) of
its text stacks, in the order their modules are registered (the order the forward meets them). Every other
module that holds weights goes with the embeddings when it comes before the first block, with the head when it
comes after the last, and with the block before it otherwise (an encoder's final norm). Weights tied to another
module (a tied lm_head is the embedding's matrix) stay on that module's device. accelerate's hooks then move
each block's inputs to its device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import DeviceError
from ..placement import Placement, plan

log = logging.getLogger(__name__)

_NOT_TEXT = ("vision", "visual", "audio", "image")


def _block_lists(model: nn.Module) -> list[str]:
    """Qualified names of the ModuleLists of unsplittable blocks of the text stacks, in registration order."""
    split = set(getattr(model, "_no_split_modules", None) or ())
    found = []
    for qualname, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module) or any(w in qualname for w in _NOT_TEXT):
            continue
        kinds = {type(child).__name__ for child in module}
        if (split and kinds <= split) or (not split and qualname.rsplit(".", 1)[-1] in ("layers", "layer", "h", "block")):
            found.append(qualname)
    return [q for q in found if not any(q != o and q.startswith(o + ".") for o in found)]  # outermost lists only


def layout(model: nn.Module, itemsize: int) -> tuple[list[str], list[tuple[str, int, int]]]:
    """-> (block names in order, [(module name, bytes of its own weights, the index of the last block before it
    or -1)] for every other module owning weights), the bytes in a dtype of `itemsize`. Works on a meta model."""
    lists = _block_lists(model)
    if not lists:
        raise DeviceError(f"cannot tell the layers of this {type(model).__name__} apart to place them over devices; "
                          "load it on one device")
    blocks = [f"{q}.{i}" for q in lists for i in range(len(model.get_submodule(q)))]
    inside = tuple(b + "." for b in blocks)
    seen: set[int] = set()
    others, last = [], -1
    index = {b: i for i, b in enumerate(blocks)}
    for qualname, module in model.named_modules():
        if qualname in index:
            last = index[qualname]
            continue
        if qualname.startswith(inside):
            continue
        own = 0
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(t) in seen:
                continue
            seen.add(id(t))
            own += t.numel() * (itemsize if t.is_floating_point() else t.element_size())
        if own or any(True for _ in module.parameters(recurse=False)):
            others.append((qualname, own, last))
    return blocks, others


def _block_bytes(model: nn.Module, blocks: list[str], itemsize: int) -> list[int]:
    return [sum(p.numel() * (itemsize if p.is_floating_point() else p.element_size())
                for p in model.get_submodule(b).parameters()) for b in blocks]


def _tied_to(model: nn.Module) -> dict[str, str]:
    """Module name -> the earlier module whose parameter it shares (a tied lm_head -> the embedding)."""
    owner: dict[int, str] = {}
    tied: dict[str, str] = {}
    for qualname, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            if id(p) in owner and owner[id(p)] != qualname:
                tied[qualname] = owner[id(p)]
            else:
                owner.setdefault(id(p), qualname)
    return tied


def placement_for(model: nn.Module, itemsize: int, free: Mapping[str, int]) -> Placement:
    """engine.placement.plan over the devices of `free` (name -> free bytes; "cpu" its limit) for `model`."""
    blocks, others = layout(model, itemsize)
    layer = _block_bytes(model, blocks, itemsize)
    embed = sum(b for _, b, last in others if last < 0)
    head = sum(b for _, b, last in others if last == len(blocks) - 1)
    for _, b, last in others:
        if 0 <= last < len(blocks) - 1:
            layer[last] += b
    return plan(layer, free, embed_bytes=embed, head_bytes=head, cpu_bytes=free.get("cpu"))


def device_map(model: nn.Module, placement: Placement) -> dict[str, int | str]:
    """accelerate's device map (module name -> CUDA index or "cpu") that puts `model` where `placement` says."""
    blocks, others = layout(model, 1)
    if len(placement.layers) != len(blocks):
        raise DeviceError(f"the placement names {len(placement.layers)} layers but this model has {len(blocks)}")

    def dev(name: str) -> int | str:
        d = torch.device(name)
        return d.index or 0 if d.type == "cuda" else d.type

    out: dict[str, int | str] = {b: dev(d) for b, d in zip(blocks, placement.layers)}
    for qualname, _, last in others:
        where = placement.embed if last < 0 else placement.head if last == len(blocks) - 1 else placement.layers[last]
        out[qualname] = dev(where)
    for qualname, first in _tied_to(model).items():
        if first in out:
            out[qualname] = out[first]
    out.pop("", None)  # the top module's own weights (rare) follow its first child
    return out


def describe_map(model: nn.Module, mapping: Mapping[str, int | str], placement: Placement) -> Placement:
    """The placement as transformers applied it (a tied head beside the embedding)."""
    tied = _tied_to(model)
    _, others = layout(model, 1)
    heads = [q for q, _, last in others if last == len(placement.layers) - 1]
    moved = [mapping.get(q) for q in heads if q in tied]
    if moved and moved[0] is not None:
        head = f"cuda:{moved[0]}" if isinstance(moved[0], int) else str(moved[0])
        return Placement(placement.layers, placement.embed, head, placement.used)
    return placement
