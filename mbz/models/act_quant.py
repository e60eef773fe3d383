"""Activation quantizers a rebuilt model needs at inference (and QAT trains): ActQuant, QReLU6.

* Per-tensor fake quantization to `bits`: unsigned [0, alpha] after ReLU6, signed
  [-alpha, alpha] at block outputs; ranges learned with LSQ (Esser et al. 2020,
  "Learned Step Size Quantization", eq. 3) and a straight-through estimator.
* `insert_act_quant` adds them to a MobileNet-v2 without renaming any weight; the
  ranges it takes back (`alphas`, {module path: alpha}) are the file's
  `arch.act_alpha` metadata, so `mbz.load_model` rebuilds the exported network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def round_ste(x):
    return (x.round() - x).detach() + x


def grad_scale(x, s):
    return (x - x * s).detach() + x * s


class _LsqFakeQuant(torch.autograd.Function):
    """round(clamp(x / s)) * s with LSQ's gradients, in fewer passes over x than autograd's graph.

    Forward equals ``clamp(round_ste(x / s), lo, hi) * s`` bit for bit; backward gives
    d/dx = 1 where x/s lies in [lo, hi] (straight-through), 0 outside, and
    d/ds = sum(g * (q - x/s) inside, g * q outside) * grad_scale (Esser et al. 2020, eq. 3).
    """

    @staticmethod
    def forward(ctx, x, s, lo: int, hi: int, gscale: float):
        v = x / s
        q = torch.clamp(torch.round(v), lo, hi)
        ctx.save_for_backward(v, s)
        ctx.lo, ctx.hi, ctx.gscale = lo, hi, gscale
        return q * s

    @staticmethod
    def backward(ctx, g):
        v, s = ctx.saved_tensors
        inside = (v >= ctx.lo) & (v <= ctx.hi)
        gx = g * inside
        q = torch.clamp(torch.round(v), ctx.lo, ctx.hi)
        gs = (g * torch.where(inside, q - v, q)).sum(dtype=torch.float32) * ctx.gscale
        return gx, gs.reshape(s.shape).to(s.dtype), None, None, None


def lsq_fake_quant(x, s, lo: int, hi: int, gscale: float = 1.0):
    return _LsqFakeQuant.apply(x, s, lo, hi, gscale)


class ActQuant(nn.Module):
    """Fake-quantize activations to `bits` (unsigned [0, a] or signed [-a, a]); identity at bits >= 32."""

    def __init__(self, bits: int = 32, signed: bool = False, alpha: float = 6.0, learn: bool = True):
        super().__init__()
        self.bits, self.signed = int(bits), bool(signed)
        a = torch.tensor(float(alpha))
        if learn:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a, persistent=False)
        self.calibrating = False
        self.owns_input = False  # set where the input is a fresh tensor (inference then works in place)
        self.register_buffer("obs", torch.zeros(()), persistent=False)

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def step(self):
        return self.alpha.abs().clamp_min(1e-4) / self.levels

    def forward(self, x):
        if self.bits >= 32:
            return x
        if self.calibrating:  # running max of a high percentile
            v = x.detach().float().abs().flatten()
            if v.numel() > 1_000_000:
                v = v[torch.randint(0, v.numel(), (1_000_000,), device=v.device)]
            q = torch.quantile(v, 0.9995)
            self.obs = torch.maximum(self.obs.to(q.device), q)
            return x
        s = self.step()
        lo = -self.levels if self.signed else 0
        if not torch.is_grad_enabled():
            # inference: the same numbers as below (round_ste(v) == round(v) bit for bit), fewer passes
            # in place when the input is ours to overwrite (owns_input: a new tensor nobody else holds)
            y = x.div_(s) if self.owns_input else torch.div(x, s)
            return y.round_().clamp_(lo, self.levels).mul_(s)
        gscale = 1.0 / (x.numel() * self.levels) ** 0.5 if self.training else 1.0
        return lsq_fake_quant(x, s, lo, self.levels, gscale)

    def extra_repr(self):
        return f"bits={self.bits}, signed={self.signed}"


class QReLU6(ActQuant):
    """ReLU6 followed by an unsigned activation quantizer (keeps the ReLU6's module path)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owns_input = True  # the quantizer sees the ReLU6's own output

    def forward(self, x):
        # in place at inference: x is the conv/BN output, used nowhere else (a new tensor per call costs 8x)
        return super().forward(F.relu6(x, inplace=not torch.is_grad_enabled()))


def _block_hook(q):
    def hook(module, inputs, output):
        return q(output)
    return hook


def insert_act_quant(model: nn.Module, abits: int, learn: bool = True, alphas: dict | None = None) -> nn.Module:
    """Quantize activations without renaming any weight.

    Every ReLU6 becomes a QReLU6 (unsigned, range [0, alpha]); the output of each
    inverted-residual block features[1..17] (a signed linear bottleneck, possibly a
    residual sum) goes through a signed quantizer held in model.block_q and applied
    by a forward hook.  `alphas` ({path: range}) restores calibrated ranges.
    """
    if abits >= 32:
        return model
    alphas = alphas or {}
    for name, m in list(model.named_modules()):
        for k, child in list(m._modules.items()):
            if isinstance(child, nn.ReLU6):
                path = f"{name}.{k}" if name else k
                m._modules[k] = QReLU6(abits, False, alphas.get(path, 6.0), learn)
    model.block_q = nn.ModuleDict()
    for i in range(1, len(model.features) - 1):
        q = ActQuant(abits, True, alphas.get(f"features.{i}", 4.0), learn)
        q.owns_input = True  # a block's output is a new tensor (conv/BN output or residual sum)
        model.block_q[str(i)] = q
        model.features[i].register_forward_hook(_block_hook(q))
    return model


def act_quantizers(model: nn.Module) -> dict:
    """{path: quantizer} with the keys insert_act_quant takes back as `alphas`."""
    out = {name: m for name, m in model.named_modules() if isinstance(m, QReLU6)}
    for i, q in getattr(model, "block_q", {}).items():
        out[f"features.{i}"] = q
    return out
