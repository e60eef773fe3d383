"""Structured pruning of any CNN from its module graph (mbz.models.thinning): the groups found, thinner layers
that compute what the network computes when the removed channels carry nothing, and thinned files rebuilt by
mbz.load_model."""
import json

import pytest
import torch
from torch import nn

import mbz
from mbz.models import build_model, pipeline_arch
from mbz.models.thinning import apply_widths, channel_groups, choose_channels, thin_state_dict, widths_of


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyCnn(nn.Module):
    """conv-BN-ReLU-pool-conv-BN-ReLU-conv-BN-ReLU-pool-linear: two channel groups, small enough to pack fast."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.fixture
def tiny_registry(monkeypatch):
    from mbz.models import registry
    monkeypatch.setitem(registry.ARCHITECTURES, "tiny_cnn", lambda num_classes=10, **_: TinyCnn(num_classes))
    return "tiny_cnn"


def _net(name):
    torch.manual_seed(0)
    m = build_model({"name": name, "num_classes": 10})
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.2, 0.6)
    return m.eval()


def test_groups_of_vgg_and_resnet():
    vgg = channel_groups(_net("vgg11_bn_cifar"))
    # every conv but the last feeds the next conv through BN, ReLU and (sometimes) max pool
    assert [g["producer"] for g in vgg] == ["features.0", "features.4", "features.8", "features.11", "features.15",
                                           "features.18", "features.22"]
    assert all(len(g["bns"]) == 1 and not g["depthwise"] for g in vgg)
    r18 = channel_groups(_net("resnet18_cifar"))
    # only the inner conv of each basic block: the stem, conv2 and the shortcuts feed residual sums
    assert [g["producer"] for g in r18] == [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    assert all(g["consumer"] == g["producer"][:-1] + "2" for g in r18)


def test_groups_of_mobilenet_pass_through_depthwise():
    g = {x["producer"]: x for x in channel_groups(_net("mobilenet_v2_cifar"))}
    e = g["features.2.conv.0.0"]
    assert e["depthwise"] == ["features.2.conv.1.0"] and e["consumer"] == "features.2.conv.2"
    assert e["bns"] == ["features.2.conv.0.1", "features.2.conv.1.1"]


@pytest.mark.parametrize("name", ["vgg11_bn_cifar", "resnet18_cifar"])
def test_removing_dead_channels_keeps_the_logits(name):
    """Channels whose BN output is exactly zero carry nothing: thinning them away leaves the logits unchanged, and
    they are the ones the score removes first."""
    m = _net(name)
    groups = channel_groups(m)
    with torch.no_grad():
        for g in groups:
            bn = m.get_submodule(g["bns"][0])
            dead = torch.arange(0, bn.num_features, 2)
            bn.weight[dead] = 0.0
            bn.bias[dead] = 0.0
    sd = m.state_dict()
    keep = choose_channels(sd, groups, 0.5, multiple=1)
    thin = thin_state_dict(sd, groups, keep)
    widths = widths_of(thin, groups, m)
    assert len(widths) == len(groups)
    t = apply_widths(build_model({"name": name, "num_classes": 10}), widths)
    t.load_state_dict(thin)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(t.eval()(x), m(x), rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in t.parameters()) < sum(p.numel() for p in m.parameters())


def test_thinned_file_rebuilt_by_load_model(tmp_path, tiny_registry):
    m = _net(tiny_registry)
    groups = channel_groups(m)
    assert [g["producer"] for g in groups] == ["features.0", "features.4"]
    sd = m.state_dict()
    thin = thin_state_dict(sd, groups, choose_channels(sd, groups, 0.5))
    arch = pipeline_arch({"name": tiny_registry, "num_classes": 10}, thin)
    assert arch["channels"] == {"features.0": 8, "features.4": 16}
    mbz.save(thin, tmp_path / "t.mbz", arch=arch)
    back = mbz.load_model(tmp_path / "t.mbz")
    assert back.features[0].out_channels == 8 and back.features[4].in_channels == 8
    x = torch.randn(2, 3, 32, 32)
    ref = apply_widths(build_model({"name": tiny_registry, "num_classes": 10}), arch["channels"])
    ref.load_state_dict(thin)
    assert torch.equal(back(x), ref.eval()(x))


def test_bad_channels_metadata_is_one_mbz_error():
    for channels, what in (({"features.1": 8}, "not a prunable conv"), ({"features.0": 0}, "expected an integer"),
                           ({"features.0": 65}, "expected an integer"), ([1, 2], "must be a map")):
        with pytest.raises(mbz.MbzError, match=what):
            build_model({"name": "vgg11_bn_cifar", "num_classes": 10, "channels": channels})


def test_prune_channels_cli_on_another_network(tiny_npz, tmp_path, capsys, tiny_registry):
    from mbz.cli import main
    src = tmp_path / "net.mbz"
    mbz.save(_net(tiny_registry).state_dict(), src, arch={"name": tiny_registry, "num_classes": 10})
    out = tmp_path / "thin"
    argv = ["prune-channels", str(src), "--ratios", "0.5", "--data", f"npz:{tiny_npz}", "--test", "16",
            "--out", str(out)]
    assert main(argv) == 0
    rows = (out / "channels.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    assert row["method"] == "graph" and row["params_after"] < row["params_before"] and row["test_images"] == 16
    model = mbz.load_model(out / "thin_r0.5.mbz")
    assert model.features[4].out_channels == 16 and model.features[7].in_channels == 16
    layers = json.loads((out / "thin_r0.5.layers.json").read_text())
    assert [x["after"] for x in layers] == [8, 16]
    assert row["file_bytes"] == (out / "thin_r0.5.mbz").stat().st_size


def test_train_init_refuses_a_conflicting_arch_before_making_anything(tmp_path, capsys, tiny_registry):
    from mbz.cli import main
    src = tmp_path / "net.mbz"
    mbz.save(_net(tiny_registry).state_dict(), src, arch={"name": tiny_registry, "num_classes": 10})
    out = tmp_path / "run"
    assert main(["train", "--init", str(src), "--arch", "resnet18_cifar", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a tiny_cnn" in err, err
    assert not out.exists()
