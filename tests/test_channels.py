"""Structured (channel) pruning: thinner blocks compute what the masked model computes, and travel in .mbz."""
import pytest
import torch

import mbz
from mbz.pipeline import channels
from mbz.models import build_model, guess_arch, mobilenet_v2_cifar

from conftest import bits_equal


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_like_model(seed=0):
    """A width-0.5 MobileNet-v2 with non-trivial BN statistics (random init has mean 0 / var 1)."""
    torch.manual_seed(seed)
    m = mobilenet_v2_cifar(width_mult=0.5)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.2, 0.6)
    return m.eval()


def test_thin_blocks_equal_masked_projection_and_reload(tmp_path):
    m = trained_like_model()
    sd = m.state_dict()
    x = torch.randn(16, 3, 32, 32)
    stats = channels.channel_stats(m, x)
    keep = channels.choose_channels(sd, stats, 0.5)
    thin = channels.thin_state_dict(sd, keep)
    hidden = channels.hidden_widths(thin)
    for i, idx in keep.items():
        assert idx.numel() == hidden[i - 1] < channels.hidden_widths(sd)[i - 1]
        assert idx.numel() % 8 == 0 and bool((idx[1:] > idx[:-1]).all())
    # removing channel c == zeroing column c of the projection (the channel then reaches nothing)
    masked = dict(sd)
    for i, idx in keep.items():
        w = sd[f"features.{i}.conv.2.weight"].clone()
        gone = torch.ones(w.shape[1], dtype=torch.bool)
        gone[idx] = False
        w[:, gone] = 0
        masked[f"features.{i}.conv.2.weight"] = w
    ref = mobilenet_v2_cifar(width_mult=0.5).eval()
    ref.load_state_dict(masked)
    arch = guess_arch(thin)
    assert arch["hidden"] == hidden
    small = build_model(arch).eval()
    small.load_state_dict(thin)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        assert torch.allclose(small(x), ref(x), atol=1e-5)
    # the file carries the thinner architecture (guess_arch finds it): load_model rebuilds it from the metadata
    p = tmp_path / "thin.mbz"
    mbz.save(thin, p, arch=guess_arch(thin), detect=False)  # random weights: no grids to find
    back = mbz.load_model(p)
    assert all(bits_equal(back.state_dict()[k], v) for k, v in thin.items())
    with torch.no_grad():
        assert torch.equal(back(x), small(x))


def test_bias_compensation_keeps_block_output_mean():
    """Folding the removed channels' mean into the projection BN moves the block output toward the original."""
    m = trained_like_model(1)
    sd = m.state_dict()
    x = torch.randn(64, 3, 32, 32)
    stats = channels.channel_stats(m, x)
    keep = channels.choose_channels(sd, stats, 0.5)
    outs = {}
    for comp in (False, True):
        thin = channels.thin_state_dict(sd, keep, stats if comp else None)
        t = build_model(guess_arch(thin)).eval()
        t.load_state_dict(thin)
        with torch.no_grad():
            outs[comp] = t.features(x)
    with torch.no_grad():
        want = m.features(x)
    err = {c: (o.mean(dim=(0, 2, 3)) - want.mean(dim=(0, 2, 3))).abs().mean().item() for c, o in outs.items()}
    assert err[True] < err[False]


def test_keep_count_rounding():
    assert channels.keep_count(96, 0.25) == 72
    assert channels.keep_count(96, 0.99) == 8        # never fewer than one multiple
    assert channels.keep_count(20, 0.0, 8) == 20     # never more than there are
    assert channels.keep_count(960, 0.5) == 480


def test_unthinned_checkpoints_keep_their_arch():
    sd = mobilenet_v2_cifar().state_dict()
    assert "hidden" not in guess_arch(sd)


def test_sensitivity_scan_restores_model_and_caps_fragile_layers():
    from mbz.pipeline.data import ArrayDataset, normalize
    from mbz.pipeline.prune import global_magnitude_masks
    from mbz.pipeline.sensitivity import caps_from, layer_mask, scan
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    # solid-colour images: the untrained net tells them apart; labels = its own predictions (top-1 100)
    colours = torch.randint(0, 256, (60, 1, 1, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    imgs = colours.expand(60, 32, 32, 3).contiguous()
    with torch.no_grad():
        labels = m(normalize(imgs)).argmax(1)
    assert labels.unique().numel() > 1
    ds = ArrayDataset(imgs, labels, [str(i) for i in range(10)], "synthetic")
    names = ["0.weight", "4.weight"]
    rows = scan(m, ds, (0.5, 1.0))
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())   # every layer restored
    assert [(r["name"], r["sparsity"]) for r in rows] == [(n, s) for n in names for s in (0.5, 1.0)]
    assert all(r["top1"] < 100 for r in rows if r["sparsity"] == 1.0)          # an emptied layer hurts
    worst = min(rows, key=lambda r: r["top1"])
    caps = caps_from(rows, 100.0, tolerance=100 - worst["top1"] - 0.01)
    assert worst["name"] in caps and caps[worst["name"]] in (0.0, 0.5)
    assert caps_from(rows, 100.0, tolerance=100.0) == {}                        # nothing breaks a loose tolerance
    # the caps hold under global pruning, and the other layers make up the target
    sd = m.state_dict()
    target = 0.3 * (1 + max(caps.values()))
    masks = global_magnitude_masks(sd, target, caps=caps)
    for n, c in caps.items():
        assert 1 - masks[n].float().mean().item() <= c + 1e-6
    zeros = sum(int((~mk).sum()) for mk in masks.values())
    assert abs(zeros - target * sum(mk.numel() for mk in masks.values())) <= len(masks)
    with pytest.raises(ValueError, match="caps"):
        global_magnitude_masks(sd, 0.999, caps={n: 0.0 for n in names})
    assert layer_mask(torch.tensor([3.0, -1.0, 2.0, 0.5]), 0.5).tolist() == [True, False, True, False]


def test_prune_channels_cli(tiny_npz, tmp_path, capsys):
    """`mbz prune-channels` writes a thinner .mbz that load_model rebuilds, its layers and a row of channels.jsonl."""
    prune_channels_cli(tiny_npz, tmp_path, capsys)


def prune_channels_cli(tiny_npz, tmp_path, capsys):
    import json
    from mbz.cli import main
    ck = tmp_path / "base.pt"
    torch.save(trained_like_model(3).state_dict(), ck)
    out = tmp_path / "thin"
    argv = ["prune-channels", str(ck), "--ratios", "0.25", "--data", f"npz:{tiny_npz}", "--calib", "32",
            "--out", str(out)]
    assert main(argv) == 0
    lines = (out / "channels.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    assert json.loads(lines[-1]) == {"command": "mbz " + " ".join(argv)}
    assert row["params_after"] < row["params_before"] and row["fine_tuned"] is False
    assert row["test_images"] == 40 and 0 <= row["top1_plain"] <= 100
    thin = mbz.load(out / "thin_r0.25.mbz")
    assert channels.hidden_widths(thin) == row["hidden"] == mbz.open(out / "thin_r0.25.mbz").metadata["arch"]["hidden"]
    assert row["file_bytes"] == (out / "thin_r0.25.mbz").stat().st_size
    assert mbz.load_model(out / "thin_r0.25.mbz") is not None
    layers = json.loads((out / "thin_r0.25.layers.json").read_text())
    assert layers and [b["hidden_after"] for b in layers] == [row["hidden"][b["block"] - 1] for b in layers]
    # an existing output is kept without --force
    capsys.readouterr()
    before = (out / "channels.jsonl").read_bytes()
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert (out / "channels.jsonl").read_bytes() == before
    return out, row


@pytest.mark.slow
def test_prune_channels_then_train_init_cli(tiny_npz, tmp_path, capsys):
    """`mbz prune-channels` writes a thinner .mbz; `mbz train --init` fine-tunes it with its own shapes."""
    import json
    import subprocess
    import sys
    out, row = prune_channels_cli(tiny_npz, tmp_path, capsys)
    thin = mbz.load(out / "thin_r0.25.mbz")
    run = tmp_path / "ft"
    subprocess.run([sys.executable, "-m", "mbz.cli", "train", "--data", f"npz:{tiny_npz}", "--init",
                    str(out / "thin_r0.25.mbz"), "--epochs", "1", "--batch", "32", "--lr", "0.01", "--out", str(run)],
                   check=True, capture_output=True)
    summary = json.loads((run / "baseline.json").read_text())
    assert summary["arch"]["hidden"] == row["hidden"]
    tuned = torch.load(run / "baseline.pt", weights_only=True)
    assert all(tuned[k].shape == v.shape for k, v in thin.items())


def test_sensitivity_and_activations_cli(tiny_npz, tmp_path, capsys):
    """`mbz sensitivity` writes the scan, the heat map and the caps; --recap recomputes the caps (with --force);
    `mbz activations` writes its JSON and Markdown and finds the logits unchanged."""
    import json
    from mbz.cli import main
    from mbz.models import guess_arch
    ck = tmp_path / "base.pt"
    torch.manual_seed(2)
    sd = mobilenet_v2_cifar(width_mult=0.25).state_dict()
    torch.save(sd, ck)
    out = tmp_path / "sens"
    assert main(["sensitivity", str(ck), "--data", f"npz:{tiny_npz}", "--images", "4", "--levels", "1",
                 "--tolerance", "0", "--out", str(out), "-q"]) == 0
    head, *rows = [json.loads(x) for x in (out / "sensitivity.jsonl").read_text().splitlines()]
    assert head["images"] == 4 and head["command"].startswith("mbz sensitivity ")
    n_layers = len({r["name"] for r in rows})
    assert len(rows) == n_layers > 50 and {r["sparsity"] for r in rows} == {1.0}
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    caps = json.loads((out / "caps.json").read_text())
    assert caps["tolerance"] == 0 and caps["baseline_top1"] == head["baseline_top1"]
    assert main(["sensitivity", "--recap", "--tolerance", "100", "--out", str(out)]) == 2     # caps.json exists
    assert main(["sensitivity", "--recap", "--tolerance", "100", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "caps.json").read_text())["caps"] == {}
    # activations of a packed model
    p = tmp_path / "m.mbz"
    mbz.save(sd, p, arch=guess_arch(sd), detect=False)
    capsys.readouterr()
    assert main(["activations", str(p), "--batch", "2", "--out", str(tmp_path / "act"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((tmp_path / "act" / "activations.json").read_text())
    assert res["batch1"]["logits_unchanged"] and res["batch2"]["batch"] == 2
    assert (tmp_path / "act" / "activations.md").read_text().startswith(f"# Activation memory of {p}")


def test_bad_arch_metadata_raises_mbz_error(tmp_path):
    from mbz.errors import MbzError
    sd = mobilenet_v2_cifar(width_mult=0.25).state_dict()
    for arch in ({"name": "mobilenet_v2_cifar", "width_mult": 0.25, "hidden": [-3] * 17},
                 {"name": "mobilenet_v2_cifar", "width_mult": 0.25, "hidden": [8] * 5},
                 {"name": "mobilenet_v2_cifar", "width_mult": "wide"},
                 {"name": "mobilenet_v2_cifar", "bogus": 1, "num_classes": -2}):
        p = tmp_path / "m.mbz"
        with pytest.raises(MbzError):  # mbz.save checks an arch before writing; the core writes what it is given
            mbz.save(sd, p, arch=arch, detect=False)
        mbz.api.save(sd, p, arch=arch, detect=False)
        try:
            mbz.load_model(p)
        except MbzError as e:
            assert "arch" in str(e) or "hidden" in str(e)
        else:
            raise AssertionError(f"{arch} loaded")


@pytest.mark.parametrize("width", [0.35, 1.0, 1.4])
def test_guess_arch_finds_the_width_whose_channels_match(width):
    """stem/32 is wrong for 0.35 (stem 16) and 1.4 (stem 48): the guess must rebuild every shape."""
    sd = mobilenet_v2_cifar(width_mult=width).state_dict()
    arch = guess_arch(sd)
    assert arch["width_mult"] == width
    build_model(arch).load_state_dict(sd)  # strict: every shape matches
