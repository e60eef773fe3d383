"""Mixed precision by sensitivity: per-layer weight bits from a scan, under a byte budget.

The scan quantizes one conv / linear weight at a time (BatchNorm folded, the others in fp32) at
each candidate bit width with the QAT quantizer's post-training rule (per-output-channel symmetric
grid, the step of least squared rounding error, rounded to fp16: `mbz.pipeline.qat.mse_step`,
exactly what `to_qmodules` + `snap_for_export` store), and measures on held-out training images
(the recipe's validation split) the mean cross-entropy and top-1, and the real bytes of that
layer's packed sections at that width (`mbz.encoder.encode_tensor` with the file's entropy stage).

`allocate` then picks one width per layer for a byte budget, assuming the loss increases add up
over layers (the additive model of HAWQ-style and rate-distortion bit allocation, e.g. Dong et
al. 2019 "HAWQ"; Shoham & Gersho 1988 for the Lagrangian): for a multiplier lam every layer takes
the width minimising dloss + lam * bytes, lam is bisected to the smallest value whose plan fits,
and the bytes still free are spent greedily on the upgrades with the largest loss decrease per
byte.  A plan is {weight tensor name: bits}; `qat[].layer_bits` in a recipe takes one (for QAT
with epochs > 0, or epochs 0 = this PTQ), and `ptq_state_dict` applies one directly.
"""
from __future__ import annotations

import json
import math

import torch
from torch import nn

from .data import ArrayDataset, evaluate
from .qat import fp16_exact, mse_step

BITS = (2, 3, 4, 5, 6, 8)
MIN_STEP = 6.2e-5  # smallest step snap_for_export keeps (fp16 normal range)


def quant_layers(model: nn.Module) -> list[str]:
    """Weight names ('features.1.conv.0.0.weight', ...) of every Conv2d / Linear, in module order."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def ptq_codes(w: torch.Tensor, bits: int, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, s): the integer codes (float32 tensor, shape of w) and the fp16-exact steps (shape (C, 1, ...) per
    channel, all-ones shape per tensor) of w on a symmetric `bits` grid (see ptq_weight)."""
    qmax = (1 << (bits - 1)) - 1
    s = fp16_exact(mse_step(w.detach(), bits, per_channel).abs().clamp_min(MIN_STEP))
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = s.view(shape) if s.numel() > 1 else s.reshape((1,) * w.dim())
    return torch.clamp(torch.round(w.detach().float() / s), -qmax, qmax), s


@torch.no_grad()
def ptq_weight(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """w on a symmetric `bits` grid, one fp16-exact step per output channel (or per tensor), float32.

    The value QConv2d.qweight gives after to_qmodules(bits) and snap_for_export: k * s with
    k = clamp(round(w / s), -qmax, qmax), s = fp16(mse_step(w)).  bits >= 32: w unchanged."""
    if bits >= 32:
        return w.detach().float().clone()
    k, s = ptq_codes(w, bits, per_channel)
    return k * s


def packed_bytes(name: str, w: torch.Tensor, total_bytes: int, codes: tuple | None = None) -> int:
    """Bytes of the sections `mbz.save` stores for this tensor (codes, masks / deltas, scales), with the
    entropy stage a file of `total_bytes` tensor bytes gets (mbz.encoder.EntropyPolicy.resolved).

    codes: (k, s) of ptq_codes(w, bits): w is stored on that grid, given as a QAT export gives it rather
    than read off the values (a channel with two nonzero codes such as 29 and -30 has no unambiguous grid,
    and a detected one would fall back to a far larger encoding).  None: w as it is."""
    from ..codecs.affine import Grid
    from ..encoder import EntropyPolicy, encode_tensor
    from ..spec import Granularity
    ent = EntropyPolicy().resolved(total_bytes)
    w = w.detach().float().cpu().contiguous()
    grid = None
    if codes is not None:
        k, s = (c.detach().cpu() for c in codes)
        grid = Grid(k.reshape(-1).to(torch.int64).numpy(), s.reshape(-1).numpy().astype("float32"),
                    Granularity.TENSOR if s.numel() == 1 else Granularity.CHANNEL, tuple(w.shape))
    return encode_tensor(name, w, grid=grid, ent=ent).stored_bytes


def folded_model(sd: dict, arch: dict) -> nn.Module:
    """The fp32 model of `sd` with BatchNorm folded and biases rounded to fp16 (as every QAT export), eval mode."""
    from ..models import build_model
    from .qat import fold_bn
    model = build_model(dict(arch))
    model.load_state_dict(sd)
    model.eval()
    fold_bn(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.data = fp16_exact(m.bias)
    return model


class _Prefix:
    """Evaluation of a `features` (nn.Sequential) -> global average pool -> `classifier` network (MobileNet-v2,
    VGG) from cached stage inputs: a layer in features[i] changes only stages i.. onward.  None-like
    (`ok` False) for any other network, or when the staged forward does not reproduce model(x)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64):
        self.model, self.y, self.batch, self.ok = model, y, batch, False
        feats, head = getattr(model, "features", None), getattr(model, "classifier", None)
        if not isinstance(feats, nn.Sequential) or not isinstance(head, nn.Module):
            return
        self.acts = [x]
        for st in feats:
            self.acts.append(torch.cat([st(x_) for x_ in self.acts[-1].split(batch)]))
        ref = model(x[:batch])
        if ref.shape != self.tail(self.acts[-1][:batch]).shape or \
                not torch.allclose(ref, self.tail(self.acts[-1][:batch]), atol=1e-4, rtol=1e-4):
            self.acts = None
            return
        self.ok = True

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F
        return self.model.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def stage_of(self, name: str) -> int:
        parts = name.split(".")
        if parts[0] == "features" and parts[1].isdigit():
            return int(parts[1])
        return len(self.model.features)  # the classifier

    def evaluate(self, start: int) -> dict:
        import torch.nn.functional as F
        loss, correct = 0.0, 0
        for i in range(0, len(self.y), self.batch):
            h = self.acts[start][i:i + self.batch]
            for st in list(self.model.features)[start:]:
                h = st(h)
            logits = self.tail(h)
            y = self.y[i:i + self.batch]
            loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return {"loss": loss / len(self.y), "top1": 100.0 * correct / len(self.y)}


@torch.no_grad()
def scan_bits(model: nn.Module, ds: ArrayDataset, bits=BITS, names=None, per_channel: bool = True,
              progress=None) -> tuple[dict, list[dict]]:
    """(base, rows): base = {'loss', 'top1'} of `model` as given; one row {name, numel, bits, bytes, loss,
    top1} per layer (`names`, default quant_layers) and width, that layer alone quantized (ptq_weight).

    `bytes`: packed_bytes of the tensor on its grid (ptq_codes, the values ptq_weight gives).  The model is
    restored after each row.  Networks of the form features -> pool -> classifier are evaluated from cached
    stage inputs (same numbers)."""
    from .data import normalize
    model.eval()
    params = dict(model.named_parameters())
    names = quant_layers(model) if names is None else list(names)
    total = sum(p.numel() * 4 for p in params.values())
    ev = evaluate(model, ds)
    base = {"loss": ev["loss"], "top1": ev["top1"], "images": len(ds)}
    dev = next(model.parameters()).device
    pre = _Prefix(model, normalize(ds.images.to(dev)), ds.labels.to(dev))
    items = [(n, b) for n in names for b in bits]
    rows = []
    for n, b in (progress(items) if progress else items):
        p = params[n]
        saved = p.detach().clone()
        codes = ptq_codes(saved, b, per_channel) if b < 32 else None
        p.copy_(codes[0] * codes[1] if codes else saved)
        try:
            ev = pre.evaluate(pre.stage_of(n)) if pre.ok else evaluate(model, ds)
        finally:
            p.copy_(saved)
        rows.append({"name": n, "numel": p.numel(), "bits": b, "bytes": packed_bytes(n, saved, total, codes),
                     "loss": ev["loss"], "top1": ev["top1"]})
    return base, rows


def _options(rows: list[dict], base_loss: float) -> dict:
    """{name: [(bits, bytes, dloss)] sorted by bits}."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["name"], []).append((int(r["bits"]), int(r["bytes"]), float(r["loss"]) - base_loss))
    for v in out.values():
        v.sort()
    return out


def plan_bytes(rows: list[dict], plan: dict) -> int:
    """Scanned packed bytes of the layers of `plan` at their widths."""
    cost = {(r["name"], int(r["bits"])): int(r["bytes"]) for r in rows}
    try:
        return sum(cost[(n, int(b))] for n, b in plan.items())
    except KeyError as e:
        raise ValueError(f"layer / width {e.args[0]} was not scanned") from None


def uniform_plan(rows: list[dict], bits: int) -> dict:
    """{name: bits} for every scanned layer."""
    return {n: bits for n in dict.fromkeys(r["name"] for r in rows)}


def allocate(rows: list[dict], base_loss: float, budget: int) -> dict:
    """{name: bits} of least summed loss increase whose scanned bytes fit `budget` (Lagrangian + greedy fill).

    Raises ValueError when even the narrowest width of every layer does not fit."""
    opts = _options(rows, base_loss)
    smallest = sum(min(o[1] for o in v) for v in opts.values())
    if smallest > budget:
        raise ValueError(f"budget {budget:,d} B is below the smallest plan ({smallest:,d} B: every layer at its "
                         f"narrowest scanned width)")

    def pick(lam: float) -> dict:
        return {n: min(v, key=lambda o: (o[2] + lam * o[1], o[1])) for n, v in opts.items()}

    def size(p: dict) -> int:
        return sum(o[1] for o in p.values())

    lo, hi = 0.0, 1.0
    while size(pick(hi)) > budget:
        hi *= 4
        if hi > 1e30:
            break
    if size(pick(lo)) <= budget:
        hi = lo
    for _ in range(100):
        if hi - lo <= 1e-12 * max(hi, 1e-30):
            break
        mid = (lo + hi) / 2
        if size(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    plan = pick(hi)
    if size(plan) > budget:  # lam this large only keeps each layer's narrowest width
        plan = {n: min(v, key=lambda o: (o[1], o[2])) for n, v in opts.items()}
    # greedy fill: the upgrade with the largest loss decrease per byte that still fits, until none does
    while True:
        left = budget - size(plan)
        best, gain = None, 0.0
        for n, v in opts.items():
            cur = plan[n]
            for o in v:
                extra = o[1] - cur[1]
                if 0 < extra <= left and cur[2] - o[2] > 0:
                    g = (cur[2] - o[2]) / extra
                    if g > gain:
                        best, gain = (n, o), g
        if best is None:
            break
        plan[best[0]] = best[1]
    return {n: o[0] for n, o in plan.items()}


def predicted_dloss(rows: list[dict], base_loss: float, plan: dict) -> float:
    """Summed scanned loss increase of `plan` (the additive model the allocation minimises)."""
    opts = {(n, b): d for n, v in _options(rows, base_loss).items() for b, _, d in v}
    return sum(opts[(n, int(b))] for n, b in plan.items())


@torch.no_grad()
def ptq_state_dict(model: nn.Module, plan: dict, default_bits: int = 32, per_channel: bool = True) -> dict:
    """State_dict of a folded model with every conv / linear weight on its plan's grid (ptq_weight); layers
    missing from `plan` take `default_bits` (32: kept in fp32).  ValueError naming an unknown layer."""
    layers = set(quant_layers(model))
    unknown = sorted(set(plan) - layers)
    if unknown:
        raise ValueError(f"layer_bits: {unknown[0]!r} is no conv / linear weight of the model "
                         f"({len(layers)} layers, e.g. {sorted(layers)[0]!r})")
    sd = {}
    for k, v in model.state_dict().items():
        if k in layers:
            v = ptq_weight(v, int(plan.get(k, default_bits)), per_channel)
        elif k.endswith(".bias"):
            v = v.detach().cpu().half()
        sd[k] = v.detach().cpu().contiguous()
    return sd


def read_plan(path: str) -> dict:
    """{weight name: bits} from a plan JSON (`mbz mixed-precision`'s plan_*.json, or a plain mapping).

    Raises ValueError naming the file and the entry when it is not one (bits 2..8 or 32)."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON plan: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("layer_bits"), dict):
        obj = obj["layer_bits"]
    return check_plan(obj, path)


def check_plan(obj, where: str) -> dict:
    """`obj` as {weight name: bits}, or ValueError '{where}: ...' naming the first bad entry."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{where}: expected a non-empty mapping {{weight name: bits}}, got {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{where}: key {k!r}: expected a weight name")
        if isinstance(v, bool) or not isinstance(v, int) or not (2 <= v <= 8 or v == 32):
            raise ValueError(f"{where}: {k}: expected bits 2..8 or 32, got {v!r}")
    return dict(obj)


def plan_digest(plan: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:6]


def mean_bits(plan: dict, numel: dict) -> float:
    """Weight-count-weighted mean width of a plan ({name: numel} from the scan)."""
    n = sum(numel[k] for k in plan)
    return sum(plan[k] * numel[k] for k in plan) / n if n else math.nan


def model_of(path: str) -> tuple[dict, dict]:
    """(state_dict, arch) of a checkpoint to scan: a MobileNet-v2 (CIFAR) state_dict (.pt / .pth / lossless .mbz),
    or a .mbz with 'arch' metadata of a registry network, BatchNorm not yet folded.  MbzError otherwise."""
    from ..checkpoint import read_checkpoint
    from ..errors import CheckpointError
    from ..models import pipeline_arch
    from ..reader import MbzReader
    from ..spec import MAGIC
    sd = read_checkpoint(path)
    arch = None
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            with MbzReader(path) as r:
                arch = r.metadata.get("arch")
    if isinstance(arch, dict) and arch.get("folded_bn"):
        raise CheckpointError(f"{path}: BatchNorm already folded (a QAT / PTQ file); give the fp32 model with "
                              f"BatchNorm")
    if not isinstance(arch, dict):
        arch = pipeline_arch({"name": "mobilenet_v2_cifar"}, sd)
    return sd, {k: v for k, v in arch.items() if k not in ("act_bits", "act_alpha", "folded_bn")}


def scan_settings(checkpoint: str, source: str, val: int, images: int, bits) -> dict:
    import os
    return {"checkpoint": os.path.basename(checkpoint), "val": val, "images": images, "bits": list(bits),
            "data": source}


def read_scan(path: str) -> tuple[dict, list[dict]]:
    """(header, rows) of a scan.jsonl written by write_scan; ValueError naming the file if it is not one."""
    try:
        with open(path) as f:
            head, *rows = [json.loads(x) for x in f if x.strip()]
        head["base"]["loss"], head["settings"], [(r["name"], r["bits"], r["bytes"], r["loss"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a bit-width scan (a header line, then one row per layer and width): {e}") \
            from None
    return head, rows


def write_scan(path: str, head: dict, rows: list[dict]) -> None:
    from ..container import atomic_write
    atomic_write(path, [(json.dumps(x) + "\n").encode() for x in [head, *rows]])


def ptq_metadata(arch: dict, plan: dict, default_bits: int, extra: dict | None = None) -> dict:
    """Metadata of a PTQ file (what mbz.load_model and mbz eval need, and the plan under compression.layer_bits)."""
    from .data import MEAN, STD
    return {"arch": dict(arch, folded_bn=True, act_bits=32, act_alpha={}),
            "preprocess": {"mean": list(MEAN), "std": list(STD), "input_size": [3, 32, 32], "input_bits": 8},
            "compression": {"method": "ptq", "wbits": default_bits, "layer_bits": dict(plan), "granularity": "channel",
                            "fold_bn": True, "abits": 32, "epochs": 0},
            **(extra or {})}
