"""Projected gradient ascent (PGA) on the inner maximization, after Deng et al. (ICML 2020).

The adversary maximizes ℓ(δ) = ½(f(x + δ) − y)² over the ball ‖δ‖ ≤ ε for a two-layer network
f(z) = aᵀσ(Wz)/√m, by δ ← Π(δ + η∇ℓ(δ)). Everything is batched over network seeds S and
restarts R: δ has shape (S, R, d). The network's scaling, initialisation and target y are our
choices (Deng et al.'s exact setting was not recovered): W ~ N(0, 1/d), a ~ ±1, y ~ ±1, the
input x uniform on the sphere of radius r, ε = ratio·r.

At an end point on the sphere S_ε the first- and second-order conditions of a local maximum are
‖Pg‖ ≈ 0 with δᵀg ≥ 0 and λ_max(PHP − μP) ≤ 0 on the tangent space, where g = ∇ℓ, H = ∇²ℓ,
P = I − δδᵀ/ε² and μ = δᵀg/ε² (the Lagrange multiplier); inside the ball, g ≈ 0 and λ_max(H) ≤ 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import progress as progress_mod
from .errors import check, choose
from .evaluation import eval_mode


def _tanh(z):
    t = torch.tanh(z)
    return t, 1 - t ** 2, -2 * t * (1 - t ** 2)


def _softplus(z):
    s = torch.sigmoid(z)
    return F.softplus(z), s, s * (1 - s)


def _relu(z):
    return z.clamp_min(0), (z > 0).to(z.dtype), torch.zeros_like(z)


ACTIVATIONS: dict[str, Callable] = {"tanh": _tanh, "softplus": _softplus, "relu": _relu}
STEP_RULES = ("fixed", "scaled")


@dataclass
class TwoLayer:
    """S independent two-layer networks f(z) = aᵀσ(Wz)/√m, each with its input x and target y."""

    W: torch.Tensor        # (S, m, d)
    a: torch.Tensor        # (S, m)
    x: torch.Tensor        # (S, d), on the sphere of radius r
    y: torch.Tensor        # (S,)
    activation: str

    def scaled(self, r: float) -> "TwoLayer":
        """The same networks and directions with inputs on the sphere of radius ``r``."""
        return TwoLayer(self.W, self.a, self.x / self.x.norm(dim=1, keepdim=True) * r, self.y, self.activation)

    def loss(self, delta: torch.Tensor, hessian: bool = False):
        """ℓ(δ), ∇ℓ(δ) (and ∇²ℓ(δ) with ``hessian``) for δ of shape (S, R, d), in closed form."""
        m = self.W.shape[1]
        z = torch.einsum("srd,smd->srm", self.x[:, None] + delta, self.W)
        s0, s1, s2 = ACTIVATIONS[self.activation](z)
        f = torch.einsum("srm,sm->sr", s0, self.a) / math.sqrt(m)
        r = f - self.y[:, None]
        v = s1 * self.a[:, None] / math.sqrt(m)                    # ∂f/∂(Wz)
        J = torch.einsum("srm,smd->srd", v, self.W)                # ∇f
        out = (0.5 * r ** 2, r[..., None] * J)
        if not hessian:
            return out
        curv = s2 * self.a[:, None] / math.sqrt(m) * r[..., None]
        H = J[..., :, None] * J[..., None, :] + torch.einsum("smd,srm,sme->srde", self.W, curv, self.W)
        return out + (H,)


def two_layer(d: int, m: int, activation: str, seeds: int, r: float = 1.0, seed: int = 0,
              dtype=torch.float64) -> TwoLayer:
    """``seeds`` random networks of width ``m`` on inputs of dimension ``d`` (see the module doc)."""
    choose("activation", activation, tuple(ACTIVATIONS))
    check(d >= 2 and m >= 1 and seeds >= 1, f"need d >= 2, m >= 1, seeds >= 1; got d={d}, m={m}, seeds={seeds}")
    check(r > 0, f"input radius must be > 0, got {r}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(seeds, m, d, generator=g, dtype=dtype) / math.sqrt(d)
    a = torch.randint(0, 2, (seeds, m), generator=g).to(dtype) * 2 - 1
    x = torch.randn(seeds, d, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (seeds,), generator=g).to(dtype) * 2 - 1
    return TwoLayer(W, a, x / x.norm(dim=1, keepdim=True) * r, y, activation)


def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each row (last axis) onto the ball ‖δ‖ ≤ ε."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.where(norm > eps, eps / norm.clamp_min(1e-300), torch.ones_like(norm))


def sphere_starts(shape: tuple, eps: float, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random starting points, uniform on the sphere ‖δ‖ = ε."""
    v = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return v / v.norm(dim=-1, keepdim=True) * eps


def ascend(grad_fn: Callable, delta0: torch.Tensor, eps: float, eta: float, steps: int):
    """PGA δ ← Π(δ + η∇ℓ(δ)) for ``steps`` steps; ``grad_fn(δ) -> (ℓ, ∇ℓ)``, batched.

    Returns the end point and the losses of every iterate, shape (steps + 1, *batch)."""
    check(eps > 0 and eta > 0 and steps >= 1, f"need eps > 0, eta > 0, steps >= 1; got {eps}, {eta}, {steps}")
    delta, losses = project(delta0, eps), []
    for _ in range(steps):
        loss, g = grad_fn(delta)
        losses.append(loss)
        delta = project(delta + eta * g, eps)
    losses.append(grad_fn(delta)[0])
    return delta, torch.stack(losses)


def iterations_to(losses: torch.Tensor, fraction: float = 0.999) -> torch.Tensor:
    """First iteration at which the loss has made ``fraction`` of its total gain ℓ_T − ℓ_0."""
    gain = losses[-1] - losses[0]
    reached = losses - losses[0] >= fraction * gain
    first = reached.to(torch.int64).argmax(0)
    return torch.where(gain > 1e-12 * losses[-1].abs().clamp_min(1e-300), first, torch.zeros_like(first))


def sphere_conditions(grad: torch.Tensor, hess: torch.Tensor, delta: torch.Tensor, eps: float,
                      boundary_tol: float = 1e-6) -> dict[str, torch.Tensor]:
    """First- and second-order conditions of a local maximum of ℓ over the ball at δ (batched).

    ``on_sphere``: ‖δ‖ ≥ (1 − boundary_tol)·ε. ``grad_norm``: ‖Pg‖ on the sphere, ‖g‖ inside.
    ``outward``: δᵀg ≥ 0 (the multiplier's sign; always true inside). ``lambda_max``: largest
    eigenvalue of PHP − μP on the tangent space (on the sphere) or of H (inside).
    ``hess_min``/``hess_max``: the unconstrained ∇²ℓ's extreme eigenvalues."""
    d = delta.shape[-1]
    on = delta.norm(dim=-1) >= (1 - boundary_tol) * eps
    u = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    P = torch.eye(d, dtype=delta.dtype) - u[..., :, None] * u[..., None, :]
    mu = (u * grad).sum(-1) / eps
    tangent = P @ hess @ P - mu[..., None, None] * P
    big = hess.abs().sum((-1, -2)) + mu.abs() + 1.0
    tangent = tangent - (10 * big)[..., None, None] * u[..., :, None] * u[..., None, :]
    lam_t = torch.linalg.eigvalsh(tangent)[..., -1]
    ev = torch.linalg.eigvalsh(hess)
    pg = (P @ grad[..., None])[..., 0].norm(dim=-1)
    return {"on_sphere": on, "grad_norm": torch.where(on, pg, grad.norm(dim=-1)),
            "grad_full": grad.norm(dim=-1), "outward": torch.where(on, mu >= 0, torch.ones_like(on)),
            "multiplier": torch.where(on, mu, torch.zeros_like(mu)),
            "lambda_max": torch.where(on, lam_t, ev[..., -1]), "hess_min": ev[..., 0], "hess_max": ev[..., -1]}


def distinct_points(points: torch.Tensor, tol: float) -> int:
    """Number of clusters among the rows of ``points`` (greedy, radius ``tol``)."""
    centres: list[torch.Tensor] = []
    for p in points:
        if not any((p - c).norm() <= tol for c in centres):
            centres.append(p)
    return len(centres)


def step_size(rule: str, eta: float, eps: float) -> float:
    """``fixed``: η; ``scaled``: η·ε (η ∝ ε, the same angular step at every input scale)."""
    choose("step rule", rule, STEP_RULES)
    return eta if rule == "fixed" else eta * eps


def pga_sweep(radii, ratios=(0.3,), activations=("tanh", "softplus", "relu"), widths=(512,), dims=(50,),
              step_rules=STEP_RULES, eta: float = 0.05, seeds: int = 5, restarts: int = 16, steps: int = 3000,
              fraction: float = 0.999, grad_tol: float = 1e-4, hess_tol: float = 1e-6, same_tol: float = 1e-3,
              seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """PGA from ``restarts`` random points of S_ε on ``seeds`` networks, for every combination.

    One row per (configuration, network seed, restart): iterations to ``fraction`` of the final
    gain, end loss, the ``sphere_conditions`` at the end point, ``local_max`` (on the sphere or
    not, ‖grad‖ ≤ grad_tol·‖g‖, outward, λ_max ≤ hess_tol·(|μ| + ‖H‖₂)), and per network the
    number of distinct end points (``same_tol``·ε apart) and the end losses' coefficient of
    variation. Tolerances are relative, so radii compare."""
    for name, vals in (("radii", radii), ("ratios", ratios), ("widths", widths), ("dims", dims)):
        check(len(vals) > 0 and all(v > 0 for v in vals), f"{name} must be positive numbers, got {list(vals)}")
    for act in activations:
        choose("activation", act, tuple(ACTIVATIONS))
    for rule in step_rules:
        choose("step rule", rule, STEP_RULES)
    check(0 < fraction < 1, f"fraction must be in (0, 1), got {fraction}")
    combos = [(act, m, d, rho, r, rule) for act in activations for m in widths for d in dims for rho in ratios
              for r in radii for rule in step_rules]
    rows = []
    for act, m, d, rho, r, rule in progress_mod.bar(combos, desc="PGA", show=progress):
        net = two_layer(d, m, act, seeds, seed=seed).scaled(r)
        eps = rho * r
        delta0 = sphere_starts((seeds, restarts, d), eps, seed + 1)
        end, losses = ascend(lambda z: net.loss(z), delta0, eps, step_size(rule, eta, eps), steps)
        loss, g, H = net.loss(end, hessian=True)
        c = sphere_conditions(g, H, end, eps)
        scale = c["multiplier"].abs() + torch.linalg.matrix_norm(H, ord=2)
        local = ((c["grad_norm"] <= grad_tol * c["grad_full"].clamp_min(1e-300)) | (c["grad_full"] <= 1e-12)) & \
            c["outward"] & (c["lambda_max"] <= hess_tol * scale)
        its = iterations_to(losses, fraction)
        for s in range(seeds):
            n_distinct = distinct_points(end[s], same_tol * eps)
            cv = float(loss[s].std() / loss[s].mean()) if float(loss[s].mean()) > 0 else 0.0
            for k in range(restarts):
                rows.append({"activation": act, "width": m, "dim": d, "ratio": rho, "radius": r, "eps": eps,
                             "step_rule": rule, "eta": step_size(rule, eta, eps), "seed": s, "restart": k,
                             "iterations": int(its[s, k]), "start_loss": float(losses[0, s, k]),
                             "end_loss": float(loss[s, k]), "on_sphere": bool(c["on_sphere"][s, k]),
                             "grad_norm": float(c["grad_norm"][s, k]), "grad_full": float(c["grad_full"][s, k]),
                             "multiplier": float(c["multiplier"][s, k]), "lambda_max": float(c["lambda_max"][s, k]),
                             "hess_min": float(c["hess_min"][s, k]), "hess_max": float(c["hess_max"][s, k]),
                             "local_max": bool(local[s, k]), "distinct": n_distinct, "end_loss_cv": cv})
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: median iterations, shares on the sphere and at a local maximum,
    distinct end points and end-loss CV (means over network seeds)."""
    keys = ["activation", "width", "dim", "ratio", "radius", "step_rule"]
    per_net = runs.groupby(keys + ["seed"], sort=False).agg(distinct=("distinct", "first"),
                                                           cv=("end_loss_cv", "first")).reset_index()
    out = runs.groupby(keys, sort=False).agg(
        iterations=("iterations", "median"), iterations_q90=("iterations", lambda v: float(np.quantile(v, 0.9))),
        on_sphere=("on_sphere", "mean"), local_max=("local_max", "mean"), end_loss=("end_loss", "mean"),
        hess_min_ratio=("hess_min", "min")).reset_index()
    out["hess_min_ratio"] = (runs.assign(q=runs["hess_min"] / runs["hess_max"].abs().clip(lower=1e-300))
                             .groupby(keys, sort=False)["q"].min().values)
    nets = per_net.groupby(keys, sort=False).agg(distinct=("distinct", "mean"), end_loss_cv=("cv", "mean")).reset_index()
    return out.merge(nets, on=keys)


# ------------------------------------------------------------------ early adversarial training on real data
class TwoLayerNet(nn.Module):
    """A two-layer network on raw (unnormalized) inputs: input scale is the variable studied."""

    def __init__(self, d: int, width: int, classes: int, activation: str = "softplus"):
        super().__init__()
        choose("activation", activation, tuple(ACTIVATIONS))
        self.hidden, self.out, self.activation = nn.Linear(d, width), nn.Linear(width, classes), activation

    def forward(self, x):
        return self.out(ACTIVATIONS[self.activation](self.hidden(x.flatten(1)))[0])


def _mse(out, y):
    return 0.5 * ((out - F.one_hot(y, out.shape[1]).to(out.dtype)) ** 2).sum(1)


def pga_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
           alpha: float | None = None, loss_fn=_mse) -> torch.Tensor:
    """ℓ2 PGA with normalized steps of ``alpha`` (default 2.5ε/steps) from δ = 0, inputs unclipped
    (the inputs are rescaled, so [0, 1] is not their range)."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
    delta = torch.zeros_like(x)
    with eval_mode(model):
        for _ in range(steps):
            with torch.enable_grad():
                delta.requires_grad_(True)
                g = torch.autograd.grad(loss_fn(model(x + delta), y).sum(), delta)[0]
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            delta = project((delta.detach() + alpha * g).flatten(1), eps).view_as(x)
    return (x + delta).detach()


def scaled_adversarial_training(x_train, y_train, x_test, y_test, scales=(0.25, 0.5, 1, 2, 4), ratio: float = 0.1,
                                width: int = 128, activation: str = "softplus", epochs: int = 5, steps: int = 10,
                                lr: float = 0.01, batch_size: int = 64, seeds: int = 3,
                                progress: bool = False) -> pd.DataFrame:
    """Early adversarial training of a two-layer network (MSE on one-hot targets) on inputs
    multiplied by ``c`` for each c in ``scales``, with ε = ratio·c·mean‖x‖ (a fixed ratio).

    One row per (scale, seed, epoch): the mean adversarial training loss over the epoch, and
    clean and robust (ℓ2 PGA, same ε) test accuracy after it; epoch 0 is the initial network."""
    check(all(c > 0 for c in scales) and len(scales) >= 2, f"scales must be >= 2 positive numbers, got {list(scales)}")
    check(ratio > 0, f"ratio must be > 0, got {ratio}")
    check(1 <= batch_size <= len(y_train), f"batch_size must be in 1..{len(y_train)}, got {batch_size}")
    base = float(x_train.flatten(1).norm(dim=1).mean())
    classes = int(max(y_train.max(), y_test.max())) + 1
    rows = []
    for c in progress_mod.bar(list(scales), desc="scales", show=progress):
        eps = ratio * c * base
        xtr, xte = x_train * c, x_test * c
        for s in range(seeds):
            torch.manual_seed(s)
            model = TwoLayerNet(xtr[0].numel(), width, classes, activation)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            g = torch.Generator().manual_seed(s)

            def evaluate(epoch, train_loss):
                adv = pga_l2(model, xte, y_test, eps, steps)
                with eval_mode(model), torch.no_grad():
                    clean = (model(xte).argmax(1) == y_test).float().mean().item()
                    robust = (model(adv).argmax(1) == y_test).float().mean().item()
                rows.append({"scale": c, "seed": s, "epoch": epoch, "eps": eps, "adv_train_loss": train_loss,
                             "clean_acc": clean, "robust_acc": robust})

            with torch.no_grad():
                start = float(_mse(model(pga_l2(model, xtr, y_train, eps, steps)), y_train).mean())
            evaluate(0, start)
            for epoch in range(1, epochs + 1):
                model.train()
                perm, total, n = torch.randperm(len(y_train), generator=g), 0.0, 0
                for i in range(0, len(perm) - batch_size + 1, batch_size):
                    idx = perm[i:i + batch_size]
                    adv = pga_l2(model, xtr[idx], y_train[idx], eps, steps)
                    loss = _mse(model(adv), y_train[idx]).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, n = total + loss.item(), n + 1
                evaluate(epoch, total / n)
    return pd.DataFrame(rows)
