"""Activation quantizers placed from the module graph (mbz.models.act_quant.act_points): MobileNet-v2 gets the
places it always had, ResNet-18 / VGG-11-BN / a functional CNN get one after every ReLU, every conv / linear
reads a quantized tensor, and the exported file rebuilds the same network (mbz.load_model, mbz eval)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mbz
from mbz.cli import main
from mbz.errors import MbzError
from mbz.models import build_model, mobilenet_v2_cifar
from mbz.models.act_quant import ActQuant, QReLU6, act_points
from mbz.pipeline.qat import (act_quantizers, calibrate, export_state_dict, fold_bn, insert_act_quant,
                              snap_for_export, to_qmodules)


def _legacy_mnv2_act_quant(model, abits, alphas):
    """The MobileNet-v2 placement by module names that the graph placement replaces (reference only)."""
    def hook(q):
        return lambda mod, inp, out: q(out)
    for name, m in list(model.named_modules()):
        for k, child in list(m._modules.items()):
            if isinstance(child, nn.ReLU6):
                path = f"{name}.{k}" if name else k
                m._modules[k] = QReLU6(abits, False, alphas[path], False)
    keys = [f"features.{i}" for i in range(1, len(model.features) - 1)]
    for k in keys:
        q = ActQuant(abits, True, alphas[k], False)
        q.owns_input = True
        model.get_submodule(k).register_forward_hook(hook(q))
    return model


def _alphas(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: float(torch.empty(()).uniform_(1.0, 5.0, generator=g).half()) for k in keys}


@pytest.mark.parametrize("folded", [False, True])
def test_mobilenet_v2_graph_places_are_the_named_ones_bit_for_bit(folded):
    torch.manual_seed(0)
    m = mobilenet_v2_cifar(width_mult=0.25).eval()
    if folded:
        fold_bn(m)
    pts = act_points(m)
    relu6 = [n for n, x in m.named_modules() if isinstance(x, nn.ReLU6)]
    blocks = [f"features.{i}" for i in range(1, 18)]
    assert sorted(p.key for p in pts) == sorted(relu6 + blocks)
    assert {p.key for p in pts if p.signed} == set(blocks)
    assert all(p.how in ("module", "hook") for p in pts)          # no graph rewrite: the model stays a MobileNetV2
    al = _alphas([p.key for p in pts])
    ref = _legacy_mnv2_act_quant(mobilenet_v2_cifar(width_mult=0.25).eval(), 4, al)
    if folded:
        ref = _legacy_mnv2_act_quant(fold_bn(mobilenet_v2_cifar(width_mult=0.25).eval()), 4, al)
    ref.load_state_dict(m.state_dict(), strict=False)
    new = insert_act_quant(m, 4, learn=False, alphas=al)
    assert new is m and sorted(act_quantizers(new)) == sorted(al)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = new(x.clone()), ref(x.clone())
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def _grid_check(model, x):
    """Run `model`; every quantizer output lies on its grid, and every Conv2d / Linear but the stem reads a tensor
    that a quantizer wrote (through pooling / flatten / identity).  Returns the quantizer count."""
    outs, reads = [], []
    hs = []
    for q in {id(q): q for q in model.modules() if isinstance(q, ActQuant)}.values():
        hs.append(q.register_forward_hook(lambda mod, i, o: outs.append((mod, o))))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for c in convs:
        hs.append(c.register_forward_pre_hook(lambda mod, i: reads.append((mod, i[0]))))
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    assert outs
    for q, o in outs:
        k = o / q.step().detach()
        assert float((k - k.round()).abs().max()) < 1e-3 and float(k.abs().max()) <= q.levels + 1e-3
        assert q.signed or float(o.min()) >= 0
    stem = reads[0][1]
    for c, t in reads[1:]:
        on_grid = any(torch.equal(t.reshape(-1), o.reshape(-1)) for _, o in outs) or any(
            t.shape[-1] != o.shape[-1] or t.dim() != o.dim() for _, o in outs) and _pooled_from(t, outs)
        assert on_grid, f"{type(c).__name__} {tuple(t.shape)} reads an unquantized tensor"
    assert stem.shape[1] == 3
    return len(outs)


def _pooled_from(t, outs):
    for _, o in outs:
        if o.dim() == 4 and t.shape[0] == o.shape[0] and t.numel() % o.shape[1] == 0:
            for pool in (F.adaptive_avg_pool2d(o, 1).flatten(1), F.max_pool2d(o, 2), o.flatten(1),
                         F.max_pool2d(o, 2).flatten(1)):
                if pool.shape == t.shape and torch.equal(pool, t):
                    return True
    return False


def test_resnet18_quantizes_every_relu_call_and_rewrites_its_graph():
    torch.manual_seed(0)
    m = fold_bn(build_model({"name": "resnet18_cifar"}).eval())
    pts = act_points(m)
    keys = [p.key for p in pts]
    assert len(pts) == 17 and not any(p.signed for p in pts)     # the stem's ReLU + two per BasicBlock
    assert keys[:3] == ["relu", "layer1.0.relu#0", "layer1.0"] and "layer1" in keys and "layer4" in keys
    q = insert_act_quant(m, 4)
    assert isinstance(q, torch.fx.GraphModule) and set(q.state_dict()) - {k for k in q.state_dict() if ".alpha" in k} \
        == set(build_model({"name": "resnet18_cifar", "folded_bn": True}).state_dict())
    x = torch.randn(2, 3, 32, 32)
    calibrate(q, [x])
    assert _grid_check(q, x) == 17


def test_vgg11_bn_quantizes_every_relu_in_place_of_the_module():
    torch.manual_seed(0)
    m = build_model({"name": "vgg11_bn_cifar"}).eval()
    q = insert_act_quant(m, 8)
    assert q is m and not hasattr(m, "block_q")                    # ReLUs called once: swapped, nothing else
    assert sorted(act_quantizers(m)) == sorted(n for n, x in build_model({"name": "vgg11_bn_cifar"}).named_modules()
                                               if isinstance(x, nn.ReLU))
    x = torch.randn(2, 3, 32, 32)
    calibrate(m, [x])
    assert _grid_check(m, x) == 8


class FunctionalNet(nn.Module):
    """Functional relu, a residual add that feeds a conv directly, avg pool, linear: nothing named like torchvision."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.a(x))
        z = y + self.b(y)              # a signed sum read by a conv
        z = F.relu(self.c(z))
        return self.head(F.adaptive_avg_pool2d(z, 1).flatten(1))


def test_any_cnn_functional_relu_and_signed_sums():
    torch.manual_seed(0)
    m = FunctionalNet().eval()
    pts = act_points(m)
    assert [(p.signed, p.how) for p in pts] == [(False, "graph"), (True, "graph"), (False, "graph")]
    assert len({p.key for p in pts}) == 3
    q = insert_act_quant(m, 6)
    x = torch.randn(2, 3, 16, 16)
    calibrate(q, [x])
    assert _grid_check(q, x) == 3
    assert not torch.allclose(q(x), m(x))                           # the quantizers are live


@pytest.mark.parametrize("name", ["resnet18_cifar", "vgg11_bn_cifar"])
def test_exported_file_rebuilds_the_quantized_network_bit_for_bit(tmp_path, tiny_npz, capsys, name):
    from mbz.models.thinning import channel_groups
    torch.manual_seed(0)
    arch = {"name": name}
    arch["channels"] = {g["producer"]: 8 for g in channel_groups(build_model(arch))}   # thinned: a small file
    m = fold_bn(build_model(arch).eval())
    to_qmodules(m, 4)
    m = insert_act_quant(m, 4)
    x = torch.randn(4, 3, 32, 32)
    calibrate(m, [x])
    m.eval()
    snap_for_export(m)
    with torch.no_grad():
        y = m(x)
    sd, act = export_state_dict(m)
    assert act["act_bits"] == 4 and len(act["act_alpha"]) == (17 if name == "resnet18_cifar" else 8)
    p = tmp_path / "q.mbz"
    mbz.save(sd, p, metadata={"arch": {**arch, "folded_bn": True, **act},
                              "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [3, 32, 32]}})
    m2 = mbz.load_model(p)
    with torch.no_grad():
        assert torch.equal(m2(x), y)
    from mbz.pipeline.activations import measure
    with torch.no_grad():
        y1 = m2(x[:1])
    r = measure(m2, x[:1])                        # `mbz activations`: every quantized tensor held bit-packed
    assert torch.equal(r["output"], y1) and len(r["layers"]) == 1 + len(act["act_alpha"])
    assert 32 / 8 < r["total_ratio"] <= 32 / 4                # 4-bit activations, the 8-bit input image
    if name == "resnet18_cifar":  # peak in layer1: block input (64 ch, held for the add) + first ReLU (8 ch) + output
        assert r["peak_packed_bytes"] == (64 + 8 + 64) * 32 * 32 * 4 // 8
    assert main(["eval", str(p), "--data", f"npz:{tiny_npz}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["activation_bits"] == 4 and out["activation_compression_ratio"] == 8.0


def test_act_alpha_that_names_other_quantizers_is_refused(tmp_path):
    arch = {"name": "vgg11_bn_cifar", "act_bits": 8, "act_alpha": {"features.2": 1.0}}
    with pytest.raises(MbzError, match=r"no range for the model's quantizer 'features.6'"):
        build_model(arch)
    al = {k: 1.0 for k in act_quantizers(insert_act_quant(build_model({"name": "vgg11_bn_cifar"}), 8))}
    with pytest.raises(MbzError, match=r"names 'features.3', which is no activation quantizer"):
        build_model(dict(arch, act_alpha={**al, "features.3": 2.0}))
    m = build_model(dict(arch, act_alpha=al))
    assert {k: float(q.alpha) for k, q in act_quantizers(m).items()} == al


@pytest.mark.slow
def test_qat_run_trains_a_resnet18_with_activation_quantizers_and_the_file_gives_its_top1(tmp_path, tiny_npz):
    from mbz.models.thinning import channel_groups
    from mbz.pipeline.compress import QatConfig, qat_run
    from mbz.pipeline.data import load_dataset
    torch.manual_seed(0)
    arch = {"name": "resnet18_cifar", "num_classes": 10}
    arch["channels"] = {g["producer"]: 8 for g in channel_groups(build_model(arch))}
    base = build_model(arch).state_dict()
    tr, te = load_dataset(f"npz:{tiny_npz}", "train").subset(32), load_dataset(f"npz:{tiny_npz}", "test").subset(20)
    q = QatConfig("r18_a8", sparsity=0.0, wbits=8, abits=8, epochs=1, lr=0.01)
    row = qat_run(base, q, tr, te, str(tmp_path), str(tmp_path / "log.jsonl"), torch.device("cpu"), arch,
                  save_pt=False)
    assert row["arch"]["act_bits"] == 8 and len(row["arch"]["act_alpha"]) == 17
    assert row["top1_equal"] and row["top1_packed"] == row["top1_qat_eval"]
    m = mbz.load_model(tmp_path / "r18_a8.mbz")
    assert isinstance(m, torch.fx.GraphModule) and len(act_quantizers(m)) == 17
    assert all(abs(float(a) - row["arch"]["act_alpha"][k]) == 0 for k, a in
               ((k, q.alpha) for k, q in act_quantizers(m).items()))
