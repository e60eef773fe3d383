"""The rate term of QAT (mbz.pipeline.rate): its value is the code entropy, its gradient is usable, it agrees
with the real packed sections, and training with it makes the estimate fall."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import mbz
from mbz.pipeline.qat import export_state_dict, snap_for_export, to_qmodules
from mbz.pipeline.rate import RatePenalty, code_bits, estimate_bits, quantized_layers, section_bytes


def _net(seed=0, zeros=0.5):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 128, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (torch.rand_like(p) >= zeros))
    return net


def test_value_is_the_entropy_of_the_codes_and_the_gradient_reaches_weights_and_steps():
    torch.manual_seed(0)
    w = (torch.randn(16, 8, 3, 3) * (torch.rand(16, 8, 3, 3) > 0.3)).requires_grad_()
    step = torch.full((16,), 0.4, requires_grad=True)
    bits = code_bits(w, step, 4)
    k = torch.clamp(torch.round(w.detach() / 0.4), -7, 7).reshape(-1).numpy()
    _, c = np.unique(k, return_counts=True)
    assert float(bits.detach()) == pytest.approx(float(-(c * np.log2(c / k.size)).sum()), rel=1e-5)
    bits.backward()
    assert w.grad.abs().sum() > 0 and (step.grad < 0).all()    # a coarser step costs fewer bits
    # gradient descent on the rate alone concentrates the codes: fewer bits
    with torch.no_grad():
        w2 = w - 0.05 * w.grad / w.grad.abs().max()
    assert float(code_bits(w2, step, 4)) < float(bits)


@pytest.mark.parametrize("bits,zeros", [(2, 0.5), (4, 0.5), (4, 0.0), (6, 0.8)])
def test_estimate_within_ten_percent_of_the_packed_code_and_mask_sections(tmp_path, bits, zeros):
    m = to_qmodules(_net(zeros=zeros), bits)
    snap_for_export(m)
    est = RatePenalty(1.0).log(m)["est_weight_bytes"]
    sd, _ = export_state_dict(m)
    path = tmp_path / "m.mbz"
    mbz.save(sd, path)
    real = section_bytes(str(path), {f"{n}.weight" for n, _ in quantized_layers(m)})
    assert len(real) == 4 and all(v > 0 for v in real.values())
    assert abs(est - sum(real.values())) <= 0.10 * sum(real.values()), (est, real)
    big = "4.weight"                                               # the large tensor alone: within 5%
    assert abs(float(estimate_bits(m)["4"]) / 8 - real[big]) <= 0.05 * real[big]


def test_penalty_units_and_bad_lambda():
    m = to_qmodules(_net(), 4)
    pen = RatePenalty(2.0)
    assert float(pen.loss(m)) == pytest.approx(2.0 * float(pen.bytes(m)) / 1000)
    assert float(RatePenalty(0.0).loss(m)) == 0.0
    assert RatePenalty(0.0).log(nn.Sequential(nn.Linear(2, 2)))["est_weight_bytes"] == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate must be a finite number >= 0"):
            RatePenalty(bad)


@pytest.mark.slow
def test_training_with_the_rate_term_lowers_the_estimate(tiny_npz, one_torch_thread):
    from mbz.pipeline.data import load_dataset
    from mbz.pipeline.train import TrainConfig, train
    tr, te = load_dataset(f"npz:{tiny_npz}", "train"), load_dataset(f"npz:{tiny_npz}", "test")
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    torch.manual_seed(0)
    out = {}
    for lam in (0.0, 20.0):
        m = to_qmodules(copy.deepcopy(net), 4)
        r = train(m, tr, te, TrainConfig(epochs=3, lr=0.05, batch=32, warmup=0.5, trivial=False),
                  device=torch.device("cpu"), penalty=RatePenalty(lam))
        out[lam] = [h["est_weight_bytes"] for h in r["history"]]
        assert all(h["rate"] == lam for h in r["history"])
    assert out[20.0][-1] < 0.9 * out[0.0][-1]
    assert out[20.0][-1] < out[20.0][0]
