"""Rate-distortion packing (mbz.ratedist, mbz pack --step / --target-size)."""
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


def test_cli_step_and_target_size(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    torch.save(model(3), ck)
    assert main(["pack", str(ck), "-o", str(tmp_path / "s.mbz"), "--step", "0.4", "-q"]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "conv.weight" in out and "bits" in out
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
