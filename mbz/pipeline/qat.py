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


# --------------------------------------------------------------------------- model surgery
def _conv_bn_pairs(model: nn.Module):
    """(sequential, conv key, conv, bn key, bn) for every Conv2d directly followed by a BatchNorm2d."""
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            mods = list(m._modules.items())
            for (kc, c), (kb, b) in zip(mods, mods[1:]):
                if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    yield m, kc, c, kb, b


def _biased_like(c: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                     bias=True).to(c.weight.device)


def fold_bn(model: nn.Module) -> nn.Module:
    """Replace every Conv2d -> BatchNorm2d pair of MobileNet-v2 with one Conv2d with bias (in place)."""
    for seq, kc, c, kb, b in _conv_bn_pairs(model):
        g = b.weight / (b.running_var + b.eps).sqrt()
        conv = _biased_like(c)
        with torch.no_grad():
            conv.weight.copy_(c.weight * g.view(-1, 1, 1, 1))
            b0 = c.bias if c.bias is not None else torch.zeros_like(b.running_mean)
            conv.bias.copy_(b.bias + (b0 - b.running_mean) * g)
        seq._modules[kc], seq._modules[kb] = conv, nn.Identity()
    return model


def folded_skeleton(model: nn.Module) -> nn.Module:
    """Same structure as fold_bn's output, weights uninitialised (for load_model)."""
    for seq, kc, c, kb, _ in _conv_bn_pairs(model):
        seq._modules[kc], seq._modules[kb] = _biased_like(c), nn.Identity()
    return model


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


def to_qmodules(model: nn.Module, wbits: int, skip_first: bool = False, per_channel: bool = True) -> nn.Module:
    """Swap Conv2d / Linear for their fake-quantized versions (same parameters)."""
    first = True
    for name, m in list(model.named_modules()):
        for k, child in list(m._modules.items()):
            if type(child) is nn.Conv2d:
                if first and skip_first:
                    first = False
                    continue
                first = False
                child.__class__ = QConv2d
                child.setup_quant(wbits, per_channel)
            elif type(child) is nn.Linear:
                child.__class__ = QLinear
                child.setup_quant(wbits, per_channel)
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
