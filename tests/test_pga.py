"""PGA on two-layer networks: closed forms against autograd, sphere conditions against an analytic
quadratic, projection, and the sweep's contracts."""

import math

import numpy as np
import pytest
import torch

from hessbatch import HessbatchError, pga


@pytest.mark.parametrize("activation", ["tanh", "softplus", "relu"])
def test_loss_gradient_hessian_match_autograd(activation):
    net = pga.two_layer(6, 9, activation, seeds=2, r=1.5, seed=3)
    delta = torch.randn(2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.3
    loss, grad, hess = net.loss(delta, hessian=True)
    for s in range(2):
        for k in range(3):
            def f(d):
                z = net.W[s] @ (net.x[s] + d)
                out = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus, "relu": torch.relu}[activation](z)
                return 0.5 * ((net.a[s] @ out) / math.sqrt(9) - net.y[s]) ** 2
            d = delta[s, k]
            assert torch.allclose(loss[s, k], f(d), atol=1e-12)
            assert torch.allclose(grad[s, k], torch.autograd.functional.jacobian(f, d), atol=1e-10)
            assert torch.allclose(hess[s, k], torch.autograd.functional.hessian(f, d), atol=1e-10)


def test_projection_onto_the_ball():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    p = pga.project(d, 1.0)
    assert torch.allclose(p[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert torch.equal(p[1:], d[1:])
    assert torch.allclose(pga.project(p, 1.0), p)


def _quadratic(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)[:n]
    return Q @ torch.diag(lam) @ Q.T, lam, Q


def test_sphere_conditions_on_an_analytic_quadratic():
    """ℓ(δ) = ½δᵀAδ on ‖δ‖ ≤ ε: the maximum is ±ε·v₁ with multiplier λ₁ and tangent eigenvalues λᵢ − λ₁;
    ε·v_d is a critical point but a minimum along the sphere; δ = 0 is interior."""
    A, lam, Q = _quadratic()
    eps = 0.7
    pts = torch.stack([eps * Q[:, 0], -eps * Q[:, 0], eps * Q[:, -1], torch.zeros(5, dtype=torch.float64)])
    c = pga.sphere_conditions(pts @ A, A.expand(4, 5, 5), pts, eps)
    assert c["on_sphere"].tolist() == [True, True, True, False]
    assert c["grad_norm"][:3].max() < 1e-12
    assert torch.allclose(c["multiplier"][:3], torch.stack([lam[0], lam[0], lam[-1]]))
    assert math.isclose(c["lambda_max"][0], lam[1] - lam[0], abs_tol=1e-12)
    assert math.isclose(c["lambda_max"][2], lam[0] - lam[-1], abs_tol=1e-12)
    assert math.isclose(c["lambda_max"][3], lam[0], abs_tol=1e-12)
    assert bool(c["outward"].all())


def test_ascent_reaches_the_top_eigenvector():
    A, lam, Q = _quadratic()
    start = pga.sphere_starts((1, 6, 5), 0.5, seed=2)
    end, losses = pga.ascend(lambda d: (0.5 * ((d @ A) * d).sum(-1), d @ A), start, 0.5, 0.2, 400)
    assert losses.shape == (401, 1, 6)
    assert torch.allclose((end[0] @ Q[:, 0]).abs(), torch.full((6,), 0.5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(losses[-1], torch.full((1, 6), 0.5 * 3.0 * 0.25, dtype=torch.float64), atol=1e-9)


def test_iterations_to_fraction_of_the_gain():
    losses = torch.tensor([[0.0, 1.0], [0.5, 1.0], [0.9, 1.0], [0.9995, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert pga.iterations_to(losses, 0.999).tolist() == [3, 0]
    assert pga.iterations_to(losses, 0.5).tolist() == [1, 0]


def test_distinct_points_and_step_rules():
    pts = torch.tensor([[0.0, 1.0], [0.0, 1.0 + 1e-9], [1.0, 0.0]])
    assert pga.distinct_points(pts, 1e-6) == 2
    assert pga.step_size("fixed", 0.05, 4.0) == 0.05 and pga.step_size("scaled", 0.05, 4.0) == 0.2


def test_sweep_rows_and_theorem_checks():
    df = pga.pga_sweep([0.5, 2.0], activations=("tanh", "relu"), widths=(32,), dims=(8,), seeds=2, restarts=3,
                       steps=400)
    assert len(df) == 2 * 2 * 2 * 2 * 3
    tanh = df[(df.activation == "tanh") & (df.radius == 0.5)]
    assert tanh["on_sphere"].all() and tanh["local_max"].all()
    relu = df[df.activation == "relu"]
    assert (relu["hess_min"] >= -1e-12 * relu["hess_max"].abs()).all()      # ∇f∇fᵀ: positive semi-definite
    s = pga.summarize(df)
    assert len(s) == 8 and {"iterations", "distinct", "end_loss_cv", "local_max"} <= set(s.columns)


@pytest.mark.parametrize("kwargs, msg", [
    ({"radii": [1.0], "activations": ("sigmoid",)}, "unknown activation"),
    ({"radii": [-1.0]}, "radii must be positive"),
    ({"radii": [1.0], "step_rules": ("adaptive",)}, "unknown step rule"),
    ({"radii": [1.0], "fraction": 1.5}, "fraction"),
])
def test_bad_sweep_input(kwargs, msg):
    with pytest.raises(HessbatchError, match=msg):
        pga.pga_sweep(**kwargs)


def test_l2_pga_and_scaled_training():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 1, 4, 4, generator=g), torch.arange(60) % 3
    model = pga.TwoLayerNet(16, 8, 3)
    adv = pga.pga_l2(model, x, y, 0.5, steps=5)
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6
    assert pga._mse(model(adv), y).mean() > pga._mse(model(x), y).mean()
    df = pga.scaled_adversarial_training(x[:40], y[:40], x[40:], y[40:], scales=(0.5, 2.0), epochs=2, seeds=2,
                                         batch_size=10, width=8, steps=3)
    assert len(df) == 2 * 2 * 3
    base = float(x[:40].flatten(1).norm(dim=1).mean())
    assert np.allclose(df.groupby("scale")["eps"].first().values, [0.1 * 0.5 * base, 0.1 * 2.0 * base])


def test_chapter_options_fail_before_compute(tmp_path):
    from hessbatch.paper.chapters.instability import stability_study
    from hessbatch.paper.chapters.pga_dynamics import pga_study
    from hessbatch.store import Store

    with pytest.raises(HessbatchError, match="pga_sweep has no option.*colour"):
        pga_study({"radii": [1.0], "colour": 1}, store=Store(tmp_path))
    with pytest.raises(HessbatchError, match="pga_training has no option.*epoch\\b"):
        pga_study({"radii": [1.0]}, {"epoch": 3}, store=Store(tmp_path))
    with pytest.raises(HessbatchError, match="unknown dataset"):
        pga_study({"radii": [1.0]}, {"dataset": "svhn"}, store=Store(tmp_path))
    with pytest.raises(HessbatchError, match="neighbours must be"):
        stability_study("MLP", "mnist5k", [10], neighbours=0, store=Store(tmp_path))
    assert not any(tmp_path.iterdir())


def test_provenance_of_a_chapter_without_training_runs():
    from hessbatch.paper.presentation import provenance

    line = provenance({"profile": "smoke", "model": None, "dataset": None})
    assert "*device* cpu" in line and "training time" not in line


def test_late_training_sentence():
    import pandas as pd

    from hessbatch.paper.chapters.pga_dynamics import late_training_sentence

    rep = pd.DataFrame([{"case": "relu", "quantity": "x", "value": 0.1, "p": None},
                        {"case": "training, epoch 5", "quantity": "Spearman ρ(c, robust test accuracy)", "value": 0.6,
                         "p": 0.004}])
    assert late_training_sentence(rep) == "at epoch 5: ρ(c, robust test accuracy) = +0.60 (p = 0.004)"
    assert late_training_sentence(rep.iloc[:1]) == "no training curves were computed"
