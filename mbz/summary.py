"""What `mbz inspect` shows: per-tensor rows, totals by category, compression ratios."""
from __future__ import annotations

import torch

from .codecs.affine import numel_of
from .codecs.raw import ITEMSIZE, TORCH_DTYPE
from .reparam import MASK, ORIG
from .spec import M_INPUT, QUANTIZED_DTYPES, Category, Filter

# the per-tensor columns of `mbz inspect` (spec table 8 without the file header) and their short titles
TENSOR_COLUMNS = {Category.VALUES: "values", Category.INDICES: "index", Category.SCALES: "scales",
                  Category.CODEBOOKS: "cbook", Category.RAW: "raw", Category.TENSOR_RECORDS: "record",
                  Category.CHECKSUMS: "crc", Category.PADDING: "pad"}


def is_weight(name: str, rank: int) -> bool:
    """Conv / linear weights: the tensors a 'weight compression ratio' is about (a pruning pair's
    `weight_orig` included: its mask's file bytes count with it, see is_weight_mask)."""
    return name.endswith(("weight", "weight" + ORIG)) and rank >= 2


def is_weight_mask(name: str, rank: int) -> bool:
    """The `weight_mask` of a torch.nn.utils.prune pair kept by pack --exact: bytes of the weight it masks."""
    return name.endswith("weight" + MASK) and rank >= 2


def fp32_bytes(dtype, numel: int) -> int:
    """Size of the tensor in an fp32 checkpoint (float tensors at 4 bytes, others as stored)."""
    if dtype in QUANTIZED_DTYPES:  # a quantized tensor's float values
        return numel * 4
    t = TORCH_DTYPE.get(dtype)
    return numel * (4 if t is not None and t.is_floating_point else ITEMSIZE[dtype])


def input_bytes(reader) -> tuple:
    """(bytes of the packed checkpoint's tensors in their own dtypes, where the figure comes from).

    From the file's 'input' metadata (recorded at pack time, format 1.1); for older files the
    records' own dtypes, which are the input's for a lossless file."""
    inp = reader.metadata.get(M_INPUT)
    if isinstance(inp, dict) and isinstance(inp.get("bytes"), int) and inp["bytes"] > 0:
        return inp["bytes"], "recorded at pack time"
    return sum(numel_of(r.shape) * ITEMSIZE[r.dtype] for r in reader.layout.records), "the records' dtypes"


def _zeros(t: torch.Tensor) -> int:
    """Elements whose value is zero (quantized: code = zero point; float8 and others through float32)."""
    if t.dtype == torch.bool:
        return int((~t).sum())
    if t.is_quantized:
        t = t.dequantize()
    try:
        return int((t == 0).sum())
    except (RuntimeError, TypeError):
        return int((t.to(torch.float32) == 0).sum()) if not t.is_complex() else int((t.to(torch.complex64) == 0).sum())


def summarize(reader, decode: bool = True) -> dict:
    acc = reader.accounting()
    rows = []
    fp32_total = fp32_w = file_w = 0
    # entropy-coded sections (spec §5.7, §5.8) decode far faster in one batch than tensor by tensor (all lanes
    # advance together): decode those files whole; others one tensor at a time (less memory held)
    batched = decode and any(s.filter in (Filter.RANS, Filter.ARANS) for r in reader.layout.records for s in r.sections)
    whole = reader.decode_all() if batched else None
    for desc, rec, a in zip(reader.describe(), reader.layout.records, acc["tensors"]):
        row = dict(desc)
        row["bytes"] = a["bytes"]
        row["total_bytes"] = sum(a["bytes"].values())
        row["fp32_bytes"] = fp32_bytes(rec.dtype, desc["numel"])
        if decode:
            t = whole[rec.name] if whole is not None else reader[rec.name]
            zeros = _zeros(t)
            row["sparsity"] = zeros / t.numel() if t.numel() else 0.0
        fp32_total += row["fp32_bytes"]
        if is_weight(rec.name, len(rec.shape)):
            fp32_w += row["fp32_bytes"]
            file_w += row["total_bytes"]
        elif is_weight_mask(rec.name, len(rec.shape)):
            file_w += row["total_bytes"]
        rows.append(row)
    file_bytes = acc["file_bytes"]
    in_bytes, in_source = input_bytes(reader)
    return {
        "input_bytes": in_bytes,
        "input_bytes_source": in_source,
        "input_compression_ratio": in_bytes / file_bytes if file_bytes else 0.0,
        "file_bytes": file_bytes,
        "file_mb": file_bytes / 1e6,
        "version": "%d.%d" % reader.version,
        "categories": acc["categories"],
        "fp32_bytes": fp32_total,
        "model_compression_ratio": fp32_total / file_bytes if file_bytes else 0.0,
        "weight_fp32_bytes": fp32_w,
        "weight_file_bytes": file_w,
        "weight_compression_ratio": fp32_w / file_w if file_w else 0.0,
        "metadata": reader.metadata,
        "tensors": rows,
    }


def format_table(s: dict, limit: int | None = None) -> str:
    cats = [c.value for c in TENSOR_COLUMNS]
    short = {c.value: v for c, v in TENSOR_COLUMNS.items()}
    rows = s["tensors"] if limit is None else s["tensors"][:limit]
    w = max([36] + [len(r["name"]) for r in rows])  # full names: a truncated one can name two tensors
    head = f"{'tensor':<{w}} {'shape':<16} {'enc':<8} {'bits':>4} {'layout':<6} {'zeros':>6} " + \
        " ".join(f"{short[c]:>7}" for c in cats) + f" {'total':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = f"{100 * r['sparsity']:5.1f}%" if "sparsity" in r else "     -"
        lines.append(f"{r['name']:<{w}} {'x'.join(map(str, r['shape'])) or 'scalar':<16} {r['encoding']:<8} "
                     f"{r['bits']:>4} {r['layout'][:6]:<6} {sp:>6} " +
                     " ".join(f"{r['bytes'][c]:>7}" for c in cats) + f" {r['total_bytes']:>8}")
    if limit is not None and len(s["tensors"]) > limit:
        lines.append(f"... {len(s['tensors']) - limit} more tensors (use --all)")
    if any(r["encoding"] != "RAW" and r["bits"] == 8 for r in s["tensors"]):
        lines.append("(bits: the stored code width; the writer may store narrower codes byte-aligned, as 8, where "
                     "that entropy-codes smaller)")
    lines.append("")
    lines.append("bytes by category (every byte of the file counted once):")
    for c, v in s["categories"].items():
        lines.append(f"  {c:<16} {v:>12,d}  {100 * v / s['file_bytes']:5.1f}%")
    lines.append(f"  {'total':<16} {s['file_bytes']:>12,d}  = file size on disk ({s['file_mb']:.3f} MB)")
    lines.append("")
    lines.append(f"input compression ratio  {s['input_compression_ratio']:.2f}x  "
                 f"(the checkpoint's tensors in their own dtypes {s['input_bytes']:,d} B, {s['input_bytes_source']} "
                 f"/ file {s['file_bytes']:,d} B)")
    lines.append(f"model compression ratio  {s['model_compression_ratio']:.2f}x  "
                 f"(fp32 checkpoint tensors {s['fp32_bytes']:,d} B / file {s['file_bytes']:,d} B)")
    if s["weight_file_bytes"]:
        lines.append(f"weight compression ratio {s['weight_compression_ratio']:.2f}x  "
                     f"(conv/linear weights: fp32 {s['weight_fp32_bytes']:,d} B / their bytes in the file "
                     f"{s['weight_file_bytes']:,d} B, records and checksums included)")
    else:
        lines.append("weight compression ratio n/a  (the file holds no conv/linear weights)")
    return "\n".join(lines)
