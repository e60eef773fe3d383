"""Exact grid detection (mbz.detect): the screening shortcuts change the work done, never the grid found."""
import numpy as np
import pytest
import torch

import mbz.detect as det
from mbz.detect import detect_grid


def grid(rows, cols, kmax, zeros, seed, lead_zeros=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-kmax, kmax + 1, (rows, cols), generator=g).float()
    k[torch.rand(rows, cols, generator=g) < zeros] = 0
    k[:, :lead_zeros] = 0
    k[:, -1] = kmax  # every row reaches its largest code
    return k * (torch.rand(rows, 1, generator=g) + 0.05)


CASES = [(64, 1024, 127, 0.5, 0, 0), (32, 1024, 127, 0.5, 1, 600),   # nonzeros only past the probed columns
         (16, 300, 7, 0.9, 2, 0), (128, 9, 5, 0.3, 3, 0), (8, 4608, 31, 0.97, 4, 0), (200, 64, 2, 0.0, 5, 0)]


@pytest.mark.parametrize("rows,cols,kmax,zeros,seed,lead", CASES)
def test_grid_found_and_the_same_without_the_shortcuts(monkeypatch, rows, cols, kmax, zeros, seed, lead):
    t = grid(rows, cols, kmax, zeros, seed, lead)
    got = detect_grid(t)
    assert got is not None
    assert torch.equal(torch.from_numpy(got.values()).reshape(t.shape), t)
    monkeypatch.setattr(det, "_PROBE_COLS", 1 << 30)   # probe the whole row
    monkeypatch.setattr(det, "_SCREEN_BATCH", 1 << 30)  # screen every guess at once
    want = detect_grid(t)
    assert np.array_equal(got.k, want.k) and np.array_equal(got.scales, want.scales) and got.gran == want.gran


def test_no_grid_in_random_floats():
    assert detect_grid(torch.randn(64, 512)) is None


def test_pruned_row_found_by_its_smallest_gap_keeps_its_grid():
    # a 6-bit QAT channel left with two nonzero codes, 30 and -29, in a 320-wide row: neither the
    # smallest code (29 > 16) nor a qmax names the step, the gap between the two magnitudes does
    step = np.float32(0.0074615478515625)          # fp16-exact, as QAT exports it
    w = np.zeros((1, 320), np.float32)
    w[0, 31], w[0, 268] = np.float32(30) * step, np.float32(-29) * step
    g = detect_grid(torch.from_numpy(w.reshape(1, 320, 1, 1)))
    assert g is not None and np.array_equal(g.values(), w.reshape(-1))
    assert sorted(np.abs(g.k[g.k != 0]).tolist()) == [29, 30]
