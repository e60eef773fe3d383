"""Training loop shared by the baseline, pruning fine-tunes and QAT.

Data live on the device as uint8; augmentation runs there (data.augment_batch).
bf16 autocast and channels_last on CUDA; seeds for Python, NumPy, torch and
CUDA; SGD + Nesterov with warm-up and cosine decay; label smoothing; optional
weight EMA; optional knowledge distillation from a frozen teacher (Hinton et
al. 2015: (1-kd) * CE + kd * T^2 * KL(teacher_T || student_T)); masks
re-applied after every step so pruned weights stay exact zeros; optionally
the whole step replayed as one CUDA graph (cuda_graph); one JSONL
line per epoch; checkpoint + resume so a run can span several 10-minute GPU
commands.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .data import ArrayDataset, augment_batch, evaluate
from .prune import apply_masks


@dataclass
class TrainConfig:
    epochs: int = 150
    batch: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    wd: float = 1e-4
    warmup: float = 2.0             # epochs of linear warm-up
    label_smoothing: float = 0.1
    ema: float = 0.0                # weight EMA decay, 0 disables
    trivial: bool = True            # TrivialAugment-like op per sample
    cutout: int = 0                 # cutout square side, 0 disables
    seed: int = 0
    amp: bool = True                # bf16 autocast on CUDA
    eval_every: int = 1
    fit_budget: float = 0.0         # seconds: after the warm-up, shrink `epochs` to fit (0: off)
    kd: float = 0.0                 # weight of the distillation term (needs a teacher), 0 disables
    kd_temp: float = 4.0            # distillation temperature
    compile: bool = False           # torch.compile the training forward/backward (CUDA only)
    compile_mode: str = "default"   # torch.compile mode: default | reduce-overhead | max-autotune-no-cudagraphs
    cudnn_benchmark: bool = True    # let cuDNN time its algorithms for the fixed batch shape (CUDA only)
    cuda_graph: bool = False        # capture the whole step (augmentation, forward, backward, SGD) as one CUDA graph
    extra: dict = field(default_factory=dict)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    t = F.log_softmax(teacher_logits / temp, dim=1)
    s = F.log_softmax(student_logits / temp, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temp * temp


def lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = cfg.warmup * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


class Ema:
    """Exponential moving average of the weights and BN buffers, decay warmed up as min(decay, (1+t)/(10+t)).

    Without the warm-up the average starts at the random initialisation and keeps a share of it, and
    of the early high-learning-rate weights, for thousands of steps (seen: decay 0.9995, 97 steps per
    epoch: the EMA model at chance level until epoch ~60 and 88.58% after 149 epochs).  With the
    warm-up (decay 0.999) the average led the trained weights by 3-10 points mid-run and
    ended level with them (91.48 vs 91.55): at the end of a cosine schedule it adds nothing.
    Pick the decay for the run length: the average spans about 1/(1-decay) steps.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

        self._pairs = None

    @torch.no_grad()
    def update(self, model):
        if self._pairs is None:
            es, ms = list(self.model.state_dict().values()), list(model.state_dict().values())
            self._pairs = ([e for e in es if e.dtype.is_floating_point], [m for m in ms if m.dtype.is_floating_point],
                           [(e, m) for e, m in zip(es, ms) if not e.dtype.is_floating_point])
        ef, mf, other = self._pairs
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(ef, mf, 1 - decay)
        for e, m in other:
            e.copy_(m)


class _GraphStep:
    """The training step captured as one CUDA graph and replayed (TrainConfig.cuda_graph).

    Eager, the host issues every kernel of the step from Python; here it only writes the learning
    rate and the batch's indices into two tensors that the graph reads, then replays it (one H200:
    1.72 s per epoch at batch 512 against 1.90 s eager, 1.61 against 1.68 at batch 1024;
    results/baseline_seeds).  The first `warm`
    steps run eagerly on a side stream (cuDNN autotuning, momentum buffers, cached constants), the
    next is captured with the gradients unset, so that the graph's backward writes them afresh in
    its own memory pool each replay.  `gen` (augmentation) is registered with the graph: every
    replay draws new numbers.  `body(idx)` is augmentation .. opt.step() plus the epoch sums,
    without zeroing the gradients.
    """

    def __init__(self, body, opt, batch: int, device, gen, warm: int = 3):
        self.body, self.opt, self.gen, self.warm = body, opt, gen, warm
        self.lr = torch.zeros((), device=device)
        self.idx = torch.zeros(batch, dtype=torch.long, device=device)
        self.float_lr = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = self.lr  # fused SGD reads a tensor learning rate on the device
        self.graph, self.done, self.side = None, 0, torch.cuda.Stream(device)

    def release(self):
        """Give the optimizer float learning rates back (for an eager fallback or a checkpoint)."""
        for g in self.opt.param_groups:
            g["lr"] = float(self.lr)

    def __call__(self, idx: torch.Tensor, lr: float) -> None:
        self.lr.fill_(lr)
        self.idx.copy_(idx)
        if self.graph is None and self.done >= self.warm:
            self.opt.zero_grad(set_to_none=True)
            g = torch.cuda.CUDAGraph()
            if self.gen is not None:
                g.register_generator_state(self.gen)
            with torch.cuda.graph(g):
                self.body(self.idx)
            self.graph = g
        if self.graph is not None:
            self.graph.replay()
        else:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.opt.zero_grad(set_to_none=True)
                self.body(self.idx)
            torch.cuda.current_stream().wait_stream(self.side)
        self.done += 1


def _progress(n, desc):
    try:
        from tqdm import tqdm
        return tqdm(total=n, desc=desc, unit="ep", dynamic_ncols=True, mininterval=5)
    except ImportError:
        return None


def train(model: torch.nn.Module, train_ds: ArrayDataset, test_ds: ArrayDataset, cfg: TrainConfig,
          log_path: str | None = None, masks: dict | None = None, ckpt_path: str | None = None,
          time_budget: float | None = None, desc: str = "train", device=None,
          teacher: torch.nn.Module | None = None, penalty=None) -> dict:
    """Train in place; returns {'history', 'final', 'model' (EMA model if any), 'complete'}.

    `penalty` (e.g. mbz.pipeline.rate.RatePenalty): `penalty.loss(model)` is added to every step's
    loss (outside autocast) and `penalty.log(model)` to every epoch's log line."""
    if cfg.kd and teacher is None:
        raise ValueError("TrainConfig.kd > 0 needs a teacher model")
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    set_seed(cfg.seed)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    train_ds, test_ds = train_ds.to(device), test_ds.to(device)
    if masks:  # on the device once: a CPU mask copied in every step stalls the GPU
        masks = {k: m.to(device) for k, m in masks.items()}
    if cfg.kd:
        teacher = teacher.to(device).eval()
        if cuda:
            teacher.to(memory_format=torch.channels_last)
    # the compiled module shares its parameters with `model`; evaluation, masks and EMA use `model`
    fwd = torch.compile(model, mode=cfg.compile_mode) if cfg.compile and cuda else model
    if cuda:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    # fused: one kernel for the whole update instead of a handful of multi-tensor launches
    opt = torch.optim.SGD(param_groups(model, cfg.wd), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          fused=cuda or None)
    ema = Ema(model, cfg.ema) if cfg.ema else None
    n = len(train_ds)
    spe = n // cfg.batch
    total = spe * cfg.epochs
    start_epoch, history = 0, []
    if ckpt_path and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        if ema and "ema" in ck:
            ema.model.load_state_dict(ck["ema"])
            ema.updates = int(ck.get("ema_updates", 0))
        start_epoch, history = ck["epoch"], json.loads(ck["history"])
        torch.set_rng_state(ck["rng_cpu"].cpu())  # map_location moved it to the device
        if cuda and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"].cpu())
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 1000 + start_epoch)
    if cfg.cuda_graph and cfg.compile:
        raise ValueError("TrainConfig.cuda_graph and compile exclude each other")
    graph_step = None
    perm_gen = aug_gen = gen
    if cfg.cuda_graph and cuda:
        # the permutation from a generator of its own, outside the graph; augmentation from `gen`, in it
        # (the default CUDA generator where this torch cannot register another with a graph)
        perm_gen = torch.Generator(device=device)
        perm_gen.manual_seed(cfg.seed * 1000 + start_epoch + 500)
        if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            aug_gen = None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)

    def step_body(idx):
        x = augment_batch(train_ds.images[idx], trivial=cfg.trivial, cutout_size=cfg.cutout, gen=aug_gen)
        y = train_ds.labels[idx]
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and cuda,
                            cache_enabled=False if cfg.cuda_graph else None):
            out = fwd(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
            if cfg.kd:
                with torch.no_grad():
                    t_logits = teacher(x).float()
                loss = (1 - cfg.kd) * loss + cfg.kd * distill_loss(out.float(), t_logits, cfg.kd_temp)
        if penalty is not None and penalty.lam:
            loss = loss + penalty.loss(model).to(loss.device)
        loss.backward()
        opt.step()
        loss_sum.add_(loss.detach() * len(y))
        correct.add_((out.argmax(1) == y).sum())

    if cfg.cuda_graph and cuda:
        graph_step = _GraphStep(step_body, opt, cfg.batch, device, aug_gen)
    t0 = time.time()
    bar = _progress(cfg.epochs, desc)
    if bar:
        bar.update(start_epoch)
    complete = True
    fitted = False
    t_last = t0
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.fit_budget and not fitted and epoch >= max(3, math.ceil(cfg.warmup)) and epoch > start_epoch + 1:
            per = time.time() - t_last  # the last epoch, eval included (the first one pays for autotuning)
            fit = max(epoch + 1, int((cfg.fit_budget - (time.time() - t0)) / per) + epoch)
            if fit < cfg.epochs:
                cfg.epochs = fit
                total = spe * cfg.epochs
                if bar:
                    bar.total = cfg.epochs
                print(f"fit_budget: {per:.2f}s/epoch -> {cfg.epochs} epochs", flush=True)
            fitted = True
        if epoch >= cfg.epochs:
            break
        if time_budget and epoch > start_epoch:
            per = (time.time() - t0) / (epoch - start_epoch)
            if time.time() - t0 + per * 1.3 > time_budget:
                complete = False
                break
        t_last = time.time()
        model.train()
        te = time.time()
        perm = torch.randperm(n, device=device, generator=perm_gen)
        loss_sum.zero_()
        correct.zero_()
        for i in range(spe):
            step = epoch * spe + i
            lr = lr_at(cfg, step, total, spe)
            idx = perm[i * cfg.batch:(i + 1) * cfg.batch]
            if graph_step is not None:
                try:
                    graph_step(idx, lr)
                except RuntimeError as e:  # a capture that failed: carry on eagerly
                    if graph_step.graph is not None:
                        raise
                    print(f"cuda_graph: capture failed ({str(e).splitlines()[0][:200]}); eager steps", flush=True)
                    graph_step.release()
                    graph_step = None
            if graph_step is None:
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                step_body(idx)
            if masks:
                apply_masks(model, masks)
            if ema:
                ema.update(model)
        rec = {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / (spe * cfg.batch),
               "train_acc": 100.0 * float(correct) / (spe * cfg.batch), "epoch_s": round(time.time() - te, 2)}
        if penalty is not None:
            rec.update(penalty.log(model))
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ev = evaluate(ema.model if ema else model, test_ds, device=device, amp=cfg.amp and cuda)
            rec.update(test_loss=ev["loss"], test_acc=ev["top1"])
            if ema:  # the trained weights too, so that a lagging average shows in the log
                rec["test_acc_raw"] = evaluate(model, test_ds, device=device, amp=cfg.amp and cuda)["top1"]
        history.append(rec)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps({"run": desc, **rec}) + "\n")
        if bar:
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", test=f"{rec.get('test_acc', float('nan')):.2f}")
            bar.update(1)
    if bar:
        bar.close()
    if graph_step is not None:
        graph_step.release()
    if ckpt_path and not complete:
        ck = {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": len(history),
              "history": json.dumps(history), "rng_cpu": torch.get_rng_state()}
        if ema:
            ck["ema"] = ema.model.state_dict()
            ck["ema_updates"] = ema.updates
        if cuda:
            ck["rng_cuda"] = torch.cuda.get_rng_state()
        # the stage's resume/ folder may not exist yet (a stage stopped in its first cycle)
        os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        tmp = ckpt_path + ".part"
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)
    final = ema.model if ema else model
    return {"history": history, "model": final, "complete": complete, "config": asdict(cfg)}


def plot_curves(jsonl_path: str, png_path: str, runs: list[str] | None = None, title: str = "") -> None:
    """Loss and accuracy per epoch from a JSONL log (matplotlib, written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(jsonl_path)]
    by = {}
    for r in rows:
        if runs is None or r["run"] in runs:
            by.setdefault(r["run"], []).append(r)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for run, rs in by.items():
        e = [r["epoch"] for r in rs]
        ax[0].plot(e, [r["train_loss"] for r in rs], label=f"{run} train")
        ax[0].plot([r["epoch"] for r in rs if "test_loss" in r], [r["test_loss"] for r in rs if "test_loss" in r], "--", label=f"{run} test")
        ax[1].plot(e, [r["train_acc"] for r in rs], label=f"{run} train")
        ax[1].plot([r["epoch"] for r in rs if "test_acc" in r], [r["test_acc"] for r in rs if "test_acc" in r], "--", label=f"{run} test")
    ax[0].set_xlabel("epoch"); ax[0].set_ylabel("cross-entropy (train: with label smoothing, augmented)")
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("top-1 %")
    ax[1].set_ylim(40, 100)
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title or "MobileNet-v2, CIFAR-10 (JPEG q75 export)")
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
