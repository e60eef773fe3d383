"""A rate term for QAT: the estimated coded size of the weights, differentiable, added to the loss.

For each fake-quantized weight (QConv2d / QLinear of mbz.pipeline.qat) with step s and codes
k = clamp(round(w / s), -qmax, qmax), the estimate is the order-0 entropy of its codes,

    bits(tensor) = -sum_j c_j log2(c_j / n),   c_j = #{i : k_i = j},  n = numel,

which is what a static-model entropy coder of the codes costs (the file's RANS filter, spec §5.7,
codes a section with a static order-0 model; zstd's Huffman stage comes close to it).  By the chain
rule it equals the binary entropy of the zero mask (n·h(c_0 / n): the BITMAP / DELTAS index
sections) plus the entropy of the non-zero codes (the CODES section of a sparse layout), so one
histogram prices both.  The value is the hard histogram's; the gradient is a soft histogram's: each
weight splits its count between the two bins around u = w / s with linear weights (1 - frac, frac),
and the hard counts carry the soft counts' gradient (straight-through, as the rounding of the codes
themselves in LSQ).  The gradient pulls each weight toward the more frequent neighbouring code
(mostly 0) and each step toward coarser grids, in proportion to the bits that saves.

Units: `RatePenalty(lam)` adds lam * estimated bytes / 1000 to the loss (lam: loss units per
kilobyte of codes and zero masks).  Not counted: per-channel scales, biases, BatchNorm, headers
(constant during QAT; `mbz inspect` itemizes them).  `section_bytes` gives the real bytes of the
code, mask and delta sections of a packed file, the figure the estimate is checked against.

Source: entropy-penalised training of compressible weights (Oktay et al. 2020, "Scalable Model
Compression by Entropy Penalized Reparameterization"; Girish et al. 2022, "LilNetX"), here with the
file's own code histogram as the probability model instead of a learned density.
"""
from __future__ import annotations

import math

import torch
from torch import nn

WEIGHT_ROLES = ("CODES", "MASK", "DELTAS")  # the sections the estimate prices (spec table: Role)


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every fake-quantized conv / linear (a `step` parameter and wbits < 32)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "step", None), torch.Tensor) and getattr(m, "wbits", 32) < 32]


def code_bits(w: torch.Tensor, step: torch.Tensor, bits: int, lsq_scale: bool = True) -> torch.Tensor:
    """Estimated coded size (bits, 0-d float32 tensor) of w's codes on a per-channel (or per-tensor) grid.

    w: (C, ...) float; step: C or 1 elements (its absolute value is the step); bits: 2..16.
    Value: order-0 entropy of the rounded, clamped codes, times numel.  Gradient: that of the
    linearly interpolated soft histogram (module docstring), with respect to w and step; with
    `lsq_scale` the step's gradient is scaled by 1 / sqrt(weights per step * qmax) as LSQ scales the
    task loss's (Esser et al. 2020, section 2.2), so that both terms move the steps at one pace."""
    from .qat import grad_scale
    qmax = (1 << (bits - 1)) - 1
    s = step.abs().clamp_min(1e-8).float()
    if lsq_scale:
        per = w[0].numel() if s.numel() > 1 else w.numel()
        s = grad_scale(s, 1.0 / (per * qmax) ** 0.5)
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = s.view(shape) if s.numel() > 1 else s.reshape((1,) * w.dim())
    u = (w.float() / s).clamp(-qmax, qmax).reshape(-1) + qmax          # in [0, 2 qmax]
    nb = 2 * qmax + 1
    lo = u.detach().floor().clamp(max=nb - 2).long()
    frac = u - lo.float()
    soft = torch.zeros(nb, dtype=torch.float32, device=w.device)
    soft = soft.index_add(0, lo, 1 - frac).index_add(0, lo + 1, frac)
    k = torch.round(u.detach()).long()
    hard = torch.zeros(nb, dtype=torch.float32, device=w.device).index_add(0, k, torch.ones_like(frac))  # static shape
    hard = hard.detach()
    c = hard + (soft - soft.detach())
    n = float(u.numel())
    p = (c / n).clamp_min(1e-12)
    return -(c * torch.log2(p)).sum()


def estimate_bits(model: nn.Module) -> dict:
    """{layer name: estimated bits (0-d tensor, with gradient)} of every fake-quantized layer."""
    return {n: code_bits(m.weight, m.step, m.wbits) for n, m in quantized_layers(model)}


class RatePenalty:
    """lam * (estimated bytes of the weights' codes and zero masks) / 1000, as a loss term; lam >= 0.

    `loss(model)`: the term (0-d tensor; zero without gradient when lam == 0 or no layer is quantized).
    `log(model)`: {'est_weight_bytes': total estimate (bytes, float), 'rate': lam}, for the epoch log."""

    def __init__(self, lam: float):
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"rate must be a finite number >= 0, got {lam!r}")
        self.lam = float(lam)

    def bytes(self, model: nn.Module) -> torch.Tensor:
        est = estimate_bits(model)
        if not est:
            return torch.zeros(())
        return torch.stack(list(est.values())).sum() / 8

    def loss(self, model: nn.Module) -> torch.Tensor:
        if not self.lam:
            return torch.zeros(())
        return self.lam * self.bytes(model) / 1000  # float32 throughout (code_bits casts)

    @torch.no_grad()
    def log(self, model: nn.Module) -> dict:
        return {"est_weight_bytes": round(float(self.bytes(model)), 1), "rate": self.lam}


def section_bytes(path: str, names=None) -> dict:
    """{tensor name: stored bytes of its CODES, MASK and DELTAS sections} in a .mbz file (`names`: only
    these tensors).  What RatePenalty's estimate prices, for checking it against a real pack."""
    from ..reader import MbzReader
    from ..spec import Role
    roles = {int(getattr(Role, r)) for r in WEIGHT_ROLES}
    out = {}
    with MbzReader(path) as r:
        for rec in r.layout.records:
            if names is not None and rec.name not in names:
                continue
            out[rec.name] = sum(s.stored for s in rec.sections if int(s.role) in roles)
    return out
