"""The placement plan for a model bigger than one GPU: GPUs first in order with consecutive layers, the CPU for
the rest, the head with the last layer when it fits; refused when nothing holds it."""

from __future__ import annotations

import pytest

from engine import DeviceError
from engine.placement import plan, single_device

GB = 10**9


def test_fits_on_one_gpu():
    p = plan([GB] * 4, {"cuda:0": 10 * GB}, embed_bytes=GB, head_bytes=GB)
    assert p.layers == ("cuda:0",) * 4 and p.embed == p.head == "cuda:0" and p.used == {"cuda:0": 6 * GB}
    assert p.describe() == "cuda:0 layers 0–3" and p.devices == ("cuda:0",)


def test_spills_to_the_next_gpu_then_the_cpu():
    # 10 % of each GPU is kept free: 9 GB and 4.5 GB of room
    p = plan([2 * GB] * 8, {"cuda:0": 10 * GB, "cuda:1": 5 * GB}, embed_bytes=GB, head_bytes=GB)
    assert p.embed == "cuda:0"
    assert p.layers == ("cuda:0",) * 4 + ("cuda:1",) * 2 + ("cpu",) * 2
    assert p.head == "cpu"  # the last layer is on the CPU: the head stays with it
    assert p.used == {"cuda:0": 9 * GB, "cuda:1": 4 * GB, "cpu": 5 * GB}
    assert p.describe() == "cuda:0 layers 0–3 · cuda:1 layers 4–5 · cpu layers 6–7"
    assert p.devices == ("cuda:0", "cuda:1", "cpu")


def test_layers_never_go_back_to_an_earlier_gpu():
    # a big layer skips to cuda:1; the small one after it must not return to cuda:0's leftover room
    p = plan([3 * GB, 5 * GB, GB], {"cuda:0": 5 * GB, "cuda:1": 10 * GB}, reserve=0.0)
    assert p.layers == ("cuda:0", "cuda:1", "cuda:1")


def test_head_moves_on_when_the_last_gpu_is_full():
    p = plan([GB] * 2, {"cuda:0": 2 * GB, "cuda:1": 2 * GB}, head_bytes=GB, reserve=0.0)
    assert p.layers == ("cuda:0", "cuda:0") and p.head == "cuda:1"


def test_no_gpu_puts_everything_on_the_cpu():
    p = plan([GB] * 3, {}, embed_bytes=GB)
    assert set(p.layers) == {"cpu"} and p.embed == p.head == "cpu" and p.describe() == "cpu layers 0–2"


def test_too_big_for_every_device_is_refused():
    with pytest.raises(DeviceError, match="needs 12.0 GB"):
        plan([4 * GB] * 3, {"cuda:0": 2 * GB}, cpu_bytes=4 * GB)
    with pytest.raises(ValueError):
        plan([GB], {"cuda:0": GB}, reserve=1.0)


def test_single_device_describes_itself():
    assert single_device(12, "cuda:0").describe() == "cuda:0 layers 0–11"
    assert single_device(1, "cpu").describe() == "cpu layer 0"


def test_an_open_model_says_its_placement(gpt):
    assert gpt.placement == "cpu layers 0–1"
