"""CODEBOOK encoding: value = codebook[q], bit for bit (spec §5.5).

The codebook holds k entries of the tensor's dtype; elements without a stored
code (sparse layouts) are all-zero bits.  Fillers of the DELTA layout index an
all-zero entry, which the writer places at index 0.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import FormatError
from ..spec import P_COUNT, P_K, P_WIDTH, Role
from .bitpack import unpack_codes

UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def value_bits(t: torch.Tensor) -> np.ndarray:
    """Flat unsigned-integer view of a tensor's bit patterns."""
    size = t.element_size()
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().view(UINT_OF_SIZE[size])


def decode_codebook(p: dict, secs: dict, dtype: torch.dtype, itemsize: int, shape, positions, numel: int) -> torch.Tensor:
    k = p[P_K]
    book = secs[Role.CODEBOOK]
    if len(book) != k * itemsize:
        raise FormatError(f"CODEBOOK holds {len(book)} bytes; {k} entries of {itemsize} bytes need {k * itemsize}")
    entries = np.frombuffer(book, UINT_OF_SIZE[itemsize])
    codes = unpack_codes(secs[Role.CODES], p[P_COUNT], p[P_WIDTH], False)
    if codes.size and int(codes.max()) >= k:
        raise FormatError(f"codebook index {int(codes.max())} out of range for {k} entries")
    if positions is None:
        out = entries[codes]
    else:
        out = np.zeros(numel, UINT_OF_SIZE[itemsize])
        out[positions] = entries[codes]
    return torch.from_numpy(out.copy()).view(dtype).reshape(tuple(shape))
