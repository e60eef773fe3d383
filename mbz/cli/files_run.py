"""The format verbs' jobs: pack, unpack, inspect, verify (the core only; no pipeline imports).  Their arguments are
defined in mbz.cli.files, which imports this module only when one of them runs."""
from __future__ import annotations

import io
import json
import math
import warnings

import torch

from .. import api
from ..checkpoint import as_state_dict, mbz_metadata, read_object
from ..compare import leaves, compare
from ..container import atomic_write
from ..errors import CheckpointError, MbzError, MismatchError, UsageError
from ..models import arch_for_pack
from ..models.biascorr import bias_fixes
from ..models.folding import BN_AFFINE_SPREAD
from ..models.registry import bn_affine_state_dict, fold_state_dict
from ..options import DEADZONE, DEFAULT_INCLUDE, SIZE_EXP
from ..spec import M_BN_AFFINE, M_INPUT, M_KEY, M_LOSSY, M_PRUNE_FOLDED, M_ZERO_SIGN
from ..structure import main_path, subtree
from ..summary import format_table, summarize
from .common import print_json, show_progress


def _count(n: int, noun: str) -> str:
    """'1 tensor', '3 tensors'."""
    return f"{n:,d} {noun}{'' if n == 1 else 's'}"


def _meta_pairs(pairs):
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise MbzError(f"--meta expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        if not k:
            raise MbzError(f"--meta expects KEY=VALUE with a non-empty KEY, got {p!r}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _input_note(dtypes: dict) -> tuple:
    """(bytes of the input tensors in their own dtypes, their bytes as an fp32 checkpoint)."""
    own = sum(dtypes.values())
    fp32 = 0
    for name, b in dtypes.items():
        d = getattr(torch, name, None)
        quantized = d in (torch.qint8, torch.quint8, torch.qint32)   # their values are floats
        fp32 += b // d.itemsize * 4 if d is not None and (d.is_floating_point or quantized) else b
    return own, fp32


def cmd_pack(a) -> int:
    meta = _meta_pairs(a.meta)
    if "arch" in meta:
        raise MbzError("--meta arch=...: name the architecture with --arch (it is checked against the tensors)")
    _pack_options(a)
    obj = read_object(a.checkpoint)
    try:
        rc = _pack(a, obj, meta)
    except CheckpointError as e:
        raise CheckpointError(f"{a.checkpoint}: {e}") from None
    if not str(a.output).lower().endswith(".mbz"):  # said once the file is written: an error stays one line
        warnings.warn(f"{a.output} does not end in .mbz: written as an .mbz file all the same")
    return rc


def _pack_options(a) -> None:
    """pack's option rules that need no checkpoint: checked (and defaults set) before it is read, so that a
    mistaken flag is said at once.  Raises UsageError naming the flag."""
    if sum(x is not None for x in (a.wbits, a.step, a.target_size)) > 1:
        raise UsageError("--wbits, --step and --target-size are exclusive: give one")
    if a.no_zstd and a.best:
        raise UsageError("--no-zstd and --best contradict each other: --best tries every entropy stage")
    if a.wbits is not None and not 1 <= a.wbits <= 16:
        raise UsageError(f"--wbits must be in 1..16, got {a.wbits} (leave it out for a lossless pack)")
    if a.step is not None and not a.step > 0:
        raise UsageError(f"--step must be a positive relative step, got {a.step} (leave it out for a lossless pack)")
    if a.include is not None:
        api.check_regex(a.include)
    for flag, given in (("--granularity", a.granularity is not None), ("--axis", a.axis is not None),
                        ("--group-size", a.group_size is not None), ("--asymmetric", a.asymmetric)):
        if given and a.wbits is None:
            raise UsageError(f"{flag} sets how --wbits quantizes: it needs --wbits N"
                             + (" (--step / --target-size take --step-channel or --step-tensor)"
                                if flag == "--granularity" else ""))
    gran = a.granularity or "channel"
    if a.group_size is not None and gran != "group":
        raise UsageError(f"--group-size sets the groups of --granularity group; with --granularity {gran} it "
                         f"would be ignored")
    if a.axis is not None and gran != "channel":
        raise UsageError(f"--axis sets the channel axis of --granularity channel; with --granularity {gran} it "
                         f"would be ignored")
    if a.include is not None and a.wbits is None and a.step is None and a.target_size is None:
        raise UsageError(f"--include {a.include!r} picks the tensors to quantize: it needs --wbits, --step or "
                         "--target-size (without them every tensor is stored exactly)")
    rd = a.step is not None or a.target_size is not None
    for flag, given in (("--deadzone", a.deadzone is not None), ("--size-exp", a.size_exp is not None),
                        ("--no-gain", a.no_gain), ("--step-channel / --step-tensor", a.step_channel is not None)):
        if given and not rd:
            raise UsageError(f"{flag} sets how --step / --target-size quantize: it needs one of them"
                             + (" (--wbits takes --granularity)" if a.wbits is not None else ""))
    if a.step_1d is not None and not rd and a.wbits is None:
        raise UsageError("--step-1d sets the step of 1-D tensors in a lossy pack: it needs --step, --target-size or "
                         "--wbits (without them every tensor is stored exactly)")
    if a.step_1d is not None and not (0 <= a.step_1d <= 1 and math.isfinite(a.step_1d)):
        raise UsageError(f"--step-1d must be a relative step in (0, 1] (0 keeps 1-D tensors exact), got {a.step_1d}")
    if a.deadzone is not None and not 0 <= a.deadzone < 0.5:
        raise UsageError(f"--deadzone must be in [0, 0.5) steps, got {a.deadzone}")
    a.deadzone = DEADZONE if a.deadzone is None else a.deadzone
    a.size_exp = SIZE_EXP if a.size_exp is None else a.size_exp
    a.step_channel = True if a.step_channel is None else a.step_channel
    if a.zstd_level is not None and not 1 <= a.zstd_level <= 22:
        raise UsageError(f"--zstd-level must be in 1..22, got {a.zstd_level}")
    if a.bias_correct and not (a.fold_bn and (a.step is not None or a.target_size is not None)):
        raise UsageError("--bias-correct corrects the biases of folded convolutions: it needs --fold-bn and "
                         "--step or --target-size")
    if a.bn_affine and a.fold_bn:
        raise UsageError("--bn-affine and --fold-bn are two ways to store the BatchNorms: pick one")
    if a.bn_affine and not (rd or a.wbits is not None):
        raise UsageError("--bn-affine rewrites the BatchNorm tensors, which a lossless pack keeps bit-exact: it needs "
                         "--wbits, --step or --target-size")
    if a.align is not None and not (1 <= a.align <= 4096 and a.align & (a.align - 1) == 0):
        raise UsageError(f"--align must be a power of two in 1..4096, got {a.align}")


def _key_hint(obj) -> str:
    """How to pick a checkpoint's state_dict for --fold-bn / --bn-affine (--key takes one top-level entry)."""
    path = main_path(obj)
    if len(path) == 1:
        return f"pick it with --key {path[0]}"
    if path:
        return (f"its state_dict sits under {' / '.join(map(str, path))}, deeper than --key reaches: save that "
                "state_dict on its own first")
    return "pick it with --key (the entry that holds it)"


def _pack(a, obj, meta: dict) -> int:
    prep = api.prepare(obj, key=a.key, exact=a.exact)
    main = subtree(prep.obj, main_path(prep.obj))
    plain = {k: v for k, v in main.items() if isinstance(v, torch.Tensor)} if hasattr(main, "items") else {}
    if a.arch is not None or a.num_classes is not None:
        arch, arch_note = arch_for_pack(plain, a.arch, a.num_classes)
    else:
        try:
            arch, arch_note = arch_for_pack(plain, None)
        except Exception:  # noqa: BLE001 - tensors no architecture can be fitted to: nothing to suggest
            arch, arch_note = None, ("no architecture recorded (mbz.load / unpack work; for mbz eval and "
                                     "mbz.load_model pass --arch)")
    try:
        src = mbz_metadata(a.checkpoint) or {}  # re-packing a .mbz: what it records about its tensors
    except OSError:
        src = {}  # not a plain file (read_object read it): nothing recorded
    kept = src.get("arch")
    if arch is None and a.arch is None and isinstance(kept, dict):  # it keeps the architecture recorded
        arch, arch_note = kept, f"architecture: {kept.get('name')} (kept from {a.checkpoint})"
    if not a.fold_bn:  # and how its tensors were made: rewritten BatchNorms always, lossy settings and QAT if lossless
        lossless = a.wbits is None and a.step is None and a.target_size is None
        for k in (M_BN_AFFINE,) + ((M_LOSSY, "compression") if lossless else ()):
            if k in src and k not in meta:
                meta = dict(meta, **{k: src[k]})
    gran = a.granularity or "channel"
    fold_note, common_fix, in_dtypes = None, None, None
    if a.fold_bn:
        if arch is None:
            raise UsageError("--fold-bn needs the architecture: pass --arch NAME (the conv -> BatchNorm pairs are "
                             "found in the network it builds)")
        if main is not prep.obj or len(plain) != len(prep.obj):
            raise UsageError(f"--fold-bn folds a plain state_dict of tensors: {_key_hint(prep.obj)}")
        in_dtypes = api.input_dtypes(plain)  # the checkpoint's tensors, before folding: what the ratio is of
        meta = dict(meta, **{M_INPUT: {"dtypes": in_dtypes, "bytes": sum(in_dtypes.values())}})
        try:
            folded, arch0 = fold_state_dict(plain, arch)
        except MbzError as e:
            raise UsageError(f"--fold-bn: {e}") from None
        if a.bias_correct:
            common_fix = bias_fixes(plain, arch, folded)
        arch = arch0
        arch_note = f"architecture recorded: {arch}"
        fold_note = (f"  BatchNorm folded into the convolutions before packing (--fold-bn): {_count(len(plain), 'tensor')} -> "
                     f"{len(folded)}; recorded as {arch.get('name')} with folded_bn; the model CR of inspect / eval is "
                     f"of the folded tensors' fp32 bytes, {_input_note(api.input_dtypes(folded))[1]:,d}")
        prep = api.Prepared(folded, prep.folded, prep.left_out)
    bn_names, bn_skipped = None, []
    if a.bn_affine:
        if arch is None:
            raise UsageError("--bn-affine needs the architecture: pass --arch NAME (each BatchNorm and its eps are "
                             f"found in the network it builds); {arch_note}")
        if main is not prep.obj or len(plain) != len(prep.obj):
            raise UsageError(f"--bn-affine rewrites a plain state_dict of tensors: {_key_hint(prep.obj)}")
        in_dtypes = api.input_dtypes(plain)
        try:
            rewritten, bn_names, bn_skipped = bn_affine_state_dict(plain, arch)
        except MbzError as e:
            raise UsageError(f"--bn-affine: {e}") from None
        before = [n for n in meta.get(M_BN_AFFINE) or [] if n not in bn_names]  # rewritten by an earlier pack
        meta = dict(meta, **{M_INPUT: {"dtypes": in_dtypes, "bytes": sum(in_dtypes.values())},
                             M_BN_AFFINE: bn_names + before})
        fold_note = (f"  BatchNorms rewritten as their eval-mode affine before packing (--bn-affine): "
                     f"{_count(len(bn_names), 'module')}, running mean 0 and running variance 1 - eps in each, float32"
                     + (f"; {_count(len(bn_skipped), 'module')} left as {'it is' if len(bn_skipped) == 1 else 'they are'} "
                        f"(a channel's weight / sqrt(var + eps) over {BN_AFFINE_SPREAD:g}x the median's: "
                        f"{', '.join(bn_skipped[:4])}"
                        f"{', ...' if len(bn_skipped) > 4 else ''})" if bn_skipped else ""))
        prep = api.Prepared(rewritten, prep.folded, prep.left_out)
    common = dict(include=DEFAULT_INCLUDE if a.include is None else a.include, detect=not a.no_detect,
                  zstd=not a.no_zstd, zstd_level=a.zstd_level,
                  align=a.align, metadata=dict(meta, **({M_PRUNE_FOLDED: prep.folded} if prep.folded else {}),
                                               **({M_KEY: a.key} if a.key is not None else {})),
                  arch=arch, progress=show_progress(a.quiet), exact=a.exact, zero_sign=a.zero_sign, key=None,
                  rans=a.rans, profile="best" if a.best else "default",
                  overwrite=True,  # an existing output got here only with --force (output_file)
                  **({"bias_fix": common_fix} if common_fix else {}))
    step_1d = "auto" if a.step_1d is None else None if a.step_1d == 0 else a.step_1d
    if a.target_size is not None:
        if a.target_size < 1:
            raise UsageError(f"--target-size must be a positive number of bytes, got {a.target_size}")
        rep = api.save_to_size(prep.obj, a.output, a.target_size, step_1d=step_1d, deadzone=a.deadzone,
                               step_channel=a.step_channel, size_exp=a.size_exp,
                               step_gain=not a.no_gain,
                               log=None if a.quiet or a.json else print, **common)
    else:
        rep = api.save(prep.obj, a.output, wbits=a.wbits, granularity=a.granularity or "channel",
                       axis=a.axis or 0, group_size=64 if a.group_size is None else a.group_size,
                       symmetric=not a.asymmetric, step=a.step, step_1d=step_1d,
                       deadzone=a.deadzone, step_channel=a.step_channel, size_exp=a.size_exp,
                               step_gain=not a.no_gain, **common)
    in_dtypes = in_dtypes or rep.input_dtypes
    own, fp32 = _input_note(in_dtypes)
    nz = [t for t in rep.tensors if t.negative_zeros and not t.quantized]  # a quantized tensor keeps no -0.0
    if a.json:
        print(json.dumps({"file_bytes": rep.file_bytes, "fp32_bytes": fp32, "input_bytes": own,
                          "folded_bn": bool(a.fold_bn), "bn_affine": bn_names,
                          "bn_affine_skipped": bn_skipped, "arch": arch,
                          "input_dtypes": in_dtypes, "folded": prep.folded, "left_out": prep.left_out,
                          "structure": rep.structure, "shared": rep.shared, "zero_sign": rep.zero_sign,
                          "negative_zeros": sum(t.negative_zeros for t in nz),
                          "negzero_bytes": sum(t.negzero_bytes for t in nz),
                          "tensors": [vars(t) for t in rep.tensors]}, indent=1))
        return 0
    lossy = a.wbits or a.step or a.target_size is not None
    if lossy and not a.quiet:
        w = max([40] + [len(t.name) for t in rep.tensors if t.quantized])
        print(f"{'tensor':<{w}} {'enc':<8} {'bits':>4} {'step':>10} {'rel':>6} {'steps':>5} {'bytes':>9} "
              f"{'max|err|':>10} {'rmse':>10} {'sqnr dB':>8}")
        for t in rep.tensors:
            if t.quantized:
                e = t.error
                step = f"{t.step:>10.4g}" if t.step is not None else f"{'-':>10}"
                rel = f"{t.rel_step:>6.3g}" if t.rel_step is not None else f"{'-':>6}"
                print(f"{t.name:<{w}} {t.encoding:<8} {t.bits or '-':>4} {step} {rel} {t.steps or '-':>5} "
                      f"{t.stored_bytes:>9} {e['max_abs_err']:>10.3g} {e['rmse']:>10.3g} {e['sqnr_db']:>8.2f}")
        print("  (bits: the stored code width, a byte-aligned 8 where that entropy-codes smaller; step: the quantization "
              "step in the tensor's units, the median one for per-channel steps; rel: the step relative to the rms; "
              "steps: how many)")
    counts = {}
    for t in rep.tensors:
        counts[t.encoding] = counts.get(t.encoding, 0) + 1
    n1d = sum(1 for t in rep.tensors if t.quantized and t.rel_step is not None)
    mode = (f"lossy {a.wbits}-bit {a.granularity or 'channel'}"
            + (f", {n1d} 1-D tensors at relative step {a.step_1d:g}" if n1d else "") if a.wbits else
            f"lossy, relative steps {'per channel' if a.step_channel else 'per tensor'} at equal slope "
            f"(size exponent {a.size_exp:g}, dead zone {a.deadzone:g}{', gain kept' if not a.no_gain else ''})"
            if lossy else "lossless")
    dt = ", ".join(f"{k} {v:,d}" for k, v in sorted(in_dtypes.items(), key=lambda x: -x[1]))
    print(f"wrote {rep.path}: {rep.file_bytes:,d} bytes ({mode}; {_count(len(rep.tensors), 'tensor')}: "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")")
    kept = [t for t in rep.tensors if t.kept_exact]
    if kept:
        why = {}
        for t in kept:
            why.setdefault(t.kept_exact, []).append(t.name)
        for reason, names in why.items():
            print(f"  1-D tensors kept exact ({reason}): {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                  f" ({len(names)})")
    print(f"  input tensors {own:,d} bytes in their own dtypes ({dt}): ratio {own / rep.file_bytes:.2f}x; "
          f"as fp32 {fp32:,d} bytes: ratio {fp32 / rep.file_bytes:.2f}x")
    if fold_note:
        print(fold_note)
    if prep.folded:
        print(f"  pruning re-parametrisation: {_count(len(prep.folded), 'tensor')} stored as X_orig * X_mask under their plain "
              f"names (pruned elements exactly +0.0, masks not kept): {', '.join(prep.folded[:6])}"
              f"{' ...' if len(prep.folded) > 6 else ''}; --exact keeps X_orig and X_mask bit for bit")
    if nz:
        n = sum(t.negative_zeros for t in nz)
        if a.zero_sign == "drop":
            print(f"  negative zeros: {n:,d} -0.0 elements of {_count(len(nz), 'tensor')} stored as +0.0 (--zero-sign drop; "
                  "the file records them: not bit-exact there)")
        else:
            print(f"  negative zeros: kept the sign of {n:,d} -0.0 elements in {_count(len(nz), 'tensor')}, costing "
                  f"{sum(t.negzero_bytes for t in nz):,d} bytes (--zero-sign drop stores them as +0.0)")
    if rep.structure:
        top = list(prep.obj) if hasattr(prep.obj, "keys") else []
        print(f"  structure kept (mbz.load_checkpoint and unpack restore it): "
              f"{len(top)} top-level entries{': ' + ', '.join(map(str, top[:8])) if top else ''}"
              f"{' ...' if len(top) > 8 else ''}")
    if rep.shared:
        print(f"  {_count(rep.shared, 'tensor')} share{'s' if rep.shared == 1 else ''} storage with another: stored once, restored as shared")
    if prep.left_out:
        print(f"  left out (--key {a.key}): {', '.join(map(str, prep.left_out))}")
    print(arch_note)
    return 0


def cmd_unpack(a) -> int:
    with api.open(a.file) as r:
        obj = r.checkpoint()
        structured = r.has_structure
        meta_keys = sorted(str(k) for k in r.metadata if k not in (M_INPUT, M_PRUNE_FOLDED, M_KEY, M_ZERO_SIGN))
    ext = str(a.output).lower().rsplit(".", 1)[-1]
    fmt = a.format or (ext if ext in ("safetensors", "npz") else "pt")
    notes = []
    if fmt != "pt" and structured:
        others = _non_tensor_count(obj)
        notes.append(f"a .{fmt} holds tensors only: the checkpoint's structure"
                     + (f" and its {others} non-tensor value{'s' if others != 1 else ''}" if others else "")
                     + " are not written, tensors are keyed by their record names (the model state_dict's as they "
                       "are, the others by key path such as optimizer/state/0/momentum_buffer); unpack to .pt keeps "
                       "the whole checkpoint")
    if meta_keys:
        notes.append(f"the file's metadata ({', '.join(meta_keys)}) is not written (a .{fmt} has no place for it): "
                     f"mbz eval and mbz.load_model read it from the .mbz")
    if fmt == "safetensors":
        from ..safetensors_io import safetensors_bytes
        atomic_write(a.output, [safetensors_bytes(obj)])
    elif fmt == "npz":
        from ..npz_io import npz_bytes
        atomic_write(a.output, [npz_bytes(obj)])
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(a.output, [buf.getvalue()])
    n = sum(1 for _ in leaves(obj))
    if not a.quiet:
        print(f"wrote {a.output} ({fmt}): {_count(n, 'tensor')}")
        for note in notes:
            print(f"note: {note}")
    if a.format is None and ext not in ("pt", "pth", "safetensors", "npz"):
        warnings.warn(f"{a.output} does not end in .pt, .pth, .safetensors or .npz: written as torch.save writes "
                      f"(--format chooses)")
    return 0


def _non_tensor_count(v) -> int:
    """Values of a checkpoint tree that are not tensors (numbers, strings, dtypes, None), containers not counted."""
    if isinstance(v, torch.Tensor):
        return 0
    if isinstance(v, dict):
        return sum(_non_tensor_count(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_non_tensor_count(x) for x in v)
    return 1


def _structure_brief(r) -> str:
    """Top-level entries of a file's structure tree and where the model state_dict is, without decoding."""
    from ..spec import Node
    tree, main = r.layout.tree, r.layout.main
    keys = []
    if isinstance(tree, list) and tree and tree[0] in (Node.DICT, Node.ODICT) and isinstance(tree[1], list) \
            and not (tree[1] and type(tree[1][0]) is int):
        keys = [p[0][1] for p in tree[1] if isinstance(p, list) and len(p) == 2 and isinstance(p[0], list)
                and len(p[0]) == 2]
    where = "/".join(map(str, main)) or "the root"
    return (f"top-level entries {', '.join(map(str, keys[:12]))}{' ...' if len(keys) > 12 else ''}; "
            f"model state_dict at {where}") if keys else f"model state_dict at {where}"


def cmd_inspect(a) -> int:
    with api.open(a.file) as r:
        if a.no_decode:
            r.check_checksums()  # decoding checks them too
        s = summarize(r, decode=not a.no_decode)
        if r.has_structure:
            s["structure"] = _structure_brief(r)
    if a.json:
        print_json(s)
    else:
        arch = s["metadata"].get("arch") or {}  # free-form metadata: any msgpack value (spec §3)
        brief = {k: v for k, v in arch.items() if k != "act_alpha"} if isinstance(arch, dict) else arch
        print(f"{a.file}: mbz {s['version']}, {_count(len(s['tensors']), 'tensor')}, arch {brief or '-'}")
        if s.get("structure"):
            print(f"structure tree (spec §3.1): {s['structure']}")
        bn = s["metadata"].get(M_BN_AFFINE)
        if isinstance(bn, list) and bn:
            print(f"BatchNorms rewritten as their eval-mode affine (pack --bn-affine): {len(bn)} (running mean 0, "
                  f"variance 1 - eps; for inference, not for training on)")
        print(format_table(s, limit=None if a.all else 40))
    return 0


VERIFY_LINES = 20  # verify names at most this many tensors per kind of difference, then counts the rest


def cmd_verify(a) -> int:
    obj = read_object(a.checkpoint)
    by_record = False
    with api.open(a.file) as r:
        meta = r.metadata
        tree = r.has_structure
        names = [rec.name for rec in r.layout.records]
        if tree and isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) \
                and set(obj) == set(names):  # unpack -o X.safetensors / X.npz of a structured file
            got, tree, by_record = r.decode_all(), False, True
        else:
            got = r.checkpoint()
    prep = api.prepare(obj, key=meta.get(M_KEY), exact=not meta.get(M_PRUNE_FOLDED))
    try:
        expected = prep.obj if tree else as_state_dict(prep.obj)
    except CheckpointError as e:
        raise CheckpointError(f"{a.checkpoint}: {e}") from None
    c = compare(expected, got, zero_sign_dropped=bool(meta.get(M_ZERO_SIGN)))
    folded_bn = isinstance(meta.get("arch"), dict) and bool(meta["arch"].get("folded_bn"))
    refolded = False
    if folded_bn and (c.missing or c.extra) and not tree:  # pack --fold-bn: fold CHECKPOINT the same way first
        try:
            unfolded = {k: v for k, v in meta["arch"].items() if k != "folded_bn"}
            c2 = compare(fold_state_dict(expected, unfolded)[0], got, zero_sign_dropped=bool(meta.get(M_ZERO_SIGN)))
        except (MbzError, RuntimeError, ValueError, KeyError, TypeError):
            c2 = None  # not the checkpoint the file was folded from: compared as it is
        if c2 is not None and not (c2.missing or c2.extra):
            c, refolded = c2, True
    rewritten, rewrite_failed = None, None
    bn_rec = meta.get(M_BN_AFFINE)
    if isinstance(bn_rec, list) and isinstance(meta.get("arch"), dict) and not tree and not refolded:
        try:  # pack --bn-affine: rewrite CHECKPOINT's BatchNorms the same way first
            c2 = compare(bn_affine_state_dict(expected, meta["arch"], only=set(bn_rec))[0], got,
                         zero_sign_dropped=bool(meta.get(M_ZERO_SIGN)))
        except (MbzError, RuntimeError, ValueError, KeyError, TypeError) as e:
            c2, rewrite_failed = None, str(e)  # not the checkpoint the file was made from: compared as it is
        if c2 is not None and not (c2.missing or c2.extra) and len(c2.mismatched) < len(c.mismatched):
            c, rewritten = c2, len(bn_rec)  # (a checkpoint rewritten already compares better as it is)
    lossy = meta.get(M_LOSSY)
    if lossy and c.mismatched and not a.quiet:
        how = ", ".join(f"{k} {v}" for k, v in lossy.items() if v not in (None, False))
        print(f"NOTE     the file was packed lossy ({how}): its quantized tensors differ from the checkpoint by "
              f"design; `mbz inspect` gives their error and `mbz eval` their top-1")
    if folded_bn and (c.missing or c.extra) and not a.quiet:
        print("NOTE     the file holds BatchNorm folded into the convs (pack --fold-bn): its names differ from "
              "an unfolded checkpoint's by design; `mbz eval` gives its top-1")
    cap = 10 if folded_bn else VERIFY_LINES
    for label, keys, what in (("MISSING ", c.missing, "in checkpoint, not in file"),
                              ("EXTRA   ", c.extra, "in file, not in checkpoint")):
        shown_keys = keys[:cap]
        for k in shown_keys:
            print(f"{label} {k} ({what})")
        if len(shown_keys) < len(keys):
            print(f"{label} ... and {len(keys) - len(shown_keys)} more"
                  + (" (BatchNorm folded by design)" if folded_bn else ""))
    shown = c.mismatched[:10 if lossy else VERIFY_LINES]
    for k in shown:
        print(f"MISMATCH {k}" + (f" ({c.why[k]})" if k in c.why else ""))
    if len(shown) < len(c.mismatched):
        print(f"MISMATCH ... and {len(c.mismatched) - len(shown)} more" + (" (lossy by design)" if lossy else ""))
    notes = []
    if by_record:
        notes.append(f"{a.checkpoint} holds the file's tensors keyed by record name (as unpack writes .safetensors "
                     f"and .npz): compared record by record; the checkpoint's structure and non-tensor values are "
                     f"not in it")
    if prep.folded:
        notes.append(f"{len(prep.folded)} pruning pairs compared as the effective weight pack stores: X_orig where "
                     f"X_mask is not 0, +0.0 where it is (torch's X_orig * X_mask gives -0.0 where X_orig < 0)")
    if refolded:
        notes.append(f"the file holds BatchNorm folded into the convs (pack --fold-bn): {a.checkpoint} was folded "
                     f"the same way ({meta['arch'].get('name')}) and then compared")
    if rewritten is not None:
        notes.append(f"the file holds {_count(rewritten, 'BatchNorm')} rewritten as their eval-mode affine (pack "
                     f"--bn-affine): {a.checkpoint}'s were rewritten the same way and then compared")
    elif isinstance(bn_rec, list) and bn_rec:
        notes.append(f"the file holds {_count(len(bn_rec), 'BatchNorm')} rewritten as their eval-mode affine (pack "
                     f"--bn-affine); {a.checkpoint} was compared as it is"
                     + (f" (rewriting it the same way failed: {rewrite_failed})" if rewrite_failed else ""))
    if prep.left_out:
        notes.append(f"only entry {meta.get(M_KEY)!r} was packed; left out: {', '.join(map(str, prep.left_out))}")
    if c.sign_only:
        notes.append(f"{_count(len(c.sign_only), 'tensor')} differ{'s' if len(c.sign_only) == 1 else ''} only in the sign of zeros, as the file records "
                     f"(packed with --zero-sign drop: {sum(meta[M_ZERO_SIGN].values()):,d} -0.0 stored as +0.0)")
    for n in notes if not a.quiet else ():
        print(f"NOTE     {n}")
    if not c.ok:
        raise MismatchError(f"{a.file} does not reproduce {a.checkpoint}: {len(c.mismatched)} mismatched, "
                            f"{len(c.missing)} missing, {len(c.extra)} extra entries")
    exact = "bit-identical" if not c.sign_only else "bit-identical except the recorded zero signs"
    if prep.folded:
        exact += " (pruning pairs as their effective weight, see the note)"
    if refolded:
        exact += " (BatchNorm folded, see the note)"
    other = f" and {c.values} other value{'s' if c.values != 1 else ''}" if c.values else ""
    if not a.quiet:
        of = f"{a.checkpoint}[{meta[M_KEY]!r}]" if meta.get(M_KEY) is not None else a.checkpoint  # --key: that entry
        print(f"OK: {'all ' if c.tensors != 1 else 'the '}{_count(c.tensors, 'tensor')}{other} of {of} are {exact} in {a.file}")
    return 0
