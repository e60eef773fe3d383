"""Uniform weight averaging ("model soup") of fine-tuned copies of one pruned model.

QAT runs that start from the same pruned model keep its zero pattern but end apart: two runs of
one configuration gave 91.26% and 90.85%.  Averaging their weights is a cheap way
to use every run instead of picking one on the test set.  The average of grid values is not on a
grid, so each quantized weight is put back on a per-channel grid of its bits (error-minimising
step, `qat.mse_step`, fp16-exact like the export); pruned zeros stay zero.  Biases and activation
ranges are averaged.  The result is a new model: evaluate it (`mbz soup` does).
"""
from __future__ import annotations

import re

import numpy as np
import torch

from ..detect import detect_grid
from ..spec import M_BN_AFFINE, M_LOSSY
from .qat import fp16_exact, mse_step


def _grids(name: str, ts: list[torch.Tensor]) -> list | None:
    """Every input's exact grid (mbz.detect), or None when input 0 has none."""
    grids = [detect_grid(t) for t in ts]
    on = [g is not None and bool(g.k.size) for g in grids]
    if not on[0]:
        if any(on):
            raise ValueError(f"tensor '{name}': input {on.index(True)} is quantized (on a grid), input 0 is not")
        return None
    if not all(on):
        raise ValueError(f"tensor '{name}': input 0 is quantized (on a grid), input {on.index(False)} is not")
    return grids


BIG = 2.5           # a weight this many of its row's steps from zero is not a rounding zero's neighbour ...
TYPICAL = 0.5       # ... nor one over this share of its row's median nonzero magnitude
MAX_PRUNED_APART = 0.02   # share of a tensor's weights that may be zero in one input and large in another
MIN_APART = 32            # ... and at least this many (small tensors: a few rounding flips)
MIN_COSINE = 0.5          # cosine similarity of each weight tensor with input 0's


def _zero_here_big_there(z: torch.Tensor, w: torch.Tensor) -> int:
    """Positions zero in one input (z, bool rows) where the other holds a large weight w: a pruned position, not a
    weight QAT rounded to zero in one run.  Large: more than BIG of its row's steps (the smallest gap between
    the row's distinct nonzero magnitudes, or its one magnitude: a rounded-to-zero weight's value elsewhere is
    about one step) and more than TYPICAL of the row's median nonzero magnitude (at 8 bits a step is small
    against the weights a pruning removes, which are of the size of the weights it keeps)."""
    a = w.abs()
    inf_a = torch.full_like(a, float("inf"))
    srt = torch.sort(a, dim=1).values
    gaps = srt[:, 1:] - srt[:, :-1]
    step = torch.where((gaps > 0) & (srt[:, :-1] > 0), gaps, inf_a[:, 1:]).min(dim=1, keepdim=True).values
    low = torch.where(a > 0, a, inf_a).min(dim=1, keepdim=True).values
    step = torch.where(torch.isinf(step), low, step)
    nz = torch.where(a > 0, a, torch.full_like(a, float("nan")))
    typical = torch.nan_to_num(nz.nanmedian(dim=1, keepdim=True).values, nan=0.0)
    return int((z & (a > BIG * step) & (a > TYPICAL * typical)).sum())


def _check_copies(name: str, ts: list[torch.Tensor]) -> None:
    """Refuse inputs that are not copies of one (pruned) model, for a weight tensor (2+ dims, 64+ elements):
    at most MAX_PRUNED_APART of its weights (and at least MIN_APART) may be zero in one input and large in the other
    (QAT copies differ by weights rounded to zero in one run, small in the other; models pruned to other
    sparsities or masks differ by many weights of ordinary size), and its cosine similarity with input 0's
    must reach MIN_COSINE (QAT runs of one model measured 0.997).  ValueError naming the tensor and input."""
    if ts[0].dim() < 2 or ts[0].numel() < 64:
        return
    w0 = ts[0].double().reshape(ts[0].shape[0], -1)
    n0 = float(w0.norm())
    limit = max(MIN_APART, int(MAX_PRUNED_APART * w0.numel()))
    for i, t in enumerate(ts[1:], 1):
        w = t.double().reshape(w0.shape)
        apart = _zero_here_big_there(w0 == 0, w) + _zero_here_big_there(w == 0, w0)
        if apart > limit:
            raise ValueError(f"tensor '{name}': input {i} is pruned unlike input 0: {apart:,} weights are zero in one "
                             f"of them and of ordinary size in the other ({int((w0 == 0).sum()):,} zeros in input 0, "
                             f"{int((w == 0).sum()):,} in input {i}; {limit:,} allowed): a soup averages runs of one "
                             f"pruned model")
        n1 = float(w.norm())
        cos = float((w0 * w).sum()) / (n0 * n1) if n0 > 0 and n1 > 0 else 1.0
        if cos < MIN_COSINE:
            raise ValueError(f"tensor '{name}': input {i} is not a copy of input 0's model: cosine similarity "
                             f"{cos:.2f}, below the {MIN_COSINE} allowed (QAT runs of one model: about 0.99)")


def average_state_dicts(sds: list[dict]) -> dict:
    """Plain average of float tensors (weights left off any grid: not storable as they are, but
    the figure that tells what re-snapping costs); integer tensors must agree."""
    _check_alike(sds)
    out = {}
    for name, t0 in sds[0].items():
        ts = [sd[name] for sd in sds]
        if t0.is_floating_point():
            out[name] = torch.stack([t.double() for t in ts]).mean(0).to(t0.dtype)
        elif any(not torch.equal(t, t0) for t in ts[1:]):
            raise ValueError(f"tensor '{name}': integer tensors differ between inputs")
        else:
            out[name] = t0
    return out


def _check_alike(sds: list[dict]) -> None:
    if len(sds) < 2:
        raise ValueError(f"a soup needs at least 2 models, got {len(sds)}")
    names = list(sds[0])
    for i, sd in enumerate(sds[1:], 1):
        if set(sd) != set(names):  # the order of a state_dict's entries does not matter
            only = sorted(set(sd) ^ set(names))
            raise ValueError(f"input {i}: tensor names differ from input 0's ({len(only)} only in one of them: "
                             f"{', '.join(only[:4])}{', ...' if len(only) > 4 else ''})")
        for name in names:
            t, t0 = sd[name], sds[0][name]
            if t.shape != t0.shape or t.dtype != t0.dtype:
                raise ValueError(f"tensor '{name}': input {i} is {tuple(t.shape)} {t.dtype}, "
                                 f"input 0 is {tuple(t0.shape)} {t0.dtype}")


def soup_state_dicts(sds: list[dict], steps: str = "mse", widths: dict | None = None,
                     per_tensor: bool = False) -> tuple[dict, dict]:
    """(averaged state_dict, per-tensor report) of copies of one pruned model.

    per_tensor: with steps "mse", one step per weight tensor (inputs quantized per tensor, `granularity_of`)
    instead of one per output channel, which would store a scale per channel the inputs did not have.

    widths: {tensor name: weight bits} of the inputs' QAT (`widths_of`), when known.  With steps "mse"
    a named tensor takes that width without reading it off the values: a channel with two nonzero
    codes such as 29 and -30 has no unambiguous grid (seen at 6 bits), so detection alone can fail.

    steps: "mse" puts each averaged weight on the per-channel step with the least rounding error
    (`qat.mse_step`), "mean" on the mean of the inputs' steps (seen: 90.79% vs 90.68% on one soup).

    Positions zero in every input (the pruned ones) stay zero; a weight that QAT rounded to zero
    in some runs only gets the average, so the zero count can fall a little (the report has
    'zeros_in' per input and 'zeros_out').
    """
    avg_all = average_state_dicts(sds)
    out, report = {}, {}
    for name, avg in avg_all.items():
        ts = [sd[name] for sd in sds]
        if ts[0].is_floating_point():
            _check_copies(name, ts)
            if all(torch.equal(t, ts[0]) for t in ts[1:]):  # the same tensor in every input: nothing to average
                out[name] = ts[0].clone()
                continue
        known = (widths or {}).get(name) if steps == "mse" else None
        if known is not None and ts[0].is_floating_point():
            grids, qmax = None, (1 << (int(known) - 1)) - 1 if int(known) < 32 else 0
        else:
            grids = _grids(name, ts) if ts[0].is_floating_point() and ts[0].dim() >= 2 else None
            qmax = max(int(np.abs(g.k).max()) for g in grids) if grids else 0
        if not qmax:
            out[name] = avg
            continue
        bits = qmax.bit_length() + 1  # symmetric: codes in [-qmax, qmax], qmax = 2^(bits-1) - 1
        if steps == "mse":
            step = mse_step(avg, bits, per_channel=not per_tensor)
        elif steps == "mean":
            step = torch.from_numpy(np.mean([np.broadcast_to(np.asarray(g.scales, np.float64), (avg.shape[0],))
                                             for g in grids], axis=0)).float()
        else:
            raise ValueError(f"steps must be 'mse' or 'mean', got {steps!r}")
        step = fp16_exact(step).clamp_min(6.2e-5).view((-1,) + (1,) * (avg.dim() - 1))
        # + 0.0 turns the -0.0 of small negative averages into +0.0: zeros are stored as +0.0 only
        snapped = (torch.clamp(torch.round(avg / step), -qmax, qmax) * step).float() + 0.0
        out[name] = snapped
        report[name] = {"bits": bits, "rms_snap": float((snapped.double() - avg.double()).pow(2).mean().sqrt()),
                        "zeros_in": [int((t == 0).sum()) for t in ts], "zeros_out": int((snapped == 0).sum())}
    return out, report


def widths_of(metas: list[dict], sd: dict) -> dict | None:
    """{tensor name: weight bits} the inputs were trained with (metadata 'compression': wbits for every
    conv / linear weight, i.e. float tensors of 2+ dims, and layer_bits overriding it) or packed with
    (`pack --wbits`, metadata 'lossy': wbits for the float tensors of 2+ dims its `include` pattern
    names), or None when an input does not say.  Inputs that disagree raise ValueError naming the tensor."""
    out = None
    for i, m in enumerate(metas):
        c = m.get("compression") or {}
        lossy = m.get(M_LOSSY) or {}
        if isinstance(c.get("wbits"), int):
            lb = c.get("layer_bits") or {}
            w = {n: int(lb.get(n, c["wbits"])) for n, t in sd.items() if t.is_floating_point() and t.dim() >= 2}
        elif isinstance(lossy.get("wbits"), int) and isinstance(lossy.get("include"), str):
            w = {n: lossy["wbits"] for n, t in sd.items()
                 if t.is_floating_point() and t.dim() >= 2 and re.search(lossy["include"], n)}
        else:
            return None
        if out is not None:
            diff = sorted(n for n in set(w) | set(out) if w.get(n) != out.get(n))
            if diff:
                bits = lambda d: f"{d[diff[0]]}-bit weights" if diff[0] in d else "float (not quantized)"  # noqa: E731
                raise ValueError(f"tensor '{diff[0]}': {bits(w)} in input {i}, "
                                 f"{bits(out)} in input 0 (a soup averages runs of one plan)")
        out = w
    return out


def check_soupable(metas: list[dict]) -> None:
    """ValueError unless every input can be re-snapped as the soup does (symmetric codes of one width, one step
    per tensor or per output channel): inputs packed with --step / --target-size (rate-distortion grids),
    per-group or asymmetric steps are named; so are inputs whose BatchNorms differ in being rewritten for
    inference (pack --bn-affine) from input 0's."""
    for i, m in enumerate(metas):
        lossy = m.get(M_LOSSY) or {}
        if "step" in lossy:
            raise ValueError(f"input {i} was packed with --step / --target-size (rate-distortion steps): a soup "
                             "re-snaps to a grid of fixed width and would lose them; average float checkpoints "
                             "and pack the result instead")
        g = lossy.get("granularity") or (m.get("compression") or {}).get("granularity")
        if g not in (None, "tensor", "channel"):
            raise ValueError(f"input {i} has one weight step per {g}: a soup re-snaps per tensor or per channel")
        if lossy.get("symmetric") is False:
            raise ValueError(f"input {i} has asymmetric steps (zero points): a soup re-snaps to symmetric ones")
    bn = [sorted(m.get(M_BN_AFFINE) or []) for m in metas]
    for i, b in enumerate(bn[1:], 1):
        if b != bn[0]:
            raise ValueError(f"input {i} has {len(b)} BatchNorms rewritten for inference (pack --bn-affine), input 0 "
                             f"{len(bn[0])}{' (other modules)' if len(b) == len(bn[0]) else ''}: their BatchNorm "
                             "tensors mean different things and cannot be averaged")


def granularity_of(metas: list[dict]) -> str | None:
    """'tensor' or 'channel': the weight steps the inputs were trained or packed with (metadata
    'compression' or 'lossy': granularity), or None when an input does not say.  Inputs that disagree
    raise ValueError."""
    got = []
    for m in metas:
        g = (m.get("compression") or {}).get("granularity") or (m.get(M_LOSSY) or {}).get("granularity")
        if g not in ("tensor", "channel"):
            return None
        got.append(g)
    if len(set(got)) > 1:
        i = next(i for i, g in enumerate(got) if g != got[0])
        raise ValueError(f"input {i} has one weight step per {got[i]}, input 0 per {got[0]} "
                         "(a soup averages runs of one plan)")
    return got[0] if got else None


def soup_metadata(metas: list[dict], inputs: list[str]) -> dict:
    """The first input's metadata, activation ranges averaged (fp16-exact), training figures dropped."""
    meta = {k: v for k, v in metas[0].items() if k not in ("top1_qat_eval", "reduced_params")}
    arch = dict(meta.get("arch", {}))
    alphas = [m.get("arch", {}).get("act_alpha") for m in metas]
    if alphas[0]:
        if any(a is None or set(a) != set(alphas[0]) for a in alphas[1:]):
            raise ValueError("inputs quantize different activations (arch.act_alpha keys differ)")
        arch["act_alpha"] = {k: float(fp16_exact(torch.tensor(sum(a[k] for a in alphas) / len(alphas))))
                             for k in alphas[0]}
    meta["arch"] = arch
    meta["soup"] = {"inputs": inputs, "weights": "uniform"}
    return meta


def soup_files(files: list[str], out: str, steps: str = "mse", zstd: bool = True,
               extra_meta: dict | None = None) -> dict:
    """Average packed models (`files`) into `out` (.mbz, written atomically); returns a result row
    (inputs, bytes, the largest re-snapping error) and, under 'float_average', the plain average's
    state_dict for an evaluation before re-snapping (not stored)."""
    import os

    import mbz
    sds, metas = [], []
    for f in files:
        with mbz.open(f) as r:
            metas.append(dict(r.metadata))
            sds.append(r.decode_all())
    _check_alike(sds)  # names and shapes before widths
    check_soupable(metas)
    sd, report = soup_state_dicts(sds, steps, widths_of(metas, sds[0]), per_tensor=granularity_of(metas) == "tensor")
    meta = soup_metadata(metas, [os.path.basename(f) for f in files])
    meta.update(extra_meta or {})
    mbz.save(sd, out, metadata=meta, zstd=zstd)
    return {"files": list(files), "out": out, "steps": steps, "bytes": os.path.getsize(out),
            "bytes_inputs": [os.path.getsize(f) for f in files],
            "largest_rms_snap": max((v["rms_snap"] for v in report.values()), default=0.0),
            "float_average": average_state_dicts(sds)}
