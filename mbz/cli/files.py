"""Format verbs: pack, unpack, inspect, verify (the core only; no pipeline imports).

Only the arguments are defined here: a verb's job (mbz.cli.files_run, with torch and the codecs) is imported
when it runs, so that `mbz --help` and argument errors answer at once."""
from __future__ import annotations

from ..options import DEADZONE, DEFAULT_INCLUDE, GRANULARITY_NAMES, SIZE_EXP, SIZE_REF, ZERO_SIGNS
from .common import add_force, input_file, output_file

# each verb's paths, checked before its job is imported: a missing input or a protected output is said at once
_PATHS = {
    "cmd_pack": lambda a: (input_file(a.checkpoint, "checkpoint"),
                           output_file(a.output, inputs=[a.checkpoint], force=a.force)),
    "cmd_unpack": lambda a: (input_file(a.file, ".mbz file"), output_file(a.output, inputs=[a.file], force=a.force)),
    "cmd_inspect": lambda a: input_file(a.file, ".mbz file"),
    "cmd_verify": lambda a: (input_file(a.file, ".mbz file"), input_file(a.checkpoint, "checkpoint")),
}


def _job(name: str):
    """The command function `name` of mbz.cli.files_run, imported on its first call, after its paths are checked."""
    def run(a):
        _PATHS[name](a)
        from . import files_run
        return getattr(files_run, name)(a)
    return run


def register(sub) -> None:
    p = sub.add_parser("pack", help="checkpoint (.pt/.pth, .safetensors, .npz) -> .mbz",
                       description="Pack a PyTorch checkpoint. Without --wbits the packing is lossless: weights already on a "
                                   "quantization grid are detected and stored as integer codes; other tensors stay exact.")
    p.add_argument("checkpoint", help="any checkpoint torch.load(weights_only=True) reads (a state_dict, or a dict with "
                   "'model' / 'state_dict', epoch, optimizer ...: kept whole), a .safetensors file, an .npz archive "
                   "or a .mbz file")
    p.add_argument("-o", "--output", required=True, help="output .mbz path (written atomically; never one of the inputs)")
    add_force(p)
    q = p.add_argument_group("lossy quantization (only with --wbits; --include also with --step / --target-size)")
    q.add_argument("--wbits", type=int, help="quantize matching tensors to N bits (1..16) before packing")
    q.add_argument("--granularity", choices=GRANULARITY_NAMES,
                   help="one scale per tensor, per output channel (--axis) or per group of --group-size elements "
                        "(default channel)")
    q.add_argument("--axis", type=int, help="channel axis for --granularity channel (default 0 = output channels)")
    q.add_argument("--group-size", type=int, help="elements per group for --granularity group (default 64)")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric range with zero points (default symmetric)")
    q.add_argument("--include", metavar="REGEX",
                   help=f"regex of tensor names to quantize with --wbits, --step or --target-size (default "
                        f"{DEFAULT_INCLUDE!r}, float tensors of rank >= 2 only; one that matches none is refused)")
    c = p.add_argument_group("what is stored")
    c.add_argument("--key", metavar="NAME", help="pack only this entry of a checkpoint dict (the others are named as left out)")
    c.add_argument("--exact", action="store_true",
                   help="keep torch.nn.utils.prune's X_orig and X_mask bit for bit (default: store X = X_orig * X_mask, "
                        "pruned elements +0.0, under the plain name)")
    c.add_argument("--zero-sign", choices=ZERO_SIGNS, default="keep",
                   help="keep (default) the sign of -0.0 elements (pack reports their count and cost), or drop it: "
                        "store +0.0 and record in the file that it is not bit-exact there")
    r = p.add_argument_group("rate-distortion and BatchNorms (--step / --target-size exclude --wbits; --step-1d, "
                             "--fold-bn and --bn-affine also go with --wbits)")
    r.add_argument("--step", type=float,
                   help="relative quantization step: conv / linear weights on a grid of STEP x rms(tensor) x "
                        f"(n / {SIZE_REF})^SIZE_EXP (equal slope across layers, see --size-exp; smaller = better quality, "
                        "larger file)")
    r.add_argument("--target-size", type=int, metavar="BYTES",
                   help="the least-distortion file that fits BYTES: the step is searched (a few packs)")
    r.add_argument("--step-1d", type=float,
                   help="relative step of 1-D float tensors (BatchNorm, biases): STEP_1D x rms(tensor), or of the "
                        "smallest value + BatchNorm eps for positive ones (running variances); with --step / "
                        "--target-size default the weights' step / 16 (mbz.ratedist.AUTO_1D), with --wbits default "
                        "exact (e.g. 0.01: the 4-bit reference 1,147,246 -> 995,638 B with --best at an unchanged "
                        "held-out output error; results/ratedist); 0 keeps them exact")
    sg = r.add_mutually_exclusive_group()
    sg.add_argument("--step-channel", action="store_true", default=None,
                   help="one step per output channel (STEP x the channel's rms), the default; steps are rounded to "
                        "quarter octaves so the scales stay cheap")
    sg.add_argument("--step-tensor", dest="step_channel", action="store_false", default=None,
                   help="one step per tensor instead (far worse on MobileNet-v2: 10%% top-1 at 488,000 B, against "
                        "86%% per channel; results/ratedist)")
    r.add_argument("--deadzone", type=float,
                   help="widening of the zero bin in steps for weights, 0 <= DEADZONE < 0.5 (values below 1/2 + "
                        "DEADZONE steps "
                        f"become 0, the others round to nearest; default {DEADZONE:g} = round to nearest)")
    r.add_argument("--size-exp", type=float,
                   help="allocation across layers: a tensor of n weights gets the relative step STEP x "
                        f"(n / {SIZE_REF})^SIZE_EXP (0: one relative step for all; 0.5: each tensor's relative error "
                        f"weighted alike; default {SIZE_EXP:g}, chosen on held-out training images)")
    r.add_argument("--no-gain", action="store_true",
                   help="keep each weight step as chosen (default: once the codes are chosen, rescale the step so that "
                        "each channel keeps its gain, sum x^2 / sum x q; see mbz.ratedist.step_grid)")
    r.add_argument("--fold-bn", action="store_true",
                   help="fold every Conv2d -> BatchNorm2d pair of the architecture (--arch) into the conv before "
                        "packing: one bias per channel instead of four BatchNorm tensors; the file records the "
                        "folded architecture (mbz.load_model / mbz eval rebuild it)")
    r.add_argument("--bn-affine", action="store_true",
                   help="with --wbits, --step or --target-size: rewrite every BatchNorm of the architecture (--arch) "
                        "as the affine map it computes in eval mode (weight g = gamma / sqrt(var + eps), bias beta - "
                        "mean x g, running mean 0, running variance 1 - eps) before packing: the same outputs, the "
                        "convolutions untouched, and two of each BatchNorm's four tensors constant, so --step-1d "
                        "quantizes half as many values; float32 whatever the input's dtype. A BatchNorm with a dead "
                        "channel (weight / sqrt(var + eps) over 16x its median) is left as it is. The file is for "
                        "inference: its statistics are not the trained ones, and train --init / finetune / "
                        "prune-channels refuse it (see also --fold-bn)")
    r.add_argument("--bias-correct", action="store_true",
                   help="with --fold-bn and --step / --target-size: subtract from each conv's bias the expected shift "
                        "of its output, E[dW x], with the input means predicted from the BatchNorm statistics (no "
                        "data; Nagel et al. 2019; mbz.models.biascorr)")
    e = p.add_argument_group("encoding")
    e.add_argument("--no-detect", action="store_true", help="do not look for exact grids / codebooks (store raw)")
    e.add_argument("--no-zstd", action="store_true", help="no entropy stage")
    e.add_argument("--zstd-level", type=int, help="zstd level (default: 19 below 1 MiB per section, else 3)")
    e.add_argument("--rans", action="store_true",
                   help="try our RANS entropy coder (spec §5.7) on integer sections and keep it where it saves >= 3%% "
                        "over zstd (lanes of <= 1024 codes); its sections decode slower than zstd's (40-80 M codes/s per "
                        "core with numba, the 'fast' extra; far slower without) "
                        "(default: zstd or nothing per section)")
    e.add_argument("--best", action="store_true",
                   help="smallest file whatever its decode time: RANS wherever it is smaller, with fewer, longer lanes, "
                        "then the adaptive context-model coder ARANS (spec §5.8, format 1.2) on every integer section "
                        "and float32 scale table it stores smaller (such a file loads in a few times the default file's time "
                        "where numba is installed, the 'fast' extra; in seconds, not milliseconds, without it), "
                        "and raw tensors zstd-compressed whenever that is smaller (default: raw tensors of 64 KiB or "
                        "more stay uncompressed, read with no decoding, unless zstd halves them; a raw tensor of that size "
                        "with many exact zeros is stored as a bitmap and its non-zero elements where that halves it)")
    e.add_argument("--align", type=int, default=None,
                   help="section alignment in bytes (power of two; padding is counted; default: 64 when the file "
                        "has unfiltered raw sections of 64 KiB or more and the padding costs under 0.4%% of them, "
                        "else 1)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-tensor table (the summary lines stay)")
    p.set_defaults(fn=_job("cmd_pack"))

    p = sub.add_parser("unpack", help=".mbz -> PyTorch checkpoint (.pt), .safetensors or numpy .npz",
                       description="Decode every tensor of a .mbz file (bit-exact) and write the checkpoint as it was "
                                   "packed (its structure: epoch, optimizer state, ...) with torch.save, or its tensors "
                                   "as .safetensors or as a numpy .npz archive (numpy.load reads it without pickle), "
                                   "atomically.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("-o", "--output", required=True, help="output path")
    p.add_argument("--format", choices=("pt", "safetensors", "npz"),
                   help="pt (torch.save, everything), safetensors or npz (tensors only, keyed by record name: the "
                        "state_dict names, other tensors by key path such as optimizer/state/0/momentum_buffer; npz "
                        "refuses dtypes numpy lacks, bfloat16 and float8, naming the tensor); default: from the "
                        "output's extension (.safetensors, .npz), else pt")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success (neither the 'wrote' line nor the notes on what the output format "
                        "cannot hold)")
    p.set_defaults(fn=_job("cmd_unpack"))

    p = sub.add_parser("inspect", help="per-tensor encodings and every byte by category",
                       description="Validate a .mbz file and list its tensors (shape, dtype, encoding, bits, sparsity, "
                                   "bytes) and the file's bytes by category (spec table 8); the categories sum to the "
                                   "file size.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("--json", action="store_true", help="machine-readable: file_bytes, categories, tensors[].bytes")
    p.add_argument("--all", action="store_true", help="list every tensor (default: first 40)")
    p.add_argument("--no-decode", action="store_true",
                   help="check the header and every tensor's checksum (CRC-32 of its stored bytes) but decode nothing: "
                        "fast on large files; no sparsity column, and the entropy streams and codes are not decoded")
    p.set_defaults(fn=_job("cmd_inspect"))

    p = sub.add_parser("verify", help="bit-for-bit check of a .mbz against a checkpoint (exit 1 on mismatch)",
                       description="Rebuild FILE's checkpoint and compare all of it with CHECKPOINT: every tensor bit "
                                   "for bit, every other value (epoch, optimizer settings, dtypes) equal; lists "
                                   "missing, extra and mismatched entries; exit 0 when identical, 1 when they differ, 2 when an input cannot be read. "
                                   "What the file records about packing (pruning pairs folded, --key, --zero-sign "
                                   "drop, BatchNorm folded by --fold-bn) is applied to CHECKPOINT first and reported.")
    p.add_argument("file", help=".mbz file")
    p.add_argument("checkpoint", help="the checkpoint it was packed from (.pt/.pth read with weights_only=True, "
                                      ".safetensors, .npz, or a .mbz)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no NOTE lines and no OK line: only the differences and, when there are any, the one-line "
                        "error (the exit status as without -q)")
    p.set_defaults(fn=_job("cmd_verify"))
