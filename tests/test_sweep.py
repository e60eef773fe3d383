"""Sweeps (wandb YAML -> configurations -> runs -> wandb / charts), `mbz sweep`, and the QAT pieces they rely on."""
import glob
import json
import os

import numpy as np
import pytest
import torch

import mbz
from mbz.detect import detect_grid
from mbz.pipeline.qat import grad_scale, lsq_fake_quant, mse_step, round_ste
from mbz.pipeline.sweep import RunConfig, expand, load_sweep, shard
from mbz.models import mobilenet_v2_cifar

ROOT = os.path.join(os.path.dirname(__file__), "..")
SWEEPS = os.path.join(ROOT, "sweeps")


def test_grid_sweep_covers_the_required_values():
    cfgs = expand(load_sweep(os.path.join(SWEEPS, "mnv2_grid.yaml")))
    assert len(cfgs) == 40 and len({c.name for c in cfgs}) == 40
    assert {c.wbits for c in cfgs} == {2, 3, 4, 6, 8}
    assert {c.abits for c in cfgs} == {4, 6, 8, 32}
    assert {c.sparsity for c in cfgs} == {0.8, 0.9}
    opts = expand(load_sweep(os.path.join(SWEEPS, "mnv2_options.yaml")))
    assert {(c.granularity, c.fold_bn, c.entropy) for c in opts} == {
        (g, f, e) for g in ("channel", "tensor") for f in (True, False) for e in ("zstd", "none")}
    # entropy variants share one training
    assert len({c.train_key for c in opts}) == 4


def test_sweep_file_errors_and_random(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("method: bayes\nparameters:\n  wbits: {values: [2, 4]}\n")
    with pytest.raises(ValueError, match="wandb agent"):
        expand(load_sweep(str(p)))
    p.write_text("method: grid\nparameters:\n  wbitz: {values: [2, 4]}\n")
    with pytest.raises(ValueError, match="unknown sweep parameter"):
        load_sweep(str(p))
    p.write_text("method: grid\nparameters:\n  wbits: {values: [1]}\n")
    with pytest.raises(ValueError, match="wbits"):
        load_sweep(str(p))
    p.write_text("method: random\nrun_cap: 7\nparameters:\n  wbits: {values: [2, 3, 4]}\n"
                 "  kd: {distribution: uniform, min: 0.1, max: 0.9}\n")
    a, b = expand(load_sweep(str(p)), seed=3), expand(load_sweep(str(p)), seed=3)
    assert a == b and len(a) == 7 and all(0.1 <= c.kd <= 0.9 for c in a)


def test_shard_partitions_and_keeps_trainings_together():
    cfgs = expand(load_sweep(os.path.join(SWEEPS, "mnv2_options.yaml")))
    parts = [shard(cfgs, i, 3) for i in range(3)]
    assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in cfgs)
    for p in parts:
        keys = {c.train_key for c in p}
        assert all(c.train_key in keys for c in cfgs if c.train_key in keys)
        assert sum(len(q) for q in parts) == len(cfgs)


def test_lsq_function_matches_the_paper_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, 7) * 2
    s = torch.tensor(0.31)
    for lo, hi in ((0, 15), (-7, 7), (0, 255)):
        xa = x.clone().requires_grad_()
        sa = s.clone().requires_grad_()
        y = lsq_fake_quant(xa, sa, lo, hi, 0.05)
        ref = torch.clamp(round_ste(x / grad_scale(s, 0.05)), lo, hi) * s
        assert torch.equal(y, ref)
        g = torch.randn_like(y)
        y.backward(g)
        v = x / s
        inside = (v >= lo) & (v <= hi)
        q = torch.clamp(torch.round(v), lo, hi)
        assert torch.equal(xa.grad, g * inside)
        expect = (g * torch.where(inside, q - v, q)).sum() * 0.05
        assert torch.allclose(sa.grad, expect, rtol=1e-5)


def test_mse_step_beats_max_step_at_two_bits():
    torch.manual_seed(0)
    w = torch.randn(32, 64, 1, 1)
    s_mse = mse_step(w, 2)
    s_max = w.abs().reshape(32, -1).amax(1)  # qmax = 1
    err = lambda s: ((torch.clamp(torch.round(w / s.view(-1, 1, 1, 1)), -1, 1) * s.view(-1, 1, 1, 1) - w) ** 2).sum()  # noqa: E731
    assert err(s_mse) < 0.8 * err(s_max)


def test_detection_of_pruned_rows_whose_smallest_code_is_large():
    rng = np.random.default_rng(0)
    s = np.float32(0.00123)
    k = rng.integers(-127, 128, (8, 9)).astype(np.float32)
    k[np.abs(k) < 48] = 0            # magnitude pruning left only large codes, as in a 90%-sparse 8-bit layer
    k[:, 0] = 127
    k[3, 1:] = 0
    k[3, 1] = 50                     # 3x3 depthwise row: two codes, gap 77
    w = torch.from_numpy(k * s).reshape(8, 1, 3, 3)
    g = detect_grid(w)
    assert g is not None
    assert torch.equal(torch.from_numpy(g.values()).reshape(w.shape), w)


@pytest.mark.slow
def test_runner_end_to_end_on_cpu(tiny_npz, tmp_path):
    """Prune, QAT, pack, measure, re-pack a sibling, finalize, replay into offline wandb runs."""
    from mbz.pipeline.sweep_run import SweepRunner, finalize
    torch.manual_seed(0)
    base = mobilenet_v2_cifar(width_mult=0.25)
    torch.save(base.state_dict(), tmp_path / "base.pt")
    out = str(tmp_path / "sweep")
    r = SweepRunner(out, str(tmp_path / "base.pt"), f"npz:{tiny_npz}", prune_epochs=1, prune_kd=0.5,
                    device=torch.device("cpu"))
    c = RunConfig(sparsity=0.7, wbits=3, abits=4, qat_epochs=1, kd=0.5)
    row = r.run(c)
    assert row["top1_equal"] and row["act_cr"] > 7.5 and row["file_bytes"] == os.path.getsize(os.path.join(out, row["mbz"]))
    assert sum(row["categories"].values()) == row["file_bytes"]
    sd = mbz.load(os.path.join(out, row["mbz"]))
    ws = [t for k, t in sd.items() if k.endswith("weight") and t.dim() >= 2]
    zeros = sum(int((t == 0).sum()) for t in ws) / sum(t.numel() for t in ws)
    assert zeros >= 0.69  # global pruning to 0.7 (QAT may round a few more weights to 0)
    assert all(len(torch.unique(t[0])) <= 7 for t in ws)  # 3-bit symmetric grid: at most 7 levels per channel
    noz = r.run(RunConfig(sparsity=0.7, wbits=3, abits=4, qat_epochs=1, kd=0.5, entropy="none"))
    assert noz["trained_in"] == row["name"] and noz["top1"] == row["top1"]
    rows = finalize(out)
    assert [x["name"] for x in rows] == sorted([row["name"], noz["name"]])
    assert all(x["entropy_applied"] == (x["config"]["entropy"] == "zstd") for x in rows)
    assert os.path.exists(os.path.join(out, "runs.jsonl")) and not glob.glob(os.path.join(out, "runs.*.jsonl"))

    from mbz.pipeline.wandb_log import replay
    hist = {}
    for h in map(json.loads, open(os.path.join(out, "train_log.jsonl"))):
        hist.setdefault(h["run"], []).append(h)
    dirs = replay(rows, hist, out, "mbz-test", "t", "offline", wandb_dir=str(tmp_path))
    assert len(dirs) == 2
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 2
    blob = b"".join(open(f, "rb").read() for f in files)
    assert b"bytes/indices" in blob and row["name"].encode() in blob


@pytest.mark.slow
def test_prune_chain_fine_tunes_longer_at_the_kept_level(tiny_npz, tmp_path):
    """--prune-final-epochs: short steps on the way, the long fine-tune where the sweep keeps a model;
    its cache name differs, so a chain made with other epochs is never reused for it."""
    from mbz.pipeline.sweep_run import SweepRunner
    torch.manual_seed(0)
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), tmp_path / "base.pt")
    out = str(tmp_path / "sweep")
    r = SweepRunner(out, str(tmp_path / "base.pt"), f"npz:{tiny_npz}", prune_epochs=1, prune_kd=0.0,
                    device=torch.device("cpu"), prune_final_epochs=3)
    plain = SweepRunner(out, str(tmp_path / "base.pt"), f"npz:{tiny_npz}", prune_epochs=1, prune_kd=0.0,
                        device=torch.device("cpu"))
    assert r.pruned_path(0.7) != plain.pruned_path(0.7)
    r.prepare([0.7])
    epochs = {}
    for h in map(json.loads, open(os.path.join(out, "train_log.jsonl"))):
        epochs[h["run"]] = epochs.get(h["run"], 0) + 1
    assert epochs == {"prune0.50": 1, "prune0.70": 3}
    with mbz.open(r.pruned_path(0.7)) as rd:
        assert rd.metadata["pruning"]["epochs_at_kept_levels"] == 3
    assert not os.path.exists(plain.pruned_path(0.7))

    # --prune-restart: a second cycle from the cached chain, zeros held, cached under its own name
    again = SweepRunner(out, str(tmp_path / "base.pt"), f"npz:{tiny_npz}", prune_epochs=1, prune_kd=0.0,
                        device=torch.device("cpu"), prune_final_epochs=3, prune_restart=2)
    assert again.pruned_path(0.7) != r.pruned_path(0.7) and again.pruned_path(0.7, 0) == r.pruned_path(0.7)
    again.prepare([0.7])
    epochs = {}
    for h in map(json.loads, open(os.path.join(out, "train_log.jsonl"))):
        epochs[h["run"]] = epochs.get(h["run"], 0) + 1
    assert epochs == {"prune0.50": 1, "prune0.70": 5}  # the chain was reused, not rerun
    first, second = mbz.load(r.pruned_path(0.7)), mbz.load(again.pruned_path(0.7))
    ws = [k for k, t in first.items() if k.endswith("weight") and t.dim() >= 2]
    assert all(torch.equal(first[k] == 0, second[k] == 0) for k in ws)
    assert any(not torch.equal(first[k], second[k]) for k in ws)
    with mbz.open(again.pruned_path(0.7)) as rd:
        p = rd.metadata["pruning"]
    assert p["restart_epochs"] == 2 and p["restart_from"] == os.path.basename(r.pruned_path(0.7))
    assert p["epochs_at_kept_levels"] == 3




def test_index_bound_iid_and_per_row_entropy():
    import importlib.util
    import torch
    spec = importlib.util.spec_from_file_location("index_bound", os.path.join(ROOT, "tools", "index_bound.py"))
    ib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ib)
    w = torch.zeros(4, 500)
    w[0, :250] = 1.0           # row densities 0.5, 0, 0, 0: overall density 1/8
    out = ib.bounds({"a.weight": w, "a.bias": torch.ones(4), "small.weight": torch.ones(2, 10)})
    assert out["positions"] == 2000                                        # bias and the small tensor skipped
    assert abs(out["iid_bytes"] - 2000 * 0.5435644431995964 / 8) <= 0.5     # H(1/8) bits per position
    assert abs(out["per_row_bytes"] - (500 * 1.0 + 8 * 4) / 8) <= 0.5       # one row at H(0.5) + 8 bits per row


def test_sweep_files_call_the_console_command_with_arguments_the_agent_takes():
    import yaml
    from mbz.cli import build_parser
    files = sorted(glob.glob(os.path.join(SWEEPS, "*.yaml")))
    assert len(files) >= 6
    for f in files:
        sw = yaml.safe_load(open(f))
        cmd = sw["command"]
        assert cmd[:3] == ["mbz", "sweep", "agent"] and cmd[-1] == "${args}", f
        c = expand(load_sweep(f))[0]           # what wandb's ${args} expands to: --key=value per parameter
        args = [f"--{k}={getattr(c, k)}" for k in sw["parameters"]]
        a = build_parser().parse_args(cmd[1:-1] + args)
        assert a.fn.__name__ == "cmd_agent" and float(a.sparsity) == c.sparsity, f
        assert "tools/" not in open(f).read(), f


@pytest.mark.slow
def test_sweep_verbs_run_finalize_agent_charts(tiny_npz, tmp_path, capsys):
    from mbz.cli import main
    torch.manual_seed(0)
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), tmp_path / "base.pt")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("method: grid\nparameters:\n  sparsity: {value: 0.5}\n  wbits: {value: 4}\n"
                     "  abits: {value: 8}\n  qat_epochs: {value: 1}\n  entropy: {values: [zstd, none]}\n")
    out = str(tmp_path / "sw")
    base = ["--baseline", str(tmp_path / "base.pt"), "--data", f"npz:{tiny_npz}", "--prune-epochs", "1"]
    assert main(["sweep", "run", str(sweep), "--out", out, *base]) == 0
    assert "all 2 configurations recorded" in capsys.readouterr().out
    assert main(["sweep", "run", str(sweep), "--out", out, *base]) == 0      # resumable: nothing left to run
    assert "2 configurations, 0 to run" in capsys.readouterr().out
    assert main(["sweep", "finalize", out, str(sweep)]) == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "runs.jsonl"))]
    assert [r["name"] for r in rows] == ["s0.5_w4_a8_e1_kd0.5_lr0.02", "s0.5_w4_a8_e1_kd0.5_lr0.02_noz"]
    assert rows[1]["trained_in"] == rows[0]["name"] and rows[1]["file_bytes"] > rows[0]["file_bytes"]
    capsys.readouterr()
    assert main(["sweep", "agent", "--sparsity=0.5", "--wbits=4", "--abits=8", "--qat_epochs=1", "--out", out,
                 *base, "--no-wandb"]) == 0                                   # recorded: returns its row
    assert capsys.readouterr().out.startswith(f"{rows[0]['name']}: top-1 {rows[0]['top1']:.2f}")
    charts = tmp_path / "charts"                                             # the recorded sweep's rows
    charts.mkdir()
    (charts / "runs.jsonl").write_bytes(open(os.path.join(ROOT, "results", "sweep", "runs.jsonl"), "rb").read())
    assert main(["sweep", "charts", str(charts), "--baseline-json", str(tmp_path / "none.json")]) == 0
    assert (charts / "parallel_coordinates.png").stat().st_size > 10000 and (charts / "frontier.png").exists()
    assert main(["sweep", "agent", "--wbits=1", "--out", out, *base, "--no-wandb"]) == 2   # one line, exit 2
    assert main(["sweep", "run", str(sweep), "--out", out, *base, "--where", "bits=4"]) == 2
    assert main(["sweep", "replay", str(tmp_path)]) == 2                     # no runs.jsonl there
