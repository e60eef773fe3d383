"""Execute sweep configurations: pruned starting points, QAT, pack, measure, one JSONL row per run.

Imports no wandb (the agent and replay do, in mbz.pipeline.wandb_log).  Where zstandard is
missing a file is packed without the entropy stage and marked `entropy_applied: false`;
`finalize` re-packs it where zstandard is installed (bit-identical tensors, checked) and
recomputes its sizes.  `run_sweep` drives a whole sweep (`mbz sweep run`, `mbz compress`).
"""
from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict

import torch

import mbz
from ..codecs.filters import zstd_available
from ..codecs.raw import bits_equal
from ..summary import summarize
from ..checkpoint import read_checkpoint
from ..models import arch_of, mobilenet_v2_cifar
from .compress import QatConfig, prune_schedule, qat_run
from .data import ArrayDataset, evaluate, load_dataset
from .sweep import RunConfig, append_jsonl, read_jsonl
from .train import TrainConfig

PRUNE_STEPS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)  # gradual schedule: every step below the target


def _progress(items, desc):
    try:
        from tqdm import tqdm
        return tqdm(items, desc=desc, unit="file")
    except ImportError:
        return items


def repack(src: str, dst: str, zstd: bool, meta_update: dict | None = None) -> int:
    """Re-write a .mbz with another entropy stage (or this machine's detector); returns file bytes.

    Lossless: the file written is read back and every tensor compared bit for bit.
    """
    with mbz.open(src) as rd:
        meta, sd = dict(rd.metadata), rd.decode_all()
    if meta_update:
        meta.update(meta_update)
    rep = mbz.save(sd, dst, metadata=meta, zstd=zstd)
    back = mbz.load(dst)
    bad = [k for k in sd if not bits_equal(back[k], sd[k])]
    if bad:
        raise RuntimeError(f"{dst}: re-packed tensors differ from {src}: {bad[:3]}")
    return rep.file_bytes


def size_metrics(path: str) -> dict:
    """File bytes, bytes by category and compression ratios, from the file itself."""
    with mbz.open(path) as r:
        s = summarize(r, decode=False)
    return {"file_bytes": s["file_bytes"], "file_kb": s["file_bytes"] / 1000, "file_mb": s["file_mb"],
            "categories": s["categories"], "model_cr": s["model_compression_ratio"],
            "weight_cr": s["weight_compression_ratio"], "fp32_bytes": s["fp32_bytes"]}


def activation_metrics(path: str) -> dict:
    """Activation compression ratio measured with packed activations (batch 1, mbz.pipeline.activations)."""
    from .activations import measure
    model = mbz.load_model(path)
    if not any(getattr(m, "bits", 32) < 32 for m in model.modules()):
        return {"act_cr": 1.0, "act_cr_peak": 1.0, "act_method": "float activations (fp32)"}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = measure(model, x)
    return {"act_cr": m["total_ratio"], "act_cr_peak": m["peak_ratio"],
            "act_method": "packed with mbz's bit packer during a batch-1 inference"}


def load_caps(path: str) -> dict:
    """{tensor name: max sparsity} from a sensitivity scan's caps.json ('' = none).

    The file is `mbz sensitivity`'s {"caps": {...}, "tolerance": ...} or a plain {name: cap}.
    """
    if not path:
        return {}
    with open(path) as f:
        caps = json.load(f)
    if isinstance(caps, dict) and isinstance(caps.get("caps"), dict):
        caps = caps["caps"]
    if not isinstance(caps, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in caps.values()):
        raise ValueError(f"{path}: expected {{tensor name: max sparsity in [0, 1]}}")
    return {str(k): float(v) for k, v in caps.items()}


def caps_digest(caps: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(caps, sort_keys=True).encode()).hexdigest()[:8]


class SweepRunner:
    """Shared state of one sweep on one machine: data, baseline (teacher), pruned cache, output folder."""

    def __init__(self, out: str, baseline: str, data: str = "jpeg", prune_epochs: int = 5, prune_lr: float = 0.05,
                 prune_kd: float = 0.5, subset: int = 0, device=None, worker: str = "", caps: str = "",
                 prune_final_epochs: int = 0, prune_restart: int = 0, extra_meta: dict | None = None,
                 seed: int = 0):
        self.out, self.data_spec, self.subset = out, data, subset
        self.extra_meta = dict(extra_meta or {})  # added to every file's metadata (e.g. the recipe)
        self.seed = seed  # training seed of the pruning and QAT runs
        self.prune_restart = prune_restart  # a second cosine cycle of this many epochs at each kept level
        self.prune_epochs, self.prune_lr, self.prune_kd = prune_epochs, prune_lr, prune_kd
        self.prune_final_epochs = prune_final_epochs  # epochs at each kept level (0: prune_epochs)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.worker = worker
        self.caps = load_caps(caps)
        os.makedirs(os.path.join(out, "models"), exist_ok=True)
        os.makedirs(os.path.join(out, "cache"), exist_ok=True)
        self.baseline_path = baseline
        self.base = read_checkpoint(baseline)
        self.arch_kw = arch_of(self.base)
        self._data = None
        self._teacher = None
        self._baseline_top1 = None

    # ------------------------------------------------------------------ shared inputs
    @property
    def runs_path(self) -> str:
        return os.path.join(self.out, f"runs{'.' + self.worker if self.worker else ''}.jsonl")

    @property
    def log_path(self) -> str:
        return os.path.join(self.out, f"train_log{'.' + self.worker if self.worker else ''}.jsonl")

    def data(self) -> tuple[ArrayDataset, ArrayDataset]:
        """Decoded once per machine: the uint8 arrays are cached under OUT/cache for the other workers."""
        if self._data is None:
            cache = os.path.join(self.out, "cache", f"decoded_{self.subset}.pt")
            if os.path.exists(cache):
                d = torch.load(cache, weights_only=True)
                tr = ArrayDataset(d["tr_x"], d["tr_y"], d["classes"], d["src"] + ":train")
                te = ArrayDataset(d["te_x"], d["te_y"], d["classes"], d["src"] + ":test")
            else:
                tr, te = load_dataset(self.data_spec, "train"), load_dataset(self.data_spec, "test")
                if self.subset:
                    tr, te = tr.subset(self.subset), te.subset(max(100, self.subset // 5))
                tmp = cache + f".{os.getpid()}.tmp"
                torch.save({"tr_x": tr.images, "tr_y": tr.labels, "te_x": te.images, "te_y": te.labels,
                            "classes": tr.classes, "src": self.data_spec}, tmp)
                os.replace(tmp, cache)
            self._data = (tr.to(self.device), te.to(self.device))
        return self._data

    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            m = mobilenet_v2_cifar(**self.arch_kw)
            m.load_state_dict(self.base)
            self._teacher = m.to(self.device).eval()
        return self._teacher

    def baseline_top1(self) -> float:
        if self._baseline_top1 is None:
            _, te = self.data()
            self._baseline_top1 = evaluate(self.teacher(), te, device=self.device, amp=False)["top1"]
        return self._baseline_top1

    # ------------------------------------------------------------------ pruned starting points
    def pruned_path(self, s: float, restart: int | None = None) -> str:
        restart = self.prune_restart if restart is None else restart
        tag = f"_f{self.prune_final_epochs}" if self.prune_final_epochs else ""
        tag += f"_caps{caps_digest(self.caps)}" if self.caps else ""
        tag += f"_r{restart}" if restart else ""
        return os.path.join(self.out, "cache", f"pruned_s{s:g}_e{self.prune_epochs}_kd{self.prune_kd:g}{tag}.mbz")

    def prepare(self, sparsities) -> None:
        """Gradual pruning chain from the baseline, saving each requested level (skips cached ones);
        with prune_restart, then a second cosine cycle at each level, from the chain's cached model."""
        want = sorted({float(s) for s in sparsities if s > 0})
        missing = [s for s in want if not os.path.exists(self.pruned_path(s))]
        if not missing:
            return
        if any(not os.path.exists(self.pruned_path(s, 0)) for s in missing):
            self._chain(want)  # every requested level, as before: each gets its final epochs on the way
        if self.prune_restart:
            for s in missing:
                self._restart(s)

    def _save_pruned(self, model, sd, s: float, pruning: dict) -> None:
        _, te = self.data()
        ev = evaluate(model, te, device=self.device, amp=False)
        meta = {"arch": self.arch_kw, "pruning": pruning, "top1": ev["top1"],
                "baseline": os.path.basename(self.baseline_path), **self.extra_meta}
        path = self.pruned_path(s, pruning.get("restart_epochs") or 0)
        mbz.save({k: v.cpu() for k, v in sd.items()}, path, metadata=meta, zstd=zstd_available())
        print(f"[prepare] sparsity {s:g}: top-1 {ev['top1']:.2f} -> {path}", flush=True)

    def _chain(self, want: list) -> None:
        top = max(want)
        chain = sorted({x for x in PRUNE_STEPS if x < top} | set(want))
        tr, te = self.data()
        model = mobilenet_v2_cifar(**self.arch_kw).to(self.device)
        model.load_state_dict(self.base)
        cfg = TrainConfig(batch=min(512, len(tr)), kd=self.prune_kd, seed=self.seed)
        teacher = self.teacher() if self.prune_kd else None
        epochs_at = {x: self.prune_final_epochs for x in want} if self.prune_final_epochs else None
        for s, sd, _ in prune_schedule(model, tr, te, chain, self.prune_epochs, self.prune_lr, self.log_path,
                                       self.device, cfg, teacher=teacher, caps=self.caps, epochs_at=epochs_at):
            if s in want:
                self._save_pruned(model, sd, s, {"sparsity": s, "chain": chain, "epochs_per_step": self.prune_epochs,
                                                 "kd": self.prune_kd,
                                                 "epochs_at_kept_levels": self.prune_final_epochs or None,
                                                 "caps": self.caps or None})

    def _restart(self, s: float) -> None:
        """prune_restart more epochs at sparsity s (warm-up, then cosine from prune_lr) with the chain's zeros
        held: its masks are those of the cached model, re-derived and checked, so no weight comes back."""
        tr, te = self.data()
        src = self.pruned_path(s, 0)
        with mbz.open(src) as rd:
            pruning = dict(rd.metadata.get("pruning", {}))
        model = mobilenet_v2_cifar(**self.arch_kw).to(self.device)
        model.load_state_dict(mbz.load(src))
        zeros = {k: (v == 0) for k, v in model.state_dict().items()}
        cfg = TrainConfig(batch=min(512, len(tr)), kd=self.prune_kd, seed=self.seed)
        teacher = self.teacher() if self.prune_kd else None
        for _, sd, masks in prune_schedule(model, tr, te, [s], self.prune_restart, self.prune_lr, self.log_path,
                                           self.device, cfg, teacher=teacher, caps=self.caps):
            for k, m in masks.items():
                if not torch.equal(~m.bool().cpu(), zeros[k].cpu()):
                    raise RuntimeError(f"{src}: re-derived mask of {k} differs from the cached zeros")
            pruning.update(restart_epochs=self.prune_restart, restart_from=os.path.basename(src))
            self._save_pruned(model, sd, s, pruning)

    # ------------------------------------------------------------------ one run
    def done(self) -> dict:
        rows = {}
        for p in sorted(glob.glob(os.path.join(self.out, "runs*.jsonl"))):
            for r in read_jsonl(p):
                rows[r["name"]] = r
        return rows

    def sibling(self, cfg: RunConfig, done: dict | None = None) -> dict | None:
        """A recorded run with the same training whose file is here (re-packing it replaces training)."""
        done = self.done() if done is None else done
        return next((r for r in done.values() if r["train_key"] == cfg.train_key
                     and os.path.exists(os.path.join(self.out, r["mbz"]))), None)

    def run(self, cfg: RunConfig) -> dict:
        t0 = time.time()
        done = self.done()
        if cfg.name in done:
            return done[cfg.name]
        model_path = os.path.join(self.out, "models", f"{cfg.name}.mbz")
        sibling = self.sibling(cfg, done)
        if sibling is not None:  # same training, other entropy stage: re-pack, no retraining
            src = os.path.join(self.out, sibling["mbz"])
            with mbz.open(src) as rd:
                comp = dict(rd.metadata.get("compression", {}), entropy=cfg.entropy)
            use_z = cfg.entropy == "zstd" and zstd_available()
            repack(src, model_path, use_z, {"compression": comp, **self.extra_meta})
            row = {k: sibling[k] for k in ("top1", "top1_qat_eval", "top1_equal", "baseline_top1", "drop",
                                            "act_cr", "act_cr_peak", "act_method", "device", "torch")}
            row["trained_in"] = sibling["name"]
        else:
            tr, te = self.data()
            start = self.base if cfg.sparsity == 0 else None
            if start is None:
                self.prepare([cfg.sparsity])
                start = mbz.load(self.pruned_path(cfg.sparsity))
            q = QatConfig(cfg.name, cfg.sparsity, cfg.wbits, cfg.abits, cfg.qat_epochs, cfg.lr, cfg.fold_bn,
                          cfg.granularity, cfg.kd)
            use_z = cfg.entropy == "zstd" and zstd_available()
            r = qat_run(start, q, tr, te, os.path.join(self.out, "models"), self.log_path, self.device,
                        self.arch_kw, pack=True, zstd=use_z, save_pt=False,
                        teacher=self.teacher() if cfg.kd else None, seed=self.seed, extra_meta=self.extra_meta)
            if r["mbz"] != os.path.basename(model_path):
                raise RuntimeError(f"{cfg.name}: unexpected output {r['mbz']}")
            b = self.baseline_top1()
            row = {"top1": r["top1_packed"], "top1_qat_eval": r["top1_qat_eval"], "top1_equal": r["top1_equal"],
                   "baseline_top1": b, "drop": round(b - r["top1_packed"], 4),
                   "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
                   "torch": torch.__version__, **activation_metrics(model_path)}
        row.update(name=cfg.name, train_key=cfg.train_key, config=asdict(cfg), entropy_applied=use_z,
                   mbz=os.path.relpath(model_path, self.out), seconds=round(time.time() - t0, 1),
                   **size_metrics(model_path))
        append_jsonl(self.runs_path, row)
        return row


def finalize(out: str, order: list[str] | None = None) -> list[dict]:
    """Merge worker files into OUT/runs.jsonl and re-pack every file here with its run's entropy stage.

    GPU machines may lack zstandard (files written without the entropy stage) or run an
    older detector; re-packing is lossless (tensors compared bit for bit), so top-1 stands,
    and every size in runs.jsonl then comes from the same code.  Idempotent.
    """
    if not zstd_available():
        raise RuntimeError("finalize needs zstandard (pip install zstandard)")
    rows = {}
    for p in sorted(glob.glob(os.path.join(out, "runs*.jsonl"))):
        for r in read_jsonl(p):
            rows[r["name"]] = r
    for r in _progress(list(rows.values()), "re-pack"):
        path = os.path.join(out, r["mbz"])
        r.setdefault("file_bytes_as_run", r["file_bytes"])
        use_z = r["config"]["entropy"] == "zstd"
        repack(path, path, use_z)
        r.update(size_metrics(path), entropy_applied=use_z)
    names = order or sorted(rows)
    names = [n for n in names if n in rows] + sorted(set(rows) - set(names))
    merged = [rows[n] for n in names]
    tmp = os.path.join(out, "runs.jsonl.tmp")
    with open(tmp, "w") as f:
        for r in merged:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    for p in glob.glob(os.path.join(out, "runs.*.jsonl")):
        os.remove(p)
    os.replace(tmp, os.path.join(out, "runs.jsonl"))
    logs = sorted(glob.glob(os.path.join(out, "train_log.*.jsonl")))
    if logs:
        with open(os.path.join(out, "train_log.jsonl"), "a") as f:
            for p in logs:
                f.write(open(p).read())
                os.remove(p)
    return merged



# ---------------------------------------------------------------------------------------------- driving
def sweep_configs(paths, count: int = 0, seed: int = 0, where=()) -> list[RunConfig]:
    """The configurations of sweep files, in file order, each name once; `where`: 'key=value' filters."""
    from .sweep import expand, load_sweep
    out, seen = [], set()
    for p in paths:
        for c in expand(load_sweep(p), count or None, seed):
            if c.name not in seen:
                seen.add(c.name)
                out.append(c)
    for cond in where:
        k, eq, v = cond.partition("=")
        if not eq or k not in RunConfig.__dataclass_fields__:
            raise ValueError(f"--where {cond!r}: expected KEY=VALUE, KEY one of {sorted(RunConfig.__dataclass_fields__)}")
        out = [c for c in out if str(getattr(c, k)) == v]
    return out


def _worker(kw: dict) -> None:
    run_sweep(**kw)


def run_sweep(paths, out: str, baseline: str, data: str = "jpeg", *, jobs: int = 1, shard_of: tuple | None = None,
              count: int = 0, seed: int = 0, where=(), time_budget: float = 0.0, log=print, **runner_kw) -> dict:
    """Run every configuration of the sweep files `paths` that OUT has not recorded yet (resumable).

    The pruned starting points are made first (one chain for every sparsity still needed); then
    the configurations run one after another, or in `jobs` processes sharing the device, each a
    shard of whole training groups.  No configuration starts after `time_budget` seconds.
    `runner_kw` go to SweepRunner (prune_epochs, prune_lr, prune_kd, prune_final_epochs,
    prune_restart, caps, subset, extra_meta; the training seed as `train_seed`).
    Returns {'configs', 'todo', 'done', 'left'}."""
    from .sweep import shard
    t0 = time.time()
    configs = sweep_configs(paths, count, seed, where)
    if shard_of:
        configs = shard(configs, *shard_of)
    worker = f"w{shard_of[0]}" if shard_of else ""
    train_seed = runner_kw.pop("train_seed", 0)
    r = SweepRunner(out, baseline, data, worker=worker, seed=train_seed, **runner_kw)
    todo = [c for c in configs if c.name not in r.done()]
    log(f"{len(configs)} configurations, {len(todo)} to run"
        + (f" (shard {shard_of[0]}/{shard_of[1]})" if shard_of else ""))
    if not todo:
        return {"configs": len(configs), "todo": 0, "done": 0, "left": 0}
    done = r.done()
    r.prepare({c.sparsity for c in todo if r.sibling(c, done) is None})
    if jobs > 1 and not shard_of:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        left = max(1.0, time_budget - (time.time() - t0)) if time_budget else 0.0
        procs = []
        for i in range(jobs):
            kw = dict(paths=list(paths), out=out, baseline=baseline, data=data, shard_of=(i, jobs), count=count,
                      seed=seed, where=list(where), time_budget=left, train_seed=train_seed, **runner_kw)
            procs.append(ctx.Process(target=_worker, args=(kw,)))
            procs[-1].start()
        for p in procs:
            p.join()
        rc = [p.exitcode for p in procs]
        if any(rc):
            raise RuntimeError(f"sweep workers ended with exit codes {rc}")
        left_over = [c for c in configs if c.name not in r.done()]
        return {"configs": len(configs), "todo": len(todo), "done": len(todo) - len(left_over),
                "left": len(left_over)}
    n_done = 0
    for k, c in enumerate(todo):
        if time_budget and time.time() - t0 > time_budget:
            log(f"time budget reached: {len(todo) - k} configurations left for the next call")
            break
        row = r.run(c)
        n_done += 1
        log(f"[{k + 1}/{len(todo)}] {c.name}: top-1 {row['top1']:.2f}, {row['file_bytes']:,} B, {row['seconds']:.0f}s")
    return {"configs": len(configs), "todo": len(todo), "done": n_done, "left": len(todo) - n_done}


def repack_dir(src: str, dst: str, log=print) -> list[dict]:
    """Re-pack the .mbz files of a run folder (results.jsonl or runs.jsonl rows with 'mbz' and 'file_bytes')
    into `dst` with the entropy stage, losslessly (tensors checked), and copy its other JSON / JSONL
    files; file_bytes is updated and the size as run kept as file_bytes_gpu_nozstd."""
    import shutil
    table = next((n for n in ("results.jsonl", "runs.jsonl") if os.path.exists(os.path.join(src, n))), None)
    if table is None:
        raise FileNotFoundError(f"{src}: neither results.jsonl nor runs.jsonl (not a run folder)")
    os.makedirs(dst, exist_ok=True)
    rows = read_jsonl(os.path.join(src, table))
    for r in rows:
        os.makedirs(os.path.dirname(os.path.join(dst, r["mbz"])) or dst, exist_ok=True)
        nbytes = repack(os.path.join(src, r["mbz"]), os.path.join(dst, r["mbz"]), zstd=True)
        r.setdefault("file_bytes_gpu_nozstd", r["file_bytes"])
        r["file_bytes"] = nbytes
        log(f"{r['name']}: {r['file_bytes_gpu_nozstd']:,} -> {nbytes:,} B")
    with open(os.path.join(dst, table), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for name in os.listdir(src):
        if name.endswith((".jsonl", ".json")) and name != table:
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    return rows
