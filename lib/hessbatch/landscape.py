"""Loss landscapes: along a direction (Fig. 2/7), on a plane (Fig. 3), between two models (Fig. 5);
seeded random directions, filter-normalized (Li et al. 2018) or of unit norm.

Every function returns a tidy ``pandas.DataFrame`` with one row per (point, split):
coordinates, ``split``, ``loss`` and ``acc``. Models are evaluated in eval mode; their
weights are restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import check
from .evaluation import evaluate


@contextlib.contextmanager
def _restored(model: nn.Module):
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _flat(params) -> torch.Tensor:
    """The parameters as one flat vector, in their logical order whatever their memory layout."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def _assign(vec: torch.Tensor, params) -> None:
    """Copy a flat vector into the parameters in place, keeping each one's memory layout."""
    i = 0
    for p in params:
        p.copy_(vec[i:i + p.numel()].view(p.shape))
        i += p.numel()


def _eval_all(model, data, coords: dict) -> list[dict]:
    rows = []
    for split, d in data.items():
        loss, acc = evaluate(model, d)
        rows.append({**coords, "split": split, "loss": loss, "acc": acc})
    return rows


def random_direction(model: nn.Module, seed: int = 0, normalize: str | None = "filter") -> torch.Tensor:
    """A seeded Gaussian direction over the trainable parameters, as one flat vector.

    ``normalize="filter"`` (Li et al. 2018): each filter of the direction (a convolution's
    output channel, a linear layer's output unit: one row of the weight) is scaled to the norm
    of the same filter of the model's weights, and the entries of one-dimensional parameters
    (biases, batch-norm scales and shifts) are zero, so that a step along it is the same relative
    change for every filter however the weights are scaled (λ_max is not: Dinh et al. 2017).
    ``None``: the direction of unit norm."""
    check(normalize in (None, "filter"), f"normalize must be 'filter' or None, got {normalize!r}")
    g = torch.Generator().manual_seed(seed)
    parts = []
    for p in _params(model):
        d = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        if normalize == "filter":
            if p.dim() <= 1:
                d = torch.zeros_like(p)
            else:
                rows, w = d.reshape(len(d), -1), p.detach().reshape(len(p), -1)
                d = (rows * (w.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12))[:, None]).reshape(p.shape)
        parts.append(d.reshape(-1))
    out = torch.cat(parts)
    return out if normalize == "filter" else out / out.norm()


def along_direction(model: nn.Module, direction: torch.Tensor, alphas, data: Mapping[str, tuple]) -> pd.DataFrame:
    """L(θ* + α d) for each α, with d a flat vector over the trainable parameters.

    ``data`` maps a split name (``"train"``, ``"test"``) to an ``(inputs, targets)`` pair or a
    re-iterable of batches (a DataLoader, streamed).
    With d the unit dominant eigenvector this is the paper's Fig. 2/7.
    """
    params = _params(model)
    check(direction.numel() == sum(p.numel() for p in params),
          f"direction has {direction.numel()} entries, the model {sum(p.numel() for p in params)} parameters")
    rows = []
    with _restored(model), torch.no_grad():
        theta = _flat(params)
        d = direction.to(theta)
        for a in np.asarray(alphas, dtype=float):
            _assign(theta + a * d, params)
            rows += _eval_all(model, data, {"alpha": a})
    return pd.DataFrame(rows)


def plane(model: nn.Module, d1: torch.Tensor, d2: torch.Tensor, alphas, betas,
          data: Mapping[str, tuple]) -> pd.DataFrame:
    """L(θ* + α d1 + β d2) on the grid ``alphas`` x ``betas`` (the paper's Fig. 3)."""
    params = _params(model)
    rows = []
    with _restored(model), torch.no_grad():
        theta = _flat(params)
        d1, d2 = d1.to(theta), d2.to(theta)
        for a in np.asarray(alphas, dtype=float):
            for b in np.asarray(betas, dtype=float):
                _assign(theta + a * d1 + b * d2, params)
                rows += _eval_all(model, data, {"alpha": a, "beta": b})
    return pd.DataFrame(rows)


def interpolate(model_a: nn.Module, model_b: nn.Module, alphas, data: Mapping[str, tuple]) -> pd.DataFrame:
    """L((1 − α) θ_a + α θ_b) for each α (Fig. 5/10/11: original → robust).

    Every floating-point entry of the state (weights and batch-norm statistics) is
    interpolated; ``model_a`` is used as the work model and restored afterwards.
    """
    sa, sb = model_a.state_dict(), model_b.state_dict()
    check(sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa),
          "interpolate needs two models of the same architecture")
    a0 = {k: v.detach().clone() for k, v in sa.items()}
    rows = []
    with _restored(model_a), torch.no_grad():
        for a in np.asarray(alphas, dtype=float):
            mixed = {k: ((1 - a) * a0[k] + a * sb[k].to(a0[k])) if a0[k].is_floating_point() else a0[k]
                     for k in a0}
            model_a.load_state_dict(mixed)
            rows += _eval_all(model_a, data, {"alpha": a})
    return pd.DataFrame(rows)


def second_difference(curve: pd.DataFrame, at: float, split: str = "train") -> float:
    """Discrete curvature (L(a−h) − 2L(a) + L(a+h)) / h² of a 1-D curve at ``at``.

    Used for the check that robust models sit in flatter regions (the curve's second
    difference at α = 1 is smaller than at α = 0).
    """
    c = curve[curve["split"] == split].sort_values("alpha").reset_index(drop=True)
    a = c["alpha"].to_numpy()
    i = int(np.argmin(np.abs(a - at)))
    if i == 0:
        i = 1
    if i == len(a) - 1:
        i = len(a) - 2
    h1, h2 = a[i] - a[i - 1], a[i + 1] - a[i]
    L = c["loss"].to_numpy()
    return float(2 * (h1 * L[i + 1] - (h1 + h2) * L[i] + h2 * L[i - 1]) / (h1 * h2 * (h1 + h2)))


def end_rise(curve: pd.DataFrame) -> float:
    """Mean loss increase at the two ends of a 1-D curve over its value at α = 0 (a sharpness
    measure at the scale of the curve, where ``second_difference`` is one at the scale of a step)."""
    c = curve.sort_values("alpha")
    at0 = c.loc[(c["alpha"]).abs().idxmin(), "loss"]
    return float((c["loss"].iloc[0] + c["loss"].iloc[-1]) / 2 - at0)
