"""`mbz.load_model`: rebuild the network a .mbz file describes and fill it with the file's tensors."""
from __future__ import annotations

from torch import nn

from ..errors import MbzError
from ..reader import MbzReader
from .registry import build_model


def load_model(path, *, strict: bool = True) -> nn.Module:
    """The model of the file's `arch` metadata, its tensors loaded, in eval mode.

    Raises MbzError when the file has no `arch` metadata, names an unknown
    architecture, or holds tensors that do not fit it (missing / unexpected keys,
    wrong shapes)."""
    with MbzReader(path) as r:
        arch = r.metadata.get("arch")
        if not arch:
            raise MbzError(f"{path}: no 'arch' metadata; pass --arch when packing, or use mbz.load()")
        model = build_model(arch)
        sd = r.state_dict()
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(x.strip() for x in first[1:4]) if len(first) > 1 else first[0]
        raise MbzError(f"{path}: its tensors do not fit architecture {arch.get('name')!r}: {detail[:400]}") from None
    return model.eval()
