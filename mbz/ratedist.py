"""Rate-distortion packing: relative quantization steps allocated at equal slope, or the step that fits a size.

``StepPolicy(step)`` quantizes each float tensor it applies to on a grid of step
``Δ_t = step · rms · (n_t / SIZE_REF) ** size_exp`` (conv / linear weights of n_t elements; rms of
the tensor, or of each output channel with ``channel``) or ``step_1d · rms`` (1-D tensors:
BatchNorm parameters and statistics, biases; default step / 16, see AUTO_1D).  Rounding is to
the nearest code, except that a dead zone widens the zero bin only:
``q = 0 if |x| / Δ < 1/2 + deadzone, else round(x / Δ)`` (the non-zero codes keep their
magnitude: shifting every threshold, ``floor(|x| / Δ + 1/2 − deadzone)``, shrinks every weight by
about deadzone · Δ and the gain loss compounds over a deep network without BatchNorm renormalisation).

Allocation.  Distortion is the weighted MSE ``D = Σ_t w_t ‖x_t − x̂_t‖² / ‖x_t‖²`` with
``w_t = n_t ** (1 − 2 · size_exp)``.  At high rate a uniform quantizer of step Δ has MSE Δ²/12 and
rate h − log2 Δ bits per weight, so the slope dD_t/dR_t is proportional to
``w_t Δ_t² / (n_t mean(x_t²))``; the steps above put every tensor at one slope, the rate allocation
of least D for the bytes spent (Gish & Pierce 1968; the equal-slope condition of Shoham & Gersho
1988).  size_exp 0 weights each element's relative error alike (one relative step for all);
size_exp 1/2 weights each tensor's relative error alike (a large layer gets a coarser step, as
its output error is spread over more weights); the default SIZE_EXP was chosen on held-out
training images (results/ratedist).

``fit_step`` finds the largest-quality step whose file fits a byte budget: a bisection
on an estimate (order-0 entropy of the codes), corrected by real packs.
Tensors already on an exact grid (mbz.detect) keep it: lossless detection comes first.

Bias correction (``BiasFix``, ``expected_shift``; mbz.api.save's ``bias_fix``): a quantized weight moves
its layer's expected output by E[ΔW x]; subtracting that from the layer's bias (before the bias is
quantized) keeps the expected output (Nagel et al. 2019, section 4.2).  The input means come from the
BatchNorm statistics, no data (mbz.models.biascorr).
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
# BatchNorm's default eps (torch.nn.BatchNorm2d): a running variance v enters the model only as v + eps, so its
# quantization error is bounded relative to v + eps (step_grid's floor); a variance far below eps (a dead
# channel) then no longer forces codes too wide for 16 bits, which kept such tensors exact
BN_EPS = 1e-5


def floor_1d(name: str) -> float:
    """step_grid's floor for a 1-D tensor named `name`: BN_EPS for a BatchNorm running variance, else 0."""
    return BN_EPS if name.endswith("running_var") else 0.0
# the allocation exponent and dead zone chosen on held-out training images (results/ratedist/README.md);
# defined in mbz.options for the command line
from .options import DEADZONE, SIZE_EXP, SIZE_REF  # noqa: E402,F401


@dataclass
class StepPolicy:
    """step: relative step of rank >= 2 weights matching `include` (of a tensor of SIZE_REF elements);
    step_1d: of 1-D float tensors (None: keep them exact); deadzone: widening of the zero bin, in steps
    (0 = round to nearest); size_exp: the allocation exponent (module docstring)."""
    step: float
    step_1d: float | str | None = "auto"
    deadzone: float = DEADZONE
    include: str = DEFAULT_INCLUDE
    channel: bool = False      # one step per output channel (rel x the channel's rms) for weights
    size_exp: float = SIZE_EXP
    gain: bool = True          # gain-preserving steps for weights (step_grid)

    def __post_init__(self):
        if not (self.step > 0 and math.isfinite(self.step)):
            raise EncodeError(f"--step must be a positive number, got {self.step}")
        if self.step_1d == "auto":
            self.step_1d = self.step / AUTO_1D
        if self.step_1d is not None and not (self.step_1d > 0 and math.isfinite(self.step_1d)):
            raise EncodeError(f"--step-1d must be a positive number, got {self.step_1d}")
        if not 0 <= self.deadzone < 0.5:
            raise EncodeError(f"dead zone must be in [0, 0.5), got {self.deadzone}")
        if not (0 <= self.size_exp <= 1):
            raise EncodeError(f"--size-exp must be in [0, 1], got {self.size_exp}")

    def relative_step(self, name: str, t: torch.Tensor) -> float | None:
        """The relative step for this tensor, or None when it stays exact."""
        if not t.is_floating_point() or t.numel() < 2:
            return None
        if t.dim() >= 2 and re.search(self.include, name) is not None:
            return self.step * (t.numel() / SIZE_REF) ** self.size_exp
        if t.dim() == 1 and self.step_1d is not None:
            return self.step_1d
        return None


def _snap(d: np.ndarray, bits: int = 2) -> np.ndarray:
    """Steps rounded to a power of two times 1 + j / 2**bits (bits=2: 1, 1.25, 1.5, 1.75): few distinct
    float32 scales (mantissas of `bits` bits), cheap to store."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # d = 0 (all-zero channel) stays 0
        e = np.floor(np.log2(d))
        m = float(1 << bits)
        out = np.round(d / 2.0 ** e * m) / m * 2.0 ** e
    return np.where(d > 0, out, d).astype(np.float32)


GAIN_BITS = 4   # mantissa bits of a gain-preserving step (1/16 to 1/32 of an octave)


def step_grid(t: torch.Tensor, rel: float, deadzone: float, channel: bool = False, gain: bool = False,
              floor: float = 0.0) -> Grid | None:
    """Grid of step rel · rms (per tensor, or per output channel), rounded to the nearest code with a
    zero bin widened by `deadzone` steps; None if all zero (or a 1-D tensor 16-bit codes cannot span).

    Steps are snapped to quarter octaves (_snap).  With `gain` (rank >= 2 only), once the codes q are
    chosen each row's step is replaced by the one that keeps the row's gain, ``Δ = Σ x² / Σ x·q`` (then
    ``<x, x̂> = ‖x‖²``: the output of a channel keeps its scale in expectation instead of shrinking
    with the zeros that a coarse step makes; the shrinkage compounds over the layers of a network
    whose BatchNorms are folded or frozen), snapped to GAIN_BITS mantissa bits; the error of a
    value is then no longer bounded by half a step.  `floor` (1-D positive tensors): the step follows the
    smallest value plus `floor` instead of the smallest value (BatchNorm running variances enter as var + eps:
    floor=BN_EPS bounds the error of var + eps instead of var's).  float32 input of any shape; the Grid's codes
    are int64."""
    x = t.detach().cpu().float().contiguous().reshape(-1).numpy()
    if not np.isfinite(x).all():
        raise EncodeError("cannot quantize a tensor with NaN or Inf")
    rows = x.reshape(t.shape[0], -1) if channel and t.dim() >= 2 else x.reshape(1, -1)
    rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
    if not rms.any():
        return None
    amax = np.abs(rows).max(axis=1)
    if t.dim() == 1:
        # positive 1-D tensors (running variances, BatchNorm scales): the step also follows the smallest
        # magnitude, so that no value rounds to zero or loses more than `rel` of itself; a tensor whose
        # range then needs codes wider than 16 bits stays exact.  Signed ones (shifts, biases, means) at
        # rel x rms: a value near zero may round to zero.
        d1 = rel * (min(float(rms[0]), float(x.min()) + floor) if (x > 0).all() else float(rms[0]))
        if not d1 > 0 or amax[0] > MAX_CODE * d1:   # (a step that underflows to 0 included)
            return None
        d = np.array([d1])
    else:
        d = np.maximum(rel * rms, amax / MAX_CODE)
    d = np.where(d > 0, d, max(float(d.max()), 1e-30))   # an all-zero channel: any step
    d = _snap(d)
    a = np.abs(rows) / d[:, None]
    mag = np.rint(a)
    if deadzone:
        mag[a < 0.5 + deadzone] = 0
    k2 = np.sign(rows) * np.minimum(mag, MAX_CODE)
    if gain and t.dim() >= 2:
        xq = (rows.astype(np.float64) * k2).sum(axis=1)
        xx = (rows.astype(np.float64) ** 2).sum(axis=1)
        g = np.where(xq > 0, xx / np.where(xq > 0, xq, 1.0), d)
        # the new step keeps every code within 16 bits
        g = np.where(np.abs(k2).max(axis=1) * g <= MAX_CODE * d, g, d)
        d = _snap(np.maximum(g, 1e-30), GAIN_BITS)
    k = k2.astype(np.int64).reshape(-1)
    if rows.shape[0] > 1:
        return Grid(k, d, Granularity.CHANNEL, tuple(t.shape), axis=0)
    return Grid(k, d, Granularity.TENSOR, tuple(t.shape))


@dataclass
class BiasFix:
    """What the data-free bias correction of one conv / linear weight needs (mbz.models.biascorr builds it).

    bias: state_dict key of the bias that absorbs the shift; mean: float32 (C_in,), the expected value of
    each input channel; taps: float32 (kh, kw), the fraction of output positions at which each kernel tap
    falls inside the zero-padded input (None for a linear layer); groups: the conv's groups."""
    bias: str
    mean: np.ndarray
    taps: np.ndarray | None = None
    groups: int = 1


def expected_shift(fix: BiasFix, dw: np.ndarray) -> np.ndarray:
    """E[ΔW x] per output channel: float64 (C_out,) for a weight error ΔW (C_out, C_in / groups[, kh, kw]) and
    inputs of per-channel mean `fix.mean`, averaged over the output positions (zero padding: `fix.taps`).

    The bias correction of Nagel et al. 2019 ("Data-Free Quantization Through Weight Equalization and Bias
    Correction", ICCV, section 4.2): subtracting it from the bias keeps each output's expected value.
    Raises EncodeError when the shapes do not fit."""
    dw = np.asarray(dw, np.float64)
    mu = np.asarray(fix.mean, np.float64).reshape(-1)
    g = int(fix.groups)
    cout, cin_g = dw.shape[0], dw.shape[1] if dw.ndim >= 2 else 0
    if dw.ndim < 2 or g < 1 or cout % g or mu.size != cin_g * g:
        raise EncodeError(f"bias correction of {fix.bias}: weight {tuple(dw.shape)} does not fit {mu.size} input means "
                          f"in {g} groups")
    if dw.ndim > 2:
        taps = np.ones(dw.shape[2:]) if fix.taps is None else np.asarray(fix.taps, np.float64)
        if taps.shape != dw.shape[2:]:
            raise EncodeError(f"bias correction of {fix.bias}: taps {taps.shape} do not fit the kernel {dw.shape[2:]}")
        dw = (dw * taps).reshape(cout, cin_g, -1).sum(-1)
    w = dw.reshape(g, cout // g, cin_g)
    return np.einsum("goi,gi->go", w, mu.reshape(g, cin_g)).reshape(cout)


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
        try:
            g = step_grid(t, rel, policy.deadzone if t.dim() >= 2 else 0.0, policy.channel and t.dim() >= 2,
                          policy.gain, floor_1d(name)) if rel else None
        except EncodeError as e:
            raise EncodeError(f"tensor '{name}': {e}") from None
        if g is None:
            total += t.numel() * t.element_size() * 0.5
        else:   # codes at their order-0 entropy; snapped per-channel scales about a byte each after zstd
            total += code_entropy_bytes(g.k) + 8 + (g.scales.size if g.scales.size > 1 else 0)
    return total


__all__ = ["StepPolicy", "BiasFix", "BN_EPS", "floor_1d", "expected_shift", "step_grid", "estimate_bytes", "code_entropy_bytes"]
