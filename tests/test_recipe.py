"""Recipes: validation on load (one line, exit 2), and a tiny recipe end to end through `mbz compress`,
stopped by its time budget and resumed without redoing a finished stage."""
import glob
import json
import os

import pytest
import torch
import yaml

import mbz
from mbz.cli import main
from mbz.models import mobilenet_v2_cifar
from mbz.pipeline.recipe import PIPELINE_MODELS, RecipeError, load_recipe

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def _write(path, obj):
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


def tiny_recipe(data_dir, **over):
    r = {"name": "tiny", "seed": 0, "data": {"source": f"npz:{data_dir}", "subset": 32}, "model": {"width_mult": 0.25},
         "baseline": {"train": {"epochs": 2, "batch": 32, "lr": 0.05, "warmup": 0.5, "trivial": False}},
         "prune": {"levels": [0.5], "epochs_per_step": 1, "kd": 0.5},
         "restart": {"cycles": [1]},
         "qat": [{"wbits": 4, "abits": 8, "epochs": 1, "kd": 0.5}, {"wbits": 4, "abits": 8, "epochs": 1, "kd": 0.0}],
         "soup": {"epochs": 1, "kd": 0.5},
         "reduce": {"scale_bits": 8, "bias_bits": 8}}
    r.update(over)
    return r


def test_shipped_recipes_load_with_every_setting():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"mnv2_baseline.yaml", "mnv2_400k.yaml", "mnv2_200k.yaml", "mnv2_a4.yaml", "mnv2_sweep.yaml"} <= names
    for p in RECIPES:
        r = load_recipe(p)
        s = r.settings
        assert s["data"]["source"] == "jpeg" and s["model"]["name"] in PIPELINE_MODELS, p
        assert s["baseline"]["checkpoint"] or s["baseline"]["train"]["epochs"] >= 1, p
    s400 = load_recipe(os.path.join(ROOT, "recipes", "mnv2_400k.yaml")).settings
    assert s400["prune"]["levels"] == [0.5, 0.7, 0.8] and s400["restart"]["cycles"] == [60]
    assert [q["name"] for q in s400["qat"]] == ["s0.8_w4_a8_e14_kd0.5_lr0.02", "s0.8_w4_a8_e14_kd0.7_lr0.02"]
    s200 = load_recipe(os.path.join(ROOT, "recipes", "mnv2_200k.yaml")).settings
    assert s200["prune"]["final_epochs"] == 36 and s200["prune"]["caps"] == "results/sensitivity/caps.json"
    assert s200["soup"]["runs"] == ["s0.93_w4_a8_e16_kd0.5_lr0.01", "s0.93_w4_a8_e16_kd0.7_lr0.01"]
    assert s200["soup"]["name"] == "soup_e4_lr0.005" and s200["reduce"] == {"scale_bits": 8, "bias_bits": 8}
    sw = load_recipe(os.path.join(ROOT, "recipes", "mnv2_sweep.yaml")).settings
    from mbz.pipeline.sweep_run import sweep_configs
    assert len(sweep_configs([os.path.join(ROOT, f) for f in sw["sweep"]["files"]])) == 49


@pytest.mark.parametrize("edit, key, problem", [
    (lambda r: r.update(qatt=[]), "qatt", "unknown key"),
    (lambda r: r["prune"].update(epoch_per_step=3), "prune.epoch_per_step", "unknown key"),
    (lambda r: r["prune"].update(levels=[0.7, 0.5]), "prune.levels", "increasing"),
    (lambda r: r["prune"].update(epochs_per_step="8"), "prune.epochs_per_step", "expected an integer"),
    (lambda r: r["qat"][0].update(wbits=true_value()), "qat[0].wbits", "expected 2..8 or 32"),
    (lambda r: r["qat"][1].pop("abits"), "qat[1].abits", "missing"),
    (lambda r: r.pop("data"), "data", "missing"),
    (lambda r: r["baseline"].update(checkpoint="x.pt"), "baseline", "exactly one"),
    (lambda r: r["baseline"]["train"].update(lr="fast"), "baseline.train.lr", "expected a number"),
    (lambda r: r["soup"].update(runs=["nope", "s0.5_w4_a8_e1_kd0.5_lr0.02"]), "soup.runs", "no QAT run"),
    (lambda r: r.update(sweep={"files": ["a.yaml"]}), "qat", "not with a sweep"),
    (lambda r: r["data"].update(subset=100, val=100), "data.val", "larger data.subset"),
])
def test_malformed_recipe_is_one_line_naming_file_and_key(tmp_path, capsys, edit, key, problem):
    r = tiny_recipe(tmp_path)
    edit(r)
    path = _write(tmp_path / "bad.yaml", r)
    assert main(["compress", "--recipe", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert path in err and f" {key}:" in err and problem in err, err
    assert not (tmp_path / "out").exists()  # nothing made before the recipe is checked


def true_value():
    return True  # YAML's `true` is no bit count, though Python's bool is an int


def test_recipe_that_is_not_yaml_or_not_a_mapping(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    for text in ("data: [unclosed\n", "- just\n- a list\n"):
        p.write_text(text)
        assert main(["compress", "--recipe", str(p), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(p) in err
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(str(tmp_path / "missing.yaml"))


def _mbz_files(out):
    return sorted(glob.glob(os.path.join(out, "**", "*.mbz"), recursive=True))


@pytest.mark.slow
def test_tiny_recipe_end_to_end_stops_resumes_and_records_the_recipe(tiny_npz, tmp_path, capsys):
    path = _write(tmp_path / "tiny.yaml", tiny_recipe(tiny_npz))
    out = str(tmp_path / "run")
    cmd = ["compress", "--recipe", path, "--out", out]
    # a tiny budget: each call does its first piece of work (one epoch) and stops cleanly
    assert main(cmd + ["--time-budget", "0.001"]) == 0
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert man["stages"]["baseline"]["state"] == "started" and os.path.exists(os.path.join(out, "baseline", "resume.pt"))
    assert "stopped by the time budget in baseline" in capsys.readouterr().out
    assert main(cmd + ["--time-budget", "0.001"]) == 0           # epoch 2 of 2 from resume.pt: baseline done
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert man["stages"]["baseline"]["state"] == "done" and "prune" not in man["stages"]
    base = os.path.join(out, "baseline", "baseline.mbz")
    before = (os.stat(base).st_mtime_ns, open(base, "rb").read())
    log = [json.loads(x) for x in open(os.path.join(out, "baseline", "train_log.jsonl"))]
    assert [h["epoch"] for h in log] == [1, 2]                   # resumed, not restarted
    assert main(cmd) == 0                                        # the rest
    assert "every stage of tiny.yaml done" in capsys.readouterr().out
    assert (os.stat(base).st_mtime_ns, open(base, "rb").read()) == before   # the finished stage was not redone
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert all(e["state"] == "done" for e in man["stages"].values()) and man["complete"]
    names = ["s0.5_w4_a8_e1_kd0.5_lr0.02", "s0.5_w4_a8_e1_kd0_lr0.02"]
    assert list(man["stages"]) == ["baseline", "prune", "restart", *[f"qat/{n}" for n in names], "soup",
                                   "soup/soup_e1_lr0.005", *[f"reduce/{n}" for n in names], "reduce/soup_e1_lr0.005"]
    files = _mbz_files(out)
    assert len(files) == 1 + 1 + 1 + 2 + 2 + 3
    text = open(path).read()
    import hashlib
    for f in files:                                              # every file records the recipe
        with mbz.open(f) as r:
            rec = r.metadata["recipe"]
        assert rec["file"] == "tiny.yaml" and rec["sha256"] == hashlib.sha256(text.encode()).hexdigest(), f
        assert rec["content"] == yaml.safe_load(text), f
    red = mbz.load(os.path.join(out, "reduce", f"{names[0]}.mbz"))
    qat = mbz.load(os.path.join(out, "qat", f"{names[0]}.mbz"))
    assert all(torch.equal(red[k] == 0, qat[k] == 0) for k in qat if k.endswith("weight"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert {m["file"] for m in summary["models"]} >= {f"reduce/{n}.mbz" for n in names}

    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    assert main(cmd) == 0                                        # everything done: nothing runs again
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps
    capsys.readouterr()

    # the recipe changed after its stages ran: refused in one line, then --force redoes what changed only
    changed = _write(tmp_path / "tiny.yaml", tiny_recipe(tiny_npz, soup={"epochs": 1, "kd": 0.5, "lr": 0.002}))
    assert main(["compress", "--recipe", changed, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "soup/soup_e1_lr0.005" in err and "--force" in err
    assert main(["compress", "--recipe", changed, "--out", out, "--force"]) == 0
    after = {f: os.stat(f).st_mtime_ns for f in _mbz_files(out)}
    kept = [f for f in stamps if "soup_e1" not in f]
    assert all(after[f] == stamps[f] for f in kept)               # QAT runs, soup, their reductions kept
    assert not os.path.exists(os.path.join(out, "soup", "soup_e1_lr0.005.mbz"))
    assert os.path.exists(os.path.join(out, "soup", "soup_e1_lr0.002.mbz"))
    assert os.path.exists(os.path.join(out, "reduce", "soup_e1_lr0.002.mbz"))


@pytest.mark.slow
def test_compress_gives_the_sweep_runners_files_bit_for_bit(tiny_npz, tmp_path):
    """The recipe's chain, restart and QAT call what `mbz sweep run` calls, with the same settings: the same
    tensors come out (CPU)."""
    torch.manual_seed(0)
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), tmp_path / "base.pt")
    r = {"data": {"source": f"npz:{tiny_npz}"}, "baseline": {"checkpoint": str(tmp_path / "base.pt")},
         "prune": {"levels": [0.5], "epochs_per_step": 1, "kd": 0.5}, "restart": {"cycles": [1]},
         "qat": [{"wbits": 4, "abits": 8, "epochs": 1, "kd": 0.5}]}
    assert main(["compress", "--recipe", _write(tmp_path / "r.yaml", r), "--out", str(tmp_path / "c")]) == 0
    from mbz.pipeline.sweep import RunConfig
    from mbz.pipeline.sweep_run import SweepRunner
    runner = SweepRunner(str(tmp_path / "s"), str(tmp_path / "base.pt"), f"npz:{tiny_npz}", prune_epochs=1,
                         prune_kd=0.5, prune_restart=1, device=torch.device("cpu"))
    row = runner.run(RunConfig(sparsity=0.5, wbits=4, abits=8, qat_epochs=1, kd=0.5))
    a = mbz.load(tmp_path / "c" / "qat" / "s0.5_w4_a8_e1_kd0.5_lr0.02.mbz")
    b = mbz.load(os.path.join(str(tmp_path / "s"), row["mbz"]))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = mbz.load(tmp_path / "c" / "restart" / "s0.5_c1.mbz"), mbz.load(runner.pruned_path(0.5))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_status_names_the_outputs_a_done_stage_lost(tmp_path, capsys):
    """--status of a folder whose manifest lists outputs that are gone (e.g. a results/ copy that keeps only
    the final file) says so for each stage instead of a bare 'done'."""
    import shutil
    src = os.path.join(os.path.dirname(__file__), "..", "results", "resnet18_cifar", "seed0")
    shutil.copy(os.path.join(src, "manifest.json"), tmp_path / "manifest.json")
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "resnet18_cifar.yaml")
    assert main(["compress", "--recipe", recipe, "--out", str(tmp_path), "--status"]) == 0
    out = capsys.readouterr().out
    assert "prune/s0.5.mbz and 3 more of its outputs" in out, out
    os.makedirs(tmp_path / "prune")
    for s in ("0.5", "0.8", "0.9", "0.95"):
        (tmp_path / "prune" / f"s{s}.mbz").write_bytes(b"")
    assert main(["compress", "--recipe", recipe, "--out", str(tmp_path), "--status"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("prune "))
    assert line.split() == ["prune", "done"], line


def test_status_refuses_the_folders_a_run_refuses(tmp_path, capsys):
    """--status on a file, or on a non-empty folder without manifest.json: the run's one-line refusal, exit 2."""
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "resnet18_cifar.yaml")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for out, why in (("afile", "exists and is not a folder"), ("full", "not empty and holds no manifest.json")):
        assert main(["compress", "--recipe", recipe, "--out", str(tmp_path / out), "--status"]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
    assert main(["compress", "--recipe", recipe, "--out", str(tmp_path / "new"), "--status"]) == 0
    assert "to do" in capsys.readouterr().out


def test_a_soup_of_runs_that_cannot_be_averaged_is_one_line(tmp_path, monkeypatch):
    """The soup stage turns soup_files' ValueError (runs at other widths, names or shapes) into the one-line
    UsageError of the CLI, naming the stage and its runs."""
    import types

    import mbz.pipeline.soup as soup
    from mbz.errors import UsageError
    from mbz.pipeline.stages import Compress

    def refuse(*a, **k):
        raise ValueError("tensor 'f.weight': 4-bit weights in input 1, 6-bit in input 0")
    monkeypatch.setattr(soup, "soup_files", refuse)
    job = types.SimpleNamespace(s={"soup": {"runs": ["a", "b"], "steps": "mse"}}, meta={},
                                _p=lambda *p: os.path.join(str(tmp_path), *p))
    with pytest.raises(UsageError, match=r"\[soup\] soup of a, b: tensor 'f.weight': 4-bit weights in input 1"):
        Compress.stage_soup(job, "soup")
