"""ResNet-18 for 32x32 inputs (CIFAR): torchvision's `resnet18` with a CIFAR stem.

He et al. 2016, "Deep Residual Learning for Image Recognition": the ImageNet stem
(7x7 stride-2 conv, then a stride-2 max pool) would leave a 1x1 map before layer4 at
32x32; the CIFAR variant uses one 3x3 stride-1 conv and no max pool, so layer4 works on
4x4 maps.  The state_dict names are torchvision's (conv1, bn1, layer1.0.conv1, ..., fc);
conv1.weight is 64x3x3x3 instead of 64x3x7x7.
"""
from __future__ import annotations

from torch import nn

from .act_quant import insert_act_quant
from .folding import folded_skeleton


def resnet18_cifar(num_classes: int = 10, folded_bn: bool = False, act_bits: int = 32, act_alpha: dict | None = None,
                   **_) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max pool; 11.17 M parameters at 10 classes.

    `folded_bn` builds convs with bias and no BatchNorm (what weight QAT with BN folding exports);
    `act_bits` < 32 adds the activation quantizers QAT exports, with ranges `act_alpha`
    (mbz.models.act_quant.insert_act_quant: the module returned is then a torch.fx.GraphModule with
    the same submodules, since the block's ReLU module is called twice)."""
    from torchvision.models import resnet18
    m = resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    if folded_bn:
        folded_skeleton(m)
    return insert_act_quant(m, act_bits, learn=False, alphas=act_alpha)
