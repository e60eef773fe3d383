"""Recipes: one YAML file holding every setting of a result, checked on load.

A recipe names its data, its model, a baseline (a checkpoint, or how to train one), the pruning
chain, restart cycles, QAT runs, a soup, a reduction and the seeds; `mbz compress --recipe FILE
--out DIR` runs it in stages (mbz.pipeline.stages).  Sections and keys (defaults in brackets):

  name         str    [the file name]              description  str  [""]
  seed         int    [0]   training seed of pruning, restart, QAT and the soup's fine-tuning
  data:        source str (an --data spec: jpeg, npz:DIR, cifar10:ROOT, ...)   subset int [0]
               val int [0]: training images held out (fixed permutation) for every evaluation during the
               run; each final file is then evaluated once on the test set (summary: top1_test)
  model:       name [mobilenet_v2_cifar | resnet18_cifar | vgg11_bn_cifar | vgg16_bn_cifar],
               num_classes [10], width_mult [1.0], dropout [0.2] (the last two: MobileNet-v2 only)
  baseline:    checkpoint PATH (.pt or .mbz)  -- or --  train: {TrainConfig fields}, init PATH
  prune:       levels [list in (0, 1), increasing; the last is kept], epochs_per_step [5],
               final_epochs [0: epochs_per_step], lr [0.05], kd [0.5], caps [none: a caps.json]
  restart:     cycles [list of epochs], lr [prune.lr], kd [prune.kd]
  qat:         list of {name [derived], wbits, abits, epochs, lr [0.02], kd [0.5],
                        granularity [channel], fold_bn [true],
                        layer_bits [none: a mixed-precision plan, {weight name: bits} or a plan JSON path;
                                    wbits for the layers it does not name; epochs 0 = PTQ],
                        rate [0: loss units per 1000 estimated bytes of weight codes, mbz.pipeline.rate]}
               (none: a baseline recipe)
  soup:        runs ['all' or QAT run names], steps [mse], epochs [4], lr [0.005], kd [0.5], name [derived]
  reduce:      scale_bits [8], bias_bits [8]   (every QAT run and the fine-tuned soup)
  sweep:       files [sweep YAML files], jobs [1], where [KEY=VALUE filters]   (instead of qat/soup/reduce;
               prune then has no levels: each sparsity of the sweep is reached through PRUNE_STEPS)

Relative paths are read from the current directory.  `load_recipe` returns a Recipe whose
`settings` have every default filled in; any unknown key, wrong type or missing setting raises
RecipeError naming the file and the key.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields

from ..errors import UsageError


class RecipeError(UsageError):
    """A recipe file that cannot be run as written (one line: the file, the key, the problem)."""


REQUIRED = object()


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# key -> (check, default, what it must be); check(value) -> bool
def _spec(check, default, what):
    return (check, default, what)


def _prob(lo_open=False):
    return lambda v: _num(v) and (0 < v < 1 if lo_open else 0 <= v < 1)


def _bits(v):
    return _int(v) and (2 <= v <= 8 or v == 32)


def _path(v):
    return isinstance(v, str) and v != ""


def _str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


DATA = {"source": _spec(lambda v: isinstance(v, str) and v != "", REQUIRED, "a --data spec (jpeg, npz:DIR, ...)"),
        "subset": _spec(lambda v: _int(v) and v >= 0, 0, "an integer >= 0 (0: every image)"),
        "val": _spec(lambda v: _int(v) and v >= 0, 0,
                     "an integer >= 0 (training images held out for every choice; 0: the test set)")}
PIPELINE_MODELS = ("mobilenet_v2_cifar", "resnet18_cifar", "vgg11_bn_cifar", "vgg16_bn_cifar")
MODEL = {"name": _spec(lambda v: v in PIPELINE_MODELS, "mobilenet_v2_cifar", "one of " + ", ".join(PIPELINE_MODELS)),
         "num_classes": _spec(lambda v: _int(v) and v >= 2, 10, "an integer >= 2"),
         "width_mult": _spec(lambda v: _num(v) and v > 0, 1.0, "a number > 0"),
         "dropout": _spec(lambda v: _num(v) and 0 <= v < 1, 0.2, "a number in [0, 1)")}


def _train_spec() -> dict:
    from .train import TrainConfig
    kinds = {int: (_int, "an integer"), float: (_num, "a number"), bool: (lambda v: isinstance(v, bool), "true / false"),
             str: (lambda v: isinstance(v, str), "a string")}
    out = {}
    for f in fields(TrainConfig):
        if f.name in ("extra", "kd", "kd_temp"):
            continue
        typ = {"int": int, "float": float, "bool": bool, "str": str}[f.type if isinstance(f.type, str)
                                                                      else f.type.__name__]
        check, what = kinds[typ]
        out[f.name] = _spec(check, f.default, what)
    for k in ("epochs", "batch", "eval_every"):
        c = out[k][0]
        out[k] = _spec(lambda v, c=c: c(v) and v >= 1, out[k][1], "an integer >= 1")
    return out


BASELINE = {"checkpoint": _spec(_path, None, "a path to a .pt or .mbz checkpoint"),
            "train": _spec(lambda v: isinstance(v, dict), None, "a mapping of training settings"),
            "init": _spec(_path, None, "a path to a checkpoint to start training from")}
PRUNE = {"levels": _spec(lambda v: isinstance(v, list) and v and all(_prob(True)(x) for x in v)
                         and all(a < b for a, b in zip(v, v[1:])), None,
                         "an increasing list of sparsities in (0, 1)"),
         "epochs_per_step": _spec(lambda v: _int(v) and v >= 1, 5, "an integer >= 1"),
         "final_epochs": _spec(lambda v: _int(v) and v >= 0, 0, "an integer >= 0 (0: epochs_per_step)"),
         "lr": _spec(lambda v: _num(v) and v > 0, 0.05, "a number > 0"),
         "kd": _spec(_prob(), 0.5, "a number in [0, 1)"),
         "caps": _spec(lambda v: v is None or _path(v), None, "a path to a caps.json, or null")}
RESTART = {"cycles": _spec(lambda v: isinstance(v, list) and v and all(_int(x) and x >= 1 for x in v), REQUIRED,
                           "a list of epochs per cycle, each >= 1"),
           "lr": _spec(lambda v: v is None or (_num(v) and v > 0), None, "a number > 0"),
           "kd": _spec(lambda v: v is None or _prob()(v), None, "a number in [0, 1)")}
QAT = {"name": _spec(lambda v: isinstance(v, str) and v and "/" not in v and not v.startswith("."), None,
                     "a file name without '/'"),
       "wbits": _spec(_bits, REQUIRED, "2..8 or 32"),
       "abits": _spec(_bits, REQUIRED, "2..8 or 32"),
       "epochs": _spec(lambda v: _int(v) and v >= 0, REQUIRED, "an integer >= 0"),
       "lr": _spec(lambda v: _num(v) and v > 0, 0.02, "a number > 0"),
       "kd": _spec(_prob(), 0.5, "a number in [0, 1)"),
       "granularity": _spec(lambda v: v in ("channel", "tensor"), "channel", "'channel' or 'tensor'"),
       "fold_bn": _spec(lambda v: isinstance(v, bool), True, "true / false"),
       "layer_bits": _spec(lambda v: v is None or _path(v) or (isinstance(v, dict) and bool(v)), None,
                           "a mapping {weight name: bits 2..8 or 32} or the path of a plan JSON (mbz mixed-precision)"),
       "rate": _spec(lambda v: _num(v) and 0 <= v < float("inf"), 0.0,
                     "a number >= 0 (loss units per 1000 estimated bytes of weight codes)")}
# QAT keys whose default leaves a run's stage key and name as they were before the key existed
QAT_NEW_DEFAULTS = {"layer_bits": None, "rate": 0.0}
SOUP = {"runs": _spec(lambda v: v == "all" or (_str_list(v) and len(v) >= 2), "all",
                      "'all' or a list of at least two QAT run names"),
        "steps": _spec(lambda v: v in ("mse", "mean"), "mse", "'mse' or 'mean'"),
        "epochs": _spec(lambda v: _int(v) and v >= 0, 4, "an integer >= 0"),
        "lr": _spec(lambda v: _num(v) and v > 0, 0.005, "a number > 0"),
        "kd": _spec(_prob(), 0.5, "a number in [0, 1)"),
        "name": _spec(lambda v: isinstance(v, str) and v and "/" not in v, None, "a file name without '/'")}
REDUCE = {"scale_bits": _spec(lambda v: _int(v) and 1 <= v <= 24, 8, "an integer 1..24 (24: keep)"),
          "bias_bits": _spec(lambda v: _int(v) and (v == 0 or 2 <= v <= 16), 8, "0 (keep) or an integer 2..16")}
SWEEP = {"files": _spec(lambda v: _str_list(v) and len(v) >= 1, REQUIRED, "a list of sweep YAML files"),
         "jobs": _spec(lambda v: _int(v) and v >= 1, 1, "an integer >= 1"),
         "where": _spec(lambda v: isinstance(v, list) and all(isinstance(x, str) and "=" in x for x in v), [],
                        "a list of KEY=VALUE filters")}
TOP = {"name": _spec(lambda v: isinstance(v, str) and v != "", None, "a string"),
       "description": _spec(lambda v: isinstance(v, str), "", "a string"),
       "seed": _spec(_int, 0, "an integer"),
       "data": None, "model": None, "baseline": None, "prune": None, "restart": None, "qat": None, "soup": None,
       "reduce": None, "sweep": None}


def _section(path: str, where: str, value, spec: dict) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{path}: {where}: expected a mapping of settings, got {type(value).__name__}")
    unknown = sorted(set(value) - set(spec))
    if unknown:
        raise RecipeError(f"{path}: {where}.{unknown[0]}: unknown key (known: {', '.join(sorted(spec))})")
    out = {}
    for k, (check, default, what) in spec.items():
        if k not in value:
            if default is REQUIRED:
                raise RecipeError(f"{path}: {where}.{k}: missing (expected {what})")
            out[k] = list(default) if isinstance(default, list) else default
            continue
        v = value[k]
        if not check(v):
            raise RecipeError(f"{path}: {where}.{k}: expected {what}, got {v!r}")
        out[k] = float(v) if _num(v) and isinstance(default, float) else v
    return out


def qat_name(sparsity: float, q: dict) -> str:
    """The QAT run's name as the sweeps write it (s0.8_w4_a8_e14_kd0.7_lr0.02)."""
    g = "" if q["granularity"] == "channel" else "_gt"
    f = "" if q["fold_bn"] else "_bn"
    mp = ""
    if q.get("layer_bits"):
        from .mixed import plan_digest
        mp = f"_mp{plan_digest(q['layer_bits'])}"
    r = f"_r{q['rate']:g}" if q.get("rate") else ""
    return (f"s{sparsity:g}_w{q['wbits']}{mp}_a{q['abits']}{g}{f}_e{q['epochs']}_kd{q['kd']:g}_lr{q['lr']:g}"
            f"{r}")


def qat_key(q: dict) -> dict:
    """A QAT run's settings for its stage key: keys added later (QAT_NEW_DEFAULTS) left out at their
    default, so that recipes written before them keep their stage keys."""
    return {k: v for k, v in q.items() if not (k in QAT_NEW_DEFAULTS and v == QAT_NEW_DEFAULTS[k])}


def _layer_bits(path: str, where: str, v) -> dict:
    """A qat[].layer_bits value as {weight name: bits}: the mapping itself or the plan file it names."""
    from .mixed import check_plan, read_plan
    try:
        return read_plan(v) if isinstance(v, str) else check_plan(v, "mapping")
    except ValueError as e:
        raise RecipeError(f"{path}: {where}.layer_bits: {e}") from None


@dataclass
class Recipe:
    path: str          # as given
    text: str          # the file's text
    raw: dict          # the parsed YAML, as written
    settings: dict     # every section with its defaults filled in

    @property
    def file(self) -> str:
        return os.path.basename(self.path)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def name(self) -> str:
        return self.settings["name"]

    @property
    def sparsity(self) -> float:
        """The sparsity QAT starts from (the last pruning level; 0 without pruning)."""
        p = self.settings.get("prune")
        return p["levels"][-1] if p and p.get("levels") else 0.0

    def metadata(self) -> dict:
        """What every .mbz file the recipe makes records under the key 'recipe'."""
        return {"file": self.file, "sha256": self.sha256, "content": self.raw}


def parse_recipe(path: str, text: str) -> Recipe:
    import yaml
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise RecipeError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of sections (data, baseline, prune, qat, ...), "
                          f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP))
    if unknown:
        raise RecipeError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(sorted(TOP))})")
    s = _section(path, "recipe", {k: raw[k] for k in ("name", "description", "seed") if k in raw},
                 {k: TOP[k] for k in ("name", "description", "seed")})
    s["name"] = s["name"] or os.path.splitext(os.path.basename(path))[0]
    if "data" not in raw:
        raise RecipeError(f"{path}: data: missing (e.g. data: {{source: jpeg}})")
    s["data"] = _section(path, "data", raw["data"], DATA)
    if s["data"]["val"] and s["data"]["subset"] and s["data"]["val"] >= s["data"]["subset"]:
        raise RecipeError(f"{path}: data.val: {s['data']['val']} held-out images need a larger data.subset "
                          f"({s['data']['subset']})")
    s["model"] = _section(path, "model", raw.get("model", {}), MODEL)
    if "baseline" not in raw:
        raise RecipeError(f"{path}: baseline: missing (give baseline.checkpoint or baseline.train)")
    b = _section(path, "baseline", raw["baseline"], BASELINE)
    if (b["checkpoint"] is None) == (b["train"] is None):
        raise RecipeError(f"{path}: baseline: give exactly one of baseline.checkpoint and baseline.train")
    if b["init"] is not None and b["train"] is None:
        raise RecipeError(f"{path}: baseline.init: only with baseline.train")
    if b["train"] is not None:
        b["train"] = _section(path, "baseline.train", b["train"], _train_spec())
    s["baseline"] = b
    sweep = "sweep" in raw
    if sweep:
        s["sweep"] = _section(path, "sweep", raw["sweep"], SWEEP)
        for k in ("qat", "soup", "reduce"):
            if k in raw:
                raise RecipeError(f"{path}: {k}: not with a sweep section (the sweep files say what to train)")
    if "prune" in raw:
        p = _section(path, "prune", raw["prune"], PRUNE)
        if sweep and p["levels"] is not None:
            raise RecipeError(f"{path}: prune.levels: not with a sweep section (each sparsity the sweep keeps "
                              f"is reached through the standard steps)")
        if not sweep and p["levels"] is None:
            raise RecipeError(f"{path}: prune.levels: missing (expected an increasing list of sparsities in (0, 1))")
        s["prune"] = p
    if "restart" in raw:
        if "prune" not in s:
            raise RecipeError(f"{path}: restart: needs a prune section (restart cycles hold a pruned model's zeros)")
        r = _section(path, "restart", raw["restart"], RESTART)
        if sweep and len(r["cycles"]) > 1:
            raise RecipeError(f"{path}: restart.cycles: a sweep takes one restart cycle")
        r["lr"] = s["prune"]["lr"] if r["lr"] is None else float(r["lr"])
        r["kd"] = s["prune"]["kd"] if r["kd"] is None else float(r["kd"])
        if sweep and (r["lr"], r["kd"]) != (s["prune"]["lr"], s["prune"]["kd"]):
            raise RecipeError(f"{path}: restart: a sweep's restart uses prune.lr and prune.kd")
        s["restart"] = r
    if not sweep and "qat" not in raw:  # a baseline (and pruning) recipe
        for k in ("soup", "reduce"):
            if k in raw:
                raise RecipeError(f"{path}: {k}: needs a qat section (the QAT runs it starts from)")
        s["qat"] = []
    elif not sweep:
        if not isinstance(raw["qat"], list) or not raw["qat"]:
            raise RecipeError(f"{path}: qat: expected a list of QAT runs, got {raw['qat']!r}")
        sp = s["prune"]["levels"][-1] if "prune" in s else 0.0
        runs, names = [], set()
        for i, q in enumerate(raw["qat"]):
            q = _section(path, f"qat[{i}]", q, QAT)
            if q["layer_bits"] is not None:
                q["layer_bits"] = _layer_bits(path, f"qat[{i}]", q["layer_bits"])
            q["name"] = q["name"] or qat_name(sp, q)
            if q["name"] in names:
                raise RecipeError(f"{path}: qat[{i}].name: {q['name']!r} twice (give the runs names of their own)")
            names.add(q["name"])
            runs.append(q)
        s["qat"] = runs
        if "soup" in raw:
            so = _section(path, "soup", raw["soup"], SOUP)
            picked = sorted(names) if so["runs"] == "all" else so["runs"]
            missing = [n for n in picked if n not in names]
            if missing:
                raise RecipeError(f"{path}: soup.runs: {missing[0]!r} is no QAT run of this recipe "
                                  f"(runs: {', '.join(sorted(names))})")
            if len(picked) < 2:
                raise RecipeError(f"{path}: soup.runs: a soup needs at least two QAT runs, the recipe has {len(picked)}")
            so["runs"] = [q["name"] for q in runs if q["name"] in picked]  # recipe order
            so["name"] = so["name"] or f"soup_e{so['epochs']}_lr{so['lr']:g}"
            if so["name"] in names or so["name"] == "soup":
                raise RecipeError(f"{path}: soup.name: {so['name']!r} is taken")
            s["soup"] = so
        if "reduce" in raw:
            s["reduce"] = _section(path, "reduce", raw["reduce"] if raw["reduce"] is not None else {}, REDUCE)
    return Recipe(path, text, raw, s)


def load_recipe(path: str) -> Recipe:
    """Read and check a recipe file; RecipeError (one line naming the file and the key) on any problem."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: no such recipe file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot be read: {e}") from None
    return parse_recipe(path, text)


def stage_key(*parts) -> str:
    """A digest of what a stage depends on (its settings and the keys of the stages before it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
