"""Where the layers of a model too big for one GPU would go: a plan, in order, GPUs first (each filled with
consecutive layers, as accelerate's sequential device map and the native engine's blocks-per-device do), then
the CPU for what is left. Pure Python on byte counts, tested with given memory limits; engine.multi_device
applies a plan to the native engine's network (and engine.hf_backend.device_map turns it into accelerate's
device map)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import DeviceError

RESERVE = 0.10  # of each GPU's free memory kept for activations, the KV cache and captures


@dataclass(frozen=True)
class Placement:
    layers: tuple[str, ...]  # the device of each layer, in order
    embed: str  # the token embeddings (the first device)
    head: str  # the final norm and output head (the last layer's device, or the CPU when it has no room)
    used: dict[str, int]  # bytes placed on each device

    @property
    def devices(self) -> tuple[str, ...]:
        """The devices used, in the order the forward meets them."""
        return tuple(dict.fromkeys((self.embed, *self.layers, self.head)))

    def describe(self) -> str:
        """One line for the status bar: "cuda:0 layers 0–15 · cuda:1 layers 16–31 · cpu layers 32–39"."""
        parts, start = [], 0
        for i in range(1, len(self.layers) + 1):
            if i == len(self.layers) or self.layers[i] != self.layers[start]:
                span = f"layer {start}" if i - 1 == start else f"layers {start}–{i - 1}"
                parts.append(f"{self.layers[start]} {span}")
                start = i
        return " · ".join(parts) if parts else self.embed


def plan(layer_bytes: Sequence[int], device_free_bytes: Mapping[str, int], embed_bytes: int = 0, head_bytes: int = 0,
         reserve: float = RESERVE, cpu_bytes: int | None = None) -> Placement:
    """Place the embeddings, then each layer in order, on the first GPU of `device_free_bytes` (in its order)
    that still has room after keeping `reserve` of its free memory; the output head with the last layer when
    it fits there; whatever does not fit any GPU goes to the CPU (`cpu_bytes`: its limit, None: unbounded).
    Layers never go back to an earlier GPU: the forward crosses each device boundary once.
    DeviceError when even the CPU cannot hold the rest."""
    if not 0 <= reserve < 1:
        raise ValueError("reserve is a fraction of each device's free memory, 0 <= reserve < 1")
    if any(b < 0 for b in layer_bytes) or embed_bytes < 0 or head_bytes < 0:
        raise ValueError("byte counts cannot be negative")
    gpus = [(d, int(free * (1 - reserve))) for d, free in device_free_bytes.items() if d != "cpu"]
    cpu_room = cpu_bytes if cpu_bytes is not None else device_free_bytes.get("cpu")
    used: dict[str, int] = {}
    g = 0  # the GPU being filled

    def put(size: int) -> str:
        nonlocal g
        while g < len(gpus):
            device, room = gpus[g]
            if used.get(device, 0) + size <= room:
                used[device] = used.get(device, 0) + size
                return device
            g += 1  # full: the next GPU takes the following layers
        used["cpu"] = used.get("cpu", 0) + size
        if cpu_room is not None and used["cpu"] > cpu_room:
            total = embed_bytes + sum(layer_bytes) + head_bytes
            have = sum(room for _, room in gpus) + cpu_room
            raise DeviceError(f"the model needs {total / 1e9:.1f} GB and the devices hold {have / 1e9:.1f} GB "
                              f"(keeping {reserve:.0%} of each GPU free); use a smaller model or a smaller dtype")
        return "cpu"

    embed = put(embed_bytes)
    layers = tuple(put(b) for b in layer_bytes)
    last = layers[-1] if layers else embed
    names = [d for d, _ in gpus]
    if last in names and used.get(last, 0) + head_bytes <= gpus[names.index(last)][1]:
        used[last] += head_bytes
        head = last
    else:  # the next GPU, or the CPU: after the last layer the forward only goes on
        g = names.index(last) + 1 if last in names else len(gpus)
        head = put(head_bytes)
    return Placement(layers, embed, head, used)


def single_device(n_layers: int, device: str) -> Placement:
    """The placement of a model on one device."""
    return Placement(tuple([device] * n_layers), device, device, {})
