"""Format verbs: pack, unpack, inspect, verify (the core only; no pipeline imports)."""
from __future__ import annotations

import io
import json

import torch

from .. import api
from ..checkpoint import read_checkpoint
from ..codecs.raw import bits_equal
from ..container import atomic_write
from ..errors import MbzError, MismatchError, UsageError
from ..models import arch_for_pack
from ..quantize import DEFAULT_INCLUDE, GRANULARITY_NAMES
from ..summary import format_table, summarize
from .common import add_force, input_file, output_file, print_json, show_progress


def _meta_pairs(pairs):
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise MbzError(f"--meta expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_pack(a) -> int:
    input_file(a.checkpoint, "checkpoint")
    output_file(a.output, inputs=[a.checkpoint], force=a.force)
    meta = _meta_pairs(a.meta)
    if "arch" in meta:
        raise MbzError("--meta arch=...: name the architecture with --arch (it is checked against the tensors)")
    sd = read_checkpoint(a.checkpoint)
    arch, arch_note = arch_for_pack(sd, a.arch, a.num_classes)
    if arch is None and a.arch is None:
        from .analysis import _file_arch
        kept = _file_arch(a.checkpoint)  # re-encoding a .mbz keeps the architecture it records
        if kept is not None:
            arch, arch_note = kept, f"architecture: {kept.get('name')} (kept from {a.checkpoint})"
    if sum(x is not None for x in (a.wbits, a.step, a.target_size)) > 1:
        raise UsageError("--wbits, --step and --target-size are exclusive: give one")
    common = dict(include=a.include, detect=not a.no_detect, zstd=not a.no_zstd, zstd_level=a.zstd_level,
                  align=a.align, metadata=meta, arch=arch, progress=show_progress(a.quiet),
                  rans=a.rans, profile="best" if a.best else "default")
    step_1d = "auto" if a.step_1d is None else None if a.step_1d == 0 else a.step_1d
    if a.target_size is not None:
        if a.target_size < 1:
            raise UsageError(f"--target-size must be a positive number of bytes, got {a.target_size}")
        rep = api.save_to_size(sd, a.output, a.target_size, step_1d=step_1d, deadzone=a.deadzone,
                               step_channel=a.step_channel,
                               log=None if a.quiet or a.json else print, **common)
    else:
        rep = api.save(sd, a.output, wbits=a.wbits, granularity=a.granularity, axis=a.axis,
                       group_size=a.group_size, symmetric=not a.asymmetric, step=a.step, step_1d=step_1d,
                       deadzone=a.deadzone, step_channel=a.step_channel, **common)
    fp32 = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in sd.values())
    if a.json:
        print(json.dumps({"file_bytes": rep.file_bytes, "fp32_bytes": fp32,
                          "tensors": [vars(t) for t in rep.tensors]}, indent=1))
        return 0
    lossy = a.wbits or a.step or a.target_size is not None
    if lossy:
        print(f"{'tensor':<40} {'enc':<8} {'bits':>4} {'step':>10} {'bytes':>9} {'max|err|':>10} {'rmse':>10} {'sqnr dB':>8}")
        for t in rep.tensors:
            if t.quantized:
                e = t.error
                step = f"{t.step:>10.4g}" if t.step is not None else f"{'-':>10}"
                print(f"{t.name[:40]:<40} {t.encoding:<8} {t.bits or '-':>4} {step} {t.stored_bytes:>9} "
                      f"{e['max_abs_err']:>10.3g} {e['rmse']:>10.3g} {e['sqnr_db']:>8.2f}")
    counts = {}
    for t in rep.tensors:
        counts[t.encoding] = counts.get(t.encoding, 0) + 1
    mode = (f"lossy {a.wbits}-bit {a.granularity}" if a.wbits else
            "lossy, one relative step per tensor" if lossy else "lossless")
    print(f"wrote {rep.path}: {rep.file_bytes:,d} bytes ({mode}; {len(rep.tensors)} tensors: "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
          f"); fp32 tensors {fp32:,d} bytes, ratio {fp32 / rep.file_bytes:.2f}x")
    print(arch_note)
    return 0


def cmd_unpack(a) -> int:
    input_file(a.file, ".mbz file")
    output_file(a.output, inputs=[a.file], force=a.force)
    sd = api.load(a.file)
    buf = io.BytesIO()
    torch.save(sd, buf)
    atomic_write(a.output, [buf.getvalue()])
    print(f"wrote {a.output}: {len(sd)} tensors")
    return 0


def cmd_inspect(a) -> int:
    input_file(a.file, ".mbz file")
    with api.open(a.file) as r:
        s = summarize(r, decode=not a.no_decode)
    if a.json:
        print_json(s)
    else:
        arch = s["metadata"].get("arch") or {}  # free-form metadata: any msgpack value (spec §3)
        brief = {k: v for k, v in arch.items() if k != "act_alpha"} if isinstance(arch, dict) else arch
        print(f"{a.file}: mbz {s['version']}, {len(s['tensors'])} tensors, arch {brief or '-'}")
        print(format_table(s, limit=None if a.all else 40))
    return 0


def cmd_verify(a) -> int:
    input_file(a.file, ".mbz file")
    input_file(a.checkpoint, "checkpoint")
    sd = read_checkpoint(a.checkpoint)
    bad = []
    with api.open(a.file) as r:
        missing = [k for k in sd if k not in r]
        extra = [k for k in r.keys() if k not in sd]
        for name in r.keys():
            if name in sd and not bits_equal(r[name], sd[name]):
                bad.append(name)
    for k in missing:
        print(f"MISSING  {k} (in checkpoint, not in file)")
    for k in extra:
        print(f"EXTRA    {k} (in file, not in checkpoint)")
    for k in bad:
        print(f"MISMATCH {k}")
    if missing or extra or bad:
        raise MismatchError(f"{a.file} does not reproduce {a.checkpoint}: {len(bad)} mismatched, "
                            f"{len(missing)} missing, {len(extra)} extra tensors")
    print(f"OK: all {len(sd)} tensors of {a.checkpoint} are bit-identical in {a.file}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("pack", help="checkpoint (.pt/.pth) -> .mbz",
                       description="Pack a PyTorch checkpoint. Without --wbits the packing is lossless: weights already on a "
                                   "quantization grid are detected and stored as integer codes; other tensors stay exact.")
    p.add_argument("checkpoint", help="state_dict or wrapped checkpoint ({'state_dict': ...} / {'model': ...}), read with weights_only=True")
    p.add_argument("-o", "--output", required=True, help="output .mbz path (written atomically; never one of the inputs)")
    add_force(p)
    q = p.add_argument_group("lossy quantization (only when --wbits is given)")
    q.add_argument("--wbits", type=int, help="quantize matching tensors to N bits (1..16) before packing")
    q.add_argument("--granularity", choices=GRANULARITY_NAMES, default="channel",
                   help="one scale per tensor, per output channel (--axis) or per group of --group-size elements")
    q.add_argument("--axis", type=int, default=0, help="channel axis for --granularity channel (default 0 = output channels)")
    q.add_argument("--group-size", type=int, default=64, help="elements per group for --granularity group")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric range with zero points (default symmetric)")
    q.add_argument("--include", default=DEFAULT_INCLUDE, help=f"regex of tensor names to quantize (default {DEFAULT_INCLUDE!r}, rank >= 2 only)")
    r = p.add_argument_group("rate-distortion (exclusive with --wbits)")
    r.add_argument("--step", type=float,
                   help="relative quantization step: conv / linear weights on a per-tensor grid of STEP x rms(tensor) "
                        "with dead-zone rounding (one step for all = equal slope; smaller = better quality, larger file)")
    r.add_argument("--target-size", type=int, metavar="BYTES",
                   help="the least-distortion file that fits BYTES: the step is searched (a few packs)")
    r.add_argument("--step-1d", type=float,
                   help="relative step of 1-D float tensors (BatchNorm, biases) with --step / --target-size "
                        "(default: the weights' step / 16, see mbz.ratedist.AUTO_1D; 0 keeps them exact)")
    r.add_argument("--step-channel", action="store_true",
                   help="one step per output channel (STEP x the channel's rms) instead of per tensor; steps are "
                        "rounded to quarter octaves so the scales stay cheap")
    r.add_argument("--deadzone", type=float, default=0.2,
                   help="dead-zone rounding offset in steps for weights, 0..0.5 (default 0.2; 0 = round to nearest)")
    e = p.add_argument_group("encoding")
    e.add_argument("--no-detect", action="store_true", help="do not look for exact grids / codebooks (store raw)")
    e.add_argument("--no-zstd", action="store_true", help="no entropy stage")
    e.add_argument("--zstd-level", type=int, help="zstd level (default: 19 below 1 MiB per section, else 3)")
    e.add_argument("--rans", action="store_true",
                   help="try our RANS entropy coder (spec §5.7) on integer sections and keep it where it saves >= 3%% "
                        "over zstd (lanes of <= 1024 codes); its sections decode several times slower than zstd's "
                        "(default: zstd or nothing per section)")
    e.add_argument("--best", action="store_true",
                   help="smallest file whatever its decode time: RANS wherever it is smaller, with fewer, longer lanes")
    e.add_argument("--align", type=int, default=1, help="section alignment in bytes (power of two; padding is counted)")
    m = p.add_argument_group("metadata")
    m.add_argument("--arch", metavar="NAME[:K=V,...]",
                   help="record the architecture for mbz eval / mbz.load_model: one of ours (mobilenet_v2_cifar, "
                        "resnet18_cifar, vgg11_bn_cifar, vgg16_bn_cifar) or any torchvision classification builder "
                        "(resnet18, vgg11_bn, mobilenet_v2, ...), arguments as K=V (e.g. mobilenet_v2_cifar:width_mult=0.5) "
                        "or a JSON object; num_classes and widths are read off the tensors when not given. The "
                        "tensors must fit it (wrapper prefixes module. / _orig_mod. allowed). Without --arch nothing "
                        "is recorded: the weights do not say the strides; pack names the architectures they fit")
    m.add_argument("--num-classes", type=int, help="num_classes for --arch (default: read off the tensors)")
    m.add_argument("--meta", action="append", metavar="KEY=VALUE", help="extra metadata (VALUE parsed as JSON if it can be)")
    p.add_argument("--json", action="store_true", help="print the per-tensor report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_pack)

    p = sub.add_parser("unpack", help=".mbz -> PyTorch state_dict (.pt)",
                       description="Decode every tensor of a .mbz file (bit-exact) and write them as a state_dict with "
                                   "torch.save, atomically.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("-o", "--output", required=True, help="output .pt path")
    add_force(p)
    p.set_defaults(fn=cmd_unpack)

    p = sub.add_parser("inspect", help="per-tensor encodings and every byte by category",
                       description="Validate a .mbz file and list its tensors (shape, dtype, encoding, bits, sparsity, "
                                   "bytes) and the file's bytes by category (spec table 8); the categories sum to the "
                                   "file size.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("--json", action="store_true", help="machine-readable: file_bytes, categories, tensors[].bytes")
    p.add_argument("--all", action="store_true", help="list every tensor (default: first 40)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding (no sparsity column)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("verify", help="bit-for-bit check of a .mbz against a checkpoint (exit 1 on mismatch)",
                       description="Decode every tensor of FILE and compare it bit for bit with CHECKPOINT; lists "
                                   "missing, extra and mismatched tensors; exit 0 when identical, 1 otherwise.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("checkpoint", help="the checkpoint it was packed from (.pt/.pth, read with weights_only=True)")
    p.set_defaults(fn=cmd_verify)
