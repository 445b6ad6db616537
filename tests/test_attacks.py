"""Attacks against torchattacks as a peer, analytic Newton steps, and their contracts."""

import pytest
import torch
from torch import nn

from hessbatch import HessbatchError
from hessbatch.attacks import (accuracy, adversarial_accuracy, attack, fgsm, fhsm, grad_l2, hess, ifgsm,
                               newton_direction)
from hessbatch.store import Store
from hessbatch.train import prepare, train

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """M1 (LeNet reading, fast) briefly trained on 100 digits per class, and 200 test digits."""
    store = Store(tmp_path_factory.mktemp("store"))
    run = train(dict(model="M1", reading="lenet", dataset="mnist5k", subset=100, test_subset=20, batch_size=50,
                     lr=0.05, max_epochs=6, target_loss=None), store, progress=False)
    ds = prepare(run.config)[1]
    return run.model(), ds.x_test, ds.y_test


def test_fgsm_matches_torchattacks(trained):
    model, x, y = trained
    ours = fgsm(model, x, y, 0.1)
    ref = torchattacks.FGSM(model, eps=0.1)(x, y)
    assert (ours - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_fgsm10_matches_torchattacks_bim(trained, alpha):
    model, x, y = trained
    ours = ifgsm(model, x, y, 0.1, steps=10, alpha=alpha)
    ref = torchattacks.BIM(model, eps=0.1, alpha=alpha, steps=10)(x, y)
    # torchattacks differentiates the mean loss, we the sum: a gradient entry within round-off of
    # zero can take the other sign at some step, and that image's path then leaves the other's
    # (2 of 200 images with one thread, none with two); every other image agrees exactly
    apart = ((ours - ref).abs() > 1e-6).flatten(1).any(1)
    assert apart.float().mean().item() <= 0.02, f"{apart.sum().item()} of {len(apart)} images differ"


def test_grad_matches_one_step_pgdl2(trained):
    """torchattacks differentiates the batch-mean loss, so its 1e-10 guard shrinks the steps of
    confident samples in a batch; one sample at a time (mean = sum) the definitions coincide."""
    model, x, y = trained
    pgd = torchattacks.PGDL2(model, eps=2.0, alpha=2.0, steps=1, random_start=False)
    ours = torch.cat([grad_l2(model, x[i:i + 1], y[i:i + 1], 2.0) for i in range(len(y))])
    ref = torch.cat([pgd(x[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    assert (ours - ref).abs().max().item() <= 1e-6
    # batched, only float32 rounding of the batched convolution kernels separates the two
    assert (grad_l2(model, x, y, 2.0) - ours).abs().max().item() <= 1e-3


@pytest.mark.parametrize("name,eps,norm", [("fgsm", 0.1, "inf"), ("fgsm10", 0.1, "inf"), ("grad", 2.0, 2),
                                           ("fhsm", 0.1, "inf"), ("hess", 2.0, 2)])
def test_inside_ball_and_box_and_lowers_accuracy(trained, name, eps, norm):
    model, x, y = trained
    adv = attack(name, model, x, y, eps)
    delta = (adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "inf" else delta.norm(dim=1)
    assert size.max().item() <= eps * (1 + 1e-5) and adv.min() >= 0 and adv.max() <= 1
    assert accuracy(model, adv, y) < accuracy(model, x, y) - 0.05


def test_fgsm10_at_least_as_strong_as_fgsm_with_full_steps(trained):
    model, x, y = trained
    one = adversarial_accuracy(model, x, y, "fgsm", 0.1)
    ten = adversarial_accuracy(model, x, y, "fgsm10", 0.1, alpha=0.025)
    assert ten <= one


def test_zero_epsilon_changes_nothing(trained):
    model, x, y = trained
    for name in ("fgsm", "fgsm10", "grad", "fhsm", "hess"):
        assert torch.equal(attack(name, model, x[:10], y[:10], 0.0), x[:10])


class Identity(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_newton_step_on_an_explicit_quadratic():
    """ℓ(x) = ½ xᵀAx + bᵀx: H⁻¹g = x + A⁻¹b exactly, so CG must return it."""
    torch.manual_seed(0)
    d = 6
    M = torch.randn(d, d, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, dtype=torch.float64)
    x = torch.rand(4, d, dtype=torch.float64)

    def quad(out, y):
        return (0.5 * ((out @ A) * out).sum(1) + out @ b).sum()

    s = newton_direction(Identity(), x, torch.zeros(4, dtype=torch.long), cg_iters=d, cg_tol=1e-14, loss_fn=quad)
    expected = x + torch.linalg.solve(A, b)
    torch.testing.assert_close(s, expected, rtol=1e-9, atol=1e-10)


def test_hess_direction_is_the_pseudo_inverse_solution_for_a_relu_net():
    """For a ReLU net H = Jᵀ(diag p − ppᵀ)J is singular; CG from 0 gives the minimum-norm H⁺g."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    s = newton_direction(model, x, y, cg_iters=20, cg_tol=1e-12)
    for i in range(5):
        f = lambda z: nn.functional.cross_entropy(model(z[None]), y[i:i + 1])  # noqa: E731
        H = torch.autograd.functional.hessian(f, x[i])
        g = torch.autograd.functional.jacobian(f, x[i])
        torch.testing.assert_close(s[i], torch.linalg.pinv(H, hermitian=True, rtol=1e-10) @ g, rtol=1e-6, atol=1e-9)
    inner = 0.3 + 0.4 * torch.rand(5, 8, dtype=torch.float64)  # far enough from 0 and 1: no clipping
    s = newton_direction(model, inner, y, cg_iters=20, cg_tol=1e-12)
    torch.testing.assert_close((hess(model, inner, y, 0.1, cg_tol=1e-12) - inner).norm(dim=1),
                               torch.full((5,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(fhsm(model, inner, y, 0.1, cg_tol=1e-12) - inner, 0.1 * s.sign())


@pytest.mark.parametrize("call,msg", [
    (lambda m, x, y: fgsm(m, x, y, -0.1), "epsilon must be >= 0"),
    (lambda m, x, y: attack("deepfool", m, x, y, 0.1), "unknown attack 'deepfool'"),
    (lambda m, x, y: fgsm(m, torch.rand(2, 3, 32, 32), y[:2], 0.1), "do not fit the model"),
    (lambda m, x, y: ifgsm(m, x, y, 0.1, steps=0), "steps must be a positive integer"),
])
def test_bad_input(trained, call, msg):
    model, x, y = trained
    with pytest.raises(HessbatchError, match=msg):
        call(model, x[:4], y[:4])


def test_trusted_block_skips_only_the_checks(trained):
    """Robust training validates its inputs once; inside `trusted()` the attack is unchanged."""
    from hessbatch.attacks import trusted
    from hessbatch.robust import adversarial_hook

    model, x, y = trained
    with pytest.raises(HessbatchError, match="labels must be in"):
        fgsm(model, x, y + 10, 0.1)
    checked = fgsm(model, x, y, 0.1)
    with trusted():
        assert torch.equal(fgsm(model, x, y, 0.1), checked)
    with pytest.raises(HessbatchError, match="labels must be in"):
        fgsm(model, x, y + 10, 0.1)
    hook = adversarial_hook({"attack": "fgsm", "eps": 0.1})
    model.train()
    first, _ = hook(model, x, y)
    again, _ = hook(model, x, y)
    assert model.training and torch.equal(first, again) and torch.equal(first, fgsm(model, x, y, 0.1))
