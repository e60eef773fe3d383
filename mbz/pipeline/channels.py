"""Structured pruning: drop hidden channels of MobileNet-v2's inverted residuals and rebuild thinner layers.

A block with an expansion conv computes  x -> expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6
-> project 1x1 -> BN.  Its h hidden channels are independent until the projection, so removing
channel c means deleting row c of the expansion conv, its BN entries, depthwise filter c and its BN
entries, and column c of the projection: the layers get thinner (fewer parameters and FLOPs) instead
of holding zeros, and no index bytes are needed for them in a .mbz file.  The block's output channels
(the residual stream) are kept.

Channels are ranked per block by  mean|a_c| * ||W_proj[:, c]||_2  (a_c: the channel's activation
after the depthwise ReLU6, measured on calibration images), i.e. by how much each contributes to the
block's output.  The mean activation of a removed channel is folded into the projection BN's running
mean, so that the block's output keeps its expectation (bias compensation).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.mobilenet_v2 import blocks, expand_blocks, hidden_widths, set_hidden  # noqa: F401


@torch.no_grad()
def channel_stats(model: nn.Module, images: torch.Tensor, batch: int = 256) -> dict:
    """{block i: (mean a_c, mean |a_c|)} of the depthwise ReLU6 outputs over `images` (normalized NCHW)."""
    sums, counts, hooks = {}, {}, []
    model.eval()
    for i in expand_blocks(model.state_dict()):
        def hook(mod, inp, out, i=i):
            a = out.float()
            s = sums.setdefault(i, [0, 0])
            s[0] = s[0] + a.sum(dim=(0, 2, 3))
            s[1] = s[1] + a.abs().sum(dim=(0, 2, 3))
            counts[i] = counts.get(i, 0) + a.shape[0] * a.shape[2] * a.shape[3]
        hooks.append(model.features[i].conv[1].register_forward_hook(hook))
    try:
        for k in range(0, len(images), batch):
            model(images[k:k + batch])
    finally:
        for h in hooks:
            h.remove()
    return {i: (s[0] / counts[i], s[1] / counts[i]) for i, s in sums.items()}


def keep_count(h: int, ratio: float, multiple: int = 8) -> int:
    """Channels kept of h when removing `ratio` of them, rounded to a multiple (at least one multiple)."""
    if ratio <= 0:
        return h
    k = int(round(h * (1 - ratio) / multiple)) * multiple
    return max(multiple, min(h, k))


def choose_channels(sd: dict, stats: dict, ratio: float, multiple: int = 8) -> dict:
    """{block i: sorted LongTensor of kept hidden channels}, the same share removed in every block."""
    keep = {}
    for i in expand_blocks(sd):
        proj = sd[f"features.{i}.conv.2.weight"].float()
        score = stats[i][1].float() * proj.flatten(1).norm(dim=0)
        k = keep_count(score.numel(), ratio, multiple)
        keep[i] = torch.sort(torch.topk(score, k).indices).values
    return keep


def thin_state_dict(sd: dict, keep: dict, stats: dict | None = None) -> dict:
    """A new state_dict whose blocks hold only the kept hidden channels (BN bias compensation with stats)."""
    out = dict(sd)
    for i, idx in keep.items():
        p = f"features.{i}.conv."
        for name in (p + "0.0.weight", p + "1.0.weight"):
            out[name] = sd[name][idx].clone()
        for bn in (p + "0.1.", p + "1.1."):
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                out[bn + leaf] = sd[bn + leaf][idx].clone()
        proj = sd[p + "2.weight"]
        out[p + "2.weight"] = proj[:, idx].clone()
        if stats is not None:
            gone = torch.ones(proj.shape[1], dtype=torch.bool)
            gone[idx] = False
            lost = proj[:, gone, 0, 0].float() @ stats[i][0].float()[gone]   # E[projection] of removed channels
            rm = sd[p + "3.running_mean"]
            out[p + "3.running_mean"] = (rm.float() - lost).to(rm.dtype)
    return out


def report(before: dict, after: dict) -> list[dict]:
    """Per block: hidden channels and parameters before and after."""
    rows = []
    hb, ha = hidden_widths(before), hidden_widths(after)
    for i in expand_blocks(before):
        p = f"features.{i}."
        n_b = sum(v.numel() for k, v in before.items() if k.startswith(p))
        n_a = sum(v.numel() for k, v in after.items() if k.startswith(p))
        rows.append({"block": i, "hidden_before": hb[i - 1], "hidden_after": ha[i - 1],
                     "params_before": n_b, "params_after": n_a})
    return rows


def prune_ratios(sd: dict, ratios, train, test, out_dir: str, *, calib: int = 2048, multiple: int = 8,
                 source: str = "", log=None) -> list[dict]:
    """Thin `sd` (a MobileNet-v2 state_dict with BatchNorm) at every ratio; write OUT/thin_r{ratio}.mbz
    (lossless, thinner 'arch' metadata) and OUT/thin_r{ratio}.layers.json; return one row per ratio:
    parameters, file bytes, top-1 on `test` without fine-tuning, with and without bias compensation.
    Channels are ranked on `calib` images of `train`.  `log(text)` reports progress."""
    import json
    import os
    import time

    from ..api import save
    from ..container import atomic_write
    from ..models import arch_of, build_model, guess_arch
    from .data import evaluate, normalize
    torch.manual_seed(0)
    model = build_model(arch_of(sd))
    model.load_state_dict(sd)
    calib_x = normalize(train.subset(calib).images)
    t0 = time.time()
    stats = channel_stats(model, calib_x)
    base_top1 = evaluate(model, test)["top1"]
    if log:
        log(f"baseline top-1 {base_top1:.2f} on {len(test)} test images; channel statistics in "
            f"{time.time() - t0:.1f}s")
    rows = []
    for r in ratios:
        keep = choose_channels(sd, stats, r, multiple)
        row = {"ratio": r, "checkpoint": source, "calib_images": len(calib_x), "test_images": len(test),
               "baseline_top1": base_top1, "params_before": sum(v.numel() for v in sd.values())}
        for comp in (False, True):
            thin = thin_state_dict(sd, keep, stats if comp else None)
            m = build_model(arch_of(thin))
            m.load_state_dict(thin)
            row["top1_compensated" if comp else "top1_plain"] = evaluate(m, test)["top1"]
        path = os.path.join(out_dir, f"thin_r{r:g}.mbz")
        rep = save(thin, path, arch=guess_arch(thin),
                   metadata={"structured_pruning": {"ratio": r, "source": os.path.basename(source),
                                                    "bias_compensation": True}})
        atomic_write(os.path.join(out_dir, f"thin_r{r:g}.layers.json"),
                     [json.dumps(report(sd, thin), indent=1).encode()])
        row.update(params_after=sum(v.numel() for v in thin.values()), file=os.path.basename(path),
                   file_bytes=rep.file_bytes, hidden=arch_of(thin).get("hidden"), fine_tuned=False)
        rows.append(row)
        if log:
            log(json.dumps({k: row[k] for k in ("ratio", "params_after", "file_bytes", "top1_plain",
                                                "top1_compensated")}))
    return rows


def prune_ratios_graph(sd: dict, arch: dict, ratios, test, out_dir: str, *, multiple: int = 8, source: str = "",
                       log=None) -> list[dict]:
    """Structured pruning of any registry CNN (mbz.models.thinning: channel groups from the module graph, channels
    ranked by the norm of their BN-folded filter, no data needed to choose them).  For every ratio, writes
    OUT/thin_r{ratio}.mbz (lossless; 'arch' with the kept channels, so mbz.load_model rebuilds the thinner layers)
    and OUT/thin_r{ratio}.layers.json; returns one row per ratio: parameters, file bytes, top-1 on `test` before
    fine-tuning (None when `test` is None)."""
    import json
    import os

    from ..api import save
    from ..container import atomic_write
    from ..models import build_model
    from ..models.thinning import channel_groups, choose_channels, thin_state_dict, widths_of
    from .data import evaluate
    model = build_model(arch)
    model.load_state_dict(sd)
    groups = channel_groups(model)
    if not groups:
        raise ValueError(f"{arch.get('name')}: no channel group (conv -> BN/activation/pool -> conv) to prune")
    base_top1 = evaluate(model.eval(), test)["top1"] if test is not None else None
    if log:
        log(f"{len(groups)} channel groups; baseline top-1 {base_top1}")
    rows = []
    for r in ratios:
        keep = choose_channels(sd, groups, r, multiple)
        thin = thin_state_dict(sd, groups, keep)
        channels = widths_of(thin, groups, model)
        tarch = {k: v for k, v in arch.items() if k != "channels"}
        tarch = dict(tarch, channels={**arch.get("channels", {}), **channels}) if channels or arch.get("channels") else tarch
        m = build_model(tarch)
        m.load_state_dict(thin)
        path = os.path.join(out_dir, f"thin_r{r:g}.mbz")
        rep = save(thin, path, arch=tarch,
                   metadata={"structured_pruning": {"ratio": r, "source": os.path.basename(source),
                                                    "method": "graph channel groups, BN-folded filter norm"}})
        layers = [{"producer": g["producer"], "consumer": g["consumer"], "before": int(sd[g["producer"] + ".weight"].shape[0]),
                   "after": int(thin[g["producer"] + ".weight"].shape[0])} for g in groups]
        atomic_write(os.path.join(out_dir, f"thin_r{r:g}.layers.json"), [json.dumps(layers, indent=1).encode()])
        row = {"ratio": r, "checkpoint": source, "method": "graph", "baseline_top1": base_top1,
               "params_before": sum(v.numel() for v in sd.values()), "params_after": sum(v.numel() for v in thin.values()),
               "top1_plain": evaluate(m.eval(), test)["top1"] if test is not None else None,
               "test_images": len(test) if test is not None else 0,
               "file": os.path.basename(path), "file_bytes": rep.file_bytes, "fine_tuned": False}
        rows.append(row)
        if log:
            log(json.dumps({k: row[k] for k in ("ratio", "params_after", "file_bytes", "top1_plain")}))
    return rows


def output_names(ratios) -> list[str]:
    """The files `prune_ratios` writes for `ratios` (and channels.jsonl)."""
    return [f"thin_r{r:g}{ext}" for r in ratios for ext in (".mbz", ".layers.json")] + ["channels.jsonl"]
