"""Decode one tensor record from its (already validated) sections (spec §5)."""
from __future__ import annotations

import torch

from .codecs.affine import decode_affine, numel_of
from .codecs.codebook import decode_codebook
from .codecs.filters import unfilter
from .codecs.qaffine import decode_quantized
from .codecs.raw import ITEMSIZE, tensor_from_bitmap, tensor_from_bytes, torch_dtype
from .codecs.sparse import StoredLayout
from .errors import FormatError
from .spec import P_NEGZERO, P_SPARSE, QUANTIZED_DTYPES, Encoding, Role, Sparsity


def decode_record(dtype: int, shape, encoding: int, p: dict, secs: dict) -> torch.Tensor:
    tdtype, itemsize = torch_dtype(dtype), ITEMSIZE[dtype]
    numel = numel_of(shape)
    if dtype in QUANTIZED_DTYPES:  # AFFINE only (ENCODING_DTYPES, checked on open)
        return decode_quantized(p, secs, dtype, shape, StoredLayout.from_sections(p, secs, numel), numel)
    if encoding == Encoding.RAW:
        if p.get(P_SPARSE, Sparsity.DENSE) == Sparsity.BITMAP:  # format 1.2 (spec §5.2)
            t = tensor_from_bitmap(secs[Role.RAW], StoredLayout.from_sections(p, secs, numel), dtype, shape,
                                   secs.get(Role.NEGZERO) if p.get(P_NEGZERO) else None)
        else:
            t = tensor_from_bytes(secs[Role.RAW], dtype, shape)
        if tdtype == torch.bool and t.numel() and int(t.view(torch.uint8).max()) > 1:
            raise FormatError("bool tensor holds bytes other than 0 and 1")
        return t
    layout = StoredLayout.from_sections(p, secs, numel)
    if encoding == Encoding.AFFINE:  # dtype / encoding pairs were checked on open (spec table 3)
        return decode_affine(p, secs, tdtype, shape, layout, numel)
    return decode_codebook(p, secs, tdtype, itemsize, shape, layout.positions(), numel)


def decode_tensor(et) -> torch.Tensor:
    """Decode an encoder.EncodedTensor (used by the writer's self-check)."""
    itemsize = ITEMSIZE[et.dtype]
    secs = {s.role: unfilter(s.role, s.filter, s.data, s.decoded_len, itemsize) for s in et.sections}
    return decode_record(et.dtype, et.shape, et.encoding, et.params, secs)
