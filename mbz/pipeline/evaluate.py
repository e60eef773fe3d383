"""Top-1 of a packed model: rebuilt with mbz.load_model, evaluated with the preprocessing its file records."""
from __future__ import annotations

import torch

from ..models import load_model
from ..reader import MbzReader
from .data import MEAN, STD, ArrayDataset, evaluate


def evaluate_file(path: str, ds: ArrayDataset, device: str = "cpu", state_dict: dict | None = None,
                  progress=None, model=None) -> dict:
    """{'top1': %, 'loss', 'n'} of the model in `path` on `ds` (the file's 'preprocess' mean / std).

    `state_dict`: other tensors for the same model (e.g. a soup's weights before re-snapping).
    `progress(n_done, n_total)` is called after every batch.  Raises MbzError when the file
    cannot be rebuilt as a model.  `model`: the network already loaded from `path` (mbz.load_model), or None."""
    if model is None:
        model = load_model(path)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    with MbzReader(path) as r:
        pre = r.metadata.get("preprocess", {})
    dev = torch.device(device)
    return evaluate(model.to(dev), ds, device=dev, mean=tuple(pre.get("mean", MEAN)), std=tuple(pre.get("std", STD)),
                    progress=progress)
