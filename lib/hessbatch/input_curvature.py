"""Curvature of the loss with respect to the inputs: per-sample ‖∇ₓℓ‖ and the dominant
eigenvalue of ∇²ₓℓ for a whole batch at once, explicit per-sample input Hessians for small
inputs, and the round-off floor below which their eigenvalues count as zero."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import progress as progress_mod
from .errors import check
from .evaluation import batches, eval_mode, pass_chunk

METHODS = ("auto", "power", "exact")
# Layers under which the loss is piecewise linear in the inputs up to the softmax (the paper's
# Assumption 1): there ∇²ₓℓ = Jᵀ(diag p − ppᵀ)J almost everywhere, and the exact method holds.
PIECEWISE_LINEAR = (nn.ReLU, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm,
                    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
                    nn.Dropout)
# Containers whose forward only composes their children, adds residuals or applies a ReLU.
COMPOSITES = ("torch.nn.modules.container.Sequential", "hessbatch.models.Normalize", "hessbatch.models.Channels",
              "hessbatch.models.BasicBlock",
              "torchvision.models.resnet.ResNet", "torchvision.models.resnet.BasicBlock",
              "torchvision.models.resnet.Bottleneck")


def piecewise_linear(model: nn.Module) -> bool:
    """Whether every module of ``model`` is a layer of ``PIECEWISE_LINEAR`` (in eval mode) or a
    container of ``COMPOSITES``: then the exact c x c method is exact (almost everywhere)."""
    for m in model.modules():
        name = f"{type(m).__module__}.{type(m).__qualname__}"
        if not (isinstance(m, PIECEWISE_LINEAR) and not list(m.children())) and name not in COMPOSITES:
            return False
    return True


def resolve_method(model: nn.Module, method: str) -> str:
    """``method``, with ``"auto"`` replaced by ``"exact"`` for a piecewise-linear model
    (:func:`piecewise_linear`; 39–280x faster than a per-sample loop) and ``"power"`` otherwise."""
    check(method in METHODS, f"unknown method {method!r}; choose {', '.join(METHODS)}")
    if method == "auto":
        return "exact" if piecewise_linear(model) else "power"
    return method


@dataclass
class InputCurvature:
    """Per-sample ‖∇ₓℓ‖₂ and λ_max(∇²ₓℓ) (the paper's Table 1/7 columns, before averaging)."""

    grad_norm: np.ndarray
    lambda_max: np.ndarray
    iterations: int
    method: str
    unconverged: int = 0

    def summary(self) -> dict:
        return {"grad_norm": float(self.grad_norm.mean()), "lambda_max": float(self.lambda_max.mean())}


def input_curvature(model: nn.Module, inputs, targets: torch.Tensor | None = None, method: str = "auto",
                    tol: float = 1e-4, max_iter: int = 100, chunk: int | None = None, seed: int = 0,
                    progress: bool = False) -> InputCurvature:
    """‖∇ₓℓ(x_i)‖ and the dominant eigenvalue of ∇²ₓℓ(x_i) for every sample, a batch at once;
    ``inputs`` and ``targets`` are tensors, or ``inputs`` alone is a re-iterable of batches (a
    DataLoader, streamed).

    In eval mode the samples do not interact, so the Hessian of the summed loss w.r.t. the
    batch is block diagonal and one Hessian-vector product serves every sample.
    ``method="power"`` is the paper's power iteration (any twice-differentiable model);
    ``method="exact"`` uses ∇²ₓℓ = Jᵀ(diag p − ppᵀ)J, exact almost everywhere for ReLU
    networks (Theorem 1's setting), by an eigendecomposition of a c x c matrix per sample;
    ``"auto"`` (default) chooses exact where the model is piecewise linear (:func:`resolve_method`).
    The result's ``method`` says which ran. ``progress``: a bar of samples.
    """
    method = resolve_method(model, method)
    data = (inputs, targets) if targets is not None else inputs
    if targets is not None:
        check(len(inputs) == len(targets) and len(inputs) > 0, "inputs and targets must be non-empty and of equal length")
    chunk = chunk or (pass_chunk(model, inputs, gpu=4096) if targets is not None else None)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    norms, lams, iters, unconverged = [], [], 0, 0
    total = len(targets) if targets is not None else None
    with eval_mode(model), progress_mod.bar(total=total, desc=f"input curvature ({method})", unit="sample",
                                             show=progress) as bar:
        for xb, yb in batches(data, chunk):
            check(len(xb) == len(yb) > 0, f"a batch of data has {len(xb)} inputs and {len(yb)} targets")
            lam, grad, it, left = _chunk_curvature(model, xb.to(device), yb.to(device), method, g, tol, max_iter)
            bar.update(len(yb))
            norms.append(grad.detach().flatten(1).norm(dim=1).cpu())
            lams.append(lam.detach().cpu())
            iters, unconverged = max(iters, it), unconverged + left
    check(norms, "input_curvature needs at least one sample; data yielded no batch")
    return InputCurvature(torch.cat(norms).double().numpy(), torch.cat(lams).double().numpy(), iters, method,
                          unconverged)


def _chunk_curvature(model, x, y, method, g, tol, max_iter):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    loss = F.cross_entropy(out, y, reduction="sum")
    if method == "exact":
        grad = torch.autograd.grad(loss, x, retain_graph=True)[0]
        return _exact_input_lambda(out, x), grad, out.shape[1], 0
    grad = torch.autograd.grad(loss, x, create_graph=True)[0]
    lam, it, left = _batched_power(model, x, y, grad, g, tol, max_iter)
    return lam, grad, it, left


def _batched_power(model, x, y, grad, g, tol, max_iter):
    """Power iteration on every sample's input Hessian at once. A sample stops when its estimate
    changes by at most ``tol`` (relative); the graph is rebuilt for the samples still iterating
    once they are at most half of it. Returns the estimates, the iterations of the slowest sample
    and the number of samples that did not converge in ``max_iter``."""
    def unit(t):
        return t / t.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))

    v = unit(torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device, x.dtype))
    lam = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    prev = torch.full_like(lam, float("nan"))
    live = torch.ones(len(x), dtype=torch.bool, device=x.device)
    rows, xa, ga, it = torch.arange(len(x), device=x.device), x, grad, 0
    for it in range(1, max_iter + 1):
        hv = torch.autograd.grad(ga, xa, grad_outputs=v[rows], retain_graph=True)[0].detach()
        sel = live[rows]
        idx, hv = rows[sel], hv[sel]
        new = (hv * v[idx]).flatten(1).sum(1)
        done = (new - prev[idx]).abs() <= tol * (prev[idx].abs() + 1e-6)
        lam[idx], prev[idx], v[idx] = new, new, unit(hv)
        live[idx[done]] = False
        n_live = int(live.sum())
        if not n_live:
            break
        if n_live <= len(rows) // 2:
            rows = live.nonzero().flatten()
            xa = x.detach()[rows].clone().requires_grad_(True)
            ga = torch.autograd.grad(F.cross_entropy(model(xa), y[rows], reduction="sum"), xa, create_graph=True)[0]
    return lam, it, int(live.sum())


def _exact_input_lambda(out, x):
    c = out.shape[1]
    J = torch.stack([torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0].flatten(1) for j in range(c)], 1)
    p = torch.softmax(out.detach().double(), 1)
    S = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    w, U = torch.linalg.eigh(S)
    root = U @ torch.diag_embed(w.clamp_min(0).sqrt()) @ U.transpose(1, 2)
    G = (J.double() @ J.double().transpose(1, 2))
    return torch.linalg.eigvalsh(root @ G @ root)[:, -1]


def input_hessian(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Explicit per-sample input Hessians ∇²ₓℓ(x_i), shape (n, d, d); for small inputs only."""
    d = inputs[0].numel()
    check(d <= 4096, f"explicit input Hessians are for small inputs (d <= 4096), got d = {d}")

    def hess(xi, yi):
        f = lambda z: F.cross_entropy(model(z.view(1, *xi.shape)), yi.view(1))  # noqa: E731
        return torch.autograd.functional.hessian(f, xi.reshape(-1), vectorize=True)

    with eval_mode(model):
        return torch.stack([hess(xi, yi) for xi, yi in zip(inputs, targets)])


def roundoff_floor(model: nn.Module, x: torch.Tensor, classes: int) -> float:
    """The round-off floor δ = 64·d·ε·‖J‖²_F of one sample's input Hessian (J = ∂z/∂x, ε the
    machine epsilon of ``x``'s dtype): for confidently classified samples diag(p) − ppᵀ is a
    difference of nearly equal terms, so an eigenvalue below δ is indistinguishable from 0."""
    xi = x.detach().clone().requires_grad_(True)
    with eval_mode(model):
        out = model(xi)
        jac = torch.stack([torch.autograd.grad(out[0, j], xi, retain_graph=True)[0].flatten() for j in range(classes)])
    return 64 * xi.numel() * torch.finfo(x.dtype).eps * float((jac ** 2).sum())


def numerical_rank(eigenvalues: torch.Tensor, floor: float, rank_tol: float = 1e-7) -> tuple[int, float]:
    """The number of eigenvalues that are not zero, and the threshold: an eigenvalue counts as zero
    within ``floor`` or below ``rank_tol``·λ_max."""
    zero = max(rank_tol * abs(float(eigenvalues[-1])), floor)
    return int((eigenvalues.abs() > zero).sum()), zero
