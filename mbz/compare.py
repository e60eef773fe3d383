"""Whole-checkpoint comparison for `mbz verify`: every value of the structure, every tensor bit for bit."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .codecs.raw import bits_equal


@dataclass
class Comparison:
    tensors: int = 0                                  # tensors compared
    values: int = 0                                   # other values compared
    mismatched: list = field(default_factory=list)   # key paths that differ
    missing: list = field(default_factory=list)      # in the checkpoint, not in the file
    extra: list = field(default_factory=list)        # in the file, not in the checkpoint
    sign_only: list = field(default_factory=list)    # tensors that differ only in the sign of zeros
    why: dict = field(default_factory=dict)           # key path -> how two tensors differ (dtype, shape), where known

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.extra)


def _plus_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)


def _same_scalar(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return _same_scalar(a.real, b.real) and _same_scalar(a.imag, b.imag)
    return a == b


def compare(expected, got, *, zero_sign_dropped: bool = False, path: str = "", out: Comparison | None = None,
            depth: int = 0) -> Comparison:
    """Compare a checkpoint with what a file rebuilt; `zero_sign_dropped` accepts -0.0 stored as +0.0."""
    out = out if out is not None else Comparison()
    where = path or "(root)"
    if isinstance(expected, nn.Module):
        expected = expected.state_dict()
    if isinstance(expected, torch.Tensor):
        out.tensors += 1
        if not isinstance(got, torch.Tensor) or isinstance(expected, nn.Parameter) != isinstance(got, nn.Parameter):
            out.mismatched.append(where)
        elif expected.dtype != got.dtype or expected.shape != got.shape:
            out.mismatched.append(where)
            what = "dtype" if expected.dtype != got.dtype else "shape"
            a, b = ((str(expected.dtype).removeprefix("torch."), str(got.dtype).removeprefix("torch.")) if what == "dtype"
                    else (list(expected.shape), list(got.shape)))
            out.why[where] = f"{what} {a} in the checkpoint, {b} in the file"
        elif not bits_equal(expected.detach(), got.detach()):
            e = expected.detach()
            if (zero_sign_dropped and e.layout == torch.strided and not e.is_quantized and e.is_floating_point()
                    and bits_equal(_plus_zero(e), got.detach())):
                out.sign_only.append(where)
            else:
                out.mismatched.append(where)
        return out
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            out.mismatched.append(where)
            return out
        for k, v in expected.items():
            p = f"{path}/{k}" if path else str(k)
            if k not in got:
                out.missing.append(p)
                out.tensors += sum(1 for _ in leaves(v))
            else:
                compare(v, got[k], zero_sign_dropped=zero_sign_dropped, path=p, out=out, depth=depth + 1)
        out.extra += [f"{path}/{k}" if path else str(k) for k in got if k not in expected]
        return out
    if isinstance(expected, (list, tuple)) and not isinstance(expected, torch.Size):
        if type(got) is not type(expected) or len(got) != len(expected):
            out.mismatched.append(where)
            return out
        for i, (a, b) in enumerate(zip(expected, got)):
            compare(a, b, zero_sign_dropped=zero_sign_dropped, path=f"{path}/{i}" if path else str(i), out=out,
                    depth=depth + 1)
        return out
    out.values += 1
    if not _same_scalar(expected, got):
        out.mismatched.append(where)
    return out


def leaves(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, Mapping):
        for x in v.values():
            yield from leaves(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from leaves(x)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's raw bytes in C order; a quantized tensor's integer codes (int_repr)."""
    if t.is_quantized:
        t = t.int_repr()
    b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(b).hexdigest()


def fingerprint(obj, path: str = "") -> dict:
    """{key path: description} of every leaf of a checkpoint: tensors by type, dtype, shape, layout, the
    tensor_digest of their bytes (a sparse COO tensor's indices and values apart) and their quantization
    parameters; containers by type and keys / length; other values by type and repr.  JSON-ready; the
    golden files under tests/data hold it for what they must decode to."""
    out = {}
    if isinstance(obj, torch.Tensor):
        d = {"type": type(obj).__name__, "dtype": str(obj.dtype), "shape": list(obj.shape), "layout": str(obj.layout)}
        if obj.layout == torch.sparse_coo:
            d["parts"] = [tensor_digest(obj._indices()), tensor_digest(obj._values())]
        else:
            d["sha256"] = tensor_digest(obj)
        if obj.is_quantized:
            d["qscheme"] = str(obj.qscheme())
            if obj.qscheme() == torch.per_tensor_affine:
                d["q"] = [obj.q_scale(), obj.q_zero_point()]
            else:
                d["q"] = [obj.q_per_channel_scales().tolist(), obj.q_per_channel_zero_points().tolist(),
                          obj.q_per_channel_axis()]
        out[path] = d
    elif isinstance(obj, dict):
        out[path] = {"type": type(obj).__name__, "keys": [repr(k) for k in obj]}
        for k, v in obj.items():
            out.update(fingerprint(v, f"{path}/{k}"))
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        out[path] = {"type": type(obj).__name__, "len": len(obj)}
        for i, v in enumerate(obj):
            out.update(fingerprint(v, f"{path}/{i}"))
    else:
        out[path] = {"type": type(obj).__name__, "repr": repr(obj)}
    return out
