"""MobileNet-v2 for 32x32 inputs (CIFAR): the builder and the structure queries of its state_dict.

The network is torchvision's `mobilenet_v2` (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks") with the stem conv and the first stride-2 block at stride 1.  It is defined here, module for
module as torchvision's (the same names, classes, initialisation order and forward: tests/test_models.py
compares them bit for bit), so that building it does not import torchvision (about 3 s).  `hidden` rebuilds
inverted residuals thinned by structured pruning (mbz.pipeline.channels); `folded_bn` and `act_bits` rebuild
what QAT exports (mbz.models.folding, mbz.models.act_quant).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MbzError
from .act_quant import insert_act_quant
from .folding import folded_skeleton


def _make_divisible(v: float, divisor: int = 8) -> int:
    """`v` rounded to the nearest multiple of `divisor` (at least `divisor`), one step up where that loses more
    than 10% (the channel rule of the MobileNet papers)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class Conv2dNormActivation(nn.Sequential):
    """[0] Conv2d (no bias, 'same' padding), [1] BatchNorm2d, [2] ReLU6 (in place)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, dilation=1, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))
        self.out_channels = cout


class InvertedResidual(nn.Module):
    """conv: [expansion 1x1 Conv2dNormActivation (expand_ratio > 1)], depthwise 3x3 Conv2dNormActivation,
    projection 1x1 Conv2d, BatchNorm2d; the input added back where the stride is 1 and the widths agree."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [Conv2dNormActivation(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# (expansion t, output channels c, repeats n, stride s of the first) of each stage: the paper's table 2
_MNV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """features (stem, 17 inverted residuals, last 1x1 conv) -> global average pool -> classifier (Dropout,
    Linear); ImageNet strides (mobilenet_v2_cifar sets its own)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [Conv2dNormActivation(3, cin, stride=2)]
        for t, c, n, s in _MNV2_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand_ratio=t))
                cin = cout
        features.append(Conv2dNormActivation(cin, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():  # in module order: the same random draws as torchvision's
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2,
                       folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                       hidden: list | None = None, **_):
    """MobileNet-v2 (torchvision's network, built without torchvision) for 32x32 inputs.

    The stem conv (features[0][0]) and the first stride-2 block
    (features[2].conv[1][0]) run at stride 1, so the last feature map is 4x4
    rather than 1x1: at 32x32 the ImageNet strides would discard too much.
    `folded_bn` builds convs with bias and no BatchNorm; `act_bits` < 32 adds
    the activation quantizers of mbz.pipeline.qat with ranges `act_alpha`;
    `hidden` (hidden channels of features[1..17]) rebuilds blocks thinned by
    structured pruning (mbz.pipeline.channels).
    """
    m = MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
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
    out = [_make_divisible(32 * w)]
    for c, n in _MNV2_STAGES:
        out += [_make_divisible(c * w)] * n
    return out + [_make_divisible(1280 * max(1.0, w))]


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
    """Rebuild features[i] (i >= 1) of a MobileNet-v2 (ours or torchvision's) with hidden[i-1] hidden channels."""
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
