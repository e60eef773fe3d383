"""RAW encoding: the tensor's own little-endian bytes (spec §5.2)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from ..errors import FormatError
from ..spec import DTYPE_INFO, DType
from .bitpack import unpack_bits

# dtypes this torch build has (an older torch lacks some float8 types: their files are refused on decode)
TORCH_DTYPE = {d: getattr(torch, name) for d, (name, _) in DTYPE_INFO.items() if hasattr(torch, name)}
DTYPE_OF_TORCH = {v: k for k, v in TORCH_DTYPE.items()}
ITEMSIZE = {d: size for d, (_, size) in DTYPE_INFO.items()}
DTYPE_NAME = {d: name for d, (name, _) in DTYPE_INFO.items()}
assert sys.byteorder == "little", "mbz assumes a little-endian host"


def torch_dtype(d: DType) -> torch.dtype:
    """The torch dtype of table 2's entry; FormatError when this torch build lacks it."""
    try:
        return TORCH_DTYPE[d]
    except KeyError:
        raise FormatError(f"dtype {DTYPE_NAME.get(d, d)} is not available in torch {torch.__version__}") from None


def mbz_dtype(t: torch.Tensor) -> DType:
    try:
        return DTYPE_OF_TORCH[t.dtype]
    except KeyError:
        raise FormatError(f"dtype {t.dtype} is not in the mbz dtype table") from None


def tensor_bytes(t: torch.Tensor):
    """The tensor's little-endian bytes: a flat uint8 array viewing its memory (no copy for a contiguous tensor)."""
    t = t.detach().cpu()
    if t.is_quantized:
        t = t.int_repr()
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy()


def tensor_from_bytes(buf, dtype: DType, shape) -> torch.Tensor:
    numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    need = numel * ITEMSIZE[dtype]
    if len(buf) != need:
        raise FormatError(f"raw data of {numel} x {TORCH_DTYPE[dtype]} must be {need} bytes, got {len(buf)}")
    if numel == 0:
        return torch.empty(tuple(shape), dtype=TORCH_DTYPE[dtype])
    arr = np.frombuffer(buf, np.uint8)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).view(TORCH_DTYPE[dtype]).reshape(tuple(shape))


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so -0.0 != +0.0 and NaN payloads count)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != b.layout or a.is_quantized != b.is_quantized:
        return False
    if a.is_quantized:
        return quantized_equal(a, b)
    if a.layout != torch.strided:
        return all(bits_equal(x, y) for x, y in zip(sparse_parts(a), sparse_parts(b)))
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def quantized_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same quantization scheme, int_repr, scales, zero points and axis (scales compared as float64)."""
    if a.qscheme() != b.qscheme() or not bits_equal(a.int_repr(), b.int_repr()):
        return False
    if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
    return (a.q_per_channel_axis() == b.q_per_channel_axis()
            and torch.equal(a.q_per_channel_scales().double(), b.q_per_channel_scales().double())
            and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points()))


def sparse_parts(t: torch.Tensor) -> list:
    """The component tensors of a sparse tensor, in the order of spec table 15."""
    from ..spec import SPARSE_LAYOUTS
    name = str(t.layout).replace("torch.", "")
    if name == "sparse_coo":  # also uncoalesced ones, as they are
        return [t._indices(), t._values()]
    return [getattr(t, part)() for part in SPARSE_LAYOUTS[name]]


SCATTER_STEP = 1 << 20  # elements per chunk of the BITMAP scatter (a multiple of 8)


def element_view(arr: np.ndarray, itemsize: int) -> np.ndarray:
    """A uint8 array of whole elements viewed one row (or one unsigned int) per element, for copying elements."""
    if itemsize in (1, 2, 4, 8):
        return arr.view(f"<u{itemsize}")
    return arr.view("<u8").reshape(-1, itemsize // 8)


def tensor_from_bitmap(values, layout, dtype: DType, shape, negzero=None) -> torch.Tensor:
    """RAW in the BITMAP layout (spec §5.2, format 1.2): the m stored elements `values` (m x itemsize bytes,
    in order) at the positions whose MASK bit is 1, every other element all-zero bits.

    `layout` is a sparse.StoredLayout (BITMAP, its mask's length, unused bits and number of ones already
    checked).  Vectorized a chunk of SCATTER_STEP elements at a time.  `negzero` (param nz): the NEGZERO
    section, one bit per unstored element (numel - m bits, unused bits zero), 1 = -0.0 (the sign bit alone).
    Raises FormatError when `values` is not m x itemsize bytes or `negzero` not numel - m bits."""
    item = ITEMSIZE[dtype]
    numel, m = layout.numel, layout.m
    if len(values) != m * item:
        raise FormatError(f"BITMAP raw data of {m} stored x {TORCH_DTYPE[dtype]} must be {m * item} bytes, "
                          f"got {len(values)}")
    out = np.zeros(numel * item, np.uint8)
    if m:
        dst, src = element_view(out, item), element_view(np.frombuffer(values, np.uint8), item)
        mask, off = layout.mask, 0
        for s in range(0, numel, SCATTER_STEP):
            e = min(numel, s + SCATTER_STEP)
            sel = np.unpackbits(mask[s // 8:(e + 7) // 8], count=e - s, bitorder="little").view(bool)
            k = int(np.count_nonzero(sel))
            dst[s:e][sel] = src[off:off + k]
            off += k
    if negzero is not None:
        neg = unpack_bits(negzero, numel - m)
        if neg.any():
            dst = element_view(out, item)
            unstored = np.flatnonzero(~np.unpackbits(layout.mask, count=numel, bitorder="little").view(bool))
            dst[unstored[neg]] = np.array(1 << (8 * item - 1), dst.dtype)
    return torch.from_numpy(out).view(TORCH_DTYPE[dtype]).reshape(tuple(shape))
