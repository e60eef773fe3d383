"""BatchNorm folding: Conv2d -> BatchNorm2d pairs become one Conv2d with bias; or each BatchNorm its own affine.

w' = w * g,  b' = beta + (b - running_mean) * g,  g = gamma / sqrt(running_var + eps)
(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", section 3.2).  `folded_skeleton` builds the same
structure with uninitialised weights, for loading a folded state_dict.  `bn_affine` keeps every module and
rewrites each BatchNorm as the affine map it computes in eval mode: running mean 0, running variance 1 - eps,
weight g, bias beta - running_mean * g (the same outputs up to float rounding; two of its four tensors become
constants that cost almost nothing to store).
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_pairs(model: nn.Module):
    """(parent, conv key, conv, bn key, bn) for every Conv2d whose output goes only into a BatchNorm2d.

    Found in the module graph (torch.fx symbolic trace), so attribute pairs such as a ResNet
    block's conv1 -> bn1 are found as well as Sequential neighbours; a model that cannot be traced
    falls back to Conv2d -> BatchNorm2d neighbours inside nn.Sequential containers."""
    pairs = _traced_pairs(model)
    if pairs is not None:
        yield from pairs
        return
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            mods = list(m._modules.items())
            for (kc, c), (kb, b) in zip(mods, mods[1:]):
                if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    yield m, kc, c, kb, b


def _traced_pairs(model: nn.Module) -> list | None:
    import torch.fx
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any untraceable model falls back to the Sequential scan
        return None
    mods = dict(model.named_modules())
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            cparent, _, ckey = src.target.rpartition(".")
            bparent, _, bkey = node.target.rpartition(".")
            if cparent == bparent:
                parent = model.get_submodule(cparent) if cparent else model
                out.append((parent, ckey, mods[src.target], bkey, mods[node.target]))
    return out


def _biased_like(c: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                     bias=True).to(c.weight.device)


def fold_bn(model: nn.Module) -> nn.Module:
    """Replace every Conv2d -> BatchNorm2d pair (conv_bn_pairs) with one Conv2d with bias (in place)."""
    for seq, kc, c, kb, b in list(conv_bn_pairs(model)):
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
    for seq, kc, c, kb, _ in list(conv_bn_pairs(model)):
        seq._modules[kc], seq._modules[kb] = _biased_like(c), nn.Identity()
    return model


# a BatchNorm whose largest |g| is more than this many times its median |g| is left as it is: one channel with a
# variance far below eps and a sizeable gamma (a dead channel) gets g up to gamma / sqrt(eps), 316 gamma, and one
# step per tensor (rel x rms) would then round the module's other channels coarsely (seen: 10% error on a
# checkpoint whose pruned filters kept their gamma); the reference MobileNet-v2's modules reach 8.5
BN_AFFINE_SPREAD = 16.0


def bn_affine(model: nn.Module, only=None, max_spread: float | None = BN_AFFINE_SPREAD) -> tuple[list[str], list[str]]:
    """Rewrite BatchNorm1d/2d/3d modules with running statistics and affine parameters (in place) as the affine
    map each computes in eval mode: weight g = gamma / sqrt(running_var + eps), bias beta - running_mean * g,
    running_mean 0, running_var 1 - eps (float32, where sqrt(1 - eps + eps) is 1 for eps 1e-5 and 1e-3).
    Computed in float64, stored in float32 (a 16-bit dtype would round g and the bias, and overflow where
    |mean x g| > 65504).  `only`: the module names to rewrite (None: all); a module whose largest |g| exceeds
    `max_spread` times its median nonzero |g| is skipped (BN_AFFINE_SPREAD; None: never).  Returns (names rewritten,
    names skipped).  The model computes the same function in eval mode up to float rounding; in train mode
    BatchNorm uses batch statistics and the rewritten model is not the same network to train on."""
    done, skipped = [], []
    for name, m in model.named_modules():
        if not (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats
                and m.running_mean is not None) or (only is not None and name not in only):
            continue
        with torch.no_grad():
            g = m.weight.double() / (m.running_var.double() + m.eps).sqrt()
            b = m.bias.double() - m.running_mean.double() * g
            mag = g.abs()
            live = mag[mag > 0]  # channels pruned to gamma 0 (network slimming) do not set the median
            if max_spread is not None and live.numel() and float(live.max()) > max_spread * float(live.median()):
                skipped.append(name)
                continue
            m.float()
            m.weight.copy_(g.float())
            m.bias.copy_(b.float())
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
        done.append(name)
    return done, skipped
