"""The architecture registry: `arch` metadata -> an nn.Module, validated before anything is built.

A file's `arch` metadata ({'name': NAME, argument: value, ...}) is untrusted input.  Only names
in the registry are built (an allow-list; no code is named by the file): our CIFAR variants
(ARCHITECTURES: mobilenet_v2_cifar, resnet18_cifar, vgg11_bn_cifar, vgg16_bn_cifar) and every
torchvision classification builder (`torchvision.models.list_models(module=torchvision.models)`:
resnet18, vgg11_bn, mobilenet_v2, vit_b_16, ...), always with `weights=None`.  Every entry
declares its arguments with a type and a range (`Param`); `validate_arch` checks the metadata
against them, and `build_model` then builds the module on the meta device first and refuses one
of more than MAX_MODEL_ELEMENTS elements, so nothing is allocated for a network a file cannot
justify.  Every refusal is an MbzError naming the key and what was expected.

`fit_errors` / `check_fit` compare a state_dict's names and shapes with a module's (missing,
unexpected, mis-shaped keys) without decoding or allocating; `strip_wrapper` recognises the
prefixes DataParallel (`module.`) and torch.compile (`_orig_mod.`) put on every key.
`suggest_archs` lists the common registry architectures a state_dict's names and shapes fit: the
weights never say the strides or the pooling (torchvision's `mobilenet_v2` and our
`mobilenet_v2_cifar` have the same names and shapes), so `mbz pack` shows these as a hint and
records an architecture only when the user names it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError, MbzError
from .cifar_resnet import resnet18_cifar
from .cifar_vgg import vgg11_bn_cifar, vgg16_bn_cifar
from .act_quant import insert_act_quant
from .folding import bn_affine, conv_bn_pairs, fold_bn
from .mobilenet_v2 import _mnv2_channels, _width_of, expand_blocks, hidden_widths, mobilenet_v2_cifar

MAX_MODEL_ELEMENTS = 1 << 30  # parameters + buffers of a module build_model makes (4 GiB in fp32; ViT-H/14 is 0.63e9)
MAX_NUM_CLASSES = 10_000


@dataclass(frozen=True)
class Param:
    """One builder argument: kind 'int' | 'float' | 'bool' | 'int_list' | 'int_map' | 'float_map' and its range.

    Numbers must lie in [lo, hi] (lo excluded when lo_open); floats must be finite; lists and maps
    hold at most max_len items, each in the range."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    max_len: int = 0

    def _range(self) -> str:
        if self.lo is None:
            return ""
        return f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def expected(self) -> str:
        rng = self._range()
        return {"int": f"an integer{rng}", "float": f"a finite number{rng}", "bool": "true or false",
                "int_list": f"a list of at most {self.max_len} integers{rng}",
                "int_map": f"a map of at most {self.max_len} module paths to integers{rng}",
                "float_map": f"a map of at most {self.max_len} module paths to finite numbers{rng}"}[self.kind]

    def _num_ok(self, v, integer: bool) -> bool:
        if type(v) is bool or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return False
        if not integer and not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo) or v > self.hi):
            return False
        return True

    def problem(self, v) -> tuple | None:
        """None if `v` is valid; else (where inside v: '' or '[i]' / '[key]', what was expected there, the value)."""
        whole = ("", self.expected(), v)
        if self.kind in ("int", "float"):
            return None if self._num_ok(v, self.kind == "int") else whole
        if self.kind == "bool":
            return None if type(v) is bool else whole
        container = list if self.kind == "int_list" else dict
        if not isinstance(v, container) or len(v) > self.max_len:
            return whole
        integer = self.kind != "float_map"
        item = f"{'an integer' if integer else 'a finite number'}{self._range()}"
        for k, x in (enumerate(v) if container is list else v.items()):
            if container is dict and (not isinstance(k, str) or len(k) > 256):
                return ("", f"{self.expected()} (keys: strings of at most 256 characters)", v)
            if not self._num_ok(x, integer):
                return (f"[{k!r}]", item, x)
        return None

    def check(self, v) -> bool:
        return self.problem(v) is None


NUM_CLASSES = Param("int", 1, MAX_NUM_CLASSES)
DROPOUT = Param("float", 0, 1)
WIDTH = Param("float", 0, 4, lo_open=True)
FLAG = Param("bool")
CHANNELS = Param("int_map", 1, 1 << 16, max_len=4096)  # kept output channels per pruned conv (mbz.models.thinning)
_CIFAR_MNV2 = {"num_classes": NUM_CLASSES, "width_mult": WIDTH, "dropout": DROPOUT, "folded_bn": FLAG,
               "act_bits": Param("int", 2, 32), "act_alpha": Param("float_map", -1e6, 1e6, max_len=256),
               "hidden": Param("int_list", 1, 1 << 16, max_len=64), "channels": CHANNELS}


@dataclass(frozen=True)
class ArchSpec:
    """A registry entry: the builder, its declared arguments, and where it comes from."""
    name: str
    builder: object
    params: dict = field(default_factory=dict)
    source: str = "mbz"  # 'mbz' (CIFAR variants, mbz.models) or 'torchvision' (weights=None)
    infer: object = None  # fn(shapes) -> {argument: value} read off a state_dict's shapes (beside num_classes)


def _mnv2_infer(shapes: dict) -> dict:
    """width_mult (and `hidden` for blocks thinned by structured pruning) from a MobileNet-v2's shapes.

    A BatchNorm-folded one: the width whose stem and last conv have the stored channel counts."""
    arch = guess_arch(shapes)
    if arch is not None:
        return {k: v for k, v in arch.items() if k in ("width_mult", "hidden")}
    try:
        stem, last = shapes["features.0.0.weight"].shape[0], shapes["features.18.0.weight"].shape[0]
    except (KeyError, IndexError, AttributeError):
        return {}
    for w in sorted({1.0, *(round(k * 0.05, 2) for k in range(1, 81))}, key=lambda w: abs(w - stem / 32)):
        ch = _mnv2_channels(w)
        if ch[0] == stem and ch[-1] == last:
            return {"width_mult": w}
    return {}


def _tv_mnv2_infer(shapes: dict) -> dict:
    return {k: v for k, v in _mnv2_infer(shapes).items() if k == "width_mult"}


# act_bits < 32: activation quantizers placed from the module graph (mbz.models.act_quant.act_points)
_CIFAR_OTHER = {"num_classes": NUM_CLASSES, "folded_bn": FLAG, "act_bits": Param("int", 2, 32),
                "act_alpha": Param("float_map", -1e6, 1e6, max_len=256), "channels": CHANNELS}
ARCHITECTURES = {
    "mobilenet_v2_cifar": ArchSpec("mobilenet_v2_cifar", mobilenet_v2_cifar, _CIFAR_MNV2, infer=_mnv2_infer),
    "resnet18_cifar": ArchSpec("resnet18_cifar", resnet18_cifar, _CIFAR_OTHER),
    "vgg11_bn_cifar": ArchSpec("vgg11_bn_cifar", vgg11_bn_cifar, _CIFAR_OTHER),
    "vgg16_bn_cifar": ArchSpec("vgg16_bn_cifar", vgg16_bn_cifar, _CIFAR_OTHER),
}

# arguments beside num_classes that torchvision's builders take (by name prefix), each declared with its range
_TV_EXTRA = (("mobilenet_v2", {"width_mult": WIDTH, "dropout": DROPOUT}),
             (("alexnet", "vgg", "squeezenet", "mnasnet", "mobilenet_v3", "efficientnet"), {"dropout": DROPOUT}),
             ("googlenet", {"aux_logits": FLAG, "transform_input": FLAG, "dropout": DROPOUT, "dropout_aux": DROPOUT}),
             ("inception_v3", {"aux_logits": FLAG, "transform_input": FLAG, "dropout": DROPOUT}),
             ("densenet", {"drop_rate": DROPOUT}))
_TV: dict | None = None
_PLAIN = {"num_classes": NUM_CLASSES, "channels": CHANNELS}  # the arguments of a builder registered as a plain function


def architectures() -> dict:
    """{name: ArchSpec} of every architecture load_model builds: ARCHITECTURES (a plain function registered there
    takes num_classes and channels) and torchvision's classifiers."""
    global _TV
    if _TV is None:
        out = {}
        try:
            import torchvision.models as tvm
            names = tvm.list_models(module=tvm)
        except (ImportError, AttributeError):
            names = []
        for n in names:
            params = {"num_classes": NUM_CLASSES, "channels": CHANNELS}
            for prefix, extra in _TV_EXTRA:
                if n.startswith(prefix):
                    params.update(extra)
            out[n] = ArchSpec(n, _tv_builder(n), params, "torchvision", _tv_mnv2_infer if n == "mobilenet_v2" else None)
        _TV = out
    ours = {n: a if isinstance(a, ArchSpec) else ArchSpec(n, a, _PLAIN) for n, a in ARCHITECTURES.items()}
    return {**_TV, **ours}


def _tv_builder(name: str):
    def build(**kw):
        import torchvision.models as tvm
        return tvm.get_model_builder(name)(weights=None, **kw)
    build.__name__ = name
    return build


def _brief(x, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


def validate_arch(arch) -> tuple[ArchSpec, dict]:
    """(registry entry, builder arguments) of `arch` metadata, every argument checked against its Param.

    Raises MbzError naming the key and what was expected: `arch` not a map, `name` not a string
    or not in the registry, an argument the entry does not declare, a value of the wrong type or
    out of range (e.g. num_classes 100000, width_mult inf, act_alpha a list)."""
    if not isinstance(arch, dict):
        raise MbzError(f"'arch' metadata must be a map with a 'name', got {type(arch).__name__} {_brief(arch)}")
    name = arch.get("name")
    if not isinstance(name, str):
        raise MbzError(f"'arch.name' must be a string naming a registry architecture, got {_brief(name)}")
    reg = architectures()
    if name not in reg:
        tv = (f"torchvision's classification builders ({len(reg) - len(ARCHITECTURES)}: resnet18, vgg11_bn, "
              f"mobilenet_v2, ...)" if _TV else "torchvision's builders once torchvision is installed "
              "(pip install 'mbz[models]')")
        raise MbzError(f"unknown architecture {_brief(name)}; known: {', '.join(ARCHITECTURES)} and {tv}")
    spec = reg[name]
    kwargs = {}
    for k, v in arch.items():
        if k == "name":
            continue
        p = spec.params.get(k)
        if p is None:
            raise MbzError(f"'arch.{k}' is not an argument of {name}; it takes {sorted(spec.params) or 'none'}")
        bad = p.problem(v)
        if bad is not None:
            where, what, got = bad
            if where:
                raise MbzError(f"'arch.{k}{where}' of {name}: expected {what}, got {_brief(got)}")
            raise MbzError(f"'arch.{k}' of {name} must be {what}, got {_brief(got)}")
        kwargs[k] = v
    return spec, kwargs


def _build(spec: ArchSpec, kwargs: dict) -> nn.Module:
    kwargs = dict(kwargs)
    channels = kwargs.pop("channels", None)
    act_bits, act_alpha = kwargs.pop("act_bits", 32), kwargs.pop("act_alpha", None)
    m = spec.builder(**kwargs)
    if channels and isinstance(m, nn.Module):  # thinned by structured pruning: rebuild the pruned layers
        from .thinning import apply_widths
        apply_widths(m, channels)
    if act_bits < 32 and isinstance(m, nn.Module):  # quantizers last: they are placed from the final graph
        m = insert_act_quant(m, act_bits, learn=False, alphas=act_alpha)
    return m


_NO_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_init_on_meta():
    """torch.nn.init's in-place initialisers return meta tensors untouched while a skeleton is built
    (meta tensors hold no values; the initialisers' Python work is most of a meta build's time).
    Tensors on any other device, e.g. a model another thread builds meanwhile, are initialised as usual."""
    with _NO_INIT_LOCK:
        saved = {n: f for n, f in vars(nn.init).items()
                 if n.endswith("_") and not n.startswith("_") and callable(f)}

        def skip(f):
            @functools.wraps(f)
            def init(tensor, *a, **k):
                return tensor if isinstance(tensor, torch.Tensor) and tensor.is_meta else f(tensor, *a, **k)
            return init
        for n, f in saved.items():
            setattr(nn.init, n, skip(f))
        try:
            yield
        finally:
            for n, f in saved.items():
                setattr(nn.init, n, f)


def _call(spec: ArchSpec, kwargs: dict, meta: bool = False) -> nn.Module | None:
    try:
        if meta:
            with torch.device("meta"), _no_init_on_meta():
                m = _build(spec, kwargs)
        else:
            m = _build(spec, kwargs)
    except MbzError:
        raise
    except ModuleNotFoundError as e:  # the `models` extra is not installed
        if (e.name or "").split(".")[0] != "torchvision":
            raise
        raise MbzError(f"building {spec.name} needs torchvision, which is not installed "
                       f"(pip install 'mbz[models]')") from None
    except NotImplementedError:  # a builder that computes with tensors while building (RegNet) has no meta skeleton
        if meta:
            return None
        raise
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, AttributeError, OverflowError,
            ZeroDivisionError, AssertionError) as e:
        raise MbzError(f"cannot build {spec.name} from 'arch' {kwargs}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(m, nn.Module):
        raise MbzError(f"{spec.name}'s builder returned a {type(m).__name__}, not a module")
    return m


def skeleton(arch) -> nn.Module | None:
    """The module `arch` describes on the meta device (no memory, no initialisation), or None where the
    builder computes with tensors while building (torchvision's RegNets).  MbzError as validate_arch."""
    spec, kwargs = validate_arch(arch)
    m = _call(spec, kwargs, meta=True)
    if m is None:
        return None
    n = sum(t.numel() for t in m.state_dict().values())
    if n > MAX_MODEL_ELEMENTS:
        raise MbzError(f"architecture {spec.name} {kwargs} has {n:,d} elements; at most {MAX_MODEL_ELEMENTS:,d} "
                       f"are built")
    return m


def skeleton_shapes(arch) -> dict | None:
    """{state_dict name: shape tuple} of the module `arch` describes (its meta skeleton), or None where it has
    none; cached by the arch's JSON text (pack matches a state_dict against several architectures)."""
    try:
        key = json.dumps(arch, sort_keys=True)
    except (TypeError, ValueError):
        key = None
    if key is None:
        m = skeleton(arch)
        return None if m is None else shapes_of(m.state_dict())
    r = _skeleton_shapes(key)
    return None if r is None else dict(r)


@functools.lru_cache(maxsize=64)
def _skeleton_shapes(key: str) -> dict | None:
    m = skeleton(json.loads(key))
    return None if m is None else shapes_of(m.state_dict())


def build_model(arch) -> nn.Module:
    """The module that `arch` ({'name': ..., builder arguments}) describes, initialised, on the CPU.

    Validated first (validate_arch) and sized on the meta device (at most MAX_MODEL_ELEMENTS
    elements); MbzError if it cannot be built.  The module's `mbz_arch` attribute holds `arch`."""
    spec, kwargs = validate_arch(arch)
    skeleton(arch)
    m = _call(spec, kwargs)
    m.mbz_arch = dict(arch)
    return m


def parse_arch(text: str) -> dict:
    """`NAME`, `NAME:k=v,k=v` (values read as JSON where they parse: 10, 0.5, true; Python's True / False too) or a
    JSON object -> arch.

    A trailing ':' or ',' (nothing after it) is accepted: `resnet18_cifar:` is `resnet18_cifar`.
    Raises MbzError naming what is wrong: an empty spec or NAME, an item that is not KEY=VALUE, an empty
    KEY or VALUE, an empty item between commas, a KEY given twice or 'name' as a KEY (the values themselves
    are validated by validate_arch)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            arch = json.loads(text)
        except json.JSONDecodeError as e:
            raise MbzError(f"--arch {text!r}: not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(arch, dict):
            raise MbzError(f"--arch {text!r}: expected a JSON object")
        return arch
    usage = "expected NAME[:KEY=VALUE,...], e.g. resnet18_cifar:num_classes=100"
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise MbzError(f"--arch {text!r}: no architecture NAME{' before the colon' if text else ''}; {usage}")
    arch = {"name": name}
    parts = [p.strip() for p in rest.split(",")]
    if parts and not parts[-1]:  # a trailing ',' or ':' adds nothing
        parts.pop()
    for part in parts:
        if not part:
            raise MbzError(f"--arch {text!r}: an empty item between commas; {usage}")
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k:
            raise MbzError(f"--arch {text!r}: {part!r} is not KEY=VALUE; {usage}")
        if not v:
            raise MbzError(f"--arch {text!r}: {k!r} has an empty value; {usage}")
        if k == "name":
            raise MbzError(f"--arch {text!r}: the architecture is named before the colon, not as 'name='")
        if k in arch:
            raise MbzError(f"--arch {text!r}: {k!r} is given twice")
        if v in ("True", "False"):  # as Python prints them (mbz inspect shows the arch as a dict)
            v = v.lower()
        try:
            arch[k] = json.loads(v)
        except json.JSONDecodeError:
            arch[k] = v
    return arch


# -- names and shapes ------------------------------------------------------------------------------------------

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper(names) -> str:
    """The run of wrapper prefixes (`module.` from DataParallel / DistributedDataParallel, `_orig_mod.` from
    torch.compile, in any order) that every name starts with; '' if none."""
    names = list(names)
    prefix = ""
    while names:
        for p in WRAPPER_PREFIXES:
            if all(n.startswith(prefix + p) for n in names):
                prefix += p
                break
        else:
            break
    return prefix


def shapes_of(sd) -> dict:
    """{name: tuple shape} of a state_dict (tensors or anything with a .shape)."""
    return {k: tuple(v.shape) if hasattr(v, "shape") else (type(v).__name__,) for k, v in sd.items()}


def fit_errors(expected: dict, got: dict) -> tuple[list, list, list]:
    """(missing, unexpected, mis-shaped) between a module's {name: shape} and a state_dict's.  A BatchNorm's
    num_batches_tracked may be missing: load_state_dict fills it in (as for checkpoints of torch < 0.4.1)."""
    missing = [k for k in expected if k not in got and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in got if k not in expected]
    bad = [(k, got[k], expected[k]) for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    return missing, unexpected, bad


def describe_misfit(missing, unexpected, bad, first: int = 3) -> str:
    """'3 missing (a, b, c, ...), 1 unexpected (d), 2 mis-shaped (e: [64, 3, 3, 3] where the model has [64, 3, 7, 7], ...)'."""
    def part(items, what, fmt):
        if not items:
            return None
        more = ", ..." if len(items) > first else ""
        return f"{len(items)} {what} ({', '.join(fmt(x) for x in items[:first])}{more})"
    parts = [part(missing, "missing", str), part(unexpected, "unexpected", str),
             part(bad, "mis-shaped", lambda b: f"{b[0]}: {list(b[1])} where the model has {list(b[2])}")]
    return ", ".join(p for p in parts if p)


def check_fit(expected: dict, got: dict, what: str, strict: bool = True) -> None:
    """MbzError '{what}: ... do not fit: N missing (...), M unexpected (...), K mis-shaped (...)' unless the
    names and shapes agree (`strict=False` lets unexpected names pass; missing ones never do)."""
    missing, unexpected, bad = fit_errors(expected, got)
    if not strict:
        unexpected = []
    if missing or unexpected or bad:
        raise MbzError(f"{what}: {describe_misfit(missing, unexpected, bad)}")


def complete_arch(arch: dict, shapes: dict) -> dict:
    """`arch` with the arguments it leaves out read off a state_dict's shapes: num_classes (the size of the
    tensors whose shape follows it) and, for MobileNet-v2, width_mult and thinned `hidden` widths."""
    spec, kwargs = validate_arch(arch)
    out = dict(arch)
    if spec.infer is not None:
        for k, v in spec.infer(_shape_view(shapes)).items():
            out.setdefault(k, v)
    if "num_classes" in spec.params and "num_classes" not in arch:
        sa, sb = skeleton_shapes(dict(out, num_classes=7)), skeleton_shapes(dict(out, num_classes=11))
        if sa is not None and sb is not None:
            for k, s in sa.items():
                if k in shapes and len(s) == len(sb[k]) == len(shapes[k]) and s != sb[k]:
                    dim = next(i for i, (x, y) in enumerate(zip(s, sb[k])) if x != y)
                    n = shapes[k][dim]
                    if NUM_CLASSES.check(n):
                        out["num_classes"] = int(n)
                    break
        else:  # no meta skeleton (RegNet): the classifier is the last matrix of the state_dict
            last = [s for s in shapes.values() if len(s) == 2]
            if last and NUM_CLASSES.check(last[-1][0]):
                out["num_classes"] = int(last[-1][0])
    return out


# -- the MobileNet-v2 (CIFAR) arguments of a state_dict known to be one ----------------------------------------

def guess_arch(sd) -> dict | None:
    """The `arch` metadata of a CIFAR MobileNet-v2 state_dict (width, thinned blocks), or None.

    For state_dicts known to be CIFAR MobileNet-v2s (the pipeline's own): the weights do not say the
    strides, so this is no evidence that a state_dict *is* one (torchvision's mobilenet_v2 has the
    same names and shapes).  None also for MobileNet-v2 names in another layout (e.g. BatchNorm folded)."""
    if "features.0.0.weight" in sd and "classifier.1.weight" in sd and "features.18.0.weight" in sd:
        try:
            arch = {"name": "mobilenet_v2_cifar", "num_classes": int(sd["classifier.1.weight"].shape[0]),
                    "width_mult": _width_of(sd)}
            hidden = hidden_widths(sd)
            if any(hidden[i - 1] != 6 * sd[f"features.{i}.conv.0.0.weight"].shape[1] for i in expand_blocks(sd)):
                arch["hidden"] = hidden  # thinned by structured pruning
        except (KeyError, IndexError, AttributeError, ValueError, TypeError):
            return None
        return arch
    return None


class _Shaped:
    def __init__(self, shape):
        self.shape = shape


def _shape_view(shapes: dict) -> dict:
    return {k: _Shaped(v) for k, v in shapes.items()}


# the architectures pack checks a state_dict against for its hint (the common CIFAR ones and their torchvision kin)
SUGGEST = ("mobilenet_v2_cifar", "mobilenet_v2", "resnet18_cifar", "resnet18", "resnet34", "resnet50",
           "vgg11_bn_cifar", "vgg11_bn", "vgg16_bn_cifar", "vgg16_bn")
# names every state_dict of a SUGGEST family holds: a state_dict without them is not built against (building
# the skeletons imports torchvision, seconds in a fresh process); tests check them against the built models
SIGNATURE_KEYS = {"mobilenet_v2": ("features.0.0.weight", "features.1.conv.0.0.weight", "classifier.1.weight"),
                  "resnet": ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.0.conv1.weight", "fc.weight"),
                  "vgg": ("features.0.weight", "features.1.running_var")}
# the same for the BatchNorm-folded networks (folded_bn: convs with a bias, no BatchNorm), e.g. what
# pack --fold-bn or QAT with folding wrote, unpacked
FOLDED_SIGNATURE_KEYS = {"mobilenet_v2": ("features.0.0.weight", "features.0.0.bias", "classifier.1.weight"),
                         "resnet": ("conv1.weight", "conv1.bias", "layer1.0.conv1.bias", "fc.weight"),
                         "vgg": ("features.0.weight", "features.0.bias")}


def signature_fits(name: str, keys, folded: bool = False) -> bool:
    """Whether `keys` (names, wrapper prefix stripped) hold every SIGNATURE_KEYS (folded:
    FOLDED_SIGNATURE_KEYS) name of `name`'s family."""
    table = FOLDED_SIGNATURE_KEYS if folded else SIGNATURE_KEYS
    fam = next((f for f in table if name.startswith(f)), None)
    return fam is None or all(k in keys for k in table[fam])


def suggest_archs(shapes: dict) -> list[dict]:
    """The `arch` of every SUGGEST entry whose names and shapes the state_dict (wrapper prefix stripped) fits.

    Several results differ in what the weights do not hold (strides, pooling): a hint, never a record.
    A state_dict with no BatchNorm that fits an architecture declaring `folded_bn` gives that
    architecture with folded_bn=True."""
    p = strip_wrapper(shapes)
    shapes = {k[len(p):]: tuple(v) for k, v in shapes.items()}
    cands = [(n, False) for n in SUGGEST if signature_fits(n, shapes)]
    cands += [(n, True) for n in SUGGEST if n in ARCHITECTURES and "folded_bn" in ARCHITECTURES[n].params
              and signature_fits(n, shapes, folded=True)]
    reg = architectures() if cands else {}
    out = []
    for name, folded in cands:
        if name not in reg or _default_keys(name, folded) != frozenset(shapes):
            continue
        try:
            arch = complete_arch({"name": name, **({"folded_bn": True} if folded else {})}, shapes)
            want = skeleton_shapes(arch)
        except MbzError:
            continue
        if want is not None and not any(fit_errors(want, shapes)):
            out.append(arch)
    return out


@functools.lru_cache(maxsize=None)
def _default_keys(name: str, folded: bool = False) -> frozenset:
    m = skeleton_shapes({"name": name, **({"folded_bn": True} if folded else {})})
    return frozenset(m) if m is not None else frozenset()


def arch_of_module(module: nn.Module) -> dict | None:
    """The registry `arch` of a module built by build_model (its `mbz_arch`), or of a registry module built
    directly (mobilenet_v2_cifar(...), torchvision.models.resnet18(num_classes=10)): accepted only when the
    module's structure (every submodule's type and settings, strides included) equals the rebuilt one's.
    A DataParallel / DistributedDataParallel wrapper is looked through (its state_dict's 'module.' prefix is
    stripped on load like any wrapper prefix); a module pruned with torch.nn.utils.prune (its hooks still on)
    is matched by its effective weights."""
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module
    shapes, _ = effective_shapes(shapes_of(module.state_dict()))  # torch.nn.utils.prune hooks: X_orig / X_mask as X
    cands = []
    tag = getattr(module, "mbz_arch", None)
    if isinstance(tag, dict):
        cands.append(tag)
    cands += suggest_archs(shapes)
    want = _structure(module)
    for arch in cands:
        try:
            m = skeleton(arch)
        except MbzError:
            continue
        if m is not None and _structure(m) == want and not any(fit_errors(shapes_of(m.state_dict()), shapes)):
            return dict(arch)
    return None


def _structure(m: nn.Module) -> list:
    return [(n, type(x).__name__, x.extra_repr()) for n, x in m.named_modules()]


def arch_of(sd, dropout: float = 0.2) -> dict:
    """The architecture metadata of a MobileNet-v2 state_dict (width, thinned blocks) for training tools.

    Raises CheckpointError when `sd` is not a CIFAR MobileNet-v2 state_dict."""
    arch = guess_arch(sd)
    if arch is None:
        raise CheckpointError("not a MobileNet-v2 (CIFAR) state_dict: features.0.0 / features.18.0 / classifier.1 missing")
    return dict(arch, dropout=dropout)


def pipeline_arch(model: dict, sd: dict | None = None) -> dict:
    """The `arch` of a recipe's model settings ({'name', 'num_classes', 'width_mult', 'dropout'}).

    For MobileNet-v2 the state_dict `sd`, where given, sets width and thinned blocks (arch_of)."""
    if model["name"] == "mobilenet_v2_cifar":
        if sd is not None:
            return arch_of(sd, model.get("dropout", 0.2))
        return {k: model[k] for k in ("name", "num_classes", "width_mult", "dropout") if k in model}
    arch = {"name": model["name"], "num_classes": model.get("num_classes", 10)}
    if sd is not None:
        from .thinning import channel_groups, widths_of
        full = build_model(arch)
        channels = widths_of(sd, channel_groups(full), full)
        if channels:
            arch["channels"] = channels
    return arch


def effective_shapes(shapes: dict) -> tuple[dict, int]:
    """({name: shape} with each torch.nn.utils.prune pair X_orig / X_mask read as the X the network holds,
    number of such pairs)."""
    pairs = {k[:-5] for k, s in shapes.items() if k.endswith("_orig") and len(k) > 5
             and shapes.get(k[:-5] + "_mask") == s and k[:-5] not in shapes}
    if not pairs:
        return shapes, 0
    out = {}
    for k, s in shapes.items():
        if k.endswith("_orig") and k[:-5] in pairs:
            out[k[:-5]] = s
        elif not (k.endswith("_mask") and k[:-5] in pairs):
            out[k] = s
    return out, len(pairs)


def arch_for_pack(sd, spec: str | None, num_classes: int | None = None) -> tuple[dict | None, str]:
    """(arch to record, one line for pack's output) for a state_dict and `mbz pack --arch SPEC`.

    With SPEC (parse_arch) the arch is validated, completed from the shapes (complete_arch) and
    checked against the tensors: MbzError naming the missing / unexpected / mis-shaped keys otherwise.
    Without it nothing is recorded, and the line names the architectures the tensors fit (suggest_archs)."""
    names, pairs = effective_shapes(shapes_of(sd))
    p = strip_wrapper(names)
    shapes = {k[len(p):]: s for k, s in names.items()}
    wrapped = f" (names under the wrapper prefix {p!r}, matched without it)" if p else ""
    if pairs:   # pack --exact keeps torch.nn.utils.prune's pairs; the network has their effective X
        wrapped += f" ({pairs} pruning pairs X_orig / X_mask matched as X)"
    if spec is not None:
        arch = parse_arch(spec)
        if num_classes is not None:
            arch["num_classes"] = num_classes
        try:
            validate_arch(arch)
        except MbzError as e:  # e.g. 'arch.num_classes' of resnet18_cifar must be an integer ..., got 'ten'
            raise MbzError(f"--arch {spec!r}: {e}") from None
        arch = complete_arch(arch, shapes)
        sk = skeleton(arch)
        if sk is None:
            sk = build_model(arch)
        check_fit(shapes_of(sk.state_dict()), shapes, f"--arch {spec}: the tensors do not fit {arch['name']}")
        return arch, f"architecture recorded: {arch}{wrapped}"
    if num_classes is not None:
        raise MbzError("--num-classes needs --arch")
    fits = suggest_archs(shapes)
    if not fits:
        return None, ("no architecture recorded: the tensors fit none of "
                      f"{', '.join(SUGGEST)}; pass --arch NAME to record one (mbz.load / unpack work without it; "
                      "--model to mbz eval / mbz bench and mbz.load_model(path, model=...) take your own network)")
    hint = " or ".join(_spec_text(a) for a in fits)
    why = ("they differ in strides or pooling, which the weights do not hold" if len(fits) > 1 else
           "the weights do not hold strides or pooling, so this is not recorded unasked")
    return None, f"no architecture recorded: the tensors fit --arch {hint} ({why}){wrapped}; pass --arch to record it"


def _spec_text(arch: dict) -> str:
    args = ",".join(f"{k}={json.dumps(v)}" for k, v in arch.items() if k != "name" and not isinstance(v, (list, dict)))
    return arch["name"] + (f":{args}" if args else "")


def fold_state_dict(sd: dict, arch: dict) -> tuple[dict, dict]:
    """(folded state_dict, its arch) for a state_dict of the architecture `arch` (mbz.models.registry).

    The network is built, loaded (strict) and every Conv2d -> BatchNorm2d pair folded (fold_bn, in
    float32): the BatchNorm's four tensors become one bias per output channel, and the arch records
    folded_bn, so mbz.load_model rebuilds the folded network.  The folded network computes the same
    function in eval mode (up to float rounding).  Raises MbzError when the arch is already folded,
    has no such pair, or the tensors do not fit it."""
    if arch.get("folded_bn"):
        raise MbzError(f"{arch.get('name')}: its BatchNorms are already folded (folded_bn)")
    try:
        validate_arch(dict(arch, folded_bn=True))
    except MbzError:
        raise MbzError(f"{arch.get('name')} cannot be rebuilt with its BatchNorms folded (mbz.load_model builds "
                       f"folded networks of {', '.join(n for n, e in ARCHITECTURES.items() if 'folded_bn' in e.params)}"
                       "); --bn-affine keeps the modules and shrinks the BatchNorms") from None
    model, _ = _loaded(sd, arch, "folding the BatchNorms")
    if not list(conv_bn_pairs(model)):
        raise MbzError(f"{arch.get('name')}: no Conv2d -> BatchNorm2d pair to fold")
    fold_bn(model)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, dict(arch, folded_bn=True)


def _loaded(sd: dict, arch: dict, what: str):
    """(model in eval mode, wrapper prefix) for a state_dict of `arch`: wrapper prefixes (module., _orig_mod.)
    read through, names and shapes checked first (MbzError naming the missing / unexpected / mis-shaped
    tensors), float tensors loaded as float32."""
    from .. import reparam
    pairs = list(reparam._pairs(sd))
    if pairs:
        raise MbzError(f"{what} needs the effective weights, not torch.nn.utils.prune pairs ({pairs[0]} with its "
                       f"mask): pack folds them unless --exact")
    prefix = strip_wrapper(sd)
    inner = {k[len(prefix):]: v for k, v in sd.items()}
    for k, v in inner.items():  # a transformation of non-finite values would blame the tensors it writes
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            raise MbzError(f"{what}: tensor '{prefix + k}' holds NaN or Inf")
        if k.endswith("running_var") and isinstance(v, torch.Tensor) and bool((v < 0).any()):
            raise MbzError(f"{what}: tensor '{prefix + k}' holds a negative variance ({float(v.min()):g})")
    model = build_model(arch)
    check_fit(shapes_of(model.state_dict()), shapes_of(inner), f"{what}: the tensors and {arch.get('name')}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in inner.items()}, strict=False)
    return model.eval(), prefix


def bn_affine_state_dict(sd: dict, arch: dict, only=None) -> tuple[dict, list[str], list[str]]:
    """(state_dict, BatchNorm names rewritten, names skipped) with the BatchNorms of the architecture `arch`
    rewritten as their eval-mode affine maps (mbz.models.folding.bn_affine: weight gamma / sqrt(var + eps), bias
    beta - mean * weight, running mean 0, running variance 1 - eps; each module's own eps; float32).  `only`:
    the module names to rewrite (e.g. those a file records); modules whose |weight| would spread over more than
    folding.BN_AFFINE_SPREAD are skipped.  Every other tensor is the input's own object under its own name
    (wrapper prefixes kept).  The network computes the same function in eval mode (up to float rounding).
    Raises MbzError when the tensors do not fit `arch` (naming them), are prune pairs, or it has no BatchNorm
    with running statistics."""
    if arch.get("folded_bn"):
        raise MbzError(f"{arch.get('name')}: its BatchNorms are folded into the convolutions (folded_bn): "
                       "there is none to rewrite")
    model, prefix = _loaded(sd, arch, "rewriting the BatchNorms")
    names, skipped = bn_affine(model, only=only)
    if not names and not skipped:
        raise MbzError(f"{arch.get('name')}: no BatchNorm with running statistics to rewrite")
    new = model.state_dict()
    keys = {f"{n}.{t}" for n in names for t in ("weight", "bias", "running_mean", "running_var")}
    out = {k: (new[k[len(prefix):]].detach().clone() if k[len(prefix):] in keys else v) for k, v in sd.items()}
    return out, names, skipped
