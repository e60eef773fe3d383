"""Quantization-aware training pieces: BN folding, LSQ fake quantizers, export.

* Weights: per output channel, symmetric, `wbits` (2..8), learned step sizes
  (LSQ, Esser et al. 2020) with a straight-through estimator for rounding.
  Exported weights are exactly ``float32(k) * s`` so `mbz pack` finds the grid
  losslessly; steps are rounded to fp16-representable values so that the
  SCALES section shrinks under shuffle+zstd.
* Activations: per tensor; unsigned `abits` after ReLU6, signed symmetric at
  block outputs (linear bottlenecks / residual sums).  Ranges are calibrated
  on a few batches, then learned.  Their bits and ranges go into the file's
  metadata and `mbz.load_model` rebuilds them (ActQuant modules).
* BatchNorm folded into the preceding convolution (bias added), so that only
  one bias per channel remains; biases are held in fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.act_quant import (ActQuant, QReLU6, act_quantizers, grad_scale, insert_act_quant,  # noqa: F401
                                lsq_fake_quant, round_ste)
from ..models.folding import fold_bn, folded_skeleton  # noqa: F401


@torch.no_grad()
def mse_step(w: torch.Tensor, bits: int, per_channel: bool = True, grid: int = 40) -> torch.Tensor:
    """Initial step: the clipping of max|w| (factor in 0.15..1) with the least squared rounding error.

    At 2-3 bits the max-based step (factor 1) rounds most weights to zero and the model
    collapses (seen: 25-45% top-1 after 4 QAT epochs at 2 bits); the error-minimising
    step keeps it trainable.  Pruned zeros stay zero on every grid and are ignored.
    """
    qmax = (1 << (bits - 1)) - 1
    wf = w.float().reshape(w.shape[0], -1) if per_channel else w.float().reshape(1, -1)
    amax = wf.abs().amax(dim=1).clamp_min(1e-8)
    nz = wf != 0
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for f in torch.linspace(0.15, 1.0, grid).tolist():
        s = (amax * f / qmax).unsqueeze(1)
        err = (((torch.clamp(torch.round(wf / s), -qmax, qmax) * s - wf) ** 2) * nz).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s.squeeze(1), best)
    return best.float()


class QConv2d(nn.Conv2d):
    """Conv2d whose weight is fake-quantized per output channel with a learned step (LSQ)."""

    wbits = 32

    def setup_quant(self, bits: int, per_channel: bool = True):
        """Learned step per output channel, or one step for the whole tensor (per_channel=False)."""
        self.wbits = int(bits)
        qmax = (1 << (bits - 1)) - 1
        self.step = nn.Parameter(mse_step(self.weight.detach(), bits, per_channel))

    def qweight(self):
        if self.wbits >= 32:
            return self.weight
        qmax = (1 << (self.wbits - 1)) - 1
        s = self.step.abs().clamp_min(1e-8)
        if self.training:
            per = self.weight[0].numel() if s.numel() > 1 else self.weight.numel()
            s = grad_scale(s, 1.0 / (per * qmax) ** 0.5)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        k = torch.clamp(round_ste(self.weight / s.view(shape)), -qmax, qmax)
        return k * s.view(shape)

    def forward(self, x):
        return self._conv_forward(x, self.qweight(), self.bias)


class QLinear(nn.Linear):
    wbits = 32
    setup_quant = QConv2d.setup_quant
    qweight = QConv2d.qweight

    def forward(self, x):
        return F.linear(x, self.qweight(), self.bias)


def to_qmodules(model: nn.Module, wbits: int, skip_first: bool = False, per_channel: bool = True,
                layer_bits: dict | None = None) -> nn.Module:
    """Swap Conv2d / Linear for their fake-quantized versions (same parameters).

    `layer_bits` ({weight name: bits}, e.g. 'features.3.conv.1.0.weight': 3; a mixed-precision plan of
    mbz.pipeline.mixed) sets the width of the layers it names, `wbits` that of the others; 32 keeps
    a layer in float.  ValueError naming the first entry that is no conv / linear weight of the model."""
    layer_bits = dict(layer_bits or {})
    first = True
    seen = set()
    for name, m in list(model.named_modules()):
        for k, child in list(m._modules.items()):
            key = f"{name}.{k}.weight" if name else f"{k}.weight"
            if type(child) is nn.Conv2d:
                if first and skip_first:
                    first = False
                    continue
                first = False
                cls = QConv2d
            elif type(child) is nn.Linear:
                cls = QLinear
            else:
                continue
            seen.add(key)
            bits = int(layer_bits.get(key, wbits))
            if bits >= 32:
                continue
            child.__class__ = cls
            child.setup_quant(bits, per_channel)
    unknown = sorted(set(layer_bits) - seen)
    if unknown:
        raise ValueError(f"layer_bits: {unknown[0]!r} is no conv / linear weight of the model "
                         f"({len(seen)} layers, e.g. {sorted(seen)[0]!r})")
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> None:
    """Set every ActQuant range from activation statistics of a few batches."""
    qs = [m for m in model.modules() if isinstance(m, ActQuant) and m.bits < 32]
    for q in qs:
        q.calibrating, q.obs = True, torch.zeros(())
    model.eval()
    for x in batches:
        model(x)
    for q in qs:
        q.calibrating = False
        q.alpha.data.fill_(float(q.obs) if float(q.obs) > 0 else 1.0)


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


@torch.no_grad()
def snap_for_export(model: nn.Module) -> None:
    """Round steps, ranges and biases to fp16-representable values (the model then evaluates as exported)."""
    for m in model.modules():
        if isinstance(m, (QConv2d, QLinear)) and m.wbits < 32:
            m.step.data = fp16_exact(m.step.abs().clamp_min(6.2e-5))
        if isinstance(m, ActQuant):
            m.alpha.data = fp16_exact(m.alpha.abs().clamp_min(1e-3))
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data = fp16_exact(m.bias)


@torch.no_grad()
def export_state_dict(model: nn.Module, bias_dtype=torch.float16) -> tuple[dict, dict]:
    """(state_dict of the plain folded model with weights on their grid, activation metadata)."""
    sd = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.qweight() if isinstance(m, (QConv2d, QLinear)) else m.weight
            sd[f"{name}.weight"] = w.detach().float().cpu().contiguous()
            if m.bias is not None:
                sd[f"{name}.bias"] = m.bias.detach().cpu().to(bias_dtype if bias_dtype else m.bias.dtype)
        elif isinstance(m, nn.BatchNorm2d):
            for k, v in m.state_dict().items():
                sd[f"{name}.{k}"] = v.detach().cpu()
    acts = {k: float(q.alpha) for k, q in act_quantizers(model).items()}
    bits = {q.bits for q in act_quantizers(model).values()}
    return sd, {"act_bits": bits.pop() if bits else 32, "act_alpha": acts}
