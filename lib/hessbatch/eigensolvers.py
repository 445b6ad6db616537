"""Eigen-solvers and spectral estimates over a symmetric operator (a ``HessianOperator`` or
``GGNOperator``): ``top_eigen`` (Lanczos with full reorthogonalization by default, or the paper's
power iteration with deflation), ``per_layer_spectra`` (``top_eigen`` on each layer's block),
``trace`` (Hutchinson), ``spectral_density`` (stochastic Lanczos quadrature)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import progress as progress_mod
from .errors import NotConvergedWarning, check
from .hessian import VECTOR_DTYPE, GGNOperator, HessianOperator, product_rounding

WHICH = ("largest", "smallest", "magnitude", "both")


@dataclass
class Eigen:
    """Eigenpairs of a symmetric operator, eigenvalues in descending order."""

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    n_hvp: int
    residuals: np.ndarray  # measured: ‖Hv − θv‖ / |θ| with the operator's own product
    method: str
    converged: bool
    history: list = field(default_factory=list, repr=False)
    n_converged: int | None = None
    rounding: float | None = None  # the product's relative rounding error, where estimated

    def error_bounds(self) -> np.ndarray:
        """Each eigenvalue's relative error bound: its measured residual, plus the product's rounding
        error (relative to the largest eigenvalue in magnitude) where it was estimated."""
        top = np.abs(self.eigenvalues).max() if len(self) else 0.0
        extra = (self.rounding or 0.0) * top / np.maximum(np.abs(self.eigenvalues), 1e-30)
        return self.residuals + extra

    def __len__(self):
        return len(self.eigenvalues)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    order = np.argsort(theta)[::-1]
    if which == "largest":
        return order[:k]
    if which == "smallest":
        return order[::-1][:k]
    if which == "magnitude":
        return np.argsort(-np.abs(theta))[:k]
    top, bottom = order[:k], order[::-1][:k]
    return np.array(list(dict.fromkeys(list(top) + list(bottom))))


class _Basis:
    """Orthonormal vectors as the rows of one buffer grown by doubling (up to ``limit`` rows), so
    that reorthogonalizing against them reads them in place instead of stacking a copy every step
    (for a model of millions of parameters, the copy cost more than the products)."""

    def __init__(self, dim: int, device, limit: int):
        self.rows = torch.empty(min(8, limit), dim, dtype=VECTOR_DTYPE, device=device)
        self.n, self.limit = 0, limit

    def append(self, v: torch.Tensor) -> None:
        if self.n == len(self.rows):
            grown = torch.empty(min(2 * self.n, self.limit), self.rows.shape[1], dtype=VECTOR_DTYPE,
                                device=self.rows.device)
            grown[:self.n] = self.rows
            self.rows = grown
        self.rows[self.n] = v
        self.n += 1

    @property
    def matrix(self) -> torch.Tensor:
        return self.rows[:self.n]

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` less its components along the basis (twice, for full reorthogonalization)."""
        if self.n:
            Q = self.matrix
            for _ in range(2):
                w = w - Q.T @ (Q @ w)
        return w


def _tridiag(alphas, betas) -> np.ndarray:
    return np.diag(alphas) + np.diag(betas[:len(alphas) - 1], 1) + np.diag(betas[:len(alphas) - 1], -1)


def _lanczos_run(op, q: torch.Tensor, max_iter: int, stop=None, check_every: int = 5, bar=None):
    """Lanczos with full reorthogonalization from ``q``; ``stop(alphas, betas)`` is asked
    every ``check_every`` steps. Returns the recurrence coefficients and the basis."""
    basis, alphas, betas = _Basis(op.dim, op.device, max_iter), [], []
    basis.append((q / q.norm()).to(op.device, VECTOR_DTYPE))
    for j in range(max_iter):
        w = op.matvec(basis.rows[j]).to(VECTOR_DTYPE)
        if bar is not None:
            bar.update()
        alphas.append(torch.dot(w, basis.rows[j]).item())
        w = basis.orthogonalize(w)
        betas.append(w.norm().item())
        breakdown = betas[-1] <= 1e-10 * max(abs(x) for x in alphas)
        if breakdown or (stop is not None and (j + 1) % check_every == 0 and stop(alphas, betas)):
            break
        if j + 1 < max_iter:
            basis.append(w / betas[-1])
    return alphas, betas, basis.matrix[:len(alphas)]


def measured_residuals(op, values, vectors: torch.Tensor) -> np.ndarray:
    """‖Hv − θv‖ / |θ| for each pair, with one product of the operator itself per pair: what bounds
    |θ − λ| / |θ| for the nearest eigenvalue λ (to within the product's own rounding)."""
    out = []
    for theta, v in zip(values, vectors):
        r = op.matvec(v).to(VECTOR_DTYPE) - float(theta) * v.to(VECTOR_DTYPE)
        out.append(r.norm().item() / max(abs(float(theta)), 1e-30))
    return np.asarray(out)


def _warn_unconverged(method: str, n_ok: int, k: int, tol: float, n_hvp: int, cap: str) -> None:
    warnings.warn(f"{method}: only {n_ok} of {k} eigenpairs reached the relative tolerance {tol:g} in {n_hvp} "
                  f"Hessian-vector products ({cap}); the others are estimates: raise max_iter",
                  NotConvergedWarning, stacklevel=3)


def lanczos(op, k: int = 20, tol: float = 1e-4, which: str = "largest", max_iter: int | None = None,
            seed: int = 0, check_every: int = 5, progress: bool = False) -> Eigen:
    """Top-``k`` eigenpairs by Lanczos with full reorthogonalization.

    Stops when every wanted Ritz pair has residual ‖Hv − θv‖ ≤ ``tol``·|θ| as the Lanczos recurrence
    estimates it, then measures each returned pair's residual with one more product per pair
    (``Eigen.residuals``): a pair counts as converged when its measured residual is within ``tol``,
    which bounds its eigenvalue's relative error by ``tol`` (plus the product's rounding).
    Like every single-vector Krylov method it finds one copy of an exactly repeated
    eigenvalue (rare for trained networks); ``power_iteration`` finds repeats.
    ``progress`` shows a bar of HVPs (out of ``max_iter``, default max(3k + 60, 200)) with the
    number of converged pairs. Pairs short of ``tol`` at the cap give a :class:`NotConvergedWarning`.
    """
    check(which in WHICH, f"unknown which={which!r}; choose one of {', '.join(WHICH)}")
    n = op.dim
    check(1 <= k <= n, f"k must be in 1..{n} (the operator's dimension), got {k}")
    max_iter = min(n, max_iter or max(3 * k + 60, 200))
    start = op.n_hvp
    history = []

    def ritz(alphas, betas):
        theta, S = np.linalg.eigh(_tridiag(alphas, betas))
        idx = _select(theta, k, which)
        return theta, S, idx, betas[len(alphas) - 1] * np.abs(S[-1, idx])

    def within(theta, res):
        return res <= tol * np.maximum(np.abs(theta), 1e-30)

    def converged(alphas, betas):
        if len(alphas) < k:
            return False
        theta, _, idx, res = ritz(alphas, betas)
        history.append((len(alphas), theta[idx].copy(), res.copy()))
        ok = within(theta[idx], res)
        bar.set_postfix_str(f"{int(ok.sum())}/{len(ok)} converged", refresh=False)
        return bool(np.all(ok))

    q0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with progress_mod.bar(total=max_iter, desc=f"Lanczos top-{k}", unit="HVP", show=progress) as bar:
        alphas, betas, basis = _lanczos_run(op, q0, max_iter, converged, check_every, bar)
    theta, S, idx, _ = ritz(alphas, betas)
    idx = idx[np.argsort(theta[idx])[::-1]]
    vecs = torch.as_tensor(S[:, idx].T.copy(), dtype=VECTOR_DTYPE, device=op.device) @ basis
    res = measured_residuals(op, theta[idx], vecs)
    ok = res <= tol
    done = bool(np.all(ok))
    if not done:
        _warn_unconverged("Lanczos", int(ok.sum()), len(idx), tol, op.n_hvp - start, f"max_iter={max_iter}")
    return Eigen(theta[idx], vecs, op.n_hvp - start, res, "lanczos", done, history, int(ok.sum()))


def power_iteration(op, k: int = 20, tol: float = 1e-4, max_iter: int = 100, seed: int = 0,
                    progress: bool = False) -> Eigen:
    """The paper's method: power iteration with deflation by projection (as PyHessian).

    Finds eigenvalues of largest magnitude one at a time; each stops when its value
    changes by less than ``tol`` relatively between two iterations (the residual it reports,
    ‖Hv − λv‖ / |λ| at its last product, does not enter that test) (at most ``max_iter``
    products each; one that reaches the cap gives a :class:`NotConvergedWarning`). ``progress``
    shows a bar of eigenvalues found, with the HVPs used.
    """
    n = op.dim
    check(1 <= k <= n, f"k must be in 1..{n}, got {k}")
    start = op.n_hvp
    g = torch.Generator(device="cpu").manual_seed(seed)
    vecs, vals, res, n_ok = _Basis(n, op.device, k), [], [], 0
    bar = progress_mod.bar(total=k, desc="power iteration", unit="eigenvalue", show=progress)
    for _ in range(k):
        v = vecs.orthogonalize(torch.randn(n, generator=g, dtype=VECTOR_DTYPE).to(op.device))
        v = v / v.norm()
        lam_prev, conv = None, False
        for _ in range(max_iter):
            w = op.matvec(v).to(VECTOR_DTYPE)
            lam = torch.dot(w, v).item()
            r = (w - lam * v).norm().item() / max(abs(lam), 1e-30)
            w = vecs.orthogonalize(w)
            v = w / w.norm()
            if lam_prev is not None and abs(lam - lam_prev) / (abs(lam_prev) + 1e-6) < tol:
                conv = True
                break
            lam_prev = lam
        n_ok += conv
        vals.append(lam)
        vecs.append(v)
        res.append(r)
        bar.set_postfix_str(f"{op.n_hvp - start} HVPs", refresh=False)
        bar.update()
    bar.close()
    if n_ok < k:
        _warn_unconverged("power iteration", n_ok, k, tol, op.n_hvp - start, f"max_iter={max_iter} per eigenvalue")
    order = np.argsort(vals)[::-1]
    return Eigen(np.asarray(vals)[order], vecs.matrix[torch.as_tensor(order.copy())],
                 op.n_hvp - start, np.asarray(res)[order], "power", n_ok == k, n_converged=n_ok)


CURVATURES = ("hessian", "ggn")


def top_eigen(model: nn.Module, data, k: int = 20, tol: float = 1e-4, method: str = "lanczos",
              which: str = "largest", chunk: int | None = None, hvp: str = "backward", seed: int = 0,
              max_iter: int | None = None, cache_graph: bool | None = None, progress: bool = False,
              rounding: bool = False, loss=F.cross_entropy, params=None, curvature: str = "hessian") -> Eigen:
    """Top-``k`` eigenpairs of the weight Hessian (or ``curvature="ggn"``: the generalized
    Gauss–Newton matrix) of the mean ``loss`` over ``data``, in the parameters ``params`` (default all).

    ``data``: an ``(inputs, targets)`` pair or a re-iterable of batches (a DataLoader, streamed).
    ``method``: ``"lanczos"`` (default) or ``"power"`` (the paper's; largest magnitude only).
    ``progress``: a progress bar (worth it where one HVP takes seconds, as on a CPU).
    ``rounding``: also estimate the product's own rounding error at the top eigenvector
    (``Eigen.rounding``, :func:`~hessbatch.hessian.product_rounding`; one float64 product).
    """
    check(method in ("lanczos", "power"), f"unknown eigen-solver {method!r}; choose lanczos or power")
    check(curvature in CURVATURES, f"unknown curvature {curvature!r}; choose {' or '.join(CURVATURES)}")
    check(tol > 0, f"tol must be > 0, got {tol}")
    if curvature == "ggn":
        op = GGNOperator(model, data, loss=loss, chunk=chunk, params=params)
    else:
        op = HessianOperator(model, data, loss=loss, chunk=chunk, hvp=hvp, cache_graph=cache_graph, params=params)
    if method == "power":
        check(which in ("largest", "magnitude"), "power iteration finds eigenvalues of largest magnitude only")
        e = power_iteration(op, k, tol, max_iter or 100, seed, progress)
    else:
        e = lanczos(op, k, tol, which, max_iter, seed, progress=progress)
    if rounding:
        e.rounding = product_rounding(op, e.eigenvectors[0])
    return e


def layers(model: nn.Module, depth: int | None = None) -> dict[str, list[str]]:
    """The blocks of :func:`per_layer_spectra`: the names of the parameters (that require a
    gradient) of each module that holds parameters of its own; with ``depth``, of each module
    ``depth`` levels down (a ResNet's stages at depth 1 of the bare network), its descendants' included."""
    check(depth is None or (isinstance(depth, int) and depth >= 1), f"depth must be an integer >= 1, got {depth!r}")
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            module = name.rpartition(".")[0]
            out.setdefault(module if depth is None else ".".join(module.split(".")[:depth]), []).append(name)
    return out


def per_layer_spectra(model: nn.Module, data, k: int = 5, tol: float = 1e-4, depth: int | None = None,
                      **kw) -> pd.DataFrame:
    """Top-``k`` eigenvalues of the Hessian's diagonal block of each layer (:func:`layers`, ``depth``):
    which layers carry the curvature. One row per layer and rank: ``layer`` (its name), ``module``
    (its class), ``n_params``, ``rank``, ``eigenvalue``, ``residual``. ``kw``: as :func:`top_eigen` (``loss``, ``curvature``, ``chunk``,
    ``seed``, ``max_iter``...)."""
    rows = []
    named = dict(model.named_parameters())
    for layer, names in layers(model, depth).items():
        dim = sum(named[n].numel() for n in names)
        kind = type(model.get_submodule(layer)).__name__
        e = top_eigen(model, data, k=min(k, dim), tol=tol, params=names, **kw)
        rows += [{"layer": layer, "module": kind, "n_params": dim, "rank": i + 1, "eigenvalue": float(v),
                  "residual": float(r)} for i, (v, r) in enumerate(zip(e.eigenvalues, e.residuals))]
    return pd.DataFrame(rows, columns=["layer", "module", "n_params", "rank", "eigenvalue", "residual"])


@dataclass
class Trace:
    estimate: float
    stderr: float
    samples: np.ndarray
    n_hvp: int


def trace(op, n_samples: int = 100, seed: int = 0) -> Trace:
    """Hutchinson's estimate of tr(H) with Rademacher probes, and its standard error."""
    check(n_samples >= 2, "trace needs at least 2 samples")
    g = torch.Generator(device="cpu").manual_seed(seed)
    start = op.n_hvp
    samples = []
    for _ in range(n_samples):
        v = (torch.randint(0, 2, (op.dim,), generator=g) * 2 - 1).to(op.device, VECTOR_DTYPE)
        samples.append(torch.dot(v, op.matvec(v).to(VECTOR_DTYPE)).item())
    s = np.asarray(samples)
    return Trace(float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s))), s, op.n_hvp - start)


@dataclass
class Density:
    """Stochastic Lanczos quadrature: per probe, nodes (Ritz values) and weights summing to 1."""

    nodes: np.ndarray
    weights: np.ndarray
    n_hvp: int

    def moment(self, p: int) -> float:
        """Estimate of tr(H^p)/dim."""
        return float(np.mean(np.sum(self.weights * self.nodes ** p, axis=1)))

    def grid(self, n_points: int = 400, sigma: float | None = None, pad: float = 0.05):
        """(x, density) on a grid, Gaussian-smoothed; the density integrates to 1."""
        lo, hi = self.nodes.min(), self.nodes.max()
        span = max(hi - lo, 1e-12)
        sigma = sigma or span / 100
        x = np.linspace(lo - pad * span - 3 * sigma, hi + pad * span + 3 * sigma, n_points)
        kern = np.exp(-((x[:, None, None] - self.nodes[None]) ** 2) / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
        return x, np.mean(np.sum(kern * self.weights[None], axis=2), axis=1)


def spectral_density(op, n_probes: int = 10, steps: int = 80, seed: int = 0) -> Density:
    """Spectral density of H by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each probe is a Rademacher vector; ``steps`` Lanczos steps give a Gauss quadrature
    rule whose nodes are the Ritz values and whose weights are the squared first
    components of the Ritz vectors.
    """
    check(n_probes >= 1 and steps >= 1, "spectral_density needs n_probes >= 1 and steps >= 1")
    start = op.n_hvp
    g = torch.Generator().manual_seed(seed)
    steps = min(steps, op.dim)
    nodes, weights = [], []
    for _ in range(n_probes):
        v0 = (torch.randint(0, 2, (op.dim,), generator=g) * 2 - 1).to(torch.float64)
        alphas, betas, _ = _lanczos_run(op, v0, steps)
        theta, S = np.linalg.eigh(_tridiag(alphas, betas))
        nodes.append(np.pad(theta, (0, steps - len(theta))))
        weights.append(np.pad(S[0] ** 2, (0, steps - len(theta))))
    return Density(np.stack(nodes), np.stack(weights), op.n_hvp - start)
