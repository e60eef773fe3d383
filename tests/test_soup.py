"""Uniform soup of QAT copies of one pruned model: grids, zeros, averages and refusals."""
import os

import numpy as np
import pytest
import torch

from mbz.detect import detect_grid
from mbz.pipeline.soup import average_state_dicts, soup_metadata, soup_state_dicts, widths_of


def _mask(rng, pruned: float) -> torch.Tensor:
    """A (6, 8, 3, 3) zero pattern, about `pruned` of it zero, the last input channel's first tap kept."""
    mask = torch.from_numpy(rng.random((6, 8, 3, 3)) > pruned).float()
    mask[:, -1, 0, 0] = 1
    return mask


def _copies_on_grid(rng, mask, n, qmax=7):
    """n QAT-like copies: 4-bit per-channel weights near one another (codes +-1 apart, steps
    1% apart) with the given zero pattern, and fp16 biases."""
    k0 = torch.from_numpy(rng.integers(3, qmax, size=mask.shape) * rng.choice([-1, 1], size=mask.shape))
    k0[0, 0, 0, 0], k0[:, -1, 0, 0] = qmax - 1, -(qmax - 1)
    s0 = rng.uniform(0.01, 0.05, size=(mask.shape[0], 1, 1, 1))
    out = []
    for _ in range(n):
        k = (k0 + torch.from_numpy(rng.integers(-1, 2, size=mask.shape))).float() * mask
        s = torch.from_numpy(s0 * rng.uniform(0.99, 1.01, size=s0.shape)).float().half().float()
        out.append({"conv.weight": (k * s).float(), "conv.bias": torch.from_numpy(rng.standard_normal(6)).half(),
                    "steps": torch.tensor(3)})
    return out


def test_soup_puts_weights_back_on_a_4bit_grid_keeping_zeros():
    rng = np.random.default_rng(0)
    mask = _mask(rng, 0.7)
    sds = _copies_on_grid(rng, mask, 3)
    out, report = soup_state_dicts(sds)
    w = out["conv.weight"]
    g = detect_grid(w)
    assert g is not None and int(np.abs(g.k).max()) <= 7          # on a 4-bit symmetric grid
    assert torch.equal(w == 0, mask == 0)                           # zeros exactly where they were
    assert not torch.signbit(w[w == 0]).any()                        # and +0.0, never -0.0
    avg = torch.stack([sd["conv.weight"].double() for sd in sds]).mean(0)
    assert torch.equal(average_state_dicts(sds)["conv.weight"], avg.float())   # the plain average, off the grid
    assert detect_grid(avg.float()) is None or int(np.abs(detect_grid(avg.float()).k).max()) > 7
    # each weight within half a step of the average, or clipped to +-7 steps (steps per output channel)
    step = torch.from_numpy(np.asarray(g.scales, np.float64)).view(-1, 1, 1, 1)
    inside = avg.abs() <= 7 * step
    assert ((w.double() - avg).abs() <= step / 2 + 1e-7)[inside].all()
    assert torch.equal(w.double()[~inside], (7 * step * avg.sign()).expand_as(avg)[~inside].float().double())
    assert report["conv.weight"]["bits"] == 4
    mean_step = torch.stack([torch.from_numpy(np.asarray(detect_grid(sd["conv.weight"]).scales, np.float64))
                             for sd in sds]).mean(0).float().half().float()
    g_mean = detect_grid(soup_state_dicts(sds, "mean")[0]["conv.weight"])
    assert np.array_equal(np.asarray(g_mean.scales, np.float32), mean_step.numpy())
    with pytest.raises(ValueError, match="steps must be"):
        soup_state_dicts(sds, "median")
    bias = torch.stack([sd["conv.bias"].double() for sd in sds]).mean(0)
    assert out["conv.bias"].dtype == torch.float16 and torch.allclose(out["conv.bias"].double(), bias, atol=2e-3)
    assert torch.equal(out["steps"], torch.tensor(3))


def test_soup_zero_in_one_input_only_gets_the_average_and_refusals():
    rng = np.random.default_rng(1)
    mask = _mask(rng, 0.5)
    mask[1, 2, 1, 1] = 1
    a, b = _copies_on_grid(rng, mask, 2)
    b["conv.weight"][1, 2, 1, 1] = 0.0
    out, report = soup_state_dicts([a, b])
    assert out["conv.weight"][1, 2, 1, 1] > 0
    assert report["conv.weight"]["zeros_out"] == int((mask == 0).sum())
    assert report["conv.weight"]["zeros_in"][1] == int((mask == 0).sum()) + 1
    # a small negative average rounds to -0.0 unless the soup turns it into +0.0
    a2 = dict(a, **{"conv.weight": a["conv.weight"].clone()})
    step1 = float(np.asarray(detect_grid(a["conv.weight"]).scales).reshape(-1)[1])
    a2["conv.weight"][1, 2, 1, 1] = -step1                           # code -1 in one input, 0 in two
    w2 = soup_state_dicts([a2, b, b])[0]["conv.weight"]
    assert w2[1, 2, 1, 1] == 0 and not torch.signbit(w2[1, 2, 1, 1])
    with pytest.raises(ValueError, match="names differ"):
        soup_state_dicts([a, {"other": a["conv.weight"]}])
    with pytest.raises(ValueError, match="at least 2"):
        soup_state_dicts([a])
    c = dict(b, **{"conv.weight": b["conv.weight"] * 1.001 + 1e-4})   # not on any grid
    with pytest.raises(ValueError, match="conv.weight.*input 1 is not"):
        soup_state_dicts([a, c])


def test_soup_metadata_averages_activation_ranges():
    m1 = {"arch": {"act_bits": 8, "act_alpha": {"a": 2.0, "b": 6.0}}, "top1_qat_eval": 91.0}
    m2 = {"arch": {"act_bits": 8, "act_alpha": {"a": 4.0, "b": 5.0}}, "top1_qat_eval": 90.0}
    meta = soup_metadata([m1, m2], ["x.mbz", "y.mbz"])
    assert meta["arch"]["act_alpha"] == {"a": 3.0, "b": 5.5}
    assert "top1_qat_eval" not in meta and meta["soup"]["inputs"] == ["x.mbz", "y.mbz"]
    with pytest.raises(ValueError, match="act_alpha"):
        soup_metadata([m1, {"arch": {"act_alpha": {"a": 1.0}}}], ["x", "y"])


def test_soup_and_reduce_verbs_write_new_files_and_refuse_to_overwrite(tmp_path, capsys):
    import json

    import mbz
    from mbz.cli import main
    rng = np.random.default_rng(2)
    mask = _mask(rng, 0.6)
    files = []
    for i, sd in enumerate(_copies_on_grid(rng, mask, 3)):
        files.append(str(tmp_path / f"run{i}.mbz"))
        mbz.save(sd, files[-1], metadata={"compression": {"wbits": 4}, "top1_qat_eval": 90.0 + i})
    out = str(tmp_path / "soup.mbz")
    assert main(["soup", *files, "-o", out, "--data", "none"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["files"] == files and row["bytes"] == os.path.getsize(out) and "float_average" not in row
    with mbz.open(out) as r:
        assert r.metadata["soup"]["inputs"] == [os.path.basename(f) for f in files]
        assert "top1_qat_eval" not in r.metadata and r.metadata["compression"] == {"wbits": 4}
    want = soup_state_dicts([mbz.load(f) for f in files])[0]
    got = mbz.load(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert main(["soup", *files, "-o", out, "--data", "none"]) == 2          # exists: --force needed
    assert main(["soup", files[0], "-o", str(tmp_path / "one.mbz"), "--data", "none"]) == 2
    assert main(["soup", *files, "-o", files[0], "--data", "none", "--force"]) == 2   # the output is an input
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "--force" in err[0] and "two" in err[1] and "input" in err[2]

    small = str(tmp_path / "soup.small.mbz")
    assert main(["reduce", out, "-o", small, "--scale-bits", "8", "--bias-bits", "8", "--data", "none"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["bytes_after"] == os.path.getsize(small) and row["scale_bits"] == 8
    red = mbz.load(small)
    assert torch.equal(red["conv.weight"] == 0, got["conv.weight"] == 0) and torch.equal(red["steps"], got["steps"])
    with mbz.open(small) as r:
        assert r.metadata["reduced_params"] == {"from": "soup.mbz", "scale_bits": 8, "bias_bits": 8}
    assert main(["reduce", out, "-o", small, "--data", "none"]) == 2
    assert main(["reduce", out, "-o", str(tmp_path / "x.mbz"), "--scale-bits", "30", "--data", "none"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_soup_takes_each_layers_width_from_the_inputs_metadata(monkeypatch):
    # a channel whose grid the values alone do not name (detection fails on input 1): with the width the
    # inputs were trained at (metadata 'compression'), the soup snaps it to that width all the same
    import mbz.pipeline.soup as soup
    rng = np.random.default_rng(3)
    mask = _mask(rng, 0.5)
    sds = _copies_on_grid(rng, mask, 2, qmax=31)
    real = soup.detect_grid
    monkeypatch.setattr(soup, "detect_grid", lambda t: None if t is sds[1]["conv.weight"] else real(t))
    with pytest.raises(ValueError, match="input 1 is not"):
        soup_state_dicts(sds)
    metas = [{"compression": {"wbits": 4, "layer_bits": {"conv.weight": 6}}}] * 2
    widths = widths_of(metas, sds[0])
    assert widths == {"conv.weight": 6}
    out, report = soup_state_dicts(sds, "mse", widths)
    g = real(out["conv.weight"])
    assert report["conv.weight"]["bits"] == 6 and g is not None and int(np.abs(g.k).max()) <= 31
    assert torch.equal(out["conv.weight"] == 0, mask == 0)
    with pytest.raises(ValueError, match="4-bit weights in input 1, 6-bit weights in input 0"):
        widths_of([metas[0], {"compression": {"wbits": 4}}], sds[0])
    assert widths_of([{}, metas[0]], sds[0]) is None


def test_soup_refuses_models_that_are_not_copies_and_keeps_identical_tensors():
    # two prunings of one network to other sparsities, or two unrelated networks: refused, naming the tensor;
    # a tensor the same in every input comes out unchanged (a soup of a file with itself is the file)
    rng = np.random.default_rng(5)
    mask = _mask(rng, 0.7)
    sds = _copies_on_grid(rng, mask, 2)
    other = {k: v.clone() for k, v in sds[1].items()}
    other["conv.weight"] = sds[1]["conv.weight"].abs() + 0.1          # no zeros left: a denser pruning
    with pytest.raises(ValueError, match=r"tensor 'conv.weight': input 1 is pruned unlike input 0"):
        soup_state_dicts([sds[0], other])
    other["conv.weight"] = -sds[1]["conv.weight"]                     # the same zeros, opposite weights
    with pytest.raises(ValueError, match=r"tensor 'conv.weight': input 1 is not a copy .* cosine similarity -0.9"):
        soup_state_dicts([sds[0], other])
    out, _ = soup_state_dicts([sds[0], {k: v.clone() for k, v in sds[0].items()}])
    assert all(torch.equal(out[k], sds[0][k]) for k in out)
    out, _ = soup_state_dicts(sds)                                    # real copies still average
    assert not torch.equal(out["conv.weight"], sds[0]["conv.weight"])


def test_soup_takes_dense_copies_that_round_other_weights_to_zero_and_refuses_other_sparsities():
    # weights QAT rounds to zero in one run only (a step from zero in the other) do not make copies differ;
    # a model pruned to 80% against one pruned to 50% does (positions several steps large in one, zero in the other)
    from mbz.pipeline.mixed import ptq_weight
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    sd = lambda t: {"conv.weight": t}  # noqa: E731
    for bits in (4, 8):
        soup_state_dicts([sd(ptq_weight(w, bits)), sd(ptq_weight(w + 0.3 * torch.randn_like(w), bits))])
        cut = lambda share: w * (w.abs() > w.abs().flatten().kthvalue(int(share * w.numel())).values)  # noqa: E731
        soup_state_dicts([sd(ptq_weight(cut(0.8), bits)), sd(ptq_weight(cut(0.8) + 0.01 * torch.randn_like(w), bits)
                                                             * (cut(0.8) != 0))])
        with pytest.raises(ValueError, match=r"input 1 is pruned unlike input 0: [\d,]+ weights are zero in one"):
            soup_state_dicts([sd(ptq_weight(cut(0.5), bits)), sd(ptq_weight(cut(0.8), bits))])


def test_soup_refuses_a_float_input_beside_quantized_ones_in_either_order_and_takes_names_in_any_order():
    rng = np.random.default_rng(7)
    mask = _mask(rng, 0.5)
    sds = _copies_on_grid(rng, mask, 2)
    flt = {k: v.clone() for k, v in sds[1].items()}
    flt["conv.weight"] = sds[1]["conv.weight"] + 1e-3 * torch.randn(6, 8, 3, 3) * mask
    with pytest.raises(ValueError, match="input 1 is quantized .on a grid., input 0 is not"):
        soup_state_dicts([flt, sds[0]])
    with pytest.raises(ValueError, match="input 0 is quantized .on a grid., input 1 is not"):
        soup_state_dicts([sds[0], flt])
    out, _ = soup_state_dicts([sds[0], dict(reversed(list(sds[1].items())))])
    assert list(out) == list(sds[0])


def test_soup_reads_the_width_of_pack_wbits_files_and_names_a_mismatch(tmp_path, capsys):
    """`pack --wbits` files record their width under 'lossy': a soup of 4- and 8-bit packs of one checkpoint
    is refused naming the tensor and both widths; tensors its include pattern leaves out are float."""
    from mbz.cli import main
    metas = [{"lossy": {"wbits": 4, "include": ".*weight$"}}, {"lossy": {"wbits": 8, "include": ".*weight$"}}]
    sd = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(4), "emb.table": torch.randn(4, 2)}
    assert widths_of(metas[:1] * 2, sd) == {"conv.weight": 4}
    with pytest.raises(ValueError, match="'conv.weight': 8-bit weights in input 1, 4-bit weights in input 0"):
        widths_of(metas, sd)
    with pytest.raises(ValueError, match="'emb.table': 4-bit weights in input 1, float"):
        widths_of([metas[0], {"lossy": {"wbits": 4, "include": ".*"}}], sd)
    assert widths_of([metas[0], {}], sd) is None
    g = torch.Generator().manual_seed(0)
    ck = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(16, 8, 3, 3, generator=g), "conv.bias": torch.randn(16, generator=g)}, ck)
    for b in (4, 8):
        assert main(["pack", str(ck), "-o", str(tmp_path / f"w{b}.mbz"), "--wbits", str(b), "-q"]) == 0
    capsys.readouterr()
    assert main(["soup", str(tmp_path / "w4.mbz"), str(tmp_path / "w8.mbz"), "-o", str(tmp_path / "s.mbz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'conv.weight': 8-bit weights in input 1, 4-bit weights in input 0" in err, err
    assert not (tmp_path / "s.mbz").exists()


def test_a_soup_of_per_tensor_inputs_keeps_one_step_per_tensor(tmp_path, capsys):
    """Inputs packed with one weight step per tensor: the soup snaps each weight tensor to one step too
    (one scale per output channel would be bytes the inputs did not have); granularities that differ
    are refused."""
    import os

    import mbz
    from mbz.cli import main
    from mbz.detect import detect_grid
    from mbz.pipeline.soup import granularity_of
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 32, 3, 3, generator=g) * torch.linspace(0.2, 2, 64)[:, None, None, None]
    files = []
    for i in range(2):
        ck = tmp_path / f"m{i}.pt"
        torch.save({"conv.weight": base + 0.02 * torch.randn(base.shape, generator=g)}, ck)
        files.append(str(tmp_path / f"m{i}.mbz"))
        assert main(["pack", str(ck), "-o", files[-1], "--wbits", "8", "--granularity", "tensor", "-q"]) == 0
    out = tmp_path / "soup.mbz"
    assert main(["soup", *files, "-o", str(out), "--data", "none"]) == 0
    grid = detect_grid(mbz.load(out)["conv.weight"])
    assert grid is not None and np.asarray(grid.scales).size == 1
    assert out.stat().st_size < 1.05 * max(os.path.getsize(f) for f in files)
    assert granularity_of([{"lossy": {"granularity": "tensor"}}, {"compression": {"granularity": "tensor"}}]) == "tensor"
    assert granularity_of([{"lossy": {"granularity": "tensor"}}, {}]) is None
    with pytest.raises(ValueError, match="input 1 has one weight step per channel, input 0 per tensor"):
        granularity_of([{"lossy": {"granularity": "tensor"}}, {"compression": {"granularity": "channel"}}])



def test_a_soup_refuses_inputs_it_cannot_re_snap_and_a_log_it_cannot_write(tmp_path, capsys):
    """Rate-distortion (--step) packs, per-group or asymmetric steps, and BatchNorms rewritten for inference in
    one input only are refused in words; a --log in a missing folder is refused before anything is written."""
    from mbz.pipeline.soup import check_soupable
    plain = {"lossy": {"wbits": 8, "granularity": "channel", "symmetric": True}}
    check_soupable([plain, plain, {}])
    for other, words in (({"lossy": {"step": 0.05}}, "rate-distortion"),
                         ({"lossy": {"wbits": 4, "granularity": "group"}}, "per group"),
                         ({"lossy": {"wbits": 4, "symmetric": False}}, "asymmetric"),
                         ({**plain, "bn_affine": ["bn1"]}, "rewritten for inference")):
        with pytest.raises(ValueError, match=words):
            check_soupable([plain, other])
    import mbz
    from mbz.cli import main
    rng = np.random.default_rng(2)
    mask = _mask(rng, 0.6)
    files = []
    for i, sd in enumerate(_copies_on_grid(rng, mask, 2)):
        files.append(str(tmp_path / f"run{i}.mbz"))
        mbz.save(sd, files[-1], metadata={"compression": {"wbits": 4}})
    out = tmp_path / "soup.mbz"
    assert main(["soup", *files, "-o", str(out), "--log", str(tmp_path / "no" / "log.jsonl")]) == 2
    assert "--log" in capsys.readouterr().err and not out.exists()
