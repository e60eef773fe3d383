"""The public API: save, and the readers' open / load (mbz.reader); load_model lives in mbz.models."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from .checkpoint import as_state_dict
from .container import write_file
from .encoder import RANS_PROFILES, EntropyPolicy, encode_tensor
from .detect import detect_grid
from .errors import EncodeError
from .ratedist import StepPolicy, estimate_bytes, step_grid
from .quantize import DEFAULT_INCLUDE, QuantPolicy, error_stats, quantize_tensor
from .reader import MbzReader, load, map_small_first, open  # noqa: F401,A004


@dataclass
class TensorReport:
    name: str
    encoding: str
    stored_bytes: int
    quantized: bool = False
    error: dict = field(default_factory=dict)
    step: float | None = None        # quantization step (--step / --target-size), in the tensor's units
    bits: int | None = None          # code width of the stored grid


@dataclass
class SaveReport:
    path: str
    file_bytes: int
    tensors: list


def _progress_bar(enabled: bool, desc: str, total: int):
    """A tqdm bar to update by hand, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, unit="tensor", leave=False, total=total)


def save(obj, path, *, wbits: int | None = None, granularity: str = "channel", axis: int = 0,
         group_size: int = 64, symmetric: bool = True, include: str = DEFAULT_INCLUDE,
         detect: bool = True, zstd: bool = True, zstd_level: int | None = None, align: int = 1,
         metadata: dict | None = None, arch: dict | None = None, progress: bool = False,
         workers: int | None = None, rans: bool = False, profile: str = "default",
         step: float | None = None, step_1d: float | str | None = "auto", deadzone: float = 0.2,
         step_channel: bool = False) -> SaveReport:
    """Write a state_dict (or module, or wrapped checkpoint) to `path` as .mbz.

    Without `wbits` every tensor is stored exactly (detected grids, codebooks
    or raw bytes).  With `wbits`, tensors matching `include` (default: conv /
    linear weights) are quantized first and their error is reported.
    `workers` threads encode tensors side by side (default: up to 4, one per core).
    `arch` ({'name': ..., builder arguments}, see mbz.models) is recorded as the
    file's 'arch' metadata for mbz.load_model; nothing is guessed here.
    `rans` tries the RANS entropy coder (spec §5.7) on integer sections; `profile` "default" keeps it
    where it saves at least 3% over zstd with 1024-step lanes, "best" (which turns `rans` on) wherever it
    is smaller, with 16384-step lanes.  RANS is off by default: its sections decode several times slower
    than zstd's (results/entropy).  Raises EncodeError for an unknown profile.
    `step` (exclusive with `wbits`) quantizes conv / linear weights on a per-tensor grid of
    step·rms(tensor) and 1-D float tensors at step_1d·rms, with dead-zone rounding (mbz.ratedist);
    tensors already on an exact grid keep it.  See save_to_size for a byte budget.
    """
    if wbits and step:
        raise EncodeError("--wbits and --step are exclusive: a bit width or a step, not both")
    if profile not in RANS_PROFILES:
        raise EncodeError(f"unknown entropy profile {profile!r}; known: {sorted(RANS_PROFILES)}")
    sd = as_state_dict(obj)
    policy = QuantPolicy(wbits, granularity, axis, group_size, symmetric, include) if wbits else None
    ent = EntropyPolicy(zstd=zstd, level=zstd_level, rans=rans or profile == "best", profile=profile).resolved(sum(t.numel() * t.element_size() for t in sd.values()))
    meta = dict(metadata or {})
    arch = arch or meta.get("arch")
    if arch:
        meta["arch"] = arch

    spol = StepPolicy(step, step_1d, deadzone, channel=step_channel) if step else None

    def encode(item):
        name, t = item
        grid = quantize_tensor(t, policy) if policy is not None and policy.applies(name, t) else None
        if spol is not None:
            rel = spol.relative_step(name, t)
            if rel and not (detect and detect_grid(t) is not None):  # a tensor on an exact grid keeps it
                grid = step_grid(t, rel, spol.deadzone if t.dim() >= 2 else 0.0, spol.channel and t.dim() >= 2)
        et = encode_tensor(name, t, grid=grid, ent=ent, detect=detect)
        rep = TensorReport(name, et.encoding.name, et.stored_bytes, grid is not None)
        if grid is not None:
            rep.error = error_stats(t, torch.from_numpy(grid.values()).reshape(t.shape))
            rep.step = float(grid.scales[0]) if grid.scales.size == 1 else None
        if et.params.get("b"):
            rep.bits = int(et.params["b"])
        return et, rep

    items = list(sd.items())
    bar = _progress_bar(progress, "pack", len(items))
    done = map_small_first(encode, items, [t.numel() for _, t in items], workers or min(4, os.cpu_count() or 1),
                           tick=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    encoded, reports = [d[0] for d in done], [d[1] for d in done]
    size = write_file(path, encoded, meta, align=align, compress_header=ent.zstd)
    return SaveReport(os.fspath(path), size, reports)


def save_to_size(obj, path, target_bytes: int, *, step_1d: float | str | None = "auto", deadzone: float = 0.2,
                 step_channel: bool = False, tries: int = 6, log=None, **kw) -> SaveReport:
    """The file of least distortion (largest quality: smallest relative step) that fits `target_bytes`.

    The first step is bisected on an estimate of the file size (mbz.ratedist.estimate_bytes); then
    secant steps on the real sizes; at most `tries` packs (+1 to rewrite the best when the last one
    overshot).  The smallest step that fit is left at `path`; `log(str)` reports each pack.  Raises EncodeError when even the coarsest step tried does not fit.
    """
    sd = as_state_dict(obj)
    exact = {n for n, t in sd.items() if t.is_floating_point() and t.dim() >= 1 and t.numel() >= 2
             and detect_grid(t) is not None}
    # first guess from the estimate (bisection in log step), then secant steps on the real sizes
    pol = lambda st: StepPolicy(st, step_1d, deadzone, channel=step_channel)  # noqa: E731
    lo, hi = math.log(1e-3), math.log(8.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        if estimate_bytes(sd, pol(math.exp(mid)), exact) <= target_bytes:
            hi = mid
        else:
            lo = mid
    s = math.exp(hi)
    tried, best, rep = [], None, None
    for attempt in range(tries):
        rep = save(sd, path, step=s, step_1d=step_1d, deadzone=deadzone, step_channel=step_channel, **kw)
        tried.append((s, rep.file_bytes))
        if log:
            log(f"step {s:.4g}: {rep.file_bytes:,d} bytes (target {target_bytes:,d})")
        if rep.file_bytes <= target_bytes:
            if best is None or s < best[0]:
                best = (s, rep)
            if rep.file_bytes >= 0.99 * target_bytes:
                break
        fits = [t for t in tried if t[1] <= target_bytes]
        over = [t for t in tried if t[1] > target_bytes]
        goal = math.log(target_bytes * 0.995)
        if fits and over:  # bracketed: interpolate log(bytes) against log(step)
            (s1, b1), (s2, b2) = max(over, key=lambda t: t[0]), min(fits, key=lambda t: t[0])
            f = (goal - math.log(b1)) / (math.log(b2) - math.log(b1))
            s = math.exp(math.log(s1) + f * (math.log(s2) - math.log(s1)))
        else:  # one side only: bytes ~ step^-1 (about one bit per halving of the step, per weight)
            s0, b0 = tried[-1]
            s = s0 * (b0 / (target_bytes * 0.995)) ** 2
        if any(abs(math.log(s / t[0])) < 1e-3 for t in tried):
            break
    if best is None:
        raise EncodeError(f"no step tried fits {target_bytes:,d} bytes (last: {rep.file_bytes:,d} bytes)")
    if best[1] is not rep:  # the last pack overshot: write the one that fit again
        rep = save(sd, path, step=best[0], step_1d=step_1d, deadzone=deadzone, step_channel=step_channel, **kw)
    return rep
