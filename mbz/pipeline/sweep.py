"""Sweeps in wandb's own YAML format: expand, run one configuration, record.

A sweep file is exactly what `wandb sweep FILE` takes (program, method,
metric, parameters).  wandb's agent does the scheduling on many machines;
`expand` only exists so that the same file can also run here one
configuration at a time (grid or seeded random; Bayesian search needs wandb's
server, so it is refused with that explanation).

A run is one `RunConfig`: sparsity, weight bits, activation bits, weight
granularity, BN folding, entropy stage, QAT epochs and distillation weight.
The pruned starting points are cached as .mbz files (sparse fp32, lossless),
so every configuration at one sparsity starts from the same model, and
configurations that differ only by the entropy stage share one training.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, fields

SWEEP_METHODS = ("grid", "random", "bayes")


@dataclass(frozen=True)
class RunConfig:
    sparsity: float = 0.9
    wbits: int = 4
    abits: int = 8
    granularity: str = "channel"   # "channel" | "tensor"
    fold_bn: bool = True
    entropy: str = "zstd"          # "zstd" | "none"
    qat_epochs: int = 4
    kd: float = 0.5
    lr: float = 0.02

    def __post_init__(self):
        checks = [
            (0.0 <= self.sparsity < 1.0, "sparsity must be in [0, 1)"),
            (2 <= self.wbits <= 8 or self.wbits == 32, "wbits must be 2..8 or 32"),
            (2 <= self.abits <= 8 or self.abits == 32, "abits must be 2..8 or 32"),
            (self.granularity in ("channel", "tensor"), "granularity must be 'channel' or 'tensor'"),
            (self.entropy in ("zstd", "none"), "entropy must be 'zstd' or 'none'"),
            (self.qat_epochs >= 0, "qat_epochs must be >= 0"),
            (0.0 <= self.kd < 1.0, "kd must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"run config {asdict(self)}: {msg}")

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown sweep parameter(s) {unknown}; known: {sorted(known)}")
        conv = {"sparsity": float, "wbits": int, "abits": int, "granularity": str, "fold_bn": _as_bool,
                "entropy": str, "qat_epochs": int, "kd": float, "lr": float}
        return cls(**{k: conv[k](v) for k, v in d.items()})

    @property
    def train_key(self) -> str:
        """Name of the trained model; runs that differ only in the entropy stage share it."""
        g = "" if self.granularity == "channel" else "_gt"
        f = "" if self.fold_bn else "_bn"
        return (f"s{self.sparsity:g}_w{self.wbits}_a{self.abits}{g}{f}"
                f"_e{self.qat_epochs}_kd{self.kd:g}_lr{self.lr:g}")

    @property
    def name(self) -> str:
        return self.train_key + ("" if self.entropy == "zstd" else "_noz")


def _as_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
        return v.lower() in ("true", "1")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError(f"not a boolean: {v!r}")


def load_sweep(path: str) -> dict:
    """Read and check a wandb sweep YAML (only the keys we rely on)."""
    import yaml
    with open(path) as f:
        sw = yaml.safe_load(f)
    if not isinstance(sw, dict) or "parameters" not in sw:
        raise ValueError(f"{path}: not a wandb sweep file (no 'parameters' mapping)")
    if sw.get("method") not in SWEEP_METHODS:
        raise ValueError(f"{path}: method must be one of {SWEEP_METHODS}, got {sw.get('method')!r}")
    for k, spec in sw["parameters"].items():
        if not isinstance(spec, dict) or not ({"value", "values", "distribution", "min"} & set(spec)):
            raise ValueError(f"{path}: parameter {k!r} needs 'value', 'values' or a distribution")
    RunConfig.from_dict({k: _first(v) for k, v in sw["parameters"].items()})  # names and types
    return sw


def _first(spec: dict):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][0]
    return spec.get("min")


def expand(sweep: dict, count: int | None = None, seed: int = 0) -> list[RunConfig]:
    """The configurations a local run executes, in order.

    grid: the cartesian product of every `values` list (wandb's grid order:
    parameters in file order, the last one varying fastest).  random: `count`
    (or `run_cap`) draws, seeded; supports values / uniform / int_uniform /
    q_uniform / log_uniform_values.
    """
    params = sweep["parameters"]
    method = sweep["method"]
    if method == "bayes":
        raise ValueError("Bayesian search needs wandb's sweep server: run `wandb sweep FILE` and `wandb agent ID`")
    if method == "grid":
        keys = list(params)
        choices = []
        for k in keys:
            spec = params[k]
            if "value" in spec:
                choices.append([spec["value"]])
            elif "values" in spec:
                choices.append(list(spec["values"]))
            else:
                raise ValueError(f"grid sweep: parameter {k!r} needs 'value' or 'values' (got a distribution)")
        configs = [RunConfig.from_dict(dict(zip(keys, combo))) for combo in itertools.product(*choices)]
        return configs[:count] if count else configs
    n = count or sweep.get("run_cap")
    if not n:
        raise ValueError("random sweep: give --count or run_cap")
    rng = random.Random(seed)
    out = []
    for _ in range(int(n)):
        d = {}
        for k, spec in params.items():
            if "value" in spec:
                d[k] = spec["value"]
            elif "values" in spec:
                d[k] = rng.choice(list(spec["values"]))
            else:
                dist = spec.get("distribution", "uniform")
                lo, hi = spec["min"], spec["max"]
                if dist == "int_uniform":
                    d[k] = rng.randint(int(lo), int(hi))
                elif dist == "uniform":
                    d[k] = rng.uniform(lo, hi)
                elif dist == "q_uniform":
                    q = spec.get("q", 1)
                    d[k] = round(rng.uniform(lo, hi) / q) * q
                elif dist == "log_uniform_values":
                    import math
                    d[k] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
                else:
                    raise ValueError(f"random sweep: distribution {dist!r} of {k!r} not supported locally")
        out.append(RunConfig.from_dict(d))
    return out


def shard(configs: list[RunConfig], index: int, total: int) -> list[RunConfig]:
    """Configs of one worker: whole training groups (entropy variants stay together), round robin."""
    keys = list(dict.fromkeys(c.train_key for c in configs))
    mine = set(keys[index::total])
    return [c for c in configs if c.train_key in mine]


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
