"""MobileNet-v2 for 32x32 inputs (CIFAR): the builder and the structure queries of its state_dict.

The network is torchvision's `mobilenet_v2` (Sandler et al. 2018) with the stem conv
and the first stride-2 block at stride 1.  `hidden` rebuilds inverted residuals
thinned by structured pruning (mbz.pipeline.channels); `folded_bn` and `act_bits`
rebuild what QAT exports (mbz.models.folding, mbz.models.act_quant).
"""
from __future__ import annotations

from torch import nn

from ..errors import MbzError
from .act_quant import insert_act_quant
from .folding import folded_skeleton

def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2,
                       folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                       hidden: list | None = None, **_):
    """torchvision MobileNet-v2 for 32x32 inputs.

    The stem conv (features[0][0]) and the first stride-2 block
    (features[2].conv[1][0]) run at stride 1, so the last feature map is 4x4
    rather than 1x1: at 32x32 the ImageNet strides would discard too much.
    `folded_bn` builds convs with bias and no BatchNorm; `act_bits` < 32 adds
    the activation quantizers of mbz.pipeline.qat with ranges `act_alpha`;
    `hidden` (hidden channels of features[1..17]) rebuilds blocks thinned by
    structured pruning (mbz.pipeline.channels).
    """
    from torchvision.models import mobilenet_v2
    m = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    m.features[0][0].stride = (1, 1)
    m.features[2].conv[1][0].stride = (1, 1)
    if hidden:
        if (not isinstance(hidden, list) or len(hidden) != len(m.features) - 2
                or not all(type(h) is int and 0 < h <= 1 << 16 for h in hidden)):
            raise MbzError(f"arch 'hidden' must list {len(m.features) - 2} channel counts in 1..65536, got {hidden!r}")
        set_hidden(m, hidden)
    if folded_bn or act_bits < 32:
        if folded_bn:
            folded_skeleton(m)
        m = insert_act_quant(m, act_bits, learn=False, alphas=act_alpha)
    return m


# torchvision's MobileNet-v2: output channels of the stem, of each inverted-residual stage (repeats) and of the last conv
_MNV2_STAGES = ((16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1))


def _mnv2_channels(w: float) -> list[int]:
    from torchvision.models._utils import _make_divisible
    out = [_make_divisible(32 * w, 8)]
    for c, n in _MNV2_STAGES:
        out += [_make_divisible(c * w, 8)] * n
    return out + [_make_divisible(1280 * max(1.0, w), 8)]


def _width_of(sd) -> float:
    """The width multiplier whose channel counts are the state_dict's (stem/32 alone is wrong for 0.35, 1.4 ...)."""
    stages = blocks(sd)
    have = [int(sd["features.0.0.weight"].shape[0])]
    have += [int(sd[f"features.{i}.conv.{2 if expand else 1}.weight"].shape[0]) for i, expand in stages]  # projections
    have.append(int(sd[f"features.{len(stages) + 1}.0.weight"].shape[0]))
    guess = round(have[0] / 32, 4)
    candidates = [guess] + sorted((round(k * 0.05, 2) for k in range(1, 81)), key=lambda w: abs(w - guess))
    return next((w for w in candidates if _mnv2_channels(w) == have), guess)



def blocks(sd: dict) -> list[tuple[int, bool]]:
    """(i, has an expansion conv) for the inverted residuals features[1..] of a state_dict."""
    out, i = [], 1
    while f"features.{i}.conv.0.0.weight" in sd:
        out.append((i, f"features.{i}.conv.3.weight" in sd))  # expand, depthwise, project, BN
        i += 1
    return out


def expand_blocks(sd: dict) -> list[int]:
    """Indices i of features[i] that have an expansion conv (all inverted residuals but the first)."""
    return [i for i, expand in blocks(sd) if expand]


def hidden_widths(sd: dict) -> list[int]:
    """Hidden channels of features[1..17] as stored (the depthwise conv's channel count)."""
    return [int(sd[f"features.{i}.conv.{1 if expand else 0}.0.weight"].shape[0]) for i, expand in blocks(sd)]


def set_hidden(model: nn.Module, hidden: list[int]) -> nn.Module:
    """Rebuild features[i] (i >= 1) of a torchvision MobileNet-v2 with hidden[i-1] hidden channels."""
    for i, h in enumerate(hidden, start=1):
        conv = model.features[i].conv
        if len(conv) != 4 or conv[1][0].out_channels == h:
            continue
        exp, dw, proj = conv[0][0], conv[1][0], conv[2]
        conv[0][0] = nn.Conv2d(exp.in_channels, h, 1, bias=False)
        conv[0][1] = nn.BatchNorm2d(h)
        conv[1][0] = nn.Conv2d(h, h, 3, dw.stride, 1, groups=h, bias=False)
        conv[1][1] = nn.BatchNorm2d(h)
        conv[2] = nn.Conv2d(h, proj.out_channels, 1, bias=False)
    return model
