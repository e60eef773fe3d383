"""Data-free input means of a network's conv / linear layers from its BatchNorm statistics (for bias correction).

A BatchNorm2d's output channel c is taken as Gaussian N(beta_c, gamma_c^2) (its running statistics
normalise the conv output); a ReLU / ReLU6 turns it into a clipped Gaussian, whose mean has a closed
form; a residual add sums the means; pooling, flatten and dropout keep them.  The network's input is taken
as zero-mean (normalised images).  This is the input statistic of Nagel et al. 2019 ("Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV, section 4.2, appendix: the clipped
normal mean).  The Gaussian shape is trusted only when the conv feeding the BatchNorm sums at least
MIN_FAN_IN products (central limit): the output of a 3x3 depthwise conv (9 products) after ReLU6 is far from
a clipped Gaussian, and the means predicted for it were 1.1 to 2 times the measured ones on MobileNet-v2,
so the layers reading it get no correction (results/ratedist/README.md).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ratedist import BiasFix

MIN_FAN_IN = 16   # a BatchNorm fed by a conv of fewer products per output is not taken as Gaussian


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))


def clipped_normal_mean(mu: torch.Tensor, sd: torch.Tensor, lo: float = 0.0, hi: float = math.inf) -> torch.Tensor:
    """E[clamp(N(mu, sd^2), lo, hi)] elementwise (float64 tensors of one shape; lo < hi, hi may be inf)."""
    mu, sd = mu.double(), sd.double().clamp_min(1e-12)
    a, b = (lo - mu) / sd, (hi - mu) / sd
    pa, ca = _phi(a), _cdf(a)
    if math.isfinite(hi):
        pb, cb = _phi(b), _cdf(b)
    else:
        pb, cb = torch.zeros_like(mu), torch.ones_like(mu)
    m = mu * (cb - ca) + sd * (pa - pb) + lo * ca
    return m + hi * (1 - cb) if math.isfinite(hi) else m


def _act_range(m, node) -> tuple[float, float] | None:
    if isinstance(m, nn.ReLU6) or (node.op == "call_function" and node.target is F.relu6):
        return 0.0, 6.0
    if isinstance(m, nn.ReLU) or (node.op == "call_function" and node.target in (F.relu, torch.relu)):
        return 0.0, math.inf
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    return None


_KEEP = (nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten)


def input_means(model: nn.Module, input_shape=(1, 3, 32, 32)) -> dict[str, BiasFix]:
    """{module name: BiasFix} for every Conv2d / Linear of `model` (eval mode, BatchNorms not folded) whose
    input mean the BatchNorm statistics predict (module docstring); the BiasFix's bias is `<name>.bias`.

    Traced with torch.fx; one forward pass of zeros of `input_shape` gives each conv's input size (for the
    padded taps).  Layers reading anything else (a max pool, an unknown op, a depthwise conv's output)
    are left out.  Raises torch.fx's errors for a model that cannot be traced."""
    import torch.fx
    gm = torch.fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape)))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    st: dict = {}   # node -> (mean, variance) per channel, float64; None: not predicted
    out: dict[str, BiasFix] = {}
    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        src = st.get(args[0]) if args else None
        m = mods.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            c = input_shape[1]
            st[node] = (torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            if src is not None and src[0].numel() == (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features):
                taps = None
                if isinstance(m, nn.Conv2d):
                    h, w = shapes[node.target][2:]
                    u = F.unfold(torch.ones(1, 1, h, w), m.kernel_size, m.dilation, m.padding, m.stride)
                    taps = u.mean(-1).reshape(m.kernel_size).numpy().astype(np.float32)
                out[node.target] = BiasFix(f"{node.target}.bias", src[0].numpy().astype(np.float32), taps,
                                           m.groups if isinstance(m, nn.Conv2d) else 1)
            st[node] = None
        elif isinstance(m, nn.BatchNorm2d):
            p = args[0] if args else None
            pm = mods.get(p.target) if p is not None and p.op == "call_module" else None
            fan = pm.weight[0].numel() if isinstance(pm, (nn.Conv2d, nn.Linear)) else 0
            st[node] = ((m.bias.detach().double().clone(), m.weight.detach().double() ** 2)
                        if fan >= MIN_FAN_IN else None)
        elif _act_range(m, node) is not None:
            lo, hi = _act_range(m, node)
            if src is None:
                st[node] = None
            else:
                mean = clipped_normal_mean(src[0], src[1].sqrt(), lo, hi)
                st[node] = (mean, src[1])   # the variance only feeds a later add's sum: an upper bound
        elif node.op == "call_function" and node.target in (torch.add, operator.add) and len(args) == 2:
            a, b = st.get(args[0]), st.get(args[1])
            st[node] = (a[0] + b[0], a[1] + b[1]) if a is not None and b is not None else None
        elif isinstance(m, _KEEP) or (node.op == "call_function" and node.target in (torch.flatten, F.dropout,
                                                                                     F.adaptive_avg_pool2d)):
            st[node] = src
        else:
            st[node] = None
    return out


def bias_fixes(sd: dict, arch: dict, folded: dict) -> dict[str, BiasFix]:
    """{weight key of the folded state_dict: BiasFix} for the state_dict `sd` (BatchNorms not folded) of the
    architecture `arch` (mbz.models.registry), restricted to the layers whose bias `folded` (its
    fold_state_dict output) holds.  Raises MbzError when the tensors do not fit the architecture."""
    from .registry import build_model
    from ..errors import MbzError
    model = build_model(arch)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    except RuntimeError as e:
        raise MbzError(f"the tensors do not fit {arch.get('name')}: {str(e).splitlines()[0]}") from None
    model.eval()
    return {f"{name}.weight": fix for name, fix in input_means(model).items()
            if f"{name}.weight" in folded and fix.bias in folded}


__all__ = ["MIN_FAN_IN", "clipped_normal_mean", "input_means", "bias_fixes"]
