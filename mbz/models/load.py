"""`mbz.load_model` and `mbz.save`: the model-aware side of the API.

load_model rebuilds the network a .mbz file describes (or fills one the caller built) with its
tensors; save is mbz.api.save that also records the architecture of a registry module and checks
a given `arch` against the tensors before anything is written.
"""
from __future__ import annotations

import os

from torch import nn

from .. import api
from ..checkpoint import as_state_dict
from ..errors import MbzError
from ..structure import check_materialized, main_path, subtree
from ..reader import MbzReader
from ..reparam import fold_pruning
from .registry import arch_of_module, build_model, check_fit, effective_shapes, shapes_of, skeleton, strip_wrapper, validate_arch


def load_model(path, *, model: nn.Module | None = None, strict: bool = True) -> nn.Module:
    """The file's network with its tensors loaded, in eval mode.

    Without `model`, the network is rebuilt from the file's `arch` metadata (mbz.models.registry:
    validated against the architecture's declared arguments, then sized on the meta device).
    With `model` (any nn.Module the caller built, e.g. their own class), that module is filled in
    place and returned, as safetensors.torch.load_model does.  Names wrapped by DataParallel
    (`module.`) or torch.compile (`_orig_mod.`) are matched with the prefix removed.  Pruning pairs
    `X_orig` / `X_mask` (kept by pack --exact) are loaded as their effective X = X_orig * X_mask
    (mbz.reparam.fold_pruning).

    Names and shapes are compared before anything is decoded: raises MbzError naming the missing,
    unexpected and mis-shaped keys (the first few, with counts) when the file's tensors do not fit
    the network, so an untrained network is never returned.  `strict=False` accepts tensors the
    network has no place for; missing and mis-shaped ones are refused all the same.  MbzError also
    when the file has no `arch` (and no `model` is given) or its `arch` is not valid, or when the given
    `model` has tensors on the 'meta' device (load_state_dict would leave them empty)."""
    where = os.fspath(path) if path is not None else "<bytes>"
    with MbzReader(path) as r:
        # a structure tree (spec §3.1): the names and shapes of its model state_dict, which is decoded
        # first; a flat file: its records, nothing decoded before the check
        sd = r.state_dict() if r.has_structure else None
        names = shapes_of(sd) if sd is not None else \
            {rec.name: tuple(rec.shape) for rec in r.layout.records}
        names, pairs = effective_shapes(names)  # pack --exact kept torch.nn.utils.prune's X_orig / X_mask
        prefix = strip_wrapper(names)
        got = {k[len(prefix):]: s for k, s in names.items()}
        if model is None:
            arch = r.metadata.get("arch")
            if not arch:
                raise MbzError(f"{where}: no 'arch' metadata; pass --arch when packing, --model to mbz eval / mbz bench, "
                               f"or mbz.load_model(path, model=your_module)")
            try:
                spec, _ = validate_arch(arch)
                sk = skeleton(arch)
            except MbzError as e:
                raise MbzError(f"{where}: {e}") from None
            what = f"{where}: its tensors do not fit architecture {spec.name}"
            if sk is not None:
                check_fit(shapes_of(sk.state_dict()), got, what, strict)
                del sk
            model = build_model(arch)
        elif not isinstance(model, nn.Module):
            raise MbzError(f"load_model(model=...) expects a torch.nn.Module, got {type(model).__name__}")
        else:
            what = f"{where}: its tensors do not fit the given {type(model).__name__}"
            try:  # load_state_dict into tensors on the 'meta' device does nothing: the model would stay empty
                check_materialized(model)
            except MbzError as e:
                raise MbzError(f"{where}: load_model(model=...): the given {type(model).__name__}'s {e}") from None
        check_fit(shapes_of(model.state_dict()), got, what, strict)
        if sd is None:
            sd = r.decode_all()
    if pairs:
        sd, _ = fold_pruning(sd)
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # e.g. a dtype load_state_dict cannot copy from
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        raise MbzError(f"{what}: {' '.join(lines[1:3] or lines[:1])[:300]}") from None
    return model.eval()


def save(obj, path, *, arch: dict | None = None, metadata: dict | None = None, **kwargs):
    """mbz.api.save (same arguments and SaveReport) with the architecture recorded for load_model.

    `arch` is validated against the registry (validate_arch) and the tensors are checked against it
    (names and shapes, wrapper prefixes stripped) before anything is written: MbzError naming the
    missing / unexpected / mis-shaped keys otherwise.  metadata['arch'] is written as given (it is
    metadata like any other; load_model validates it).  Without either, a module `obj`
    that is one of the registry's (built by build_model, or e.g. torchvision.models.resnet18(num_classes=10),
    mobilenet_v2_cifar(width_mult=0.5)) has its `arch` recorded: only when its structure, strides
    included, equals the rebuilt one's (arch_of_module); nothing is guessed from a state_dict."""
    if arch:
        prep = api.prepare(obj, key=kwargs.get("key"), exact=kwargs.get("exact", False))
        sd = as_state_dict(subtree(prep.obj, main_path(prep.obj)))
        spec, _ = validate_arch(arch)
        sk = skeleton(arch)
        if sk is not None:
            names = shapes_of(sd)
            p = strip_wrapper(names)
            check_fit(shapes_of(sk.state_dict()), {k[len(p):]: s for k, s in names.items()},
                      f"the tensors do not fit 'arch' {spec.name}")
    elif isinstance(obj, nn.Module) and not (metadata or {}).get("arch"):
        arch = arch_of_module(obj)
    return api.save(obj, path, arch=arch or None, metadata=metadata, **kwargs)
