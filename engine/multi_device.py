"""A native model spread over several devices: which module goes where (from an engine.placement.Placement),
the byte counts a plan is made from, and the free memory of this machine's devices.

The plan's `layers` are the network's blocks in the order the forward meets them: the encoder's, then the
decoder's. A stack's inputs (positions, relative bias, embedding norm) live with its first block, its final
norm with its last; the token embedding on `placement.embed`; the output head on `placement.head`, except
that a tied unembedding is the embedding's own memory and so stays with it. The forward then moves the
residual stream (and the masks, rotary tables and encoder memory) once at each device boundary
(network.Stack.moves); the KV cache is filled where each block computes its keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .device import available_memory, resolve_device
from .errors import DeviceError
from .network import Stack
from .placement import Placement, plan

log = logging.getLogger(__name__)


def blocks(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) of every layer in forward order: encoder.layers.i, then decoder.layers.i."""
    out = []
    for stack_name in ("encoder", "decoder"):
        stack = getattr(net, stack_name)
        if stack is not None:
            out += [(f"{stack_name}.layers.{i}", layer) for i, layer in enumerate(stack.layers)]
    return out


def _bytes(module: nn.Module, itemsize: int, recurse: bool = True) -> int:
    return sum(p.numel() * (itemsize if p.is_floating_point() else p.element_size())
               for p in module.parameters(recurse=recurse))


def sizes(net: nn.Module, itemsize: int) -> tuple[int, list[int], int]:
    """(embedding bytes, bytes of each block in forward order, head bytes) in a dtype of `itemsize` bytes (the
    stacks' own small modules counted with their first block; works on a meta-device net)."""
    block_list = blocks(net)
    layer = [_bytes(b, itemsize) for _, b in block_list]
    first = 0
    for stack_name in ("encoder", "decoder"):
        stack = getattr(net, stack_name)
        if stack is None:
            continue
        own = sum(_bytes(m, itemsize) for n, m in stack.named_children() if n != "layers")
        if layer:
            layer[first] += own
        first += len(stack.layers)
    embed = _bytes(net.embed, itemsize)
    head = _bytes(net, itemsize, recurse=False) + sum(_bytes(m, itemsize) for m in (net.lm_head, net.mlm) if m is not None)
    return embed, layer, head


def free_memory() -> dict[str, int]:
    """Free bytes on every CUDA device (torch.cuda.mem_get_info), in index order, then "cpu" (MemAvailable)."""
    free: dict[str, int] = {}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free[f"cuda:{i}"] = int(torch.cuda.mem_get_info(i)[0])
    cpu = available_memory()
    if cpu is not None:
        free["cpu"] = int(cpu)
    return free


def auto_placement(net: nn.Module, dtype: torch.dtype, free: Mapping[str, int] | None = None) -> Placement:
    """The plan for `net` in `dtype` over this machine's GPUs, then the CPU, by their free memory."""
    embed, layer, head = sizes(net, dtype.itemsize)
    free = dict(free_memory() if free is None else free)
    return plan(layer, free, embed_bytes=embed, head_bytes=head, cpu_bytes=free.get("cpu"))


def tied(net: nn.Module) -> bool:
    return net.lm_head is None


def effective(net: nn.Module, placement: Placement) -> Placement:
    """`placement` with the head beside the embedding when the unembedding is the embedding (tied)."""
    if tied(net) and placement.head != placement.embed:
        return Placement(placement.layers, placement.embed, placement.embed, placement.used)
    return placement


def check(net: nn.Module, placement: Placement) -> Placement:
    """A placement that fits `net` (one device per block), its devices checked; DeviceError otherwise."""
    n = len(blocks(net))
    if len(placement.layers) != n:
        raise DeviceError(f"the placement names {len(placement.layers)} layers but this model has {n} "
                          "(encoder layers, then decoder layers)")
    for d in placement.devices:
        if torch.device(d).type != "meta":
            resolve_device(d)
    return effective(net, placement)


def module_devices(net: nn.Module, placement: Placement) -> dict[str, str]:
    """Qualified module name -> device for every module that owns parameters or buffers directly."""
    where = {"": placement.head, "embed": placement.embed}
    if net.lm_head is not None:
        where["lm_head"] = placement.head
    if net.mlm is not None:
        where["mlm"] = placement.head
    at = 0
    for stack_name in ("encoder", "decoder"):
        stack = getattr(net, stack_name)
        if stack is None:
            continue
        n = len(stack.layers)
        span = placement.layers[at : at + n] or (placement.embed,)
        for child, _ in stack.named_children():
            if child != "layers":
                where[f"{stack_name}.{child}"] = span[-1] if child == "final_norm" else span[0]
        where[stack_name] = span[0]
        for i in range(n):
            where[f"{stack_name}.layers.{i}"] = span[i]
        at += n
    return where


def device_for(where: Mapping[str, str]) -> Callable[[str], torch.device]:
    """Module name -> its device: the entry of the longest name prefix in `where`."""
    def find(name: str) -> torch.device:
        probe = name
        while probe not in where:
            probe = probe.rpartition(".")[0]
        return torch.device(where[probe])
    return find


def route(net: nn.Module, placement: Placement | None) -> None:
    """Tell the forward where to move the residual stream: each stack's entry device and the blocks where a new
    device starts, and the head's device. None: one device, no moves (the single-device forward)."""
    net.placement = placement
    at = 0
    for stack_name in ("encoder", "decoder"):
        stack = getattr(net, stack_name)
        if stack is None:
            continue
        n = len(stack.layers)
        if placement is None:
            stack.entry, stack.moves = None, {}
        else:
            span = placement.layers[at : at + n] or (placement.embed,)
            stack.entry = torch.device(span[0])
            stack.moves = {i: torch.device(span[i]) for i in range(1, n) if span[i] != span[i - 1]}
        at += n
    net.head_device = None if placement is None else torch.device(placement.head)


def place(net: nn.Module, placement: Placement) -> Placement:
    """Move a built net's modules (parameters, buffers, gates) to the devices `placement` names and route its
    forward; -> the placement as applied (a tied head beside the embedding)."""
    from .inference_layout import register_unembedding

    placement = check(net, placement)
    find = device_for(module_devices(net, placement))
    with torch.no_grad():
        for name, module in net.named_modules():
            dev = find(name)
            for store in (module._parameters, module._buffers):
                for key, t in list(store.items()):
                    if t is None or t.device == dev or (name == "" and key == "unembedding_t"):
                        continue
                    moved = t.detach().to(dev)
                    store[key] = nn.Parameter(moved, requires_grad=False) if isinstance(t, nn.Parameter) else moved
            if getattr(module, "neuron_gate", None) is not None:
                module.neuron_gate = module.neuron_gate.to(dev)
            if isinstance(module, Stack):  # its rotary frequencies are a plain list, not buffers
                module.inv_freqs = [f.to(dev) for f in module.inv_freqs]
    register_unembedding(net)
    route(net, placement)
    log.info("placed %s", placement.describe())
    return placement


def bytes_on(net: nn.Module, placement: Placement, itemsize: int, device: str) -> int:
    """Bytes of weights `placement` puts on `device` (in a dtype of `itemsize` bytes)."""
    embed, layer, head = sizes(net, itemsize)
    total = embed if placement.embed == device else 0
    total += sum(b for b, d in zip(layer, placement.layers) if d == device)
    return total + (head if placement.head == device else 0)
