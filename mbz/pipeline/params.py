"""Float parameters at reduced precision, after training.

In a small pruned + 4-bit file the per-channel weight scales (fp32) and the folded biases
(fp16) are a third of the bytes. Both can be held on coarser grids with no retraining:

- weight scales rounded to `scale_bits` significant bits (8 = bfloat16's precision): the
  weights stay exactly `code * scale`, only the scale moves by at most 2^-scale_bits
  relative, and shuffled scales with zero low bytes cost about half under zstd;
- biases put on a per-tensor symmetric grid of `bias_bits` bits (one fp32 scale each), so
  that they pack as integer codes instead of raw fp16.

The result is a different model: evaluate it (`mbz reduce` does) before using it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..detect import detect_grid


def round_significand(x: np.ndarray, bits: int) -> np.ndarray:
    """float32 values rounded (to nearest, ties to even) to `bits` significant bits (1..24)."""
    if not 1 <= bits <= 24:
        raise ValueError(f"significant bits must be 1..24, got {bits}")
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    drop = 24 - bits
    if drop == 0:
        return x.astype(np.float32)
    half = np.uint64(1 << (drop - 1))
    lsb = (u >> np.uint64(drop)) & np.uint64(1)
    u = ((u + half - np.uint64(1) + lsb) >> np.uint64(drop)) << np.uint64(drop)
    return u.astype(np.uint32).view(np.float32)


def grid_bias(b: torch.Tensor, bits: int) -> torch.Tensor:
    """A float32 bias on a symmetric per-tensor grid of `bits` bits (scale rounded to 8 significant bits)."""
    x = b.detach().float().cpu()
    top = float(x.abs().max()) if x.numel() else 0.0
    if top == 0.0:
        return x.clone()
    qmax = (1 << (bits - 1)) - 1
    s = float(round_significand(np.array([top / qmax], np.float32), 8)[0])
    k = torch.clamp(torch.round(x / s), -qmax - 1, qmax)
    return (k * torch.tensor(s, dtype=torch.float32)).float()


def reduce_float_params(sd: dict, scale_bits: int | None = 8, bias_bits: int | None = 8) -> tuple[dict, dict]:
    """(new state_dict, per-tensor report). Weights without an exact grid are left as they are."""
    out, report = {}, {}
    for name, t in sd.items():
        new = t
        if scale_bits and t.is_floating_point() and t.dim() >= 2:
            g = detect_grid(t)
            if g is not None and g.k.size:
                g.scales = round_significand(g.scales, scale_bits)
                new = torch.from_numpy(g.values().copy()).reshape(t.shape)
        elif bias_bits and name.endswith(".bias") and t.is_floating_point() and t.dim() == 1:
            new = grid_bias(t, bias_bits)
        if new is not t:
            d = (new.float() - t.float()).abs()
            ref = t.float().abs().max().clamp_min(1e-30)
            report[name] = {"max_abs_change": float(d.max()) if d.numel() else 0.0,
                            "max_rel_to_range": float(d.max() / ref) if d.numel() else 0.0}
        out[name] = new
    return out, report


def reduce_file(src: str, out: str, scale_bits: int = 8, bias_bits: int = 8,
                extra_meta: dict | None = None) -> dict:
    """Hold the weight scales and biases of the packed model `src` at reduced precision and write `out`
    (.mbz, atomically); every other metadata entry is kept, 'reduced_params' says what was done.
    Returns a row: sizes before / after, the largest change relative to a tensor's range."""
    import os

    import mbz
    with mbz.open(src) as r:
        meta = dict(r.metadata)
        sd = r.decode_all()
    new, report = reduce_float_params(sd, scale_bits or None, bias_bits or None)
    meta["reduced_params"] = {"from": os.path.basename(src), "scale_bits": scale_bits, "bias_bits": bias_bits}
    if "top1_qat_eval" in meta:  # that figure was of the model before this step
        meta["reduced_params"]["top1_qat_eval_before"] = meta.pop("top1_qat_eval")
    meta.update(extra_meta or {})
    mbz.save(new, out, metadata=meta)
    return {"file": src, "out": out, "scale_bits": scale_bits, "bias_bits": bias_bits,
            "bytes_before": os.path.getsize(src), "bytes_after": os.path.getsize(out),
            "largest_rel_change": max((v["max_rel_to_range"] for v in report.values()), default=0.0)}
