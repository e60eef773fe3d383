"""VGG-11 / VGG-16 with BatchNorm for 32x32 inputs (CIFAR).

Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", configurations A and D with BatchNorm after every conv (torchvision's
`vgg11_bn` / `vgg16_bn` feature stacks, names features.N.*).  At 32x32 the five max pools
leave a 1x1x512 map, so the three 4096-wide ImageNet classifier layers (123 M parameters)
are replaced by one Linear(512, num_classes) named `classifier`, as in the usual CIFAR
variant: 9.23 M (VGG-11-BN) and 14.73 M (VGG-16-BN) parameters at 10 classes.
"""
from __future__ import annotations

from torch import nn

from .act_quant import insert_act_quant
from .folding import folded_skeleton


class VGGCifar(nn.Module):
    """features (torchvision's conv/BN/ReLU/max-pool stack) -> flatten -> classifier (Linear 512 -> classes)."""

    def __init__(self, features: nn.Sequential, num_classes: int = 10):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _vgg(config: str, num_classes: int, folded_bn: bool, act_bits: int, act_alpha: dict | None) -> nn.Module:
    from torchvision.models.vgg import cfgs, make_layers
    m = VGGCifar(make_layers(cfgs[config], batch_norm=True), num_classes)
    if folded_bn:
        folded_skeleton(m)
    return insert_act_quant(m, act_bits, learn=False, alphas=act_alpha)


def vgg11_bn_cifar(num_classes: int = 10, folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                   **_) -> nn.Module:
    """VGG-11 with BatchNorm, CIFAR classifier (one Linear 512 -> num_classes).

    `folded_bn` / `act_bits` / `act_alpha`: what QAT exports (as resnet18_cifar)."""
    return _vgg("A", num_classes, folded_bn, act_bits, act_alpha)


def vgg16_bn_cifar(num_classes: int = 10, folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                   **_) -> nn.Module:
    """VGG-16 with BatchNorm, CIFAR classifier (one Linear 512 -> num_classes); arguments as vgg11_bn_cifar."""
    return _vgg("D", num_classes, folded_bn, act_bits, act_alpha)
