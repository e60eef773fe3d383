"""The public API: save, and the readers' open / load (mbz.reader); load_model lives in mbz.models."""
from __future__ import annotations

import io
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .codecs.raw import mbz_dtype, sparse_parts
from .container import write_file
from .detect import detect_grid
from .encoder import RANS_PROFILES, EntropyPolicy, arans_pass, encode_tensor
from .errors import CheckpointError, EncodeError, path_error
from .ratedist import DEADZONE, SIZE_EXP, BiasFix, StepPolicy, estimate_bytes, expected_shift, floor_1d, step_grid
from .quantize import DEFAULT_INCLUDE, QuantPolicy, error_stats, quantize_tensor
from .reader import MbzReader, load, load_checkpoint, map_small_first, open  # noqa: F401,A004
from .reparam import fold_pruning
from .spec import H_MAIN, H_TREE, MAGIC, M_INPUT, M_KEY, M_LOSSY, M_PRUNE_FOLDED, M_ZERO_SIGN
from .structure import check_materialized, flatten

from .options import ZERO_SIGNS  # noqa: E402,F401 - defined there for the command line


@dataclass
class TensorReport:
    name: str
    encoding: str
    stored_bytes: int
    quantized: bool = False
    error: dict = field(default_factory=dict)
    negative_zeros: int = 0       # -0.0 elements in the input tensor
    negzero_bytes: int = 0        # what keeping their sign costs (bytes; 0 when dropped)
    step: float | None = None        # quantization step (--step / --target-size), in the tensor's units
    #                                  (per-channel steps: their median)
    bits: int | None = None          # code width of the stored grid
    rel_step: float | None = None    # the step relative to the rms (--step / --target-size)
    steps: int = 0                   # number of steps (1 per tensor, or one per output channel)
    kept_exact: str | None = None    # why a tensor the lossy settings would quantize stays exact


@dataclass
class SaveReport:
    path: str
    file_bytes: int
    tensors: list
    folded: list = field(default_factory=list)     # pruning pairs stored as their effective tensor
    left_out: list = field(default_factory=list)   # top-level keys not packed (key=...)
    input_bytes: int = 0                            # tensor bytes of the checkpoint in its own dtypes
    input_dtypes: dict = field(default_factory=dict)
    structure: bool = False                         # a structure tree was written (spec §3.1)
    shared: int = 0                                 # tensors stored once for several entries
    zero_sign: str = "keep"


def _progress_bar(enabled: bool, desc: str, total: int):
    """A tqdm bar to update by hand, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=desc, unit="tensor", leave=False, total=total)


@dataclass
class Prepared:
    """A checkpoint made ready to pack: one entry selected (key), pruning pairs folded."""
    obj: object
    folded: list
    left_out: list


def _a(noun: str) -> str:
    """'an int', 'a list'."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def prepare(obj, *, key: str | None = None, exact: bool = False) -> Prepared:
    """Select `key` of a checkpoint dict (naming the keys left out) and, unless `exact`, fold
    torch.nn.utils.prune's `X_orig` / `X_mask` pairs into `X` (mbz.reparam).

    Raises CheckpointError when `key` is not a key of the checkpoint, or naming the key path of a tensor
    on the 'meta' device (no values to store or compare; mbz.structure.check_materialized)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    left_out = []
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else []
            if keys and all(isinstance(obj[k], torch.Tensor) for k in keys):
                raise CheckpointError(f"key {key!r} is not in the checkpoint: it is a plain state_dict of "
                                      f"{len(keys):,d} tensors, packed whole without --key")
            shown = ", ".join(map(str, keys[:10])) + (f", ... ({len(keys):,d} keys)" if len(keys) > 10 else "")
            raise CheckpointError(f"key {key!r} is not in the checkpoint (its keys: {shown or 'none'})")
        left_out = [k for k in obj if k != key]
        obj = obj[key]
    check_materialized(obj)
    folded = []
    if not exact:
        obj, folded = fold_pruning(obj)
    return Prepared(obj, folded, left_out)


def _tensors(obj, out: list, depth: int = 0) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, Mapping) and depth < 64:
        for v in obj.values():
            _tensors(v, out, depth + 1)
    elif isinstance(obj, (list, tuple)) and depth < 64:
        for v in obj:
            _tensors(v, out, depth + 1)
    elif isinstance(obj, nn.Module):
        _tensors(obj.state_dict(), out, depth + 1)
    return out


def input_dtypes(obj) -> dict:
    """{dtype name: bytes} of a checkpoint's tensors in their own dtypes (shared storage counted once)."""
    out, seen = {}, set()
    for t in _tensors(obj, []):
        parts = [t] if t.layout == torch.strided else sparse_parts(t)
        for x in parts:
            ident = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.dtype) \
                if not x.is_quantized and x.numel() else id(x)
            if ident in seen:
                continue
            seen.add(ident)
            name = str(x.dtype).replace("torch.", "")
            out[name] = out.get(name, 0) + x.numel() * x.element_size()
    return out


_SIGN_ONLY = {2: (np.int16, -(1 << 15)), 4: (np.int32, -(1 << 31)), 8: (np.int64, -(1 << 63))}


def _negative_zeros(t: torch.Tensor) -> int:
    """Count of -0.0 elements (bit pattern: the sign bit alone), one pass over the tensor."""
    if not t.is_floating_point() or t.is_quantized or t.numel() == 0 or t.element_size() not in _SIGN_ONLY:
        return 0
    idt, pattern = _SIGN_ONLY[t.element_size()]
    a = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().view(idt)
    return int(np.count_nonzero(a == idt(pattern)))


def _is_width(w) -> bool:
    """Whether `w` is a code width in 1..16 (an int, numpy ints included; not a bool)."""
    try:
        return not isinstance(w, bool) and int(w) == w and 1 <= w <= 16
    except (TypeError, ValueError):
        return False


def check_regex(include: str) -> None:
    """Raises EncodeError when `include` is not a valid regular expression."""
    try:
        re.compile(include)
    except (re.error, TypeError) as e:
        raise EncodeError(f"--include {include!r} is not a valid regular expression ({e})") from None


def _check_include(include: str, flat, mode: str) -> None:
    """Raises EncodeError when `include` matches none of the tensors `mode` (--wbits / --step / --target-size)
    would quantize: the float tensors of rank >= 2 (and at least 2 elements) of the model state_dict, not
    torch-quantized; the message names a few of them.  With --wbits, also when there are none (nothing would be
    quantized); a step still quantizes the 1-D tensors then."""
    cand = [n for n, t in flat.tensors.items() if n in flat.main_names and not t.is_quantized
            and t.is_floating_point() and t.dim() >= 2 and t.numel() >= (1 if mode == "--wbits" else 2)]
    if any(re.search(include, n) is not None for n in cand):
        return
    if not cand:
        if mode != "--wbits":   # a step still quantizes the 1-D tensors (step_1d)
            return
        raise EncodeError(f"{mode}: nothing to quantize: the model state_dict holds no float tensor of rank >= 2 "
                          f"(--include {include!r} selects among those); leave {mode} out for a lossless pack")
    raise EncodeError(f"--include {include!r} matches none of the {len(cand)} tensors {mode} would quantize (float, "
                      f"rank >= 2, of the model state_dict), e.g. {', '.join(cand[:4])}"
                      f"{' ...' if len(cand) > 4 else ''}")


def save(obj, path, *, wbits: int | None = None, granularity: str = "channel", axis: int = 0,
         group_size: int = 64, symmetric: bool = True, include: str = DEFAULT_INCLUDE,
         detect: bool = True, zstd: bool = True, zstd_level: int | None = None, align: int | None = None,
         metadata: dict | None = None, arch: dict | None = None, progress: bool = False,
         workers: int | None = None, key: str | None = None, exact: bool = False,
         zero_sign: str = "keep", rans: bool = False, profile: str = "default",
         step: float | None = None, step_1d: float | str | None = "auto", deadzone: float = DEADZONE,
         step_channel: bool = True, size_exp: float = SIZE_EXP, step_gain: bool = True,
         bias_fix: dict[str, BiasFix] | None = None, overwrite: bool = False) -> SaveReport:
    """Write a checkpoint (state_dict, module, or any structure torch.load(weights_only=True) returns) as .mbz.

    Without `wbits` every tensor is stored exactly (detected grids, codebooks
    or raw bytes); torch quantized tensors as AFFINE codes with their scales and
    zero points.  With `wbits`, tensors of the model state_dict matching
    `include` (default: conv / linear weights) are quantized first and their error
    is reported; 1-D float tensors (BatchNorm, biases) stay exact unless `step_1d` is a number, which puts
    them on a grid of step_1d·rms (running variances: of their smallest value + BatchNorm eps;
    mbz.ratedist.step_grid), recorded in the 'lossy' metadata.  A checkpoint with more than a flat state_dict of tensors (epoch,
    optimizer state, several models, dtypes, tuples, shared storage) is kept whole
    in the file's structure tree (spec §3.1); `key` packs one entry of it.
    Pruning pairs `X_orig` / `X_mask` are stored as the effective `X` unless
    `exact`.  `zero_sign='drop'` stores -0.0 as +0.0 and records where in the
    metadata (the file is then not bit-exact for those elements).
    `workers` threads encode tensors side by side (default: up to 4, one per core).
    `arch` ({'name': ..., builder arguments}, see mbz.models) is recorded as the
    file's 'arch' metadata for mbz.load_model; nothing is guessed here.
    The 'input' metadata (spec.M_INPUT: the checkpoint's tensor bytes by dtype, what the compression ratios
    of `mbz eval` are of) is measured on `obj` unless `metadata` already holds it (a caller that transformed
    the checkpoint before, such as pack --fold-bn, records the original's).
    `rans` tries the RANS entropy coder (spec §5.7) on integer sections; `profile` "default" keeps it
    where it saves at least 3% over zstd with 1024-step lanes, "best" (which turns `rans` on) wherever it
    is smaller, with 16384-step lanes, then ARANS (spec §5.8) on every section it stores in fewer bytes
    (integer sections and float32 scales; all of a file's ARANS sections decode together).  RANS is off
    by default: its sections decode several times slower than zstd's (results/entropy).  The "default"
    profile also stores RAW sections of 64 KiB or more
    unfiltered unless zstd halves them (and, in models of 64 MiB of tensors or more, code / mask / delta
    sections unless it saves 1/8): they load with no decoding (mbz.encoder.RAW_KEEP_SAVING), and takes the
    BITMAP layout of RAW (spec §5.2: a bitmap and the elements whose bits are not all zero) for such a tensor
    only where it halves its bytes; "best" keeps the smallest section and layout.  `align` None: 64 when such
    unfiltered sections make the padding cheap, else 1.
    `step` (exclusive with `wbits`) quantizes conv / linear weights of the model state_dict on a grid of
    step·rms·(n / SIZE_REF)**size_exp (per output channel, or per tensor with `step_channel=False`) and 1-D float
    tensors at step_1d·rms, with a zero bin widened by `deadzone` steps (mbz.ratedist); tensors already on
    an exact grid keep it; `step_gain` rescales each weight step to keep the gain (mbz.ratedist.step_grid).
    `bias_fix` ({weight key: mbz.ratedist.BiasFix}, e.g. from mbz.models.biascorr.bias_fixes; with `step`):
    once such a weight is quantized, its expected output shift E[ΔW x] (mbz.ratedist.expected_shift) is
    subtracted from its float bias before the bias is quantized (data-free bias correction).
    See save_to_size for a byte budget.
    Raises CheckpointError for values that cannot be stored (naming their key path),
    EncodeError for tensors that cannot be encoded (naming the tensor), an unknown profile or
    zero_sign, or both `wbits` and `step`, or (with `wbits` / `step`) an `include` that is no valid regular
    expression or matches none of the tensors they would quantize; CheckpointError naming the key path of a
    tensor on the 'meta' device; a PathError (also the matching OSError) when `path` is a folder, its folder does not exist, or
    the file cannot be written.  An existing .mbz file at `path` is replaced (atomically); any other existing
    file only with `overwrite=True` (PathExistsError otherwise: a checkpoint given as the output by mistake
    is never lost).
    """
    _check_output(path, overwrite)
    if zero_sign not in ZERO_SIGNS:
        raise EncodeError(f"zero_sign must be one of {ZERO_SIGNS}, got {zero_sign!r}")
    if wbits is not None and not _is_width(wbits):
        raise EncodeError(f"wbits must be an integer in 1..16, got {wbits!r} (None for a lossless pack)")
    if wbits and step:
        raise EncodeError("--wbits and --step are exclusive: a bit width or a step, not both")
    if not wbits and not step and step_1d not in (None, "auto", 0):
        raise EncodeError(f"step_1d={step_1d!r} sets the step of 1-D tensors in a lossy pack: it needs wbits or step "
                          f"(without them every tensor is stored exactly)")
    if not step and deadzone != DEADZONE:
        raise EncodeError(f"deadzone={deadzone!r} widens the zero bin of `step` quantization: it needs step")
    if profile not in RANS_PROFILES:
        raise EncodeError(f"unknown entropy profile {profile!r}; known: {sorted(RANS_PROFILES)}")
    if wbits or step:
        check_regex(include)
    prep = prepare(obj, key=key, exact=exact)
    dtypes = input_dtypes(prep.obj)
    flat = flatten(prep.obj)
    if not flat.tensors:
        raise CheckpointError(f"checkpoint holds no tensors (it is {_a(type(prep.obj).__name__)}); "
                              "expected a state_dict, a module or a checkpoint holding one")
    if wbits or step:
        _check_include(include, flat, "--wbits" if wbits else "--step")
    policy = QuantPolicy(wbits, granularity, axis, group_size, symmetric, include) if wbits else None
    sd = flat.tensors
    ent = EntropyPolicy(zstd=zstd, level=zstd_level, rans=rans or profile == "best", profile=profile).resolved(
        sum(t.numel() * t.element_size() for t in sd.values()))
    meta = dict(metadata or {})
    arch = arch or meta.get("arch")
    if arch:
        meta["arch"] = arch
    given = meta.get(M_INPUT)  # a caller that transformed the checkpoint first (pack --fold-bn) records the original's
    if not (isinstance(given, dict) and isinstance(given.get("bytes"), int) and given["bytes"] > 0):
        meta[M_INPUT] = {"dtypes": dtypes, "bytes": sum(dtypes.values())}
    if prep.folded:
        meta[M_PRUNE_FOLDED] = prep.folded
    if key is not None:
        meta[M_KEY] = key

    spol = StepPolicy(step, step_1d, deadzone, include=include, channel=step_channel, size_exp=size_exp,
                      gain=step_gain) if step else None
    # with --wbits, 1-D float tensors stay exact unless a step_1d is given explicitly ("auto" keeps them)
    one_d = step_1d if policy is not None and step_1d not in (None, "auto", 0) else None
    if one_d is not None and not (isinstance(one_d, (int, float)) and 0 < one_d <= 1 and math.isfinite(one_d)):
        raise EncodeError(f"step_1d (--step-1d) must be a relative step in (0, 1] (0 or None: 1-D tensors "
                          f"exact), got {one_d!r}")
    if policy is not None:
        meta[M_LOSSY] = {"wbits": wbits, "granularity": granularity, "symmetric": bool(symmetric), "include": include}
        if one_d is not None:
            meta[M_LOSSY]["step_1d"] = one_d
    elif spol is not None:
        meta[M_LOSSY] = {"step": step, "step_1d": step_1d, "deadzone": deadzone, "step_channel": bool(step_channel),
                         "size_exp": size_exp, "gain": bool(step_gain), "include": include}

    pre = {}   # grids computed before the biases they correct
    if spol is not None and bias_fix:
        sd = dict(sd)
        for wname, fix in bias_fix.items():
            t, b = sd.get(wname), sd.get(fix.bias)
            if t is None or b is None or wname not in flat.main_names or fix.bias not in flat.main_names:
                raise EncodeError(f"bias correction: {wname} or {fix.bias} is not a tensor of the model state_dict")
            rel = spol.relative_step(wname, t)
            if not rel or t.dim() < 2 or (detect and detect_grid(t) is not None):
                continue
            g = step_grid(t, rel, spol.deadzone, spol.channel, spol.gain)
            if g is None:
                continue
            pre[wname] = g
            dw = g.values().reshape(t.shape).astype(np.float64) - t.detach().cpu().double().numpy()
            if b.shape != (t.shape[0],):
                raise EncodeError(f"bias correction: {fix.bias} {tuple(b.shape)} is not one value per output "
                                  f"channel of {wname} {tuple(t.shape)}")
            sd[fix.bias] = (b.detach().cpu().double() - torch.from_numpy(expected_shift(fix, dw))).to(b.dtype)
        meta[M_LOSSY]["bias_correction"] = len(pre)

    def encode(item):
        name, t = item
        try:
            mbz_dtype(t)
        except Exception as e:
            raise EncodeError(f"{name}: {e}") from None
        nz = _negative_zeros(t)
        if nz and zero_sign == "drop":
            t = torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)
        model = name in flat.main_names and not t.is_quantized
        why = None
        use = policy is not None and model and policy.applies(name, t)
        try:
            grid = quantize_tensor(t, policy) if use else None
        except EncodeError as e:
            raise EncodeError(f"tensor '{name}': {e}") from None
        rel = None
        if spol is not None and model:
            rel = spol.relative_step(name, t)
            if name in pre:
                grid = pre[name]
            elif rel and not (detect and detect_grid(t) is not None):  # a tensor on an exact grid keeps it
                try:
                    grid = step_grid(t, rel, spol.deadzone if t.dim() >= 2 else 0.0, spol.channel and t.dim() >= 2,
                                     spol.gain, floor_1d(name))
                except EncodeError as e:
                    raise EncodeError(f"tensor '{name}': {e}") from None
            else:
                rel = None
        elif one_d is not None and model and grid is None and t.dim() == 1 and t.is_floating_point() \
                and t.numel() >= 2 and bool(t.count_nonzero()):   # (an all-zero tensor has nothing to quantize)
            if detect and detect_grid(t) is not None:
                why = "already on an exact grid"
            else:
                try:
                    grid = step_grid(t, one_d, 0.0, floor=floor_1d(name))
                except EncodeError as e:
                    raise EncodeError(f"tensor '{name}': {e}") from None
                if grid is None:
                    why = "16-bit codes cannot span the range at this step"
                elif not grid.k.any():
                    grid, why = None, "every value would round to zero at this step"
                rel = one_d if grid is not None else None
        et = encode_tensor(name, t, grid=grid, ent=ent, detect=detect)
        rep = TensorReport(name, et.encoding.name, et.stored_bytes, grid is not None, negative_zeros=nz)
        rep.kept_exact = why
        if grid is not None:
            rep.error = error_stats(t, torch.from_numpy(grid.values()).reshape(t.shape))
            rep.step = float(np.median(grid.scales))
            rep.steps = int(grid.scales.size)
            rep.rel_step = rel
        elif nz and zero_sign == "keep":
            plus = torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)
            rep.negzero_bytes = max(0, et.stored_bytes - encode_tensor(name, plus, ent=ent, detect=detect).stored_bytes)
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
    if ent.rans and profile == "best":  # adaptive context models (spec §5.8) wherever they are smaller
        if progress:
            import sys
            import time
            t0 = time.perf_counter()
            print("best profile: coding the integer and scale sections with adaptive context models (ARANS, "
                  "spec §5.8) and decoding them again to check; this takes minutes on large models",
                  file=sys.stderr, flush=True)
        saved = arans_pass(encoded)
        if progress:
            print(f"best profile: ARANS saved {saved:,} bytes in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
        for et, rep in zip(encoded, reports):
            rep.stored_bytes = et.stored_bytes
    if zero_sign == "drop":
        dropped = {r.name: r.negative_zeros for r in reports if r.negative_zeros and not r.quantized}
        if dropped:
            meta[M_ZERO_SIGN] = dropped
    structure = {H_TREE: flat.tree, H_MAIN: flat.main} if flat.tree is not None else None
    size = write_file(path, encoded, meta, align=align, compress_header=ent.zstd, structure=structure)
    return SaveReport(os.fspath(path), size, reports, prep.folded, prep.left_out, sum(dtypes.values()), dtypes,
                      flat.tree is not None, flat.shared, zero_sign)


def _check_output(path, overwrite: bool) -> None:
    """Refuse to replace an existing file that is not a .mbz file (a checkpoint, say) unless `overwrite`."""
    if overwrite or not isinstance(path, (str, os.PathLike)):
        return
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return  # nothing there, or not a regular file: the write refuses or creates it
    except OSError:
        return
    try:
        with io.open(path, "rb") as f:  # `open` here is mbz.open
            head = f.read(len(MAGIC))
    except OSError:
        return  # unreadable: the write reports it
    if head != MAGIC:
        raise path_error(17, "exists and is not a .mbz file; pass overwrite=True to replace it", os.fspath(path))


def save_to_size(obj, path, target_bytes: int, *, step_1d: float | str | None = "auto", deadzone: float = DEADZONE,
                 step_channel: bool = True, size_exp: float = SIZE_EXP, step_gain: bool = True, tries: int = 6,
                 log=None,
                 **kw) -> SaveReport:
    """The file of least distortion (largest quality: smallest relative step) that fits `target_bytes`.

    The first step is bisected on an estimate of the file size (mbz.ratedist.estimate_bytes); then
    secant steps on the real sizes; at most `tries` packs (+1 to rewrite the best when the last one
    overshot).  The smallest step that fit is left at `path`; `log(str)` reports each pack.  Raises EncodeError when even the coarsest step tried does not fit.
    """
    _check_output(path, kw.get("overwrite", False))
    # the model state_dict's tensors (pruning folded, --key applied) are the ones a step quantizes
    include = kw.get("include", DEFAULT_INCLUDE)
    check_regex(include)
    flat = flatten(prepare(obj, key=kw.get("key"), exact=kw.get("exact", False)).obj)
    if flat.tensors:
        _check_include(include, flat, "--target-size")
    sd = {n: t for n, t in flat.tensors.items() if n in flat.main_names and not t.is_quantized}
    exact = {n for n, t in sd.items() if t.is_floating_point() and t.dim() >= 1 and t.numel() >= 2
             and detect_grid(t) is not None}
    # first guess from the estimate (bisection in log step), then secant steps on the real sizes
    pol = lambda st: StepPolicy(st, step_1d, deadzone, include=include, channel=step_channel,  # noqa: E731
                                size_exp=size_exp, gain=step_gain)
    lo, hi = math.log(1e-3), math.log(8.0)
    floor = estimate_bytes(sd, pol(8.0), exact)
    if floor > target_bytes:  # even the coarsest step's codes alone do not fit: no search can succeed
        raise EncodeError(f"target {target_bytes:,d} bytes is too small: at the coarsest step searched (8.0) the "
                          f"codes alone are estimated at {floor:,.0f} bytes")
    for _ in range(40):
        mid = (lo + hi) / 2
        if estimate_bytes(sd, pol(math.exp(mid)), exact) <= 0.995 * target_bytes:   # the secant steps' goal
            hi = mid
        else:
            lo = mid
    s = math.exp(hi)
    tried, best, rep = [], None, None
    trial = f"{path}.{os.getpid()}.try"   # trial packs never touch `path`: a failed search leaves nothing there
    try:
        rep = _search_steps(obj, trial, target_bytes, s, tried, tries, log, step_1d=step_1d, deadzone=deadzone,
                            step_channel=step_channel, size_exp=size_exp, step_gain=step_gain, **kw)
        best, last = rep
        if best is None:
            raise EncodeError(f"no step tried fits {target_bytes:,d} bytes (last: {last.file_bytes:,d} bytes)")
        if best[1] is last:
            os.replace(trial, path)
            last.path = path
            return last
        return save(obj, path, step=best[0], step_1d=step_1d, deadzone=deadzone, step_channel=step_channel,
                    size_exp=size_exp, step_gain=step_gain, **kw)
    finally:
        if os.path.exists(trial):
            os.remove(trial)


def _search_steps(obj, path, target_bytes, s, tried, tries, log, *, step_1d, deadzone, step_channel, size_exp,
                  step_gain, **kw):
    """save_to_size's search: packs at up to `tries` steps into `path`; returns ((step, report) of the smallest
    step that fit, or None; the last report)."""
    best = rep = None
    for attempt in range(tries):
        rep = save(obj, path, step=s, step_1d=step_1d, deadzone=deadzone, step_channel=step_channel,
                   size_exp=size_exp, step_gain=step_gain, **kw)
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
    return best, rep
