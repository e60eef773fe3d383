"""Structured (channel) pruning of any CNN, found in its module graph: remove output channels and rebuild
thinner layers.

A *channel group* is a Conv2d (groups=1, the producer) whose output reaches exactly one other
Conv2d (groups=1, the consumer) through nothing but BatchNorm2d, element-wise activations, pooling
and depthwise convolutions, each with a single user.  Its channels are then independent of the rest
of the network: removing channel c deletes filter c of the producer, entry c of every BatchNorm on
the way, depthwise filter c, and input column c of the consumer.  Channels that feed a residual sum,
a concatenation, a flatten or two layers are never in a group, so the network's function is only
changed by the removed channels themselves.  Groups are found by a torch.fx symbolic trace, so the
same code serves VGG (conv -> BN -> ReLU -> max pool -> conv), ResNet basic blocks (conv1 -> bn1 ->
relu -> conv2) and MobileNet-v2's inverted residuals (expand -> BN -> ReLU6 -> depthwise -> BN ->
ReLU6 -> project).

Channels are ranked by the L2 norm of the producer's filter scaled by its BatchNorm's
|gamma| / sqrt(running_var + eps), i.e. by the norm of the BN-folded filter (Li et al. 2017, "Pruning
Filters for Efficient ConvNets", with the BN scaling factor of Liu et al. 2017, "Learning Efficient
Convolutional Networks through Network Slimming").

A thinned network is described by its architecture plus ``channels``: {producer module name: kept
output channels}; `apply_widths` turns a freshly built network into that shape, so `mbz.load_model`
rebuilds thinned files.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Identity,
                nn.Dropout, nn.MaxPool2d, nn.AvgPool2d)
PASS_FUNCTIONS = (F.relu, F.relu6, torch.relu, F.hardtanh, F.silu, F.max_pool2d, F.avg_pool2d)
PASS_METHODS = ("relu", "relu_")


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def channel_groups(model: nn.Module) -> list[dict]:
    """[{producer, bns, depthwise, consumer}] module names of every channel group of `model` (module docstring).

    Raises ValueError when the model cannot be traced by torch.fx."""
    import torch.fx
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported the same way
        raise ValueError(f"cannot trace the model's graph for channel pruning: {type(e).__name__}: {e}") from None
    mods = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.Conv2d) or mods[node.target].groups != 1:
            continue
        g = {"producer": node.target, "bns": [], "depthwise": [], "consumer": None}
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not nxt.args or nxt.args[0] is not cur:
                break
            m = mods.get(nxt.target) if nxt.op == "call_module" else None
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                g["consumer"] = nxt.target
                break
            if _is_depthwise(m):
                g["depthwise"].append(nxt.target)
            elif isinstance(m, nn.BatchNorm2d):
                g["bns"].append(nxt.target)
            elif not (isinstance(m, PASS_MODULES)
                      or (nxt.op == "call_function" and nxt.target in PASS_FUNCTIONS)
                      or (nxt.op == "call_method" and nxt.target in PASS_METHODS)):
                break
            cur = nxt
        if g["consumer"] is not None and mods[g["consumer"]].in_channels == mods[g["producer"]].out_channels:
            groups.append(g)
    return groups


def channel_scores(sd: dict, group: dict) -> torch.Tensor:
    """(C,) float32 score of each output channel of the group's producer: ||W_c||_2 * |gamma_c| / sqrt(var_c + eps)
    of its first BatchNorm (the plain filter norm when there is none)."""
    w = sd[group["producer"] + ".weight"].float()
    score = w.flatten(1).norm(dim=1)
    if group["bns"]:
        b = group["bns"][0] + "."
        if b + "weight" in sd and b + "running_var" in sd:
            score = score * sd[b + "weight"].float().abs() / (sd[b + "running_var"].float() + 1e-5).sqrt()
    return score


def keep_count(c: int, ratio: float, multiple: int = 8) -> int:
    """Channels kept of c when removing `ratio` of them, rounded to a multiple (at least one multiple, at most c)."""
    if ratio <= 0:
        return c
    k = int(round(c * (1 - ratio) / multiple)) * multiple
    return max(min(multiple, c), min(c, k))


def choose_channels(sd: dict, groups: list[dict], ratio: float, multiple: int = 8) -> dict:
    """{producer: sorted LongTensor of kept channels}: the same share removed in every group, by channel_scores."""
    keep = {}
    for g in groups:
        s = channel_scores(sd, g)
        k = keep_count(s.numel(), ratio, multiple)
        keep[g["producer"]] = torch.sort(torch.topk(s, k).indices).values
    return keep


def thin_state_dict(sd: dict, groups: list[dict], keep: dict) -> dict:
    """A new state_dict holding only the kept channels of every group in `keep` (others unchanged)."""
    out = dict(sd)
    for g in groups:
        idx = keep.get(g["producer"])
        if idx is None:
            continue
        for name in [g["producer"]] + g["depthwise"]:
            for leaf in ("weight", "bias"):
                if name + "." + leaf in sd:
                    out[name + "." + leaf] = out[name + "." + leaf][idx].clone()
        for bn in g["bns"]:
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                if bn + "." + leaf in sd:
                    out[bn + "." + leaf] = out[bn + "." + leaf][idx].clone()
        cw = g["consumer"] + ".weight"
        out[cw] = out[cw][:, idx].clone()
    return out


def widths_of(sd: dict, groups: list[dict], model: nn.Module) -> dict:
    """{producer: output channels in `sd`} for every group whose producer is thinner in `sd` than in `model`."""
    mods = dict(model.named_modules())
    out = {}
    for g in groups:
        w = sd.get(g["producer"] + ".weight")
        if w is not None and w.dim() == 4 and w.shape[0] != mods[g["producer"]].out_channels:
            out[g["producer"]] = int(w.shape[0])
    return out


def _conv_like(c: nn.Conv2d, cin: int, cout: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, c.kernel_size, c.stride, c.padding, c.dilation, groups, bias=c.bias is not None,
                     padding_mode=c.padding_mode)


def apply_widths(model: nn.Module, widths: dict) -> nn.Module:
    """Rebuild, in place, the layers of every channel group whose producer `widths` names with its kept channel
    count (new layers are freshly initialised; load a thinned state_dict after this).

    Raises ValueError naming a producer that is not a channel group of the model or a count out of range."""
    if not widths:
        return model
    groups = {g["producer"]: g for g in channel_groups(model)}
    mods = dict(model.named_modules())
    cin, cout = {}, {}
    for name, k in widths.items():
        g = groups.get(name)
        if g is None:
            raise ValueError(f"channels: {name!r} is not a prunable conv of this network")
        full = mods[name].out_channels
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= full:
            raise ValueError(f"channels: {name!r} = {k!r}, expected an integer in [1, {full}]")
        cout[name] = k
        for d in g["depthwise"]:
            cin[d] = cout[d] = k
        for bn in g["bns"]:
            cout[bn] = k
        cin[g["consumer"]] = k
    for name in set(cin) | set(cout):
        m = mods[name]
        if isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(cout[name], m.eps, m.momentum, m.affine, m.track_running_stats)
        else:
            i, o = cin.get(name, m.in_channels), cout.get(name, m.out_channels)
            new = _conv_like(m, i, o, i if _is_depthwise(m) else m.groups)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def conv_params(model: nn.Module) -> int:
    """Parameters of the model's Conv2d and Linear layers (weights and biases)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


__all__ = ["channel_groups", "channel_scores", "keep_count", "choose_channels", "thin_state_dict", "widths_of",
           "apply_widths", "conv_params"]
