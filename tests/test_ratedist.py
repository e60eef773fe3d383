"""Rate-distortion packing (mbz.ratedist, mbz pack --step / --target-size)."""
import json

import numpy as np
import pytest
import torch

import mbz
from mbz import api
from mbz.cli import main
from mbz.errors import EncodeError
from mbz.ratedist import StepPolicy, step_grid


def model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(64, 32, 3, 3, generator=g) * 0.05,
            "fc.weight": torch.randn(10, 256, generator=g),
            "bn.weight": torch.rand(64, generator=g) + 0.5,
            "bn.running_var": torch.rand(64, generator=g) + 0.1,
            "bn.num_batches_tracked": torch.tensor(7)}


def test_step_grid_relative_step_and_deadzone():
    t = torch.randn(4000, generator=torch.Generator().manual_seed(1)).reshape(40, 100) * 3
    near = step_grid(t, 0.5, 0.0)
    dz = step_grid(t, 0.5, 0.3)
    d = float(near.scales[0])
    assert 0.5 * 3 * 0.8 < d < 0.5 * 3 * 1.25            # step = rel x rms, on a coarse mantissa grid
    err = t.reshape(-1).numpy() - near.values()
    assert np.abs(err).max() <= d / 2 + 1e-6              # round to nearest
    assert (dz.k == 0).sum() > (near.k == 0).sum()         # the dead zone makes more zeros
    assert np.abs(dz.k).sum() <= np.abs(near.k).sum()


def test_step_pack_reports_and_keeps_grids(tmp_path):
    sd = model()
    sd["ongrid.weight"] = torch.randint(-3, 4, (16, 16)).float() * 0.125   # already on a grid: kept exactly
    rep = api.save(sd, tmp_path / "a.mbz", step=0.5)
    by = {t.name: t for t in rep.tensors}
    assert by["conv.weight"].quantized and by["conv.weight"].step > 0 and by["conv.weight"].bits
    assert by["bn.weight"].quantized   # 1-D tensors at a finer relative step: a higher SQNR
    assert by["bn.weight"].error["sqnr_db"] > by["conv.weight"].error["sqnr_db"] + 20
    assert not by["ongrid.weight"].quantized and not by["bn.num_batches_tracked"].quantized
    back = mbz.load(tmp_path / "a.mbz")
    assert torch.equal(back["ongrid.weight"], sd["ongrid.weight"])
    fine = api.save(sd, tmp_path / "b.mbz", step=0.1)
    assert fine.file_bytes > rep.file_bytes
    assert {t.name: t for t in fine.tensors}["conv.weight"].error["rmse"] < by["conv.weight"].error["rmse"]
    exact_1d = api.save(sd, tmp_path / "c.mbz", step=0.5, step_1d=None)
    assert not {t.name: t for t in exact_1d.tensors}["bn.weight"].quantized
    with pytest.raises(EncodeError):
        api.save(sd, tmp_path / "d.mbz", step=0.5, wbits=4)
    with pytest.raises(EncodeError):
        StepPolicy(-1.0)


def test_target_size_fits_and_uses_the_budget(tmp_path):
    sd = model(2)
    big = api.save(sd, tmp_path / "ref.mbz", step=0.05).file_bytes
    target = big // 2
    rep = api.save_to_size(sd, tmp_path / "t.mbz", target)
    assert rep.file_bytes <= target and rep.file_bytes > 0.85 * target
    assert (tmp_path / "t.mbz").stat().st_size == rep.file_bytes
    with pytest.raises(EncodeError):
        api.save_to_size(sd, tmp_path / "u.mbz", 200, tries=2)
    with pytest.raises(EncodeError, match="too small"):   # refused before any pack, no overflowing steps
        api.save_to_size(sd, tmp_path / "v.mbz", 10)
    assert not (tmp_path / "v.mbz").exists()


def test_cli_step_and_target_size(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    torch.save(model(3), ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "s.mbz"), "--step", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "conv.weight" in out and "bits" in out
    assert main(["pack", str(ck), "-o", str(tmp_path / "s2.mbz"), "--step", "0.4", "-q"]) == 0
    assert "conv.weight" not in capsys.readouterr().out      # -q: the summary without the per-tensor table
    assert main(["pack", str(ck), "-o", str(tmp_path / "t.mbz"), "--target-size", "9000", "-q"]) == 0
    assert (tmp_path / "t.mbz").stat().st_size <= 9000
    assert main(["pack", str(ck), "-o", str(tmp_path / "u.mbz"), "--step", "0.4", "--wbits", "4", "-q"]) == 2


def test_per_channel_steps_follow_channel_rms():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(16, 50, generator=g) * torch.logspace(-3, 0, 16)[:, None]
    grid = step_grid(t, 0.5, 0.0, channel=True)
    rms = t.pow(2).mean(1).sqrt().numpy()
    ratio = grid.scales / rms
    assert grid.scales.size == 16 and (ratio > 0.5 * 0.8).all() and (ratio < 0.5 * 1.25).all()
    assert len(set(np.round(np.log2(grid.scales) * 4) % 4)) <= 4     # quarter-octave steps
    err = (t.reshape(-1).numpy() - grid.values()).reshape(16, 50)
    assert (np.abs(err).max(1) <= grid.scales / 2 + 1e-9).all()


def test_one_d_tensors_never_round_to_zero():
    """A running variance spanning decades keeps every value non-zero, within the relative step."""
    var = torch.logspace(-2, 0, 64)
    grid = step_grid(var, 1 / 16, 0.0)
    back = grid.values()
    assert (back > 0).all()
    assert (np.abs(back - var.numpy()) <= var.numpy() / 16).all()
    wide = torch.tensor([1e-9, 1.0, 2.0, 3.0])   # 16-bit codes cannot span it: kept exact
    assert step_grid(wide, 1 / 16, 0.0) is None


def test_dead_zone_widens_the_zero_bin_only():
    """Beyond the dead zone every code is the nearest one: no shrinkage of the non-zero weights."""
    t = torch.randn(50, 80, generator=torch.Generator().manual_seed(5))
    g = step_grid(t, 0.5, 0.3)
    d = float(g.scales[0])
    x = t.reshape(-1).numpy()
    nz = g.k != 0
    assert (np.abs(x[~nz]) < 0.8 * d + 1e-6).all()                   # zero bin: |x| < (1/2 + 0.3) step
    assert (np.abs(x[nz] - g.values()[nz]) <= d / 2 + 1e-6).all()   # the others round to nearest
    assert abs(float((x[nz] - g.values()[nz]).mean())) < 0.02 * d     # no bias toward zero


def test_size_exponent_gives_large_tensors_coarser_steps():
    small, big = torch.randn(16, 16), torch.randn(256, 256)
    p = StepPolicy(0.4, size_exp=0.5)
    r_small, r_big = p.relative_step("a.weight", small), p.relative_step("b.weight", big)
    assert r_big / r_small == pytest.approx((big.numel() / small.numel()) ** 0.5)
    assert StepPolicy(0.4, size_exp=0.0).relative_step("b.weight", big) == 0.4
    with pytest.raises(EncodeError):
        StepPolicy(0.4, size_exp=1.5)


def test_report_fields_and_one_d_error_within_half_a_step(tmp_path):
    sd = model(6)
    sd["bn.bias"] = torch.randn(64, generator=torch.Generator().manual_seed(6)) * 0.1   # signed 1-D tensor
    rep = api.save(sd, tmp_path / "r.mbz", step=0.5, step_channel=True)
    by = {t.name: t for t in rep.tensors}
    back = mbz.load(tmp_path / "r.mbz")
    for name in ("conv.weight", "fc.weight", "bn.weight", "bn.running_var", "bn.bias"):
        r = by[name]
        assert r.quantized and r.bits and r.step > 0 and r.rel_step > 0 and r.stored_bytes > 0
        assert set(r.error) >= {"rmse", "max_abs_err", "sqnr_db"}
    assert by["conv.weight"].steps == 64 and by["fc.weight"].steps == 10 and by["bn.bias"].steps == 1
    for name in ("bn.weight", "bn.running_var", "bn.bias"):     # 1-D: one step, error at most half of it
        err = (back[name] - sd[name]).abs().max().item()
        assert err <= by[name].step / 2 * (1 + 1e-5) and by[name].error["max_abs_err"] == pytest.approx(err, rel=1e-4)
    assert (back["bn.running_var"] > 0).all()


def test_fold_bn_pack_loads_with_load_model(tmp_path, capsys):
    """--fold-bn: a small MobileNet-v2's BatchNorms folded, quantized at a step, rebuilt by load_model."""
    from mbz.models import load_model
    net, g = _random_bn_net({"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25})
    ck = tmp_path / "net.pt"
    torch.save(net.state_dict(), ck)
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = net(x)
    out = tmp_path / "f.mbz"
    assert main(["pack", str(ck), "-o", str(out), "--arch", "mobilenet_v2_cifar:width_mult=0.25", "--fold-bn",
                 "--step", "0.05", "--step-channel", "-q", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["folded_bn"] and rep["arch"]["folded_bn"]
    # the input bytes (and ratio) are those of the checkpoint as given, BatchNorms included
    assert rep["input_bytes"] == sum(t.numel() * t.element_size() for t in net.state_dict().values()), rep["input_bytes"]
    from mbz.summary import input_bytes     # and the file records the same figure for mbz eval / inspect
    from mbz.reader import MbzReader
    with MbzReader(out) as r:
        assert input_bytes(r) == (rep["input_bytes"], "recorded at pack time")
    names = {t["name"] for t in rep["tensors"]}
    assert not any("running_var" in n for n in names) and "features.0.0.bias" in names
    back = load_model(out)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in back.modules())
    with torch.no_grad():
        y = back(x)
    assert (y - ref).abs().max() < 0.1 * ref.abs().max()          # a fine step: close to the dense network
    assert (y.argmax(1) == ref.argmax(1)).all()
    # a fitting budget with the folded network
    assert main(["pack", str(ck), "-o", str(tmp_path / "t.mbz"), "--arch", "mobilenet_v2_cifar:width_mult=0.25",
                 "--fold-bn", "--step-channel", "--target-size", "30000", "-q"]) == 0
    assert (tmp_path / "t.mbz").stat().st_size <= 30000
    load_model(tmp_path / "t.mbz")
    # no architecture: refused in one line
    assert main(["pack", str(ck), "-o", str(tmp_path / "u.mbz"), "--fold-bn", "--step", "0.3", "-q"]) == 2


def test_gain_preserving_steps_keep_each_channels_gain():
    """Few weights per channel (a depthwise 3x3) at a coarse step: rounding alone leaves each channel's
    gain <x, x_hat> / |x|^2 far from 1; the gain-preserving step puts it back at 1."""
    g = torch.Generator().manual_seed(8)
    t = torch.randn(64, 1, 3, 3, generator=g) ** 3 * torch.linspace(0.1, 2, 64)[:, None, None, None]
    x = t.reshape(64, 9).numpy().astype(np.float64)
    plain = step_grid(t, 1.5, 0.0, channel=True).values().reshape(64, 9)
    kept = step_grid(t, 1.5, 0.0, channel=True, gain=True).values().reshape(64, 9)
    ratio = lambda v: (x * v).sum(1) / (x * x).sum(1)  # noqa: E731
    assert np.abs(ratio(plain) - 1).max() > 0.2                  # round to nearest alone
    assert np.allclose(ratio(kept), 1.0, atol=0.04)               # within the snapping of the step
    assert (np.sign(kept) == np.sign(plain)).all()                # the same codes, another step


def test_wbits_with_step_1d_quantizes_1d_tensors_and_keeps_the_weight_codes(tmp_path):
    sd = model(4)
    plain = api.save(sd, tmp_path / "p.mbz", wbits=4)
    fine = api.save(sd, tmp_path / "f.mbz", wbits=4, step_1d=0.01)
    bp, bf = ({t.name: t for t in r.tensors} for r in (plain, fine))
    assert not bp["bn.weight"].quantized and bf["bn.weight"].quantized      # "auto" / None: exact with --wbits
    assert bf["bn.weight"].error["sqnr_db"] > 40 and bf["bn.weight"].rel_step == 0.01
    assert not bf["bn.num_batches_tracked"].quantized
    a, b = mbz.load(tmp_path / "p.mbz"), mbz.load(tmp_path / "f.mbz")
    assert torch.equal(a["conv.weight"], b["conv.weight"]) and torch.equal(a["fc.weight"], b["fc.weight"])
    assert torch.equal(a["bn.weight"], sd["bn.weight"]) and not torch.equal(b["bn.weight"], sd["bn.weight"])
    assert mbz.open(tmp_path / "f.mbz").metadata["lossy"]["step_1d"] == 0.01
    assert fine.file_bytes < plain.file_bytes
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(EncodeError, match="step-1d"):
            api.save(sd, tmp_path / "g.mbz", wbits=4, step_1d=bad)


def test_running_var_step_follows_var_plus_eps():
    # a dead channel's variance far below BatchNorm's eps no longer forces 16-bit-overflowing codes
    v = torch.cat([torch.rand(63, generator=torch.Generator().manual_seed(5)) * 1e-3 + 1e-4, torch.tensor([1e-12])])
    assert step_grid(v, 0.01, 0.0) is None                     # without the floor: stays exact
    g = step_grid(v, 0.01, 0.0, floor=1e-5)
    assert g is not None
    q = torch.from_numpy(g.values()).double()
    rel = ((q - v.double()).abs() / (v.double() + 1e-5)).max()
    assert rel <= 0.01 / 2 * 1.25 + 1e-9                        # within half a (snapped) step of var + eps


def test_cli_wbits_step_1d(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    torch.save(model(6), ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "w.mbz"), "--wbits", "4", "--step-1d", "0.01", "-q"]) == 0
    assert mbz.load(tmp_path / "w.mbz")["bn.weight"].ne(model(6)["bn.weight"]).any()
    assert main(["pack", str(ck), "-o", str(tmp_path / "x.mbz"), "--wbits", "4", "--step-1d", "0", "-q"]) == 0
    assert torch.equal(mbz.load(tmp_path / "x.mbz")["bn.weight"], model(6)["bn.weight"])


def test_wbits_step_1d_says_which_1d_tensors_stay_exact_and_why(tmp_path, capsys):
    sd = model(7)
    sd["bn.running_var"] = torch.cat([torch.rand(63) + 0.5, torch.tensor([1e-30])]) * 1e6   # range > 16 bits
    rep = api.save(sd, tmp_path / "a.mbz", wbits=4, step_1d=1.0)
    why = {t.name: t.kept_exact for t in rep.tensors if t.kept_exact}
    assert why["bn.running_var"] == "16-bit codes cannot span the range at this step"
    assert "bn.weight" not in why and "conv.weight" not in why
    back = mbz.load(tmp_path / "a.mbz")
    assert torch.equal(back["bn.running_var"], sd["bn.running_var"])
    assert api.save(sd, tmp_path / "b.mbz", wbits=4, step_1d=0).tensors   # 0: exact, as on the CLI
    assert torch.equal(mbz.load(tmp_path / "b.mbz")["bn.weight"], sd["bn.weight"])
    with pytest.raises(EncodeError, match=r"step_1d \(--step-1d\) must be a relative step in \(0, 1\]"):
        api.save(sd, tmp_path / "c.mbz", wbits=4, step_1d=2.0)
    ck = tmp_path / "m.pt"
    torch.save(sd, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "d.mbz"), "--wbits", "4", "--step-1d", "0.01", "-q"]) == 0
    assert "1-D tensors kept exact (16-bit codes cannot span the range at this step): bn.running_var" in \
        capsys.readouterr().out
    with pytest.raises(EncodeError, match=r"step_1d=0.01 sets the step of 1-D tensors"):
        api.save(sd, tmp_path / "e.mbz", step_1d=0.01)          # the CLI refuses --step-1d alone too
    with pytest.raises(EncodeError, match=r"deadzone=0.2 widens the zero bin"):
        api.save(sd, tmp_path / "f.mbz", wbits=4, deadzone=0.2)


def test_verify_folds_the_checkpoint_like_pack_fold_bn(tmp_path, capsys):
    """A lossless pack --fold-bn file verifies against the checkpoint it was folded from (folded the same way
    first, said in a note); against another network's checkpoint it still fails."""
    from mbz.models import build_model
    arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25}
    torch.manual_seed(0)
    net = build_model(arch)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "f.mbz"
    from mbz import open as mbz_open
    assert main(["pack", str(tmp_path / "net.pt"), "-o", str(out), "--arch", "mobilenet_v2_cifar:width_mult=0.25",
                 "--fold-bn", "-q"]) == 0
    from mbz.summary import summarize
    with mbz_open(out) as r:  # pack names the fp32 bytes inspect / eval take the model CR of
        assert f"folded tensors' fp32 bytes, {summarize(r, decode=False)['fp32_bytes']:,d}" in capsys.readouterr().out
    assert main(["verify", str(out), str(tmp_path / "net.pt")]) == 0
    text = capsys.readouterr().out
    assert "was folded the same way" in text and "bit-identical (BatchNorm folded" in text, text
    torch.manual_seed(1)
    torch.save(build_model(arch).state_dict(), tmp_path / "other.pt")
    assert main(["verify", str(out), str(tmp_path / "other.pt")]) == 1


def _random_bn_net(arch, seed=7):
    from mbz.models import build_model
    torch.manual_seed(0)
    net = build_model(arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return net.eval(), g


def test_bn_affine_keeps_the_eval_function_and_every_other_tensor():
    """Each BatchNorm (its own eps) becomes weight g, bias beta - mean g, mean 0, variance 1 - eps."""
    from mbz.models.folding import bn_affine
    from mbz.models.registry import bn_affine_state_dict
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8, eps=1e-3), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 6), torch.nn.BatchNorm1d(6))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.normal_(0, 0.5, generator=g)
            bn.running_var.uniform_(0.1, 3.0, generator=g)
            bn.weight.normal_(0, 1, generator=g)
            bn.bias.normal_(0, 1, generator=g)
    net.eval()
    x = torch.randn(5, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = net(x)
        assert bn_affine(net) == (["1", "5"], [])
        y = net(x)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert (net[1].running_mean == 0).all() and (net[1].running_var == 1 - 1e-3).all()
    assert ((net[1].running_var + net[1].eps).sqrt() == 1).all() and ((net[5].running_var + 1e-5).sqrt() == 1).all()

    arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25}
    dense, g = _random_bn_net(arch)
    sd = dense.state_dict()
    new, names, skipped = bn_affine_state_dict(sd, arch)
    assert not skipped and len(names) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in dense.modules())
    assert new.keys() == sd.keys()
    bn_keys = {f"{n}.{t}" for n in names for t in ("weight", "bias", "running_mean", "running_var")}
    assert all(new[k] is sd[k] for k in sd if k not in bn_keys)          # the convolutions untouched
    assert all(not torch.equal(new[k], sd[k]) for k in bn_keys)
    from mbz.models import build_model
    m = build_model(arch)
    m.load_state_dict(new)
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), dense(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(mbz.MbzError, match="1 missing.*classifier.1.bias"):
        bn_affine_state_dict({k: v for k, v in sd.items() if k != "classifier.1.bias"}, arch)
    # a DataParallel prefix is read through and kept; 16-bit inputs give float32 BatchNorms (no overflow)
    half = {"module." + k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    bn = names[0]
    half[f"module.{bn}.running_var"][0], half[f"module.{bn}.running_mean"][0] = 1.0, -60000.0
    half[f"module.{bn}.weight"][0] = 2.0                              # bias beta + 120000: over fp16's 65504
    new16, names16, _ = bn_affine_state_dict(half, arch)
    assert new16.keys() == half.keys() and names16 == names
    assert new16[f"module.{bn}.bias"].dtype == torch.float32 and torch.isfinite(new16[f"module.{bn}.bias"]).all()
    assert abs(float(new16[f"module.{bn}.bias"][0]) - float(half[f"module.{bn}.bias"][0]) - 120000) < 10
    assert all(new16[k] is half[k] for k in half if not k.startswith(tuple(f"module.{n}." for n in names)))
    # pruning pairs (pack --exact keeps them): the rewrite needs the effective weights
    pairs = dict(sd)
    w = pairs.pop("features.0.0.weight")
    pairs["features.0.0.weight_orig"], pairs["features.0.0.weight_mask"] = w, torch.ones_like(w)
    with pytest.raises(mbz.MbzError, match="effective weights.*features.0.0.weight_orig"):
        bn_affine_state_dict(pairs, arch)


def test_bn_affine_leaves_a_batchnorm_with_a_dead_channel_as_it_is():
    """A channel of variance 0 and a sizeable gamma would get weight gamma / sqrt(eps), 316 gamma: one step per
    tensor would round the module's other channels coarsely, so such a module keeps its four tensors."""
    from mbz.models.folding import BN_AFFINE_SPREAD, bn_affine
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1),
                              torch.nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        for bn in (net[1], net[3]):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
        net[1].running_var[3] = 0.0                                  # a dead channel, gamma kept
    before = {k: v.clone() for k, v in net.state_dict().items()}
    done, skipped = bn_affine(net)
    assert done == ["3"] and skipped == ["1"] and BN_AFFINE_SPREAD < 316
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before if k.startswith("1."))
    assert bn_affine(net, only={"1"}, max_spread=None) == (["1"], [])


def test_pack_bn_affine_halves_the_batchnorm_values_it_quantizes(tmp_path, capsys):
    """pack --wbits 4 --step-1d S --bn-affine: the weight codes of the plain --wbits 4 file, the running
    statistics constant, fewer 1-D bytes; refused without a lossy mode, with --fold-bn, or without --arch."""
    from mbz.models import load_model
    arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25}
    net, g = _random_bn_net(arch)
    ck = tmp_path / "net.pt"
    torch.save(net.state_dict(), ck)
    spec = "mobilenet_v2_cifar:width_mult=0.25"
    plain, aff = tmp_path / "plain.mbz", tmp_path / "aff.mbz"
    assert main(["pack", str(ck), "-o", str(plain), "--arch", spec, "--wbits", "4", "--step-1d", "0.01", "-q"]) == 0
    assert main(["pack", str(ck), "-o", str(aff), "--arch", spec, "--wbits", "4", "--step-1d", "0.01", "--bn-affine",
                 "-q"]) == 0
    a, p = mbz.load(aff), mbz.load(plain)
    assert all(torch.equal(a[k], p[k]) for k in p if p[k].dim() >= 2)
    assert all((a[k] == 0).all() for k in a if k.endswith("running_mean"))
    assert aff.stat().st_size < plain.stat().st_size
    with mbz.open(aff) as r:
        assert len(r.metadata["bn_affine"]) == len([k for k in p if k.endswith("running_var")])
        recorded = r.metadata["bn_affine"]
        assert r.metadata["input"]["bytes"] == sum(t.numel() * t.element_size() for t in net.state_dict().values())
    x = torch.randn(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        ya, yp, ref = load_model(aff)(x), load_model(plain)(x), net(x)
    # the same 4-bit weights: the rewritten file is as close to the dense network as the plain one
    assert (ya - ref).norm() < 1.2 * (yp - ref).norm()
    capsys.readouterr()
    for extra, words in ((["--wbits", "4", "--fold-bn", "--arch", spec], "pick one"),
                         (["--arch", spec], "lossless pack"),
                         (["--wbits", "4"], "needs the architecture")):
        assert main(["pack", str(ck), "-o", str(tmp_path / "x.mbz"), "--bn-affine", *extra, "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "x.mbz").exists()

    # the file is for inference: training from it is refused; a lossless re-pack keeps what it records
    for argv in (["train", "--init", str(aff), "--out", str(tmp_path / "tr")],
                 ["finetune", str(aff), "-o", str(tmp_path / "ft.mbz"), "--kd", "0"],
                 ["prune-channels", str(aff), "--out", str(tmp_path / "pc")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "rewritten for inference (pack --bn-affine" in err, err
    assert not any((tmp_path / d).exists() for d in ("tr", "ft.mbz", "pc"))
    assert main(["pack", str(aff), "-o", str(tmp_path / "re.mbz"), "-q"]) == 0
    with mbz.open(tmp_path / "re.mbz") as r:
        assert r.metadata["bn_affine"] == recorded and r.metadata["lossy"]["wbits"] == 4
    assert main(["pack", str(aff), "-o", str(tmp_path / "re8.mbz"), "--wbits", "8", "-q"]) == 0   # lossy re-pack
    with mbz.open(tmp_path / "re8.mbz") as r:
        assert r.metadata["bn_affine"] == recorded and r.metadata["lossy"]["wbits"] == 8
    assert main(["train", "--init", str(tmp_path / "re8.mbz"), "--out", str(tmp_path / "tr")]) == 2
    import yaml                                             # nor does a recipe train from it
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"name": "r", "data": {"source": "npz:/nonexistent"},
                                   "baseline": {"checkpoint": str(aff)}, "prune": {"levels": [0.5]}}))
    capsys.readouterr()
    assert main(["compress", "--recipe", str(rec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "baseline.checkpoint" in err and "rewritten for inference" in err, err
    assert main(["inspect", str(aff)]) == 0
    assert "BatchNorms rewritten as their eval-mode affine" in capsys.readouterr().out
    # verify rewrites the checkpoint's BatchNorms the same way, then compares (1-D tensors kept exact here)
    exact1d = tmp_path / "exact1d.mbz"
    assert main(["pack", str(ck), "-o", str(exact1d), "--arch", spec, "--wbits", "4", "--bn-affine", "-q"]) == 0
    capsys.readouterr()
    main(["verify", str(exact1d), str(ck)])
    out = capsys.readouterr().out
    assert "rewritten the same way and then compared" in out, out
    assert not [line for line in out.splitlines() if line.startswith("MISMATCH") and ".running_" in line], out
    # the module-graph tensors of a DataParallel checkpoint: read through the prefix
    dp = tmp_path / "dp.pt"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, dp)
    assert main(["pack", str(dp), "-o", str(tmp_path / "dp.mbz"), "--arch", spec, "--wbits", "4", "--bn-affine",
                 "-q"]) == 0
    assert main(["pack", str(dp), "-o", str(tmp_path / "dpf.mbz"), "--arch", spec, "--wbits", "4", "--fold-bn",
                 "-q"]) == 0


def test_a_tensor_that_cannot_be_quantized_is_named(tmp_path, capsys):
    """A NaN in a 1-D tensor that --step-1d quantizes: the one-line error names the tensor."""
    sd = {"conv.weight": torch.randn(8, 3, 3, 3), "bn.running_var": torch.rand(8) + 0.5}
    sd["bn.running_var"][2] = float("nan")
    ck = tmp_path / "n.pt"
    torch.save(sd, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "n.mbz"), "--wbits", "4", "--step-1d", "0.01", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensor 'bn.running_var'" in err and "NaN or Inf" in err, err


def test_batchnorm_rewrites_name_bad_inputs_and_fold_bn_needs_a_foldable_architecture(tmp_path, capsys):
    """NaN / negative variances are named as the input's tensors (not the rewritten ones); a torchvision
    architecture that load_model cannot rebuild folded is refused by --fold-bn; --target-size names a NaN
    tensor; BatchNorms pruned to gamma 0 do not count as dead channels."""
    import torchvision

    from mbz.models.folding import bn_affine
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    bad = dict(sd, **{"layer1.0.bn1.running_var": sd["layer1.0.bn1.running_var"].clone().fill_(-1.0)})
    ck = tmp_path / "bad.pt"
    torch.save(bad, ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "a.mbz"), "--arch", "resnet18", "--wbits", "4",
                 "--bn-affine"]) == 2
    assert "tensor 'layer1.0.bn1.running_var' holds a negative variance" in capsys.readouterr().err
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    assert main(["pack", str(good), "-o", str(tmp_path / "f.mbz"), "--arch", "resnet18", "--wbits", "8",
                 "--fold-bn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be rebuilt with its BatchNorms folded" in err, err
    nan = {"conv.weight": torch.randn(64, 32, 3, 3)}
    nan["conv.weight"][1, 2, 0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    assert main(["pack", str(tmp_path / "nan.pt"), "-o", str(tmp_path / "n.mbz"), "--target-size", "9000"]) == 2
    assert "tensor 'conv.weight'" in capsys.readouterr().err
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        net[1].weight[:5] = 0.0                                        # 5 of 8 channels pruned (network slimming)
        net[1].weight[5:] = torch.tensor([0.9, 1.0, 1.1])
    assert bn_affine(net) == (["1"], [])


def test_fold_and_rewrite_say_how_to_reach_a_wrapped_state_dict(tmp_path, capsys):
    from mbz.models import build_model
    sd = build_model({"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25}).state_dict()
    for obj, words in (({"state_dict": sd, "epoch": 1}, "pick it with --key state_dict"),
                       ({"model": {"state_dict": sd}}, "sits under model / state_dict, deeper than --key reaches")):
        torch.save(obj, tmp_path / "c.pt")
        for flag in ("--fold-bn", "--bn-affine"):
            assert main(["pack", str(tmp_path / "c.pt"), "-o", str(tmp_path / "o.mbz"), "--wbits", "4", flag,
                         "--arch", "mobilenet_v2_cifar:width_mult=0.25"]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err, err
