"""The linear pieces of direct logit attribution on the transformers backend: a norm module as gain, centring and
bias probed from the module itself (then linearised at the point a forward reached, TransformerLens' frozen
scale), and the factors with which a layer adds its sublayers to the residual stream."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import CaptureError

NORM_PROBE = 1e3  # probe vectors ±1000: eps (≤ 1e-5) is then far below float32 rounding of the scale


@dataclass(frozen=True)
class NormMap:
    """A norm as gain ⊙ (x − mean(x) if centred) / scale(x) + bias, probed from the module itself."""

    gain: Tensor  # (d,) float32
    centred: bool
    bias: Tensor | None

    def linear(self, z: Tensor, out: Tensor, parts: dict[str, Tensor], name: str, bias_name: str,
               tol: float) -> dict[str, Tensor]:
        """Every part of z (parts sum to z; a part may be a stack (n, d)) through the norm with its scale frozen at z,
        read from the norm's own output `out` there (least squares over the d entries, then checked)."""
        z, out = z.float(), out.float()
        c = z - z.mean() if self.centred else z
        u = self.gain * c
        y = out - self.bias if self.bias is not None else out
        inv = float(u @ y) / max(float(u @ u), 1e-30)  # 1 / scale
        err = float((u * inv - y).abs().max())
        if not err <= tol * max(1.0, float(y.abs().max())):
            raise CaptureError(f"{name} does not act as gain·x/scale (+ bias) here (off by {err:.3g}); direct logit "
                               "attribution cannot linearise it")
        new = {k: self.gain * ((p - p.mean(-1, keepdim=True)) if self.centred else p) * inv for k, p in parts.items()}
        if self.bias is not None:
            new[bias_name] = new.get(bias_name, 0) + self.bias
        return new


def probe_norm(module: nn.Module, d: int, device: torch.device, dtype: torch.dtype, name: str) -> NormMap:
    """Gain, centring and bias of a norm module, from its outputs on 0, a constant and a ±k vector (d even)."""
    if d % 2:
        raise CaptureError(f"{name}: a model width of {d} (odd) cannot be probed for its norm's gain")
    k = NORM_PROBE
    alt = k * (1.0 - 2.0 * (torch.arange(d, device=device) % 2).float())  # mean 0, rms k
    probes = torch.stack([torch.zeros(d, device=device), torch.full((d,), k, device=device), alt]).to(dtype)
    with torch.inference_mode():
        out = module(probes[None])[0].float()
    bias = out[0]
    gain = (out[2] - bias) * torch.sign(alt)
    centred = float((out[1] - bias).abs().max()) <= 1e-3 * max(1e-12, float(gain.abs().max()))
    return NormMap(gain, centred, bias if float(bias.abs().max()) > 0 else None)


def fit_factors(writers: list[Tensor], delta: Tensor) -> tuple[list[float], float]:
    """Factors c with Σ c_k · writer_k = delta over every position (the normal equations: a few unknowns), each
    within 1e-4 of 1 taken as exactly 1; -> (factors, the largest residual)."""
    cols = [w.double().reshape(-1) for w in writers]
    gram = torch.tensor([[float(a @ b) for b in cols] for a in cols], dtype=torch.float64)
    rhs = torch.tensor([float(c @ delta) for c in cols], dtype=torch.float64)
    coef = torch.linalg.lstsq(gram, rhs[:, None]).solution[:, 0].tolist()
    coef = [1.0 if abs(c - 1.0) < 1e-4 else c for c in coef]  # the usual x + a + m: exactly 1
    err = float((sum(c * col for c, col in zip(coef, cols)) - delta).abs().max())
    return coef, err
