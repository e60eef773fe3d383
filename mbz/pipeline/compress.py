"""Prune -> fold BN -> QAT -> export -> .mbz, for one or several configurations."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from ..models import build_model
from .data import MEAN, STD, ArrayDataset, augment_batch, evaluate
from .prune import apply_masks, global_magnitude_masks, sparsity_report
from .qat import calibrate, export_state_dict, fold_bn, insert_act_quant, snap_for_export, to_qmodules
from .rate import RatePenalty, quantized_layers, section_bytes
from .train import TrainConfig, train


@dataclass
class QatConfig:
    name: str
    sparsity: float = 0.9
    wbits: int = 4
    abits: int = 8
    epochs: int = 12
    lr: float = 0.02
    fold_bn: bool = True
    granularity: str = "channel"   # weight steps: "channel" (one per output channel) or "tensor"
    kd: float = 0.0                # distillation weight (teacher: the fp32 baseline)
    layer_bits: dict | None = None  # {weight name: bits} overriding wbits per layer (mbz.pipeline.mixed plan)
    rate: float = 0.0              # rate term: loss units per 1000 estimated bytes of weight codes (mbz.pipeline.rate)

    def quantized(self) -> bool:
        """Whether any weight is fake-quantized (wbits < 32, or a layer_bits entry below 32)."""
        return self.wbits < 32 or any(b < 32 for b in (self.layer_bits or {}).values())


def prune_step(model, train_ds, test_ds, s: float, epochs: int, lr: float, log, device, cfg_base: TrainConfig,
               teacher=None, caps: dict | None = None, ckpt_path: str | None = None,
               time_budget: float | None = None) -> tuple[dict, bool]:
    """One step of gradual pruning: global magnitude masks at sparsity `s` (with `caps`), then `epochs` of
    fine-tuning (warm-up 0.3 epochs, cosine from `lr`) with the masks held.  Returns (masks, complete);
    with `ckpt_path` and `time_budget` it can stop between epochs (complete False) and continue later."""
    masks = global_magnitude_masks(model.state_dict(), s, caps=caps)
    apply_masks(model, masks)
    cfg = TrainConfig(**{**asdict(cfg_base), "epochs": epochs, "lr": lr, "warmup": 0.3, "ema": 0})
    r = train(model, train_ds, test_ds, cfg, log_path=log, masks=masks, desc=f"prune{s:.2f}", device=device,
              teacher=teacher, ckpt_path=ckpt_path, time_budget=time_budget)
    return masks, r["complete"]


def prune_schedule(model, train_ds, test_ds, targets, epochs_per_step, lr, log, device, cfg_base: TrainConfig,
                   teacher=None, caps: dict | None = None, epochs_at: dict | None = None):
    """Gradual global magnitude pruning; yields (sparsity, state_dict copy, masks) at each target.

    caps: {tensor name: max sparsity} from a sensitivity scan (`mbz sensitivity`).
    epochs_at: {sparsity: epochs} overriding `epochs_per_step` at some steps (e.g. a long
    fine-tune at the level that is kept, short ones on the way there).
    """
    for s in targets:
        masks, _ = prune_step(model, train_ds, test_ds, s, (epochs_at or {}).get(s, epochs_per_step), lr, log,
                              device, cfg_base, teacher=teacher, caps=caps)
        yield s, {k: v.detach().clone() for k, v in model.state_dict().items()}, masks


def qat_run(base_sd: dict, q: QatConfig, train_ds: ArrayDataset, test_ds: ArrayDataset, out_dir: str, log: str,
            device, arch_kw: dict, pack: bool = True, zstd: bool = True, save_pt: bool = True,
            teacher=None, seed: int = 0, ckpt_path: str | None = None, time_budget: float | None = None,
            extra_meta: dict | None = None) -> dict | None:
    """QAT of one configuration from the pruned (or dense) state_dict `base_sd`: fold BN, fake-quantize
    weights and activations (ranges calibrated on 8 batches), train, snap, export, pack, evaluate.

    Returns the result row, or None when `time_budget` stopped training between epochs (its state is
    then in `ckpt_path`; the same call continues from it)."""
    if q.granularity not in ("channel", "tensor"):
        raise ValueError(f"{q.name}: granularity must be 'channel' or 'tensor', got {q.granularity!r}")
    t0 = time.time()
    model = build_model(dict(arch_kw))
    model.load_state_dict(base_sd)
    model.to(device).eval()
    if q.fold_bn:
        fold_bn(model)
    masks = {n: (p != 0) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2}
    if q.sparsity == 0:
        masks = {}
    if q.quantized():
        to_qmodules(model, q.wbits, per_channel=q.granularity == "channel", layer_bits=q.layer_bits)
    penalty = RatePenalty(q.rate) if q.quantized() else None
    model = insert_act_quant(model, q.abits)  # placed from the module graph; may return a GraphModule
    model.to(device)
    if q.abits < 32:
        g = torch.Generator(device=device).manual_seed(1)
        batches = [augment_batch(train_ds.images[i:i + 256].to(device), gen=g)
                   for i in range(0, min(len(train_ds), 8 * 256), 256)]
        calibrate(model, batches)
    if q.epochs and (q.quantized() or q.abits < 32):
        cfg = TrainConfig(epochs=q.epochs, lr=q.lr, warmup=0.5, ema=0, wd=0.0 if q.quantized() else 5e-5,
                          kd=q.kd, batch=min(512, len(train_ds)), seed=seed)
        r = train(model, train_ds, test_ds, cfg, log_path=log, masks=masks, desc=q.name, device=device,
                  teacher=teacher if q.kd else None, ckpt_path=ckpt_path, time_budget=time_budget, penalty=penalty)
        if not r["complete"]:
            return None
    return _export(model, q, arch_kw, test_ds, out_dir, device, pack, zstd, save_pt, t0, extra_meta, penalty)


def _export(model, q: QatConfig, arch_kw: dict, test_ds, out_dir: str, device, pack: bool, zstd: bool,
            save_pt: bool, t0: float, extra_meta: dict | None = None, penalty=None) -> dict:
    """Snap, evaluate, export and (optionally) pack a QAT model; the packed file is evaluated again.

    With `penalty` (a RatePenalty) the row has `est_weight_bytes` (the rate estimate of the snapped
    weights) and, when packed, `weight_section_bytes` (the real bytes of their code, mask and delta
    sections, mbz.pipeline.rate.section_bytes)."""
    model.eval()
    snap_for_export(model)
    est = penalty.log(model)["est_weight_bytes"] if penalty is not None else None
    qnames = [f"{n}.weight" for n, _ in quantized_layers(model)]
    ev_qat = evaluate(model, test_ds.to(device), device=device, amp=False)
    sd, act = export_state_dict(model)
    arch = dict(arch_kw, folded_bn=q.fold_bn, act_bits=act["act_bits"], act_alpha=act["act_alpha"])
    res = {"name": q.name, "config": asdict(q), "top1_qat_eval": ev_qat["top1"], "arch": arch,
           "sparsity_layers": sparsity_report(sd)}
    if save_pt:
        pt_path = os.path.join(out_dir, f"{q.name}.pt")
        torch.save({"state_dict": sd, "arch": arch}, pt_path)
        res["pt"] = os.path.basename(pt_path)
    if pack:
        import mbz
        meta = {"arch": arch, "preprocess": {"mean": list(MEAN), "std": list(STD), "input_size": [3, 32, 32],
                                             "input_bits": 8},
                "compression": asdict(q), "top1_qat_eval": ev_qat["top1"],
                "dataset": "CIFAR-10 (JPEG q75 export)", **(extra_meta or {})}
        path = os.path.join(out_dir, f"{q.name}.mbz")
        rep = mbz.save(sd, path, metadata=meta, zstd=zstd)
        m2 = mbz.load_model(path).to(device)
        ev_packed = evaluate(m2, test_ds.to(device), device=device, amp=False)
        res.update(mbz=os.path.basename(path), file_bytes=rep.file_bytes, top1_packed=ev_packed["top1"],
                   top1_equal=ev_packed["top1"] == ev_qat["top1"])
        if est is not None:
            res["weight_section_bytes"] = sum(section_bytes(path, set(qnames)).values())
    if est is not None:
        res["est_weight_bytes"] = est
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _file_steps(w: torch.Tensor, scales: torch.Tensor, rows: int, qmax: int, fallback: torch.Tensor) -> torch.Tensor:
    """Per-row QAT steps that reproduce a packed weight exactly and survive the export's fp16 rounding.

    mbz.detect returns the coarsest exact grid: a row whose codes are all even comes back at twice
    its step, with codes <= 3.  The finest step scale/d (d*max|code| <= qmax) that is fp16-exact
    and reproduces the row is taken, so QAT goes on at the row's full resolution; all-zero rows
    keep `fallback` (the error-minimising step).
    """
    w2 = w.float().reshape(rows, -1)
    sc = scales.reshape(-1).expand(rows) if scales.numel() == 1 else scales.reshape(rows)
    kmax = torch.round(w2 / sc[:, None]).abs().amax(dim=1)
    best = torch.where(kmax > 0, sc, fallback.float().reshape(rows))
    done = kmax == 0
    for d in range(qmax, 0, -1):
        s = sc / d
        ok = (~done) & (kmax * d <= qmax) & (s.half().float() == s) & (s > 0)
        ok &= (torch.round(w2 / s[:, None]) * s[:, None] == w2).all(dim=1)
        best = torch.where(ok, s, best)
        done |= ok
    return best


ARCH_ONLY = ("folded_bn", "act_bits", "act_alpha")  # set again by the export


def qat_resume(path: str, name: str, epochs: int, lr: float, kd: float, train_ds: ArrayDataset,
               test_ds: ArrayDataset, out_dir: str, log: str | None, device, teacher=None,
               pack: bool = True, zstd: bool = True, seed: int = 0, ckpt_path: str | None = None,
               time_budget: float | None = None, extra_meta: dict | None = None, rate: float = 0.0) -> dict | None:
    """More QAT epochs for a packed quantized model (e.g. a soup of runs, `mbz soup`); writes OUT_DIR/NAME.mbz.

    Everything comes from the file: architecture, zero pattern (kept by masks), weight bits and
    granularity (its 'compression' metadata), steps initialised at the file's exact grids, and
    the activation ranges, which are learned on from there; a mixed-precision file keeps its
    per-layer widths ('compression.layer_bits').  `rate`: the rate term of these epochs
    (mbz.pipeline.rate; 0: none).  Returns the result row, or None when
    `time_budget` stopped it between epochs (state in `ckpt_path`; the same call continues).
    """
    import mbz
    from ..detect import detect_grid
    t0 = time.time()
    with mbz.open(path) as r:
        meta, sd = dict(r.metadata), r.decode_all()
    arch, comp = meta.get("arch", {}), meta.get("compression")
    if not arch.get("folded_bn") or not comp:
        raise ValueError(f"{path}: not a packed QAT model (needs arch.folded_bn and 'compression' metadata)")
    known = {k: comp[k] for k in QatConfig.__dataclass_fields__ if k in comp}
    q = QatConfig(**{**known, "name": name, "epochs": epochs, "lr": lr, "kd": kd, "rate": rate})
    arch_kw = {k: v for k, v in arch.items() if k not in ARCH_ONLY}
    model = build_model(dict(arch_kw, folded_bn=True))
    model.load_state_dict(sd)
    masks = {n: (p != 0) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2}
    if q.quantized():
        to_qmodules(model, q.wbits, per_channel=q.granularity == "channel", layer_bits=q.layer_bits)
        for n, m in model.named_modules():
            if hasattr(m, "step") and isinstance(m.step, torch.nn.Parameter):
                qmax = (1 << (m.wbits - 1)) - 1
                g = detect_grid(m.weight.detach())
                if g is None:
                    raise ValueError(f"{path}: tensor '{n}.weight' is not on an exact grid")
                m.step.data = _file_steps(m.weight.detach(), torch.as_tensor(g.scales, dtype=torch.float32),
                                          m.step.numel(), qmax, m.step.detach())
    penalty = RatePenalty(q.rate) if q.quantized() else None
    model = insert_act_quant(model, q.abits, learn=True, alphas=arch.get("act_alpha"))
    model.to(device)
    cfg = TrainConfig(epochs=epochs, lr=lr, warmup=0.5, ema=0, wd=0.0 if q.quantized() else 5e-5, kd=kd,
                      batch=min(512, len(train_ds)), seed=seed)
    r = train(model, train_ds, test_ds, cfg, log_path=log, masks=masks, desc=name, device=device,
              teacher=teacher if kd else None, ckpt_path=ckpt_path, time_budget=time_budget, penalty=penalty)
    if not r["complete"]:
        return None
    return _export(model, q, arch_kw, test_ds, out_dir, device, pack, zstd, False, t0,
                   extra_meta={"resumed_from": os.path.basename(path), **(extra_meta or {})}, penalty=penalty)
