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


def test_a_runs_threshold_follows_its_learning_rate_schedule():
    from hessbatch.config import TrainConfig
    from hessbatch.thresholds import threshold_after

    base = {"model": "MLP", "dataset": "mnist5k", "batch_size": 64, "lr": 0.01, "momentum": 0.9}
    const = TrainConfig.from_dict(base).resolved()
    assert threshold_after(const, 0) == threshold_after(const, 7) == pytest.approx(380.0)
    scaled = TrainConfig.from_dict({**base, "lr_scaling": "linear", "lr_base_batch": 16, "warmup_epochs": 4}).resolved()
    assert threshold_after(scaled, 1) == pytest.approx(380.0)        # the first epoch runs at the base lr
    assert threshold_after(scaled, 3) == pytest.approx(3.8 / 0.025)  # warm-up: lr at epoch 2 of 4 is 0.01 + 0.03·2/4
    assert threshold_after(scaled, 10) == pytest.approx(3.8 / 0.04)  # after it, 4× the base lr
