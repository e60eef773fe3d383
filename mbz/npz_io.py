"""`.npz` output of a checkpoint's tensors: the archive `numpy.savez` writes, readable by `numpy.load`.

An .npz file is a zip archive (stored, not deflated, as `numpy.savez` writes it) of one NPY file
(numpy's format, `numpy.lib.format`) per array, named ``NAME.npy``; `numpy.load(path)[NAME]` gives the
array back.  Arrays are written with allow_pickle=False, so loading never needs pickle.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np

from .errors import EncodeError
from .safetensors_io import ST_NAMES


def npz_bytes(obj) -> bytes:
    """An .npz archive of a checkpoint's tensors, keyed by their mbz record names (mbz.structure: the model
    state_dict's names as they are, other tensors by their key path such as 'optimizer/state/0/momentum_buffer');
    each array has the tensor's shape and dtype.  Values that are not tensors (epoch, optimizer settings) are
    not stored.

    Raises EncodeError naming the first tensor numpy has no dtype for (bfloat16, float8, complex32, quantized
    tensors), nothing written: such a checkpoint unpacks to .pt (every dtype) or .safetensors (bfloat16, float8
    e4m3fn / e5m2) instead."""
    from .structure import flatten
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, t in flatten(obj).tensors.items():
            if t.is_quantized:
                raise EncodeError(f"{name}: numpy has no dtype for the quantized tensor type {t.dtype} "
                                  f"(unpack to .pt instead)")
            try:
                a = t.detach().cpu().contiguous().numpy()
            except TypeError:
                other = ".pt or .safetensors" if t.dtype in ST_NAMES else ".pt"
                raise EncodeError(f"{name}: numpy has no dtype for {t.dtype} (unpack to {other} instead)") from None
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
    return buf.getvalue()
