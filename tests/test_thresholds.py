"""The stability threshold against the optimizer itself: torch's SGD on a quadratic converges just
below 2(1+β)/η and diverges just above it."""

import pytest
import torch

from hessbatch.errors import HessbatchError
from hessbatch.thresholds import stability_threshold


def _final(lam: float, lr: float, momentum: float, steps: int = 3000) -> float:
    theta = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * lam * theta ** 2).sum().backward()
        opt.step()
    return abs(theta.item())


@pytest.mark.parametrize("lr,momentum", [(0.1, 0.0), (0.01, 0.9), (0.05, 0.5)])
def test_sgd_converges_below_the_threshold_and_diverges_above(lr, momentum):
    t = stability_threshold(lr, momentum)
    assert t == pytest.approx(2 * (1 + momentum) / lr)
    assert _final(0.98 * t, lr, momentum) < 1e-3
    assert _final(1.02 * t, lr, momentum) > 1e3


def test_bad_values():
    with pytest.raises(HessbatchError, match="momentum in"):
        stability_threshold(0.1, 1.0)
