"""Reading PyTorch checkpoints safely: torch.load(weights_only=True), wrapped checkpoints, .mbz inputs."""
from __future__ import annotations

import re
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .errors import CheckpointError, MbzError
from .paths import open_input
from .reader import load as load_mbz
from .reader import load_checkpoint as load_mbz_checkpoint
from .safetensors_io import is_safetensors, read_safetensors
from .spec import MAGIC
from .structure import WRAPPER_KEYS, check_materialized  # noqa: F401  (WRAPPER_KEYS re-exported)


def as_state_dict(obj) -> "OrderedDict[str, torch.Tensor]":
    """A flat {name: tensor} from a module, a state_dict or a wrapped checkpoint."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), (dict, nn.Module)):
                return as_state_dict(obj[key])
    if isinstance(obj, dict):
        out = OrderedDict()
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"state_dict key {k!r} is not a string")
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"entry '{k}' is a {type(v).__name__}, not a tensor "
                                      f"(wrapped checkpoints are recognised under {WRAPPER_KEYS})")
            out[k] = v.detach().cpu()
        if not out:
            raise CheckpointError("checkpoint holds no tensors")
        return out
    raise CheckpointError(f"expected a state_dict, a module or a wrapped checkpoint, got {type(obj).__name__}")


def read_object(path):
    """What the checkpoint file holds, whole: torch.load(weights_only=True) on the CPU, a .mbz file's
    checkpoint (mbz.load_checkpoint), a .safetensors file's or an .npz archive's tensors.  Raises
    CheckpointError naming the file, a PathError (mbz.paths.open_input) when `path` is missing, a folder or
    unreadable."""
    with open_input(path, "checkpoint") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        return load_mbz_checkpoint(path)
    if str(path).endswith(".safetensors") or is_safetensors(path):
        return read_safetensors(path)
    if str(path).lower().endswith(".npz"):
        return _read_npz(path)
    return _torch_load(path)


def _read_npz(path):
    """A numpy .npz archive of arrays (as `mbz unpack -o X.npz` writes): {name: tensor}, in archive order, read
    without pickle.  Raises CheckpointError naming the file (not an archive, object arrays, a dtype torch lacks)."""
    import numpy as np
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{path}: not an .npz archive (an .npz is a zip file of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays need pickle), TypeError (dtype)
        why = str(e).strip() or type(e).__name__
        if "pickle" in why:  # numpy's advice to unpickle is not for us: mbz never reads pickled data
            why = "not an archive of plain arrays (pickled data is never read)"
        raise CheckpointError(f"{path}: cannot be read as a numpy .npz archive: {why}") from None


# torch's own notes while it rebuilds what a checkpoint holds (sparse invariants checked, TypedStorage and
# quantized-tensor constructors deprecated): about torch's internals, not the user's file, so not printed
_TORCH_NOTES = ("Validating sparse tensor invariants", "TypedStorage is deprecated",
                "torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor")


def _torch_load(path):
    """torch.load(weights_only=True) on the CPU; CheckpointError naming the file for anything it refuses."""
    try:
        with warnings.catch_warnings():
            for note in _TORCH_NOTES:
                warnings.filterwarnings("ignore", message=note)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(path, e) from None
    try:  # torch.save keeps tensors of the 'meta' device as such (no values): refused here, naming file and key
        check_materialized(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return obj


def _load_error(path, e: Exception) -> CheckpointError:
    """One line for a file torch.load refused: not a checkpoint at all, or what torch said of one."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        return CheckpointError(f"{path}: not a PyTorch checkpoint, .safetensors, .npz or .mbz file "
                               f"(it starts with {head!r})")
    why = _first_line(e)
    if why.strip().isdigit() or len(why.strip()) < 4:
        why = f"corrupt or truncated ({type(e).__name__}: {why})"
    return CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True: {why}")


def read_checkpoint(path) -> "OrderedDict[str, torch.Tensor]":
    """torch.load with weights_only=True (no code runs), mapped to the CPU; a .mbz file through mbz.load.

    Raises CheckpointError naming the file, a PathError (mbz.paths.open_input) when `path` is missing, a folder
    or unreadable."""
    with open_input(path, "checkpoint") as f:
        is_mbz = f.read(len(MAGIC)) == MAGIC
    if is_mbz:  # a .mbz file is a checkpoint too (e.g. a baseline kept losslessly)
        return load_mbz(path)
    if str(path).endswith(".safetensors") or is_safetensors(path):
        return read_safetensors(path)
    obj = _torch_load(path)
    try:
        return as_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _first_line(e: Exception) -> str:
    """torch.load's errors run over several lines: the one that names the problem."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return (f"it holds a {m.group(1)} object, which only an unsafe unpickling rebuilds "
                f"(save a state_dict of tensors instead)")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def mbz_metadata(path) -> dict | None:
    """The metadata of a .mbz file, or None for another file (MbzError / OSError when it cannot be read)."""
    from .reader import MbzReader
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return None
    with MbzReader(path) as r:
        return dict(r.metadata)


def bn_affine_modules(path) -> list | None:
    """The BatchNorm modules a .mbz file records as rewritten for inference (metadata 'bn_affine', pack
    --bn-affine: running mean 0, variance 1 - eps), or None (another file, or none rewritten).  Training from
    such a file starts from other statistics than the trained ones; callers that train refuse it."""
    from .spec import M_BN_AFFINE
    try:
        names = (mbz_metadata(path) or {}).get(M_BN_AFFINE)
    except (OSError, MbzError):
        return None  # unreadable: the caller's own read says why
    return list(names) if isinstance(names, list) and names else None


def inference_only_reason(path, use: str) -> str | None:
    """The one-line reason `use` (e.g. '--init', 'baseline.checkpoint') refuses `path`, or None."""
    names = bn_affine_modules(path)
    if not names:
        return None
    return (f"{use} {path}: its {len(names)} BatchNorms were rewritten for inference (pack --bn-affine: running "
            f"mean 0, variance 1 - eps), so training from it would start from other statistics; use the checkpoint "
            f"it was packed from")
