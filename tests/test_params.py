"""Reduced-precision weight scales and biases (mbz/pipeline/params.py)."""
import numpy as np
import torch

import mbz
from mbz.detect import detect_grid
from mbz.pipeline.params import grid_bias, reduce_float_params, round_significand


def test_round_significand_matches_bfloat16_and_float16():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(50_000) * np.exp(rng.uniform(-8, 8, 50_000))).astype(np.float32)
    want_bf16 = torch.from_numpy(x).bfloat16().float().numpy()
    assert np.array_equal(round_significand(x, 8).view(np.uint32), want_bf16.view(np.uint32))
    want_fp16 = torch.from_numpy(x).half().float().numpy()
    normal = (np.abs(x) > 1e-4) & (np.abs(x) < 6e4)
    assert np.array_equal(round_significand(x, 11)[normal].view(np.uint32), want_fp16[normal].view(np.uint32))


def _grid_state_dict():
    g = torch.Generator().manual_seed(1)
    k = torch.randint(-7, 8, (64, 32, 3, 3), generator=g).float()
    k[torch.rand(k.shape, generator=g) < 0.8] = 0
    scales = (torch.rand(64, generator=g) * 0.05 + 1e-3)  # arbitrary fp32 scales, 24 significant bits
    w = k * scales.view(-1, 1, 1, 1)
    b = torch.randn(64, generator=g).half()
    return {"conv.weight": w, "conv.bias": b, "bn.running_var": torch.rand(64, generator=g)}, k


def test_reduce_keeps_codes_and_grids_and_shrinks_the_file(tmp_path):
    sd, k = _grid_state_dict()
    new, report = reduce_float_params(sd, scale_bits=8, bias_bits=8)
    g = detect_grid(new["conv.weight"])
    assert g is not None
    assert np.array_equal(g.k.reshape(k.shape), k.numpy().astype(g.k.dtype))  # every code (and zero) unchanged
    assert (g.scales.view(np.uint32) & 0xFFFF == 0).all()                     # 8 significant bits
    rel = (new["conv.weight"] - sd["conv.weight"]).abs().max() / sd["conv.weight"].abs().max()
    assert 0 < rel <= 2 ** -8
    bias = new["conv.bias"]
    gb = detect_grid(bias)
    assert gb is not None and gb.scales.size == 1 and np.abs(gb.k).max() <= 127
    assert (bias - sd["conv.bias"].float()).abs().max() <= gb.scales[0] / 2 + 1e-12
    assert torch.equal(new["bn.running_var"], sd["bn.running_var"])           # other floats untouched
    assert set(report) == {"conv.weight", "conv.bias"}
    a, b = tmp_path / "before.mbz", tmp_path / "after.mbz"
    mbz.save(sd, a)
    mbz.save(new, b)
    assert b.stat().st_size < a.stat().st_size
    back = mbz.load(b)
    assert all(torch.equal(back[n].view(torch.int32), new[n].float().view(torch.int32)) for n in new
               if new[n].dtype == torch.float32)


def test_grid_bias_all_zero_and_range():
    assert torch.equal(grid_bias(torch.zeros(5), 8), torch.zeros(5))
    b = torch.tensor([-3.0, 0.001, 2.5])
    q = grid_bias(b, 4)
    assert (q - b).abs().max() <= 3.0 / 7 / 2 * 1.01
