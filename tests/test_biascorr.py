"""Data-free bias correction (mbz.models.biascorr, mbz.ratedist.expected_shift, mbz pack --bias-correct)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mbz import api
from mbz.cli import main
from mbz.errors import EncodeError
from mbz.models.biascorr import MIN_FAN_IN, bias_fixes, clipped_normal_mean, input_means
from mbz.ratedist import BiasFix, expected_shift


def test_clipped_normal_mean_matches_sampling():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([-1.0, 0.0, 0.5, 3.0, 7.0], dtype=torch.float64)
    sd = torch.tensor([1.0, 2.0, 0.3, 2.5, 1.0], dtype=torch.float64)
    z = torch.randn(400_000, 1, generator=g, dtype=torch.float64) * sd + mu
    assert torch.allclose(clipped_normal_mean(mu, sd, 0.0, 6.0), z.clamp(0, 6).mean(0), atol=0.01)
    assert torch.allclose(clipped_normal_mean(mu, sd), z.clamp_min(0).mean(0), atol=0.01)


def test_expected_shift_is_the_mean_output_change_with_padding():
    """E[ΔW x] with the padded taps equals the mean over positions of conv(x, ΔW) for inputs of constant mean."""
    g = torch.Generator().manual_seed(1)
    for groups, cin in ((1, 6), (6, 6)):
        conv = nn.Conv2d(cin, 6, 3, padding=1, groups=groups, bias=False)
        dw = torch.randn(conv.weight.shape, generator=g, dtype=torch.float64)
        mean = torch.rand(cin, generator=g, dtype=torch.float64) + 0.5
        x = mean.view(1, -1, 1, 1).expand(1, cin, 5, 5)               # the input at its mean everywhere
        want = F.conv2d(x, dw, padding=1, groups=groups).mean((0, 2, 3))
        taps = F.unfold(torch.ones(1, 1, 5, 5), 3, 1, 1, 1).mean(-1).reshape(3, 3).numpy()
        got = expected_shift(BiasFix("b", mean.numpy(), taps, groups), dw.numpy())
        assert np.allclose(got, want.numpy())
    lin = np.ones((3, 4))
    assert np.allclose(expected_shift(BiasFix("b", np.arange(4.0)), lin), 6.0)
    with pytest.raises(EncodeError, match="does not fit"):
        expected_shift(BiasFix("b", np.zeros(5)), lin)


class Net(nn.Module):
    """conv(27 products) -> BN -> ReLU6 -> depthwise 3x3 (9) -> BN -> ReLU6 -> 1x1 conv (24) -> BN -> ReLU6 -> pool -> fc"""
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.dw, self.b2 = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24)
        self.pw, self.b3 = nn.Conv2d(24, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu6(self.b1(self.c1(x)))
        x = F.relu6(self.b2(self.dw(x)))
        x = F.relu6(self.b3(self.pw(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_input_means_from_batchnorm_and_the_fan_in_rule():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for b in (net.b1, net.b2, net.b3):
            b.bias.uniform_(-0.5, 1.5)
            b.weight.uniform_(0.5, 2.0)
    fix = input_means(net, (1, 3, 8, 8))
    torch.set_grad_enabled(False)
    # the network input: zero mean; the dw conv reads ReLU6(BN1) (fed by 27 products: Gaussian); the 1x1 conv
    # reads the depthwise conv's output (9 < MIN_FAN_IN products): no prediction; fc reads ReLU6(BN3), pooled
    assert MIN_FAN_IN > 9 and set(fix) == {"c1", "dw", "fc"}
    assert np.allclose(fix["c1"].mean, 0)
    want = clipped_normal_mean(net.b1.bias.double(), net.b1.weight.double().abs(), 0.0, 6.0)
    assert np.allclose(fix["dw"].mean, want.numpy(), atol=1e-6) and fix["dw"].groups == 24
    assert fix["dw"].taps.shape == (3, 3) and fix["dw"].taps[1, 1] == 1 and fix["dw"].taps[0, 0] == pytest.approx(49 / 64)
    assert np.allclose(fix["fc"].mean, clipped_normal_mean(net.b3.bias.double(), net.b3.weight.double().abs(),
                                                           0.0, 6.0).numpy(), atol=1e-6)
    assert fix["fc"].taps is None and fix["fc"].bias == "fc.bias"
    torch.set_grad_enabled(True)


def _mnv2(tmp_path):
    from mbz.models import build_model
    arch = {"name": "mobilenet_v2_cifar", "num_classes": 10, "width_mult": 0.25}
    torch.manual_seed(0)
    net = build_model(arch)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.3, 0.3, generator=g)
    net.eval()
    ck = tmp_path / "net.pt"
    torch.save(net.state_dict(), ck)
    return net, arch, ck


def test_save_with_bias_fix_keeps_the_expected_output(tmp_path):
    """The stored bias of each corrected layer is its float bias minus E[ΔW x] (up to the bias step), and
    it moves the mean of a dw conv's output back towards the dense one."""
    from mbz.models.registry import fold_state_dict
    net, arch, _ = _mnv2(tmp_path)
    sd = net.state_dict()
    folded, farch = fold_state_dict(sd, arch)
    fix = bias_fixes(sd, arch, folded)
    assert "classifier.1.weight" in fix and "features.8.conv.1.0.weight" in fix     # fc; a dw conv
    assert "features.8.conv.2.weight" not in fix                                    # reads a dw conv's output
    plain = api.save(folded, tmp_path / "p.mbz", step=1.0, step_1d=None)
    fixed = api.save(folded, tmp_path / "c.mbz", step=1.0, step_1d=None, bias_fix=fix)
    assert fixed.file_bytes > 0 and plain.file_bytes > 0
    a, b = api.load(tmp_path / "p.mbz"), api.load(tmp_path / "c.mbz")
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))
    name = "features.8.conv.1.0"
    w = folded[f"{name}.weight"]
    shift = expected_shift(fix[f"{name}.weight"], (a[f"{name}.weight"] - w).double().numpy())
    assert np.abs(shift).max() > 1e-3
    assert torch.allclose(b[f"{name}.bias"].double(), folded[f"{name}.bias"].double() - torch.from_numpy(shift),
                          atol=1e-6)
    assert torch.equal(a[f"{name}.bias"], folded[f"{name}.bias"])           # step_1d None: exact without the fix
    from mbz import MbzReader
    with MbzReader(tmp_path / "c.mbz") as r:
        assert r.metadata["lossy"]["bias_correction"] == len(fix)
    with pytest.raises(EncodeError, match="not a tensor"):
        api.save(folded, tmp_path / "x.mbz", step=1.0, bias_fix={"nope.weight": fix[f"{name}.weight"]})


def test_cli_bias_correct(tmp_path, capsys):
    _, _, ck = _mnv2(tmp_path)
    out = tmp_path / "f.mbz"
    assert main(["pack", str(ck), "-o", str(out), "--arch", "mobilenet_v2_cifar:width_mult=0.25", "--fold-bn",
                 "--step", "0.5", "--bias-correct", "-q", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["folded_bn"]
    assert main(["pack", str(ck), "-o", str(tmp_path / "u.mbz"), "--arch", "mobilenet_v2_cifar:width_mult=0.25",
                 "--step", "0.5", "--bias-correct", "-q"]) == 2
    assert "--bias-correct" in capsys.readouterr().err
    assert math.isfinite(out.stat().st_size)
