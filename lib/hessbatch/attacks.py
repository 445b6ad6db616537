"""The paper's five attacks (its Table 5), in pixel space [0, 1].

=========  ======  ==============================================================
name       norm    perturbation (g = ∇ₓℓ, H = ∇²ₓℓ)
=========  ======  ==============================================================
fgsm       L∞      ε · sign(g)                              (Goodfellow et al.)
fgsm10     L∞      10 steps of α · sign(g), projected to the ε-ball (Kurakin et al.)
grad       L2      ε · g / ‖g‖₂                             (the paper's "GRAD")
fhsm       L∞      ε · sign(H⁻¹g)                           second order
hess       L2      ε · H⁻¹g / ‖H⁻¹g‖₂                        second order
=========  ======  ==============================================================

Every attack clips to [0, 1]. H⁻¹g is an inexact Newton step: conjugate gradients on
per-sample input-Hessian-vector products, valid because H ⪰ 0 for ReLU networks with
cross-entropy (Theorem 1). H has rank ≤ c − 1, yet g lies in its range, so CG started
at 0 converges to the minimum-norm solution in at most c − 1 steps. The paper's CG
settings were not recovered: ``cg_iters``, ``cg_tol`` (the forcing term: stop when
‖Hs − g‖ ≤ cg_tol·‖g‖) and ``damping`` are our parameters.

FGSM-10's step α was not recovered either. Our default α = ε/10 keeps the ten steps
inside the ε-ball, so the final perturbation can be smaller than FGSM's; this is
consistent with the paper's Table 3 (FGSM-10 weaker than FGSM on MNIST) and Table 4
(stronger on CIFAR-10). It is a default, not the paper's value.

All attacks run the model in eval mode (restoring its mode after) and return detached adversarial inputs. Gradients
are per sample (of the summed loss), so a sample's attack does not depend on its batch.
(torchattacks differentiates the batch-mean loss; with its 1e-10 guard in L2 steps, the
two agree one sample at a time.)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import progress as progress_mod
from .errors import HessbatchError, check, choose
from .evaluation import accuracy, eval_mode, pass_chunk


def check_eps(eps) -> float:
    """An attack radius: a finite number >= 0 (0 gives the clean inputs)."""
    check(isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0,
          f"epsilon must be >= 0 and finite, got {eps!r}")
    return float(eps)


def _loss_sum(out, y):
    return F.cross_entropy(out, y, reduction="sum")


_TRUSTED = contextvars.ContextVar("hessbatch_attack_inputs_trusted", default=False)


@contextlib.contextmanager
def trusted():
    """Skip the input checks (a forward pass and a device sync per call) inside this block:
    for loops that call an attack many times on inputs already checked once (robust training)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _check(model, x, y, eps):
    if _TRUSTED.get():
        return
    check_eps(eps)
    check(len(x) == len(y), f"{len(x)} inputs but {len(y)} targets")
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as e:
        raise HessbatchError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model: "
                             f"{str(e).splitlines()[0]}") from None
    if y.numel() and (int(y.max()) >= out.shape[1] or int(y.min()) < 0):
        raise HessbatchError(f"labels must be in 0..{out.shape[1] - 1} for this model, got {int(y.max())}")


def _attack(fn):
    """What every attack shares: its inputs checked (outside ``trusted``), the model in eval mode
    while it runs and in the caller's mode after."""
    @functools.wraps(fn)
    def wrapper(model, x, y, eps, *args, **options):
        with eval_mode(model):
            _check(model, x, y, eps)
            return fn(model, x, y, eps, *args, **options)

    return wrapper


def _bshape(x):
    return (-1,) + (1,) * (x.dim() - 1)


def _grad(model, x, y, loss_fn=_loss_sum):
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(loss_fn(model(x), y), x)[0]


@_attack
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: x + ε·sign(∇ₓℓ), clipped to [0, 1]."""
    return (x + eps * _grad(model, x, y).sign()).clamp(0, 1).detach()


@_attack
def ifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
          alpha: float | None = None) -> torch.Tensor:
    """Iterative FGSM (the paper's FGSM-10): ``steps`` sign steps of ``alpha`` (default ε/steps),
    each projected onto the L∞ ball of radius ε around x and onto [0, 1]."""
    check(isinstance(steps, int) and steps >= 1, f"steps must be a positive integer, got {steps!r}")
    alpha = eps / steps if alpha is None else alpha
    check(alpha >= 0, f"alpha must be >= 0, got {alpha}")
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    adv = x.detach().clone()
    for _ in range(steps):
        adv = adv + alpha * _grad(model, adv, y).sign()
        adv = torch.max(torch.min(adv, hi), lo).detach()
    return adv


def _l2_step(x, direction, eps):
    """x + ε·d/‖d‖₂ per sample, re-projected onto the ε-ball (exact in floating point), clipped to [0, 1]."""
    if eps == 0:
        return x.detach().clone()
    step = x + eps * direction / (direction.flatten(1).norm(dim=1).view(_bshape(x)) + 1e-10)
    delta = step - x
    factor = (eps / delta.flatten(1).norm(dim=1)).clamp(max=1.0)
    return (x + delta * factor.view(_bshape(x))).clamp(0, 1).detach()


@_attack
def grad_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The paper's GRAD: x + ε·g/‖g‖₂ per sample, clipped to [0, 1]."""
    return _l2_step(x, _grad(model, x, y), eps)


def newton_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cg_iters: int = 20, cg_tol: float = 1e-3,
                     damping: float = 0.0, loss_fn: Callable = _loss_sum) -> torch.Tensor:
    """s ≈ (H + damping·I)⁻¹ g per sample, by batched conjugate gradients on input-Hessian products.

    A sample whose curvature along a CG direction is not positive stops there; if that
    happens at the first step its direction falls back to g.
    """
    with eval_mode(model):
        return _newton(model, x, y, cg_iters, cg_tol, damping, loss_fn)


def _newton(model, x, y, cg_iters, cg_tol, damping, loss_fn):
    xg = x.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(loss_fn(model(xg), y), xg, create_graph=True)[0]

    def hvp(v):
        return torch.autograd.grad(g, xg, grad_outputs=v, retain_graph=True)[0].detach() + damping * v

    dot = lambda a, b: (a * b).flatten(1).sum(1)  # noqa: E731
    rhs = g.detach()
    s = torch.zeros_like(rhs)
    r, p = rhs.clone(), rhs.clone()
    rs = dot(r, r)
    stop = rs.sqrt() * cg_tol
    active = rs.sqrt() > 0
    for _ in range(cg_iters):
        if not bool(active.any()):
            break
        hp = hvp(p)
        php = dot(p, hp)
        ok = active & (php > 0)
        a = torch.where(ok, rs / torch.where(ok, php, torch.ones_like(php)), torch.zeros_like(rs))
        s = s + a.view(_bshape(x)) * p
        r = r - a.view(_bshape(x)) * hp
        rs_new = dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta.view(_bshape(x)) * p
        rs = torch.where(ok, rs_new, rs)
        active = ok & (rs_new.sqrt() > stop)
    empty = s.flatten(1).norm(dim=1) == 0
    return torch.where(empty.view(_bshape(x)), rhs, s).detach()


@_attack
def fhsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cg_iters: int = 20, cg_tol: float = 1e-3,
         damping: float = 0.0) -> torch.Tensor:
    """Second-order L∞ attack: x + ε·sign(H⁻¹g), clipped to [0, 1]."""
    s = newton_direction(model, x, y, cg_iters, cg_tol, damping)
    return (x + eps * s.sign()).clamp(0, 1).detach()


@_attack
def hess(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, cg_iters: int = 20, cg_tol: float = 1e-3,
         damping: float = 0.0) -> torch.Tensor:
    """Second-order L2 attack: x + ε·H⁻¹g/‖H⁻¹g‖₂, clipped to [0, 1]."""
    return _l2_step(x, newton_direction(model, x, y, cg_iters, cg_tol, damping), eps)


@dataclass(frozen=True)
class Attack:
    """One attack of the registry: its name, the other names it answers to, its norm, its label
    in tables, and the function (``fn(model, x, y, eps, **options)``)."""

    name: str
    label: str
    norm: str
    function: Callable
    aliases: tuple[str, ...] = ()


REGISTRY = {a.name: a for a in (
    Attack("fgsm", "FGSM", "linf", fgsm),
    Attack("fgsm10", "FGSM10", "linf", ifgsm, ("ifgsm", "bim", "fgsm-10")),
    Attack("grad", "L2GRAD", "l2", grad_l2, ("l2grad",)),
    Attack("fhsm", "FHSM", "linf", fhsm),
    Attack("hess", "L2HESS", "l2", hess, ("l2hess",)),
)}
ATTACKS = tuple(REGISTRY)


def get(name: str) -> Attack:
    """The attack called ``name`` or one of its aliases (any case); one error line otherwise."""
    key = str(name).lower()
    for a in REGISTRY.values():
        if key == a.name or key in a.aliases:
            return a
    return REGISTRY[choose("attack", name, ATTACKS)]


def canonical(name: str) -> str:
    return get(name).name


def attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, chunk: int | None = None,
           progress: bool = False, **kwargs) -> torch.Tensor:
    """Run attack ``name`` over ``x`` in chunks of ``chunk`` samples (default: ``pass_chunk``'s on a
    CPU, 1,000 on a GPU); ``progress``: a bar of samples."""
    a = get(name)
    with eval_mode(model):
        _check(model, x, y, eps)   # once for every chunk: a forward pass and a sync
    chunk = chunk or pass_chunk(model, x, gpu=1000)
    out = []
    with trusted(), progress_mod.bar(total=len(x), desc=f"{a.label} ε={eps:g}", unit="sample", show=progress) as bar:
        for i in range(0, len(x), chunk):
            out.append(a.function(model, x[i:i + chunk], y[i:i + chunk], eps, **kwargs))
            bar.update(len(out[-1]))
    return torch.cat(out)


def adversarial_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, eps: float,
                         source: nn.Module | None = None, chunk: int | None = None, progress: bool = False,
                         **kwargs) -> float:
    """Accuracy of ``model`` on adversarial inputs crafted against ``source`` (default: the model itself)."""
    adv = attack(name, source if source is not None else model, x, y, eps, chunk, progress, **kwargs)
    return accuracy(model, adv, y, chunk)
