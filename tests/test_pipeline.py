"""The training / compression pipeline on tiny data, on the CPU; `mbz train` and `mbz finetune`."""
import json

import numpy as np
import pytest
import torch

import mbz
from mbz.cli import main
from mbz.pipeline.data import augment_batch, evaluate, load_dataset, random_crop_flip, trivial_augment
from mbz.pipeline.prune import apply_masks, global_magnitude_masks, sparsity_report
from mbz.pipeline.qat import calibrate, export_state_dict, fold_bn, insert_act_quant, snap_for_export, to_qmodules
from mbz.pipeline.train import Ema, TrainConfig, train
from mbz.spec import Encoding
from mbz.models import mobilenet_v2_cifar


def tiny():
    torch.manual_seed(0)
    return mobilenet_v2_cifar(width_mult=0.25)


def test_npz_loader_and_augmentation(tiny_npz):
    ds = load_dataset(f"npz:{tiny_npz}", "train")
    assert ds.images.shape == (96, 32, 32, 3) and ds.images.dtype == torch.uint8 and len(ds.labels) == 96
    x = ds.images[:8].permute(0, 3, 1, 2).float()
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, gen=g)
    assert y.shape == x.shape
    # every output pixel is an input pixel of the same image or padding zero
    assert set(torch.unique(y[0]).tolist()) <= set(torch.unique(x[0]).tolist()) | {0.0}
    a = augment_batch(ds.images[:8], trivial=True, cutout_size=8, gen=torch.Generator().manual_seed(1))
    b = augment_batch(ds.images[:8], trivial=True, cutout_size=8, gen=torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)


def test_trivial_augment_warps_exactly_the_geometric_samples():
    """The batch is warped whole and selected (no host sync); each sample must still get what it drew:
    geometric ops (6-9) their own affine warp, the others an unwarped result."""
    import torch.nn.functional as F
    n = 64
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = trivial_augment(x, gen=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the draws trivial_augment makes first
    op = torch.randint(0, 11, (n,), generator=g)
    mag = torch.rand(n, generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    geo = ((op >= 6) & (op <= 9)).nonzero().flatten().tolist()
    assert 0 < len(geo) < n
    for i in geo:
        m, sg, k = float(mag[i]), float(sign[i]), int(op[i])
        ang = sg * m * 30 * torch.pi / 180 if k == 6 else 0.0
        shear, tx, ty = (sg * m * 0.3 if k == j else 0.0 for j in (7, 8, 9))
        theta = torch.tensor([[[np.cos(ang), -np.sin(ang) + shear, tx], [np.sin(ang), np.cos(ang), ty]]],
                             dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 3, 32, 32], align_corners=False)
        want = F.grid_sample(x[i:i + 1], grid, align_corners=False, padding_mode="zeros")[0]
        assert torch.allclose(y[i], want, atol=1e-5), f"sample {i} (op {k})"
    f = 1 + 0.9 * mag * sign
    kept = [i for i in range(n) if int(op[i]) in (0, 1)]
    assert kept
    for i in kept:  # identity and brightness: not warped, and the colour op's result kept
        want = x[i] if int(op[i]) == 0 else (x[i] * f[i]).clamp(0, 1)
        assert torch.equal(y[i], want), f"sample {i} (op {int(op[i])})"


def test_ema_decay_warms_up_then_reaches_its_setting():
    """The first updates follow the model ((1+t)/(10+t)); later ones use the configured decay."""
    m = torch.nn.Linear(4, 2)
    with torch.no_grad():
        m.weight.zero_()
    ema = Ema(m, 0.9995)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    assert torch.allclose(ema.model.weight, torch.full_like(m.weight, 1 - 2 / 11))
    ema.updates = 30000  # fast-forward the step count; the next update uses 0.9995
    before = ema.model.weight.clone()
    with torch.no_grad():
        m.weight.fill_(2.0)
    ema.update(m)
    assert torch.allclose(ema.model.weight, before + (2.0 - before) * 0.0005)


def test_global_pruning_hits_target():
    sd = tiny().state_dict()
    masks = global_magnitude_masks(sd, 0.7)
    apply_masks(sd, masks)
    rows = sparsity_report(sd)
    total = sum(r["numel"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    assert abs(zeros / total - 0.7) < 0.01
    assert all(not torch.signbit(sd[n][~m]).any() for n, m in masks.items())  # +0.0, never -0.0


def test_fold_bn_preserves_function():
    m = tiny().eval()
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y0 = m(x)
        y1 = fold_bn(m)(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(y0, y1, atol=1e-4, rtol=1e-4)


def test_qat_export_packs_losslessly_and_evaluates_identically(tmp_path):
    m = fold_bn(tiny().eval())
    apply_masks(m, global_magnitude_masks(dict(m.named_parameters()), 0.8))
    to_qmodules(m, 4)
    insert_act_quant(m, 4)
    x = torch.randn(16, 3, 32, 32)
    calibrate(m, [x])
    m.eval()
    snap_for_export(m)
    with torch.no_grad():
        y_qat = m(x)
    sd, act = export_state_dict(m)
    arch = {"name": "mobilenet_v2_cifar", "width_mult": 0.25, "folded_bn": True, **act}
    p = tmp_path / "q.mbz"
    mbz.save(sd, p, metadata={"arch": arch})                 # lossless: bits not given
    with mbz.open(p) as r:
        weights = [rec for rec in r.layout.records if rec.name.endswith("weight")]
        # on the 4-bit grid, or (format 1.2) a bitmap and the few non-zero elements where that is smaller than
        # the codes and per-channel scales (the most pruned depthwise convolutions)
        assert all(rec.encoding == Encoding.AFFINE and rec.params["b"] <= 8
                   or rec.encoding == Encoding.RAW and rec.params["sp"] == 1 for rec in weights)
        assert sum(rec.encoding == Encoding.AFFINE for rec in weights) > len(weights) // 2
        assert r.metadata["arch"]["act_bits"] == 4
    m2 = mbz.load_model(p)
    with torch.no_grad():
        assert torch.equal(m2(x), y_qat)


@pytest.mark.slow
def test_train_smoke_and_eval_cli(tiny_npz, tmp_path, capsys):
    tr = load_dataset(f"npz:{tiny_npz}", "train")
    te = load_dataset(f"npz:{tiny_npz}", "test")
    m = tiny()
    log = tmp_path / "log.jsonl"
    r = train(m, tr, te, TrainConfig(epochs=2, batch=32, lr=0.05, warmup=0.5), log_path=str(log),
              device=torch.device("cpu"))
    rows = [json.loads(line) for line in open(log)]
    assert [x["epoch"] for x in rows] == [1, 2] and all(np.isfinite(x["train_loss"]) for x in rows)
    assert r["complete"] and 0 <= rows[-1]["test_acc"] <= 100
    p = tmp_path / "m.mbz"
    mbz.save(r["model"], p, metadata={"arch": {"name": "mobilenet_v2_cifar", "width_mult": 0.25}})
    assert main(["eval", str(p), "--data", f"npz:{tiny_npz}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = evaluate(mbz.load_model(p), te, device=torch.device("cpu"))["top1"]
    assert out["top1"] == want and out["n"] == 40 and out["file_bytes"] == p.stat().st_size


def test_train_stopped_by_budget_creates_its_resume_folder(tiny_npz, tmp_path):
    # a stage stopped in its first cycle has no resume/ folder yet; the stop must not lose the epoch
    tr = load_dataset(f"npz:{tiny_npz}", "train")
    te = load_dataset(f"npz:{tiny_npz}", "test")
    ck = tmp_path / "out" / "resume" / "restart.pt"
    r = train(tiny(), tr, te, TrainConfig(epochs=3, batch=32, lr=0.05, warmup=0.5), ckpt_path=str(ck),
              time_budget=1e-9, device=torch.device("cpu"))
    assert not r["complete"] and len(r["history"]) == 1
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 1 and not list(ck.parent.glob("*.part"))


@pytest.mark.parametrize("abits", [4, 8])
def test_activations_held_packed_change_nothing(abits):
    from mbz.pipeline.activations import measure
    m = fold_bn(tiny().eval())
    insert_act_quant(m, abits)
    x = torch.randn(2, 3, 32, 32)
    calibrate(m, [x])
    m.eval()
    with torch.no_grad():
        ref = m(x)
    r = measure(m, x)
    assert torch.equal(r["output"], ref)               # the packed-and-unpacked run is the same model
    layers = r["layers"]
    assert layers[0]["name"] == "input" and len(layers) > 30
    names = {l["name"] for l in layers}                 # every quantizer was held packed: ReLU6s and block outputs
    from mbz.pipeline.qat import act_quantizers
    assert sum(n.startswith("block_q.") for n in names) == len(m.block_q) > 0
    assert len(names) == len(act_quantizers(m)) + 1
    assert all(l["packed_bytes"] == l["graph_bytes"] for l in layers)
    assert 32 / abits * 0.9 < r["total_ratio"] <= 32 / abits
    assert r["peak_packed_bytes"] < r["peak_fp32_bytes"]


def test_inplace_activation_quantizers_at_inference_change_no_bit():
    from mbz.pipeline import qat
    model = tiny().eval()
    insert_act_quant(model, 4, learn=False)
    ref = tiny().eval()
    insert_act_quant(ref, 4, learn=False)
    ref.load_state_dict(model.state_dict())
    n = 0
    for m in ref.modules():  # the allocating path everywhere
        if isinstance(m, qat.ActQuant):
            n += m.owns_input
            m.owns_input = False
    assert n > 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x0 = x.clone()
    with torch.no_grad():
        a, b = model(x), ref(x.clone())
    assert torch.equal(x, x0)                                  # the caller's input is never touched
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert not torch.equal(a, tiny().eval()(x))                # quantizers are active (the test can fail)


@pytest.mark.slow
def test_qat_resume_starts_exactly_where_the_file_ends(tiny_npz, tmp_path, monkeypatch):
    from mbz.pipeline.compress import QatConfig, qat_resume, qat_run
    tr = load_dataset(f"npz:{tiny_npz}", "train")
    te = load_dataset(f"npz:{tiny_npz}", "test")
    m = tiny().eval()
    apply_masks(m, global_magnitude_masks(dict(m.named_parameters()), 0.8))
    cpu = torch.device("cpu")
    arch_kw = {"name": "mobilenet_v2_cifar", "width_mult": 0.25}
    a = qat_run(m.state_dict(), QatConfig("a", 0.8, 4, 8, epochs=1, lr=0.01), tr, te, str(tmp_path), None, cpu,
                arch_kw, save_pt=False)
    pa = str(tmp_path / "a.mbz")
    # no epochs: steps from the file's grids, ranges from its metadata -> the very same tensors and top-1
    b = qat_resume(pa, "b", 0, 0.01, 0.0, tr, te, str(tmp_path), None, cpu)
    sa, sb = mbz.load(pa), mbz.load(str(tmp_path / "b.mbz"))
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b["top1_packed"] == a["top1_packed"] and b["top1_equal"]
    with mbz.open(str(tmp_path / "b.mbz")) as r:
        assert r.metadata["resumed_from"] == "a.mbz" and r.metadata["arch"]["act_alpha"] == a["arch"]["act_alpha"]
    # two epochs: parameters move (on this random 96-image task only the classifier gets gradients,
    # so the zero pattern is checked where it is decided: the masks handed to train), the export
    # stays on its grids
    import mbz.pipeline.compress as compress
    seen = {}
    real_train = compress.train

    def spy(*args, **kw):
        seen.update(kw["masks"])
        return real_train(*args, **kw)

    monkeypatch.setattr(compress, "train", spy)
    c = qat_resume(pa, "c", 2, 0.05, 0.0, tr, te, str(tmp_path), None, cpu)
    sc = mbz.load(str(tmp_path / "c.mbz"))
    w = [k for k in sa if k.endswith("weight") and sa[k].dim() >= 2]
    assert sorted(seen) == sorted(w) and all(torch.equal(~seen[k].cpu(), sa[k] == 0) for k in w)
    assert all(torch.equal(sc[k][sa[k] == 0], torch.zeros_like(sc[k][sa[k] == 0])) for k in w)
    assert any(not torch.equal(sc[k], sa[k]) for k in sa)
    assert c["top1_equal"] and c["config"]["epochs"] == 2 and c["config"]["wbits"] == 4
    with pytest.raises(ValueError, match="not a packed QAT model"):
        p = tmp_path / "plain.mbz"
        mbz.save(m.state_dict(), p, metadata={"arch": arch_kw})
        qat_resume(str(p), "d", 0, 0.01, 0.0, tr, te, str(tmp_path), None, cpu)


@pytest.mark.slow
def test_train_keeps_masked_weights_at_exact_zero(tiny_npz):
    """Masks are re-applied after every step: pruned weights stay +0.0 while the kept ones train."""
    tr = load_dataset(f"npz:{tiny_npz}", "train")
    te = load_dataset(f"npz:{tiny_npz}", "test")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(16, 10))
    masks = {"0.weight": torch.rand(16, 3, 3, 3) > 0.5, "4.weight": torch.rand(10, 16) > 0.5}
    apply_masks(m, masks)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    train(m, tr, te, TrainConfig(epochs=3, lr=0.2, batch=32, warmup=0.5), device=torch.device("cpu"), masks=masks)
    after = m.state_dict()
    for k, keep in masks.items():
        pruned = after[k][~keep]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not torch.signbit(pruned).any(), k
        assert (after[k][keep] != before[k][keep]).float().mean() > 0.5, k  # the kept weights did train


@pytest.mark.slow
def test_train_verb_stops_resumes_and_writes_the_baseline(tiny_npz, tmp_path, capsys):
    out = tmp_path / "base"
    cmd = ["train", "--data", f"npz:{tiny_npz}", "--out", str(out), "--epochs", "2", "--batch", "32",
           "--width-mult", "0.25", "--lr", "0.05", "--warmup", "0.5", "--subset", "32"]
    assert main(cmd + ["--time-budget", "0.001"]) == 0          # one epoch, then a clean stop
    assert "run the same command again" in capsys.readouterr().out
    assert (out / "resume.pt").exists() and not (out / "baseline.mbz").exists()
    assert main(cmd[:-2] + ["--subset", "16"]) == 2              # other settings: refused, nothing lost
    assert "other settings (subset)" in capsys.readouterr().err and (out / "resume.pt").exists()
    assert main(cmd) == 0
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2] and not (out / "resume.pt").exists()
    summary = json.loads((out / "baseline.json").read_text())
    assert summary["epochs"] == 2 and summary["config"]["batch"] == 32 and summary["arch"]["width_mult"] == 0.25
    sd = torch.load(out / "baseline.pt", weights_only=True)
    packed = mbz.load(out / "baseline.mbz")                       # lossless, with what mbz eval needs
    assert list(sd) == list(packed) and all(torch.equal(sd[k], packed[k]) for k in sd)
    with mbz.open(out / "baseline.mbz") as r:
        assert r.metadata["arch"]["width_mult"] == 0.25 and "preprocess" in r.metadata
    assert main(cmd) == 2                                         # a finished baseline is not overwritten
    assert "--force" in capsys.readouterr().err
    assert summary["device"] == ("cpu" if not torch.cuda.is_available() else summary["device"])
    for bad, words in (("gpu", "use auto, cpu or cuda[:N]"), ("cuda:0" if not torch.cuda.is_available() else "tpu",
                                                              "no CUDA device here" if not torch.cuda.is_available()
                                                              else "use auto")):
        assert main(cmd + ["--out", str(tmp_path / "other"), "--device", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
        assert not (tmp_path / "other").exists()                  # refused before anything is made
    kept = sorted(p.name for p in out.iterdir())                    # --force with a refused data path: kept
    assert main(cmd + ["--force", "--data", f"npz:{tiny_npz}/none.npz"]) == 2
    assert sorted(p.name for p in out.iterdir()) == kept and (out / "baseline.pt").exists()
    assert main(cmd + ["--out", str(tmp_path / "s"), "--subset", "-5"]) == 2
    assert "--subset -5: must be >= 0 (0: every image)" in capsys.readouterr().err and not (tmp_path / "s").exists()
    bad_data = ["--data", f"npz:{tiny_npz}/cifar10_jpeg_test.npz"]      # the test split as training data
    assert main(cmd + ["--out", str(tmp_path / "t"), *bad_data]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "t").exists()   # no folder, no train_args.json
    assert main(cmd + ["--out", str(tmp_path / "cpu"), "--device", "cpu", "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "cpu" / "baseline.json").read_text())["device"] == "cpu"


def _qat_file(tiny_npz, tmp_path, name="a", epochs=0):
    """A packed QAT model of a tiny pruned MobileNet-v2 (epochs=0: calibrated, not trained)."""
    from mbz.pipeline.compress import QatConfig, qat_run
    tr = load_dataset(f"npz:{tiny_npz}", "train")
    te = load_dataset(f"npz:{tiny_npz}", "test")
    m = tiny().eval()
    apply_masks(m, global_magnitude_masks(dict(m.named_parameters()), 0.8))
    qat_run(m.state_dict(), QatConfig(name, 0.8, 4, 8, epochs=epochs, lr=0.01), tr, te, str(tmp_path), None,
            torch.device("cpu"), {"name": "mobilenet_v2_cifar", "width_mult": 0.25}, save_pt=False)
    return tmp_path / f"{name}.mbz"


@pytest.mark.slow
def test_finetune_verb_with_no_epochs_writes_the_same_tensors(tiny_npz, tmp_path, capsys):
    src = _qat_file(tiny_npz, tmp_path)
    out = tmp_path / "ft" / "a0.mbz"
    out.parent.mkdir()
    assert main(["finetune", str(src), "-o", str(out), "--epochs", "0", "--kd", "0.5"]) == 2   # no teacher
    assert "--baseline" in capsys.readouterr().err
    assert main(["finetune", str(src), "-o", str(out), "--epochs", "0", "--kd", "0", "--device", "cpu",
                 "--data", f"npz:{tiny_npz}"]) == 0
    a, b = mbz.load(src), mbz.load(out)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    row = json.loads((tmp_path / "ft" / "runs.jsonl").read_text().splitlines()[-1])
    assert row["resumed_from"] == str(src) and row["top1_equal"]
    assert main(["finetune", str(src), "-o", str(out), "--epochs", "0", "--kd", "0"]) == 2   # exists
    assert main(["finetune", str(out), "-o", str(out), "--epochs", "0", "--kd", "0", "--force"]) == 2  # input
    assert "overwrite an input" in capsys.readouterr().err
