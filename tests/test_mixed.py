"""Mixed precision by sensitivity (mbz.pipeline.mixed): the PTQ rule, the scan, the allocation under a byte
budget, per-layer widths in QAT and in recipes."""
import copy
import json

import pytest
import torch
from torch import nn

import mbz
from mbz.pipeline import mixed
from mbz.pipeline.data import ArrayDataset
from mbz.pipeline.qat import QConv2d, snap_for_export, to_qmodules


class FeatNet(nn.Module):
    """features -> global average pool -> classifier, as MobileNet-v2 and VGG."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                                      nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
                                      nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def _ds(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (n,), generator=g), [f"c{i}" for i in range(10)], "random")


def test_ptq_weight_is_what_qat_export_stores():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3)
    for bits in (2, 3, 5, 8):
        q = copy.deepcopy(nn.Sequential(conv))
        to_qmodules(q, bits)
        snap_for_export(q)
        assert torch.equal(mixed.ptq_weight(conv.weight, bits), q[0].qweight().detach()), bits
        assert mixed.ptq_weight(conv.weight, bits).unique().numel() <= 6 * (2 ** bits - 1)


def test_scan_from_cached_stage_inputs_equals_full_evaluation(one_torch_thread):
    torch.manual_seed(0)
    model = FeatNet().eval()
    ds = _ds()
    base, rows = mixed.scan_bits(model, ds, bits=(2, 4))
    assert [(r["name"], r["bits"]) for r in rows] == [(n, b) for n in mixed.quant_layers(model) for b in (2, 4)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pre = mixed._Prefix
    try:
        mixed._Prefix = lambda *a, **k: type("NoCache", (), {"ok": False})()
        base2, rows2 = mixed.scan_bits(model, ds, bits=(2, 4))
    finally:
        mixed._Prefix = pre
    assert base == base2
    for a, b in zip(rows, rows2):
        assert a["bytes"] == b["bytes"] and a["top1"] == b["top1"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # restored
    assert rows[0]["loss"] != base["loss"]                                          # quantizing changed something
    by = {(r["name"], r["bits"]): r["bytes"] for r in rows}
    assert all(by[(n, 2)] < by[(n, 4)] for n in mixed.quant_layers(model))          # real packed bytes


def _rows(spec):
    """Scan rows from {name: {bits: (bytes, loss)}}."""
    return [{"name": n, "numel": 100, "bits": b, "bytes": by, "loss": lo, "top1": 0.0}
            for n, d in spec.items() for b, (by, lo) in d.items()]


def test_allocation_spends_the_budget_where_the_loss_is():
    # 'a' is sensitive, 'b' and 'c' are not: at the bytes of uniform 3 bits, 'a' gets more bits, 'b'/'c' fewer
    spec = {"a": {2: (100, 5.0), 3: (150, 1.0), 4: (200, 0.1), 8: (400, 0.0)},
            "b": {2: (100, 0.02), 3: (150, 0.01), 4: (200, 0.0), 8: (400, 0.0)},
            "c": {2: (1000, 0.03), 3: (1500, 0.01), 4: (2000, 0.0), 8: (4000, 0.0)}}
    rows = _rows(spec)
    budget = mixed.plan_bytes(rows, mixed.uniform_plan(rows, 3))
    plan = mixed.allocate(rows, 0.0, budget)
    assert mixed.plan_bytes(rows, plan) <= budget
    assert plan["a"] > 3 and plan["c"] < 3
    assert mixed.predicted_dloss(rows, 0.0, plan) < mixed.predicted_dloss(rows, 0.0, mixed.uniform_plan(rows, 3))
    # every plan that fits is no better (exhaustive check on this small case)
    import itertools
    best = min(sum(spec[n][b][1] for n, b in zip(spec, bs)) for bs in itertools.product(*[list(d) for d in spec.values()])
               if sum(spec[n][b][0] for n, b in zip(spec, bs)) <= budget)
    assert mixed.predicted_dloss(rows, 0.0, plan) == pytest.approx(best)
    assert mixed.allocate(rows, 0.0, 10 ** 9) == {"a": 8, "b": 4, "c": 4}    # no budget: least loss, then bytes
    with pytest.raises(ValueError, match="below the smallest plan"):
        mixed.allocate(rows, 0.0, 1199)
    # a width off the convex hull of (bytes, loss): the Lagrangian skips it, the greedy fill takes it
    hull = _rows({"a": {2: (100, 1.0), 3: (150, 0.9), 4: (200, 0.0)}, "b": {2: (100, 0.5), 4: (300, 0.0)}})
    assert mixed.allocate(hull, 0.0, 260) == {"a": 3, "b": 2}


def test_layer_bits_set_each_layers_width_and_unknown_names_are_refused():
    torch.manual_seed(0)
    m = to_qmodules(FeatNet(), 4, layer_bits={"features.1.0.weight": 2, "classifier.1.weight": 32})
    assert m.features[0][0].wbits == 4 and m.features[1][0].wbits == 2
    assert type(m.classifier[1]) is nn.Linear                      # 32: kept in float
    assert isinstance(m.features[2][0], QConv2d)
    with pytest.raises(ValueError, match="'features.9.weight' is no conv / linear weight"):
        to_qmodules(FeatNet(), 4, layer_bits={"features.9.weight": 3})


def test_ptq_state_dict_and_plan_files(tmp_path):
    torch.manual_seed(0)
    model = FeatNet().eval()
    plan = {"features.0.0.weight": 2, "features.1.0.weight": 8}
    sd = mixed.ptq_state_dict(model, plan, default_bits=4)
    for name, bits in (("features.0.0.weight", 2), ("features.1.0.weight", 8), ("features.2.0.weight", 4)):
        w = sd[name]
        s = w.abs().amax(dim=(1, 2, 3))
        assert (w.reshape(w.shape[0], -1).ne(0).any(1)).all()
        k = max(torch.unique(w[c]).numel() for c in range(w.shape[0]))
        assert k <= 2 ** bits - 1 and (bits < 8 or k > 15), name                # at most 2^b - 1 levels per channel
        assert s.gt(0).all()
    path = tmp_path / "p.mbz"
    mbz.save(sd, path)
    back = mbz.load(path)
    assert all(torch.equal(back[k], sd[k]) for k in sd)           # on exact grids: stored losslessly
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"kind": "mixed", "layer_bits": plan}))
    assert mixed.read_plan(str(p)) == plan
    p.write_text(json.dumps({"layer_bits": {"x.weight": 9}}))
    with pytest.raises(ValueError, match="x.weight: expected bits 2..8 or 32, got 9"):
        mixed.read_plan(str(p))
    with pytest.raises(ValueError, match="is no conv / linear weight"):
        mixed.ptq_state_dict(model, {"nope.weight": 3})


def test_recipe_layer_bits_and_rate_keys(tmp_path):
    import yaml

    from mbz.pipeline.recipe import RecipeError, load_recipe, qat_key, stage_key
    base = {"data": {"source": "npz:x"}, "baseline": {"checkpoint": "b.pt"},
            "qat": [{"wbits": 4, "abits": 32, "epochs": 0}]}

    def write(obj):
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump(obj))
        return str(p)

    r0 = load_recipe(write(base))
    q0 = r0.settings["qat"][0]
    assert q0["layer_bits"] is None and q0["rate"] == 0.0 and q0["name"] == "s0_w4_a32_e0_kd0.5_lr0.02"
    old = {k: v for k, v in q0.items() if k not in ("layer_bits", "rate")}
    assert stage_key(qat_key(q0)) == stage_key(old)               # recipes without the keys keep their stage keys
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layer_bits": {"features.0.0.weight": 3}}))
    r1 = load_recipe(write({**base, "qat": [{"wbits": 4, "abits": 32, "epochs": 0, "layer_bits": str(plan),
                                             "rate": 0.5}]}))
    q1 = r1.settings["qat"][0]
    assert q1["layer_bits"] == {"features.0.0.weight": 3} and q1["rate"] == 0.5
    assert q1["name"].startswith("s0_w4_mp") and q1["name"].endswith("_r0.5")
    assert stage_key(qat_key(q1)) != stage_key(qat_key(q0))
    r2 = load_recipe(write({**base, "qat": [{"wbits": 4, "abits": 32, "epochs": 0,
                                             "layer_bits": {"features.0.0.weight": 2}}]}))
    assert r2.settings["qat"][0]["layer_bits"] == {"features.0.0.weight": 2}
    for bad, msg in ((({"layer_bits": {"a.weight": 1}}), r"qat\[0\]\.layer_bits: mapping: a.weight: expected bits"),
                     (({"layer_bits": str(tmp_path / "none.json")}), r"qat\[0\]\.layer_bits: .*not a readable JSON plan"),
                     (({"layer_bits": 3}), r"qat\[0\]\.layer_bits: expected a mapping"),
                     (({"rate": -1}), r"qat\[0\]\.rate: expected a number >= 0")):
        with pytest.raises(RecipeError, match=msg):
            load_recipe(write({**base, "qat": [{"wbits": 4, "abits": 32, "epochs": 0, **bad}]}))


@pytest.mark.slow
def test_qat_run_with_a_plan_records_it_and_stores_each_layers_width(tiny_npz, tmp_path, one_torch_thread):
    from mbz.models import mobilenet_v2_cifar
    from mbz.pipeline.compress import QatConfig, qat_resume, qat_run
    from mbz.pipeline.data import load_dataset
    tr, te = load_dataset(f"npz:{tiny_npz}", "train"), load_dataset(f"npz:{tiny_npz}", "test")
    torch.manual_seed(0)
    m = mobilenet_v2_cifar(width_mult=0.25).eval()
    plan = {"features.0.0.weight": 8, "features.2.conv.1.0.weight": 2, "classifier.1.weight": 3}
    cpu = torch.device("cpu")
    row = qat_run(m.state_dict(), QatConfig("mp", 0.0, 4, 32, epochs=1, lr=0.01, layer_bits=plan), tr, te,
                  str(tmp_path), None, cpu, {"name": "mobilenet_v2_cifar", "width_mult": 0.25}, save_pt=False)
    path = tmp_path / "mp.mbz"
    with mbz.open(path) as r:
        assert r.metadata["compression"]["layer_bits"] == plan
    sd = mbz.load(path)
    levels = {k: max(torch.unique(sd[k][c]).numel() for c in range(sd[k].shape[0])) for k in plan}
    assert levels["features.2.conv.1.0.weight"] <= 3 and levels["classifier.1.weight"] <= 7
    assert levels["features.0.0.weight"] > 15                     # 8 bits: more levels than 4 bits allow
    other = "features.3.conv.0.0.weight"
    assert max(torch.unique(sd[other][c]).numel() for c in range(sd[other].shape[0])) <= 15
    assert row["top1_equal"] and row["est_weight_bytes"] > 0 and row["weight_section_bytes"] > 0
    # more epochs from the file keep each layer's width
    qat_resume(str(path), "mp2", 0, 0.01, 0.0, tr, te, str(tmp_path), None, cpu)
    sd2 = mbz.load(tmp_path / "mp2.mbz")
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


@pytest.mark.slow
def test_recipe_ptq_with_a_plan_through_compress(tiny_npz, tmp_path, capsys, one_torch_thread):
    """`qat[].layer_bits` with epochs 0: PTQ by `mbz compress`; the file records the plan; a plan naming
    no layer of the model is one line naming the recipe, the run and the layer."""
    import yaml

    from mbz.cli import main
    from mbz.models import mobilenet_v2_cifar
    torch.manual_seed(0)
    ck = tmp_path / "b.pt"
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), ck)
    plan = {"features.1.conv.0.0.weight": 2, "classifier.1.weight": 8}

    def run(layer_bits, out):
        r = {"data": {"source": f"npz:{tiny_npz}", "subset": 32}, "model": {"width_mult": 0.25},
             "baseline": {"checkpoint": str(ck)},
             "qat": [{"wbits": 4, "abits": 32, "epochs": 0, "kd": 0.0, "layer_bits": layer_bits}]}
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump(r))
        return main(["compress", "--recipe", str(p), "--out", str(tmp_path / out)])

    assert run(plan, "ok") == 0
    f = next((tmp_path / "ok" / "qat").glob("*.mbz"))
    assert "_mp" in f.name
    with mbz.open(f) as r:
        assert r.metadata["compression"]["layer_bits"] == plan and r.metadata["compression"]["epochs"] == 0
    sd = mbz.load(f)
    assert max(torch.unique(sd["features.1.conv.0.0.weight"][c]).numel() for c in range(8)) <= 3
    capsys.readouterr()
    assert run({"features.99.weight": 3}, "bad") == 2
    err = capsys.readouterr().err.strip()
    assert "r.yaml: qat[0]: layer_bits: 'features.99.weight' is no conv / linear weight" in err and "\n" not in err


@pytest.mark.slow
def test_mixed_precision_verb_scans_plans_and_writes_ptq_files(tiny_npz, tmp_path, capsys, one_torch_thread):
    from mbz.cli import main
    from mbz.models import mobilenet_v2_cifar
    torch.manual_seed(0)
    ck = tmp_path / "b.pt"
    torch.save(mobilenet_v2_cifar(width_mult=0.25).state_dict(), ck)
    out = tmp_path / "mp"
    cmd = ["mixed-precision", str(ck), "--out", str(out), "--data", f"npz:{tiny_npz}", "--val", "40", "--images", "16",
           "--bits", "2,4", "-q"]
    assert main(cmd + ["--like-bits", "3", "--ptq"]) == 0
    head, rows = mixed.read_scan(str(out / "scan.jsonl"))
    assert head["settings"]["images"] == 16 and len(rows) == 2 * len({r["name"] for r in rows}) == 2 * 53
    plan = json.loads((out / "plan_w3.json").read_text())
    u2 = mixed.plan_bytes(rows, mixed.uniform_plan(rows, 2))
    u4 = mixed.plan_bytes(rows, mixed.uniform_plan(rows, 4))
    assert plan["budget_bytes"] == (u2 + u4) // 2 and plan["scanned_bytes"] <= plan["budget_bytes"]
    assert set(plan["layer_bits"].values()) <= {2, 4} and len(plan["layer_bits"]) == 53
    with mbz.open(out / "plan_w3.mbz") as r:
        assert r.metadata["compression"]["layer_bits"] == plan["layer_bits"] and r.metadata["arch"]["folded_bn"]
    assert isinstance(mbz.load_model(out / "plan_w3.mbz"), nn.Module)
    capsys.readouterr()
    assert main(["inspect", str(out / "plan_w3.mbz")]) == 0      # ratios of the checkpoint given, not its folded copy
    in_bytes = sum(t.numel() * t.element_size() for t in torch.load(ck, weights_only=True).values())
    assert f"own dtypes {in_bytes:,} B, recorded at pack time" in capsys.readouterr().out
    assert main(cmd + ["--like-bits", "3"]) == 2                  # an output exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert main(cmd + ["--budget", str(u4)]) == 0                  # the scan is reused
    assert "scan: 106 rows from" in capsys.readouterr().out
    p4 = json.loads((out / f"plan_{u4}.json").read_text())
    base = head["base"]["loss"]
    assert p4["scanned_bytes"] <= u4 and p4["predicted_dloss"] <= mixed.predicted_dloss(rows, base, mixed.uniform_plan(rows, 4))
    assert main(cmd[:-2] + ["2,3", "-q", "--budget", "1"]) == 2    # other settings: the scan is not overwritten
    assert "other settings" in capsys.readouterr().err
    assert main(cmd + ["--budget", "1", "--force"]) == 2           # no plan fits
    assert "below the smallest plan" in capsys.readouterr().err
    assert main(cmd[:-2] + ["2,9"]) == 2
    assert "in 2..8" in capsys.readouterr().err
    assert main(cmd + ["--budget", "2bit+1000"]) == 0              # a uniform width's bytes plus a margin
    assert json.loads((out / "plan_2bit+1000.json").read_text())["budget_bytes"] == u2 + 1000
    capsys.readouterr()
    assert main(cmd + ["--budget", "5bit+10"]) == 2
    assert "5 bits is not among the --bits scanned" in capsys.readouterr().err
    assert main(cmd + ["--budget", "0"]) == 2                      # each mistake named alone
    err = capsys.readouterr().err
    assert "--budget 0: every budget must be >= 1 byte" in err and "like-bits" not in err, err
    assert main(cmd + ["--like-bits", "9"]) == 2
    err = capsys.readouterr().err
    assert "--like-bits 9: every value must lie in 2..4" in err and "--budget" not in err, err


def test_scan_bytes_are_those_of_the_grid_the_export_stores():
    # packed_bytes(bits=b) encodes the float weight on its own b-bit grid (ptq_codes), as a QAT export
    # stores it, not a grid read back off the rounded values
    from mbz.codecs.affine import Grid
    from mbz.encoder import EntropyPolicy, encode_tensor
    from mbz.spec import Granularity
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * (torch.rand(64, 32, 3, 3) > 0.9)
    total = w.numel() * 4
    for bits in (4, 6):
        k, s = mixed.ptq_codes(w, bits)
        assert torch.equal(k * s, mixed.ptq_weight(w, bits)) and k.abs().max() <= (1 << (bits - 1)) - 1
        g = Grid(k.reshape(-1).long().numpy(), s.reshape(-1).numpy(), Granularity.CHANNEL, tuple(w.shape))
        want = encode_tensor("w", w, grid=g, ent=EntropyPolicy().resolved(total)).stored_bytes
        assert mixed.packed_bytes("w", w, total, (k, s)) == want
    plain = encode_tensor("w", w, ent=EntropyPolicy().resolved(total)).stored_bytes
    assert mixed.packed_bytes("w", w, total) == plain
