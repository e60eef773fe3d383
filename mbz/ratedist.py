"""Rate-distortion packing: one relative quantization step for every tensor, or the step that fits a size.

``StepPolicy(step)`` quantizes each float tensor it applies to on a per-tensor grid
of step ``Δ = step · rms(tensor)`` (conv / linear weights) or ``step_1d · rms`` (1-D
tensors: BatchNorm parameters and statistics, biases; default step / 16, see AUTO_1D), with dead-zone rounding
``|q| = max(0, floor(|x| / Δ + 1/2 − deadzone))``.

Distortion is the weighted MSE ``Σ_t ‖x_t − x̂_t‖² / mean(x_t²)`` (each tensor's error
relative to its own power: a BatchNorm after each convolution makes a layer's output
insensitive to its weights' overall scale).  At high rate a uniform quantizer of step
Δ has MSE Δ²/12 and rate h − log2 Δ bits per weight, so the slope dD/dR of tensor t is
proportional to Δ_t² / mean(x_t²): one relative step for every tensor puts all tensors
at equal slope, which is the rate allocation of least distortion for the bytes spent
(Gish & Pierce 1968; the equal-slope condition of Shoham & Gersho 1988).  Dead-zone
rounding trades a little distortion near zero for many more zero codes, which the
entropy stage (spec §5.7) codes in a fraction of a bit.

``fit_step`` finds the largest-quality step whose file fits a byte budget: a bisection
on an estimate (order-0 entropy of the codes), corrected by real packs.
Tensors already on an exact grid (mbz.detect) keep it: lossless detection comes first.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from .codecs.affine import Grid
from .errors import EncodeError
from .quantize import DEFAULT_INCLUDE
from .spec import Granularity

MAX_CODE = (1 << 15) - 1  # signed 16-bit codes at most (spec §5.1)
# 1-D tensors (BatchNorm scale / shift / statistics, biases) at step / AUTO_1D: one such parameter scales or
# shifts a whole output channel, i.e. the sum of about K weights' errors (K = fan-in x kernel, ~10..1300 here);
# equal slope per output error gives a step sqrt(K) finer, about 16x for the typical K of a few hundred.
AUTO_1D = 16.0


@dataclass
class StepPolicy:
    """step: relative step of rank >= 2 weights matching `include`; step_1d: of 1-D float tensors
    (None: keep them exact); deadzone: rounding offset in steps (0 = round to nearest)."""
    step: float
    step_1d: float | str | None = "auto"
    deadzone: float = 0.2
    include: str = DEFAULT_INCLUDE
    channel: bool = False      # one step per output channel (rel x the channel's rms) for weights

    def __post_init__(self):
        if not (self.step > 0 and math.isfinite(self.step)):
            raise EncodeError(f"--step must be a positive number, got {self.step}")
        if self.step_1d == "auto":
            self.step_1d = self.step / AUTO_1D
        if self.step_1d is not None and not (self.step_1d > 0 and math.isfinite(self.step_1d)):
            raise EncodeError(f"--step-1d must be a positive number, got {self.step_1d}")
        if not 0 <= self.deadzone < 0.5:
            raise EncodeError(f"dead zone must be in [0, 0.5), got {self.deadzone}")

    def relative_step(self, name: str, t: torch.Tensor) -> float | None:
        """The relative step for this tensor, or None when it stays exact."""
        if not t.is_floating_point() or t.numel() < 2:
            return None
        if t.dim() >= 2 and re.search(self.include, name) is not None:
            return self.step
        if t.dim() == 1 and self.step_1d is not None:
            return self.step_1d
        return None


def _snap(d: np.ndarray) -> np.ndarray:
    """Steps rounded to a power of two times 1, 1.25, 1.5 or 1.75: few distinct scales, cheap to store."""
    e = np.floor(np.log2(d))
    return (np.round(d / 2.0 ** e * 4) / 4 * 2.0 ** e).astype(np.float32)


def step_grid(t: torch.Tensor, rel: float, deadzone: float, channel: bool = False) -> Grid | None:
    """Grid of step rel · rms (per tensor, or per output channel) with dead-zone rounding; None if all zero."""
    x = t.detach().cpu().float().contiguous().reshape(-1).numpy()
    if not np.isfinite(x).all():
        raise EncodeError("cannot quantize a tensor with NaN or Inf")
    rows = x.reshape(t.shape[0], -1) if channel and t.dim() >= 2 else x.reshape(1, -1)
    rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
    if not rms.any():
        return None
    amax = np.abs(rows).max(axis=1)
    if t.dim() == 1:
        # 1-D tensors: the step also follows the smallest non-zero magnitude, so that no value (a running
        # variance, a BatchNorm scale) rounds to zero or loses more than `rel` of itself; a tensor whose
        # range then needs codes wider than 16 bits stays exact
        nz = np.abs(x[x != 0])
        d1 = rel * min(float(rms[0]), float(nz.min()) if nz.size else float(rms[0]))
        if amax[0] / d1 > MAX_CODE:
            return None
        d = np.array([d1])
    else:
        d = np.maximum(rel * rms, amax / MAX_CODE)
    d = np.where(d > 0, d, max(float(d.max()), 1e-30))   # an all-zero channel: any step
    d = _snap(d)
    a = np.abs(rows) / d[:, None]
    mag = np.maximum(0, np.floor(a + np.float32(0.5 - deadzone))) if deadzone else np.rint(a)
    k = (np.sign(rows) * np.minimum(mag, MAX_CODE)).astype(np.int64).reshape(-1)
    if rows.shape[0] > 1:
        return Grid(k, d, Granularity.CHANNEL, tuple(t.shape), axis=0)
    return Grid(k, d, Granularity.TENSOR, tuple(t.shape))


def code_entropy_bytes(k: np.ndarray) -> float:
    """Order-0 entropy of integer codes, in bytes (an estimate of their coded size)."""
    if k.size == 0:
        return 0.0
    _, c = np.unique(k, return_counts=True)
    return float(-(c * np.log2(c / k.size)).sum() / 8)


def estimate_bytes(sd: dict, policy: StepPolicy, exact: set) -> float:
    """Estimated payload bytes: code entropy of quantized tensors, raw size of the rest."""
    total = 0.0
    for name, t in sd.items():
        rel = policy.relative_step(name, t) if name not in exact else None
        g = step_grid(t, rel, policy.deadzone if t.dim() >= 2 else 0.0, policy.channel and t.dim() >= 2) if rel else None
        total += code_entropy_bytes(g.k) + 8 if g is not None else t.numel() * t.element_size() * 0.5
    return total


__all__ = ["StepPolicy", "step_grid", "estimate_bytes", "code_entropy_bytes"]
