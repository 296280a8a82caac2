"""The weight layout of loaded (inference-only) models.

On the CPU in float32 a Linear with at least as many outputs as inputs (q, o, gate, up, the unembedding)
is stored as [in, out] (TransposedLinear): a decode step multiplies one row vector by every weight matrix,
and streaming those matrices in this layout ran 1.1-2.2x (2048x2048), 1.2-1.8x (8192x2048, 3072x768) and
1.1-1.7x (the 128256x2048 / 50257x768 unembedding) as fast as nn.Linear's [out, in] on this project's CPUs
(tools/bench.py, tools/bench_load.py --speed, several runs on a shared machine). Narrowing ones were a
wash (down 2048x8192: 0.9-1.1x; k/v 512x2048: 0.66-1.26x) and keep [out, in], which spares their
transposition while loading (transposing is most of a bfloat16 -> float32 load's CPU time). In
bfloat16/float16 [in, out] is slower (oneDNN wants [out, in]: 0.58-0.97x), and CUDA needs neither: plain.

The unembedding is never a second copy: a tied model keeps one (d, vocab) matrix and its token embedding
is a transposed view of it (an embedding lookup gathers T columns, ~7 us a token); an untied model's
unembedding is its lm_head's weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .network import Transformer


class TransposedLinear(nn.Module):
    """An nn.Linear whose weight is stored as [in, out] (see the module docstring for why)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    @property
    def weight(self) -> Tensor:
        """[out, in], as nn.Linear's: a view, no copy."""
        return self.weight_t.t()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.addmm(self.bias, flat, self.weight_t) if self.bias is not None else flat @ self.weight_t
        return y.view(*x.shape[:-1], y.shape[-1])


def prefers_transposed(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether [in, out] storage is the faster one for decode steps on this device and dtype (measured)."""
    return device.type == "cpu" and dtype == torch.float32


def to_inference_layout(net: Transformer, transposed: bool = True) -> Transformer:
    """Swap every widening nn.Linear for a TransposedLinear (when `transposed`) and register `unembedding_t`
    (d, vocab) sharing the unembedding's memory. On a meta-device net this only changes the structure
    (then `materialize`). Training code keeps the plain layout; loaded models use this one."""
    if transposed:
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and child.out_features >= child.in_features:
                    setattr(module, name, TransposedLinear(child))
    net.inference_transposed = transposed
    if net.lm_head is None and transposed:
        w_t = net.embed.weight.detach().t().contiguous()  # the one copy, in the decode-friendly layout
        net.embed.weight = nn.Parameter(w_t.t(), requires_grad=False)  # the embedding reads its columns
    register_unembedding(net)
    return net


def register_unembedding(net: Transformer) -> None:
    """`unembedding_t` (d, vocab): the lm_head's weight, or the tied embedding's, never a copy."""
    if net.lm_head is not None:
        w_t = net.lm_head.weight_t if isinstance(net.lm_head, TransposedLinear) else net.lm_head.weight.t()
    else:
        w_t = net.embed.weight.t()  # contiguous when transposed (see above), else a view
    net.register_buffer("unembedding_t", w_t.detach(), persistent=False)


def _allocate(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised storage for one parameter (tests wrap this to watch what a load allocates)."""
    return torch.empty(shape, dtype=dtype, device=device)


def materialize(net: Transformer, device: torch.device | Callable[[str], torch.device], dtype: torch.dtype) -> Transformer:
    """Give every meta parameter and persistent buffer real, uninitialised storage of `dtype` (floats;
    other dtypes kept) on `device` (or on `device(module name)`, for a model over several devices), keeping
    the layout's sharing (tied embedding = view of the unembedding)."""
    tied_view = net.lm_head is None and getattr(net, "inference_transposed", False)
    one = device
    where = device if callable(device) else lambda _name: one
    for module_name, module in net.named_modules():
        dev = where(module_name)
        for name, p in list(module._parameters.items()):
            if p is None or not p.is_meta or (tied_view and module is net.embed and name == "weight"):
                continue
            module._parameters[name] = nn.Parameter(
                _allocate(p.shape, dtype if p.is_floating_point() else p.dtype, dev), requires_grad=False)
        for name, b in list(module._buffers.items()):
            if b is None or not b.is_meta or name in module._non_persistent_buffers_set:
                continue
            module._buffers[name] = _allocate(b.shape, dtype if b.is_floating_point() else b.dtype, dev)
    if tied_view:
        vocab, d = net.embed.weight.shape
        net.embed.weight = nn.Parameter(_allocate(torch.Size((d, vocab)), dtype, where("embed")).t(), requires_grad=False)
    register_unembedding(net)
    return net


def release(net: nn.Module) -> None:
    """Drop every parameter's and buffer's storage (after a failed or cancelled load), leaving meta tensors:
    whatever still references the net (an exception's traceback) then pins no memory."""
    for module in net.modules():
        for store in (module._parameters, module._buffers):
            for name, t in list(store.items()):
                if t is not None and not t.is_meta:
                    meta = torch.empty_like(t, device="meta")
                    store[name] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
