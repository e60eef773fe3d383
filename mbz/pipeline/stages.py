"""Run a recipe in stages, each cached in the output folder, resumable across short GPU commands.

Stages, in order (those the recipe has):
  baseline        the recipe's checkpoint (its sha256 recorded), or training it: DIR/baseline/
  prune           the gradual chain, one file per level: DIR/prune/s<S>.mbz (sparse fp32, lossless)
  restart         further cosine cycles at the kept sparsity, zeros held: DIR/restart/s<S>_c<i>.mbz
  qat/NAME        one QAT run each: DIR/qat/NAME.mbz
  soup            the uniform average of QAT runs: DIR/soup/soup.mbz;  soup/NAME  its fine-tuning
  reduce/NAME     every QAT run and the fine-tuned soup with reduced scales and biases: DIR/reduce/NAME.mbz
  sweep           the configurations of sweep files: DIR/sweep/ (as `mbz sweep run` + `finalize`)

DIR/manifest.json records, per stage, a key (a digest of its settings and of the stages before
it), its state and its outputs; a finished stage is never run again, a stage whose key changed is
refused unless `force`, and then redone with everything after it.  With a time budget the run
stops cleanly between epochs (a stage's state in DIR/resume/) or between stages; running again
continues.  Every .mbz file made records the recipe under the metadata key 'recipe'.
Numbers: each step calls the same functions with the same settings as the sweep runner
(mbz.pipeline.sweep_run), so an uninterrupted stage gives what `mbz sweep run` gives.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import torch

from ..checkpoint import inference_only_reason
from ..errors import UsageError
from .recipe import Recipe, RecipeError, qat_key, stage_key

MANIFEST = "manifest.json"


class _Stop(Exception):
    """The time budget ends the run here (everything finished so far is recorded); `idle`: before the
    stage did any work."""

    def __init__(self, where: str, idle: bool = False):
        super().__init__(where)
        self.idle = idle


def _sha_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _need_file(recipe: Recipe, key: str, path: str) -> str:
    if not os.path.isfile(path):
        raise RecipeError(f"{recipe.path}: {key}: {path}: no such file")
    why = inference_only_reason(path, key)  # a file packed for inference (pack --bn-affine) is not trained from
    if why:
        raise RecipeError(f"{recipe.path}: {why}")
    return path


def _tf32_defaults():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


_TF32_AT_START = _tf32_defaults()


class Compress:
    """One recipe in one output folder."""

    def __init__(self, recipe: Recipe, out: str, force: bool = False, time_budget: float = 0.0, device=None,
                 log=print):
        self.r, self.s, self.out, self.force, self.log = recipe, recipe.settings, out, force, log
        self.t0, self.budget = time.time(), float(time_budget or 0)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.meta = {"recipe": recipe.metadata()}
        self._data = self._base = self._teacher = None
        self._worked = False
        self.plan = self._plan()
        self.manifest = self._read_manifest()

    # ------------------------------------------------------------------ plan and manifest
    def _p(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def _plan(self) -> list[tuple[str, str]]:
        """[(stage name, key)] in running order; reads the input files' digests (checkpoint, caps, sweeps)."""
        s, r = self.s, self.r
        b = s["baseline"]
        if b["checkpoint"]:
            bkey = stage_key("checkpoint", _sha_file(_need_file(r, "baseline.checkpoint", b["checkpoint"])))
        else:
            init = _sha_file(_need_file(r, "baseline.init", b["init"])) if b["init"] else None
            bkey = stage_key("train", s["data"], s["model"], b["train"], init)
        plan = [("baseline", bkey)]
        common = (s["data"], s["seed"], s["model"]["dropout"])
        start = bkey
        caps = None
        if "prune" in s and s["prune"]["caps"]:
            caps = _sha_file(_need_file(r, "prune.caps", s["prune"]["caps"]))
        if "sweep" in s:
            sweeps = [_sha_file(_need_file(r, "sweep.files", f)) for f in s["sweep"]["files"]]
            plan.append(("sweep", stage_key(bkey, common, s.get("prune"), caps, s.get("restart"), s["sweep"], sweeps)))
            return plan
        if "prune" in s:
            start = stage_key(bkey, common, s["prune"], caps)
            plan.append(("prune", start))
        if "restart" in s:
            start = stage_key(start, s["restart"])
            plan.append(("restart", start))
        finals = []
        qkeys = {}
        for q in s["qat"]:
            qkeys[q["name"]] = stage_key(start, common, qat_key(q))
            plan.append((f"qat/{q['name']}", qkeys[q["name"]]))
            finals.append((q["name"], qkeys[q["name"]]))
        if "soup" in s:
            so = s["soup"]
            skey = stage_key([qkeys[n] for n in so["runs"]], so["steps"])
            plan.append(("soup", skey))
            fkey = stage_key(skey, bkey, common, so["epochs"], so["lr"], so["kd"])
            plan.append((f"soup/{so['name']}", fkey))
            finals.append((so["name"], fkey))
        if "reduce" in s:
            for name, k in finals:
                plan.append((f"reduce/{name}", stage_key(k, s["reduce"])))
        return plan

    def _read_manifest(self) -> dict:
        path = self._p(MANIFEST)
        if not os.path.exists(path):
            if os.path.isdir(self.out) and os.listdir(self.out) and not self.force:
                raise UsageError(f"{self.out}: not empty and holds no {MANIFEST} (not made by mbz compress); "
                                 f"choose an empty or new folder, or pass --force to use it")
            return {"recipe": None, "stages": {}}
        try:
            with open(path) as f:
                m = json.load(f)
            assert isinstance(m.get("stages"), dict)
        except (OSError, ValueError, AssertionError):
            raise UsageError(f"{path}: unreadable manifest; remove the folder or choose another --out") from None
        return m

    def _check(self) -> None:
        """Refuse (or, with force, clear) the stages recorded with other settings than the recipe's now."""
        keys = dict(self.plan)
        rec = self.manifest["stages"]
        changed = [n for n, e in rec.items() if keys.get(n) != e.get("key")]
        old = self.manifest.get("recipe") or {}
        other_text = rec and old.get("sha256") not in (None, self.r.sha256)
        if (changed or other_text) and not self.force:
            if changed:
                raise RecipeError(f"{self.out}: stage '{changed[0]}' was run with other settings than "
                                  f"{self.r.path} gives now ({len(changed)} stage(s) differ); use another --out, "
                                  f"or pass --force to redo the stages that differ")
            raise RecipeError(f"{self.out}: made from another version of the recipe ({old.get('file')}, sha256 "
                              f"{old.get('sha256', '')[:12]}); the settings are the same: pass --force to go on "
                              f"with {self.r.path}")
        for n in changed:
            self._clear(n)

    def _clear(self, name: str) -> None:
        e = self.manifest["stages"].pop(name, {})
        for rel in e.get("outputs", []):
            p = self._p(rel)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        ck = self._ckpt(name)
        if os.path.exists(ck):
            os.remove(ck)
        self.log(f"[{name}] recorded with other settings: cleared")

    def _save_manifest(self) -> None:
        self.manifest["recipe"] = {"file": self.r.file, "path": self.r.path, "sha256": self.r.sha256}
        tmp = self._p(MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.manifest, f, indent=1)
        os.replace(tmp, self._p(MANIFEST))

    def _entry(self, name: str) -> dict:
        e = self.manifest["stages"].setdefault(name, {"key": dict(self.plan)[name], "state": "started",
                                                      "outputs": []})
        return e

    def _done(self, name: str, outputs: list[str], result: dict | None = None, seconds: float = 0.0) -> None:
        e = self._entry(name)
        e.update(state="done", outputs=sorted(set(e.get("outputs", [])) | set(outputs)),
                 result=result or {}, seconds=round(e.get("seconds", 0.0) + seconds, 1))
        self._save_manifest()
        ck = self._ckpt(name)
        if os.path.exists(ck):
            os.remove(ck)

    def _ckpt(self, name: str) -> str:
        return self._p("resume", name.replace("/", "__") + ".pt")

    def status(self) -> list[tuple[str, str]]:
        rec = self.manifest["stages"]
        out = []
        for n, k in self.plan:
            e = rec.get(n)
            if e is None:
                st = "to do"
            elif e.get("key") != k:
                st = "changed (needs --force)"
            elif e.get("state") == "done":
                gone = [o for o in e.get("outputs", []) if not os.path.exists(self._p(o))]
                st = "done" if not gone else (f"done; not in the folder: {gone[0]}"
                                              + (f" and {len(gone) - 1} more of its outputs" if len(gone) > 1 else ""))
            else:
                st = "started" + (" (state saved)" if os.path.exists(self._ckpt(n)) else "")
            out.append((n, st))
        return out

    # ------------------------------------------------------------------ time
    def left(self) -> float | None:
        return None if not self.budget else self.budget - (time.time() - self.t0)

    def _epoch_seconds(self, runs, log: str = "train_log.jsonl") -> float:
        """The slowest recent epoch of runs named in `runs` (a predicate), from DIR/train_log.jsonl."""
        path = self._p(log)
        if not os.path.exists(path):
            return 0.0
        secs = []
        with open(path) as f:
            for line in f:
                try:
                    h = json.loads(line)
                except ValueError:
                    continue
                if runs(h.get("run", "")):
                    secs.append(float(h.get("epoch_s", 0.0)))
        return max(secs[-5:], default=0.0)

    def _room(self, name: str, runs=lambda n: True, log: str = "train_log.jsonl") -> float | None:
        """Seconds left for `name`; _Stop when not even one more epoch (as measured so far) fits.  The first
        piece of work of a call always starts (and trains at least one epoch), so every call makes progress."""
        left = self.left()
        if left is None:
            return None
        if not self._worked:
            self._worked = True
            return max(left, 1e-3)
        need = 1.3 * self._epoch_seconds(runs, log)
        if left <= max(need, 1.0):
            raise _Stop(name, idle=True)
        return left

    # ------------------------------------------------------------------ shared inputs
    def data(self):
        if self._data is None:
            from .baseline import load_splits
            d = self.s["data"]
            t = time.time()
            tr, te = load_splits(d["source"], d["subset"], d["val"])
            self._data = (tr.to(self.device), te.to(self.device))
            held = "validation (held out of the training set)" if d["val"] else "test"
            self.log(f"data: {len(tr)} train / {len(te)} {held} images of {tr.source} in {time.time() - t:.1f}s")
        return self._data

    def test_set(self):
        """The test split, for the one evaluation of each final file when a validation split selects."""
        from .baseline import load_splits
        d = self.s["data"]
        _, te = load_splits(d["source"], d["subset"])
        return te.to(self.device)

    def baseline_path(self) -> str:
        b = self.s["baseline"]
        return b["checkpoint"] or self._p("baseline", "baseline.mbz")

    def base(self) -> dict:
        if self._base is None:
            from ..checkpoint import read_checkpoint
            self._base = read_checkpoint(self.baseline_path())
        return self._base

    def arch_kw(self) -> dict:
        from ..models import pipeline_arch
        return pipeline_arch(self.s["model"], self.base())

    def teacher(self):
        if self._teacher is None:
            from ..models import build_model
            m = build_model(self.arch_kw())
            m.load_state_dict(self.base())
            self._teacher = m.to(self.device).eval()
        return self._teacher

    def baseline_top1(self) -> float:
        m = self.manifest.setdefault("baseline_top1", {})
        if self.device.type not in m:
            from .data import evaluate
            _, te = self.data()
            m[self.device.type] = evaluate(self.teacher(), te, device=self.device, amp=False)["top1"]
        return m[self.device.type]

    # ------------------------------------------------------------------ stages
    def stage_baseline(self, name: str) -> None:
        b = self.s["baseline"]
        if b["checkpoint"]:
            self.base()
            self._done(name, [], {"checkpoint": b["checkpoint"]})
            return
        from .baseline import train_baseline
        from .train import TrainConfig
        if os.path.exists(self._p("baseline", "baseline.pt")) and os.path.exists(self._p("baseline", "baseline.json")):
            with open(self._p("baseline", "baseline.json")) as f:  # finished, the manifest not yet updated
                summary = json.load(f)
            self._done(name, ["baseline"], {"top1": summary["top1"], "epochs": summary["epochs"]})
            return
        left = self._room(name, lambda n: n == "baseline", os.path.join("baseline", "train_log.jsonl"))
        cfg = TrainConfig(**b["train"])
        self._entry(name)["outputs"] = ["baseline"]
        self._save_manifest()
        from ..models import pipeline_arch
        arch = pipeline_arch(self.s["model"])
        d = self.s["data"]
        t = time.time()
        r = train_baseline(self._p("baseline"), d["source"], cfg, arch, init=b["init"], subset=d["subset"], val=d["val"],
                           time_budget=left or 0.0, metadata=self.meta, quiet=True, splits=self.data())
        if not r["complete"]:
            self._entry(name)["seconds"] = round(self._entry(name).get("seconds", 0) + time.time() - t, 1)
            self._save_manifest()
            raise _Stop(f"{name} (epoch {r['epochs_done']}/{r['epochs']})")
        self._done(name, ["baseline"], {"top1": r["summary"]["top1"], "epochs": r["epochs"]}, time.time() - t)

    def _prune_cfg(self, kd: float):
        from .train import TrainConfig
        tr, _ = self.data()
        return TrainConfig(batch=min(512, len(tr)), kd=kd, seed=self.s["seed"])

    def _caps(self) -> dict:
        from .sweep_run import load_caps
        try:
            return load_caps(self.s["prune"]["caps"] or "")
        except ValueError as e:
            raise RecipeError(f"{self.r.path}: prune.caps: {e}") from None

    def _save_sparse(self, model, path: str, pruning: dict, evaluate_it: bool) -> float | None:
        import mbz
        meta = {"arch": self.arch_kw(), "pruning": pruning, "baseline": os.path.basename(self.baseline_path()),
                **self.meta}
        top1 = None
        if evaluate_it:
            from .data import evaluate
            _, te = self.data()
            top1 = meta["top1"] = evaluate(model, te, device=self.device, amp=False)["top1"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mbz.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path, metadata=meta)
        return top1

    def _model_from(self, path: str | None):
        import mbz
        from ..models import build_model
        model = build_model(self.arch_kw()).to(self.device)
        model.load_state_dict(mbz.load(path) if path else self.base())
        return model

    def stage_prune(self, name: str) -> None:
        from .compress import prune_step
        p = self.s["prune"]
        levels = p["levels"]
        e = self._entry(name)
        done = e.setdefault("steps_done", [])
        caps = self._caps()
        tr, te = self.data()
        teacher = self.teacher() if p["kd"] else None
        top1 = e.get("result", {}).get("top1")
        for s in levels:
            rel = f"prune/s{s:g}.mbz"
            if s in done:
                continue
            left = self._room(name, lambda n: n.startswith("prune"))
            prev = [x for x in levels if x < s]
            model = self._model_from(self._p(f"prune/s{prev[-1]:g}.mbz") if prev else None)
            epochs = p["final_epochs"] if s == levels[-1] and p["final_epochs"] else p["epochs_per_step"]
            t = time.time()
            self.log(f"[{name}] sparsity {s:g}: {epochs} epochs")
            _, complete = prune_step(model, tr, te, s, epochs, p["lr"], self._p("train_log.jsonl"), self.device,
                                     self._prune_cfg(p["kd"]), teacher=teacher, caps=caps,
                                     ckpt_path=self._ckpt(name), time_budget=left)
            e["seconds"] = round(e.get("seconds", 0.0) + time.time() - t, 1)
            if not complete:
                self._save_manifest()
                raise _Stop(f"{name} at sparsity {s:g}")
            pruning = {"sparsity": s, "chain": levels[:levels.index(s) + 1], "epochs_per_step": p["epochs_per_step"],
                       "kd": p["kd"], "epochs_at_kept_levels": p["final_epochs"] or None, "caps": caps or None}
            top1 = self._save_sparse(model, self._p(rel), pruning, evaluate_it=s == levels[-1])
            if os.path.exists(self._ckpt(name)):
                os.remove(self._ckpt(name))
            done.append(s)
            e["outputs"] = sorted(set(e["outputs"]) | {rel})
            self._save_manifest()
            self.log(f"[{name}] sparsity {s:g} done" + (f": top-1 {top1:.2f} ({self.device.type})" if top1 else ""))
        self._done(name, [], {"top1": top1, "file": f"prune/s{levels[-1]:g}.mbz"})

    def stage_restart(self, name: str) -> None:
        from .compress import prune_step
        r, s = self.s["restart"], self.r.sparsity
        e = self._entry(name)
        done = e.setdefault("cycles_done", 0)
        caps = self._caps()
        tr, te = self.data()
        teacher = self.teacher() if r["kd"] else None
        top1 = e.get("result", {}).get("top1")
        for i, epochs in enumerate(r["cycles"], 1):
            if i <= done:
                continue
            left = self._room(name, lambda n: n.startswith("prune"))
            src = self._p(f"prune/s{s:g}.mbz") if i == 1 else self._p(f"restart/s{s:g}_c{i - 1}.mbz")
            model = self._model_from(src)
            zeros = {k: (v == 0) for k, v in model.state_dict().items()}
            t = time.time()
            self.log(f"[{name}] cycle {i} at sparsity {s:g}: {epochs} epochs, zeros held")
            masks, complete = prune_step(model, tr, te, s, epochs, r["lr"], self._p("train_log.jsonl"), self.device,
                                         self._prune_cfg(r["kd"]), teacher=teacher, caps=caps,
                                         ckpt_path=self._ckpt(name), time_budget=left)
            e["seconds"] = round(e.get("seconds", 0.0) + time.time() - t, 1)
            if not complete:
                self._save_manifest()
                raise _Stop(f"{name} cycle {i}")
            for k, m in masks.items():
                if not torch.equal(~m.bool().cpu(), zeros[k].cpu()):
                    raise RuntimeError(f"{src}: re-derived mask of {k} differs from the file's zeros")
            rel = f"restart/s{s:g}_c{i}.mbz"
            import mbz
            with mbz.open(src) as rd:
                pruning = dict(rd.metadata.get("pruning", {}))
            pruning.update(restart_epochs=epochs, restart_from=os.path.basename(src), restart_cycle=i)
            top1 = self._save_sparse(model, self._p(rel), pruning, evaluate_it=True)
            if os.path.exists(self._ckpt(name)):
                os.remove(self._ckpt(name))
            e["cycles_done"] = i
            e["outputs"] = sorted(set(e["outputs"]) | {rel})
            self._save_manifest()
            self.log(f"[{name}] cycle {i} done: top-1 {top1:.2f} ({self.device.type})")
        self._done(name, [], {"top1": top1, "file": f"restart/s{s:g}_c{len(r['cycles'])}.mbz"})

    def _start_file(self) -> str | None:
        """The file QAT starts from (None: the baseline itself)."""
        s = self.r.sparsity
        if "restart" in self.s:
            return self._p(f"restart/s{s:g}_c{len(self.s['restart']['cycles'])}.mbz")
        if "prune" in self.s:
            return self._p(f"prune/s{s:g}.mbz")
        return None

    def _reset_tf32(self) -> None:
        """Each QAT run starts with the process's initial TF32 settings (evaluations switch TF32 off), as if
        it ran in a process of its own: its calibration forward is fp32."""
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _TF32_AT_START

    def stage_qat(self, name: str) -> None:
        import mbz
        from ..codecs.filters import zstd_available
        from .compress import QatConfig, qat_run
        qn = name.split("/", 1)[1]
        q = next(x for x in self.s["qat"] if x["name"] == qn)
        left = self._room(name, lambda n: not n.startswith("prune") and n != "baseline")
        tr, te = self.data()
        src = self._start_file()
        start = mbz.load(src) if src else self.base()
        cfg = QatConfig(qn, self.r.sparsity, q["wbits"], q["abits"], q["epochs"], q["lr"], q["fold_bn"],
                        q["granularity"], q["kd"], q["layer_bits"], q["rate"])
        os.makedirs(self._p("qat"), exist_ok=True)
        e = self._entry(name)
        e["outputs"] = [f"qat/{qn}.mbz"]
        self._save_manifest()
        self._reset_tf32()
        self.log(f"[{name}] {q['epochs']} QAT epochs from {os.path.relpath(src, self.out) if src else 'the baseline'}")
        t = time.time()
        try:
            row = qat_run(start, cfg, tr, te, self._p("qat"), self._p("train_log.jsonl"), self.device, self.arch_kw(),
                          pack=True, zstd=zstd_available(), save_pt=False, teacher=self.teacher() if q["kd"] else None,
                          seed=self.s["seed"], ckpt_path=self._ckpt(name), time_budget=left, extra_meta=self.meta)
        except ValueError as err:
            i = next(i for i, x in enumerate(self.s["qat"]) if x["name"] == qn)
            raise RecipeError(f"{self.r.path}: qat[{i}]: {err}") from None
        if row is None:
            e["seconds"] = round(e.get("seconds", 0.0) + time.time() - t, 1)
            self._save_manifest()
            raise _Stop(name)
        res = {"file": f"qat/{qn}.mbz", "file_bytes": row["file_bytes"], "top1": row["top1_packed"],
               "top1_qat_eval": row["top1_qat_eval"], "top1_equal": row["top1_equal"], "device": self.device.type}
        for k in ("est_weight_bytes", "weight_section_bytes"):
            if k in row:
                res[k] = row[k]
        res["baseline_top1"] = self.baseline_top1()
        self._done(name, [res["file"]], res, time.time() - t)
        self.log(f"[{name}] top-1 {res['top1']:.2f} ({self.device.type}), {res['file_bytes']:,} B")

    def stage_soup(self, name: str) -> None:
        from .soup import soup_files
        so = self.s["soup"]
        os.makedirs(self._p("soup"), exist_ok=True)
        t = time.time()
        try:
            row = soup_files([self._p(f"qat/{n}.mbz") for n in so["runs"]], self._p("soup", "soup.mbz"), so["steps"],
                             zstd=True, extra_meta=self.meta)
        except ValueError as e:  # runs that cannot be averaged (other widths, names, shapes): the recipe's soup.runs
            raise UsageError(f"[{name}] soup of {', '.join(so['runs'])}: {e}") from None
        self._done(name, ["soup/soup.mbz"], {"file": "soup/soup.mbz", "file_bytes": row["bytes"],
                                             "inputs": so["runs"], "largest_rms_snap": row["largest_rms_snap"]},
                   time.time() - t)
        self.log(f"[{name}] average of {len(so['runs'])} runs: {row['bytes']:,} B")

    def stage_soup_finetune(self, name: str) -> None:
        from ..codecs.filters import zstd_available
        from .compress import qat_resume
        so = self.s["soup"]
        left = self._room(name, lambda n: not n.startswith("prune") and n != "baseline")
        tr, te = self.data()
        e = self._entry(name)
        e["outputs"] = [f"soup/{so['name']}.mbz"]
        self._save_manifest()
        self.log(f"[{name}] {so['epochs']} QAT epochs from soup/soup.mbz")
        t = time.time()
        try:
            row = qat_resume(self._p("soup", "soup.mbz"), so["name"], so["epochs"], so["lr"], so["kd"], tr, te,
                             self._p("soup"), self._p("train_log.jsonl"), self.device,
                             teacher=self.teacher() if so["kd"] else None, zstd=zstd_available(), seed=self.s["seed"],
                             ckpt_path=self._ckpt(name), time_budget=left, extra_meta=self.meta)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if row is None:
            e["seconds"] = round(e.get("seconds", 0.0) + time.time() - t, 1)
            self._save_manifest()
            raise _Stop(name)
        res = {"file": f"soup/{so['name']}.mbz", "file_bytes": row["file_bytes"], "top1": row["top1_packed"],
               "top1_qat_eval": row["top1_qat_eval"], "device": self.device.type,
               "baseline_top1": self.baseline_top1()}
        self._done(name, [res["file"]], res, time.time() - t)
        self.log(f"[{name}] top-1 {res['top1']:.2f} ({self.device.type}), {res['file_bytes']:,} B")

    def stage_reduce(self, name: str) -> None:
        from .evaluate import evaluate_file
        from .params import reduce_file
        n = name.split("/", 1)[1]
        src = self._p("soup", f"{n}.mbz") if "soup" in self.s and n == self.s["soup"]["name"] else self._p("qat", f"{n}.mbz")
        rd = self.s["reduce"]
        os.makedirs(self._p("reduce"), exist_ok=True)
        t = time.time()
        row = reduce_file(src, self._p("reduce", f"{n}.mbz"), rd["scale_bits"], rd["bias_bits"], extra_meta=self.meta)
        _, te = self.data()
        top1 = evaluate_file(self._p("reduce", f"{n}.mbz"), te, str(self.device))["top1"]
        res = {"file": f"reduce/{n}.mbz", "file_bytes": row["bytes_after"], "bytes_before": row["bytes_before"],
               "top1": top1, "device": self.device.type, "from": os.path.relpath(src, self.out),
               "baseline_top1": self.baseline_top1()}
        self._done(name, [res["file"]], res, time.time() - t)
        self.log(f"[{name}] {row['bytes_before']:,} -> {row['bytes_after']:,} B, top-1 {top1:.2f} ({self.device.type})")

    def stage_sweep(self, name: str) -> None:
        from .recipe import PRUNE
        from .sweep_run import finalize, run_sweep, sweep_configs
        sw = self.s["sweep"]
        p = self.s.get("prune") or {k: v[1] for k, v in PRUNE.items()}
        r = self.s.get("restart")
        left = self._room(name, lambda n: not n.startswith("prune") and n != "baseline")
        e = self._entry(name)
        e["outputs"] = ["sweep"]
        self._save_manifest()
        d = self.s["data"]
        t = time.time()
        try:
            res = run_sweep(sw["files"], self._p("sweep"), self.baseline_path(), d["source"], jobs=sw["jobs"],
                            where=sw["where"], time_budget=left or 0.0, log=self.log, subset=d["subset"],
                            prune_epochs=p["epochs_per_step"], prune_lr=p["lr"], prune_kd=p["kd"],
                            prune_final_epochs=p["final_epochs"], prune_restart=r["cycles"][0] if r else 0,
                            caps=p["caps"] or "", train_seed=self.s["seed"], extra_meta=self.meta)
        except ValueError as err:
            raise RecipeError(f"{self.r.path}: sweep: {err}") from None
        e["seconds"] = round(e.get("seconds", 0.0) + time.time() - t, 1)
        if res["left"]:
            self._save_manifest()
            raise _Stop(f"{name} ({res['left']} configurations left)")
        rows = finalize(self._p("sweep"), [c.name for c in sweep_configs(sw["files"], where=sw["where"])])
        self._done(name, [], {"runs": len(rows), "folder": "sweep"})
        self.log(f"[{name}] {len(rows)} runs in sweep/runs.jsonl")

    def _run_stage(self, name: str) -> None:
        kind = name.split("/", 1)[0]
        if kind == "soup" and "/" in name:
            return self.stage_soup_finetune(name)
        return getattr(self, f"stage_{kind}")(name)

    # ------------------------------------------------------------------ the whole recipe
    def run(self) -> dict:
        """Run every stage not yet done; returns {'complete', 'stopped_in', 'ran', 'summary'}."""
        self._check()
        os.makedirs(self.out, exist_ok=True)
        with open(self._p("recipe.yaml"), "w", encoding="utf-8") as f:
            f.write(self.r.text)
        self._save_manifest()
        ran, stopped = [], None
        try:
            for name, _ in self.plan:
                if self.manifest["stages"].get(name, {}).get("state") == "done":
                    continue
                self.log(f"[{name}] start")
                self._run_stage(name)
                ran.append(name)
        except _Stop as s:
            stopped = str(s)
            e = self.manifest["stages"].get(name)
            if s.idle and e is not None and e.get("state") != "done" and not e.get("seconds"):
                del self.manifest["stages"][name]  # nothing of it ran
        complete = stopped is None
        self.manifest["complete"] = complete
        self._save_manifest()
        if complete and self.s["data"]["val"]:
            self._test_once()
        summary = self.summary()
        if complete:
            with open(self._p("summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
            if os.path.isdir(self._p("resume")) and not os.listdir(self._p("resume")):
                os.rmdir(self._p("resume"))
        return {"complete": complete, "stopped_in": stopped, "ran": ran, "summary": summary}

    def _test_once(self) -> None:
        """Each final file (and the baseline) evaluated once on the test set; selection used the validation split."""
        from .evaluate import evaluate_file
        done = self.manifest.setdefault("test_top1", {})
        files = [("baseline", self.baseline_path())]
        for m in self.summary()["models"]:
            files.append((m["file"], self._p(m["file"])))
        te = None
        for key, path in files:
            if key not in done and os.path.exists(path):
                te = te if te is not None else self.test_set()
                done[key] = evaluate_file(path, te, str(self.device))["top1"]
                self.log(f"[test] {key}: top-1 {done[key]:.2f} on the {len(te)} test images ({self.device.type})")
        self._save_manifest()

    def summary(self) -> dict:
        models = []
        for name, _ in self.plan:
            res = self.manifest["stages"].get(name, {}).get("result") or {}
            if res.get("file", "").endswith(".mbz") and "top1" in res and not name.startswith(("prune", "restart")):
                models.append({"stage": name, **{k: res[k] for k in ("file", "file_bytes", "top1", "device")
                                                 if k in res}})
        out = {"recipe": self.r.file, "sha256": self.r.sha256,
               "baseline_top1": self.manifest.get("baseline_top1", {}), "models": models}
        if self.s["data"]["val"]:
            test = self.manifest.get("test_top1", {})
            for m in models:
                if m["file"] in test:
                    m["top1_test"] = test[m["file"]]
            out.update(selected_on=f"validation split: {self.s['data']['val']} training images held out",
                       top1="validation", baseline_top1_test=test.get("baseline"))
        return out
