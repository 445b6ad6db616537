"""Curvature of the loss: Hessian spectra w.r.t. the weights and w.r.t. the inputs.

The weight Hessian is a linear operator, ``HessianOperator``, whose products are exact
Hessian-vector products of the mean cross-entropy over a dataset (Pearlmutter's
trick: no Gauss–Newton approximation), accumulated over chunks so memory stays
bounded. The model is put in **eval mode**: batch-norm uses its running statistics, so
the loss is a fixed function of the weights and the dataset (the paper's and PyHessian's
convention).

Solvers: ``top_eigen`` (Lanczos with full reorthogonalization by default, or the paper's
power iteration with deflation), ``trace`` (Hutchinson), ``spectral_density``
(stochastic Lanczos quadrature). ``input_curvature`` gives per-sample ‖∇ₓℓ‖ and the
dominant eigenvalue of ∇²ₓℓ for a whole batch at once.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import NotConvergedWarning, check

WHICH = ("largest", "smallest", "magnitude", "both")


def default_chunk(device, cpu: int = 1024, gpu: int = 8192) -> int:
    """Samples per forward/backward pass: small on a CPU (cache), large on a GPU (launch-bound)."""
    return cpu if torch.device(device).type == "cpu" else gpu


def _as_batches(data, chunk: int):
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        x, y = data
        return [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)]
    return list(data)


def subsample(data: tuple[torch.Tensor, torch.Tensor], size: int, seed: int = 0):
    """A seeded random subset of ``size`` samples: the paper's subsampled Hessian H_B."""
    x, y = data
    check(0 < size <= len(x), f"subsample size must be in 1..{len(x)}, got {size}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size]
    return x[idx.to(x.device)], y[idx.to(y.device)]


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: the GPU's free memory, the host's available memory on Linux, else None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def graph_memory_share() -> float:
    """The share of the free memory that cached gradient graphs may take by default:
    ``$HESSBATCH_GRAPH_MEMORY``, else 0.5. Processes that take Hessian products on one device at
    the same time should split it (``hessbatch compute --workers P`` gives each 0.5 / P)."""
    raw = os.environ.get("HESSBATCH_GRAPH_MEMORY", "0.5")
    try:
        share = float(raw)
    except ValueError:
        share = math.nan
    check(0 <= share <= 1, f"HESSBATCH_GRAPH_MEMORY must be a number in [0, 1], got {raw!r}")
    return share


def split_graph_memory(processes: int) -> None:
    """In one of ``processes`` processes taking Hessian products on one device at once: take
    1/``processes`` of the share inherited from the parent, so that together they keep to it."""
    os.environ["HESSBATCH_GRAPH_MEMORY"] = repr(graph_memory_share() / processes)


@contextmanager
def _saved_bytes(exclude=()):
    """Within the block, count the bytes of the tensors autograd saves for backward (a
    one-element list, filled on exit), leaving out the storages of ``exclude``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen, size = {}, [0]

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield size
    size[0] = sum(seen.values())


class HessianOperator:
    """H = ∇²θ L(θ) with L the mean loss over ``data``, as a matrix-free operator.

    ``data`` is an ``(inputs, targets)`` pair (split into chunks of ``chunk`` samples) or
    an iterable of such batches. ``hvp="backward"`` differentiates twice with autograd;
    ``hvp="func"`` uses ``torch.func`` forward-over-reverse. A cached chunk keeps the
    graph of its gradient, so each product is one backward pass instead of a forward and
    two (1.4x faster for M1 and C1 on a CPU), at the memory of the graph.
    ``cache_graph``: ``None`` (default) caches chunks while their graphs fit in
    ``memory_budget`` bytes (default: :func:`graph_memory_share`, half, of the memory free when the
    first product is taken: the GPU's, or the host's on Linux; where that is unknown, data of one
    chunk is cached);
    ``True`` caches every chunk, ``False`` none. ``graph_bytes`` and ``cached_chunks`` say
    what was cached. Vectors are flat tensors.
    """

    def __init__(self, model: nn.Module, data, loss: Callable = F.cross_entropy, chunk: int | None = None,
                 hvp: str = "backward", cache_graph: bool | None = None, memory_budget: int | None = None):
        check(hvp in ("backward", "func"), f"unknown hvp method {hvp!r}; choose backward or func")
        self.model = model.eval()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.dim = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.batches = _as_batches(data, chunk or default_chunk(self.device))
        self.n = sum(len(b[1]) for b in self.batches)
        check(self.n > 0, "the Hessian needs at least one sample")
        self.loss = loss
        self.hvp_method = hvp
        self.cache_graph = cache_graph
        self.memory_budget = memory_budget
        self.graph_bytes = 0
        self._graphs = None
        self.n_hvp = 0

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(torch.split(v, [math.prod(s) for s in self.shapes]), self.shapes)]

    def _batch_loss(self, out, y):
        return self.loss(out, y, reduction="sum") / self.n

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v``."""
        self.n_hvp += 1
        vs = self._split(v.to(self.device, self.dtype))
        total = [torch.zeros_like(p) for p in self.params]
        graphs = self._cached_gradients()
        for g in graphs:
            dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            for t, h in zip(total, torch.autograd.grad(dot, self.params, retain_graph=True)):
                t += h
        for xb, yb in self.batches[len(graphs):]:
            xb, yb = xb.to(self.device), yb.to(self.device)
            hv = self._hvp_func(xb, yb, vs) if self.hvp_method == "func" else self._hvp_backward(xb, yb, vs)
            for t, h in zip(total, hv):
                t += h.detach()
        return torch.cat([t.reshape(-1) for t in total])

    __matmul__ = matvec

    @property
    def cached_chunks(self) -> int:
        """How many chunks keep their gradient's graph (known after the first product)."""
        return len(self._graphs or [])

    def _cached_gradients(self) -> list:
        """The gradients, with graphs, of the leading chunks that fit the budget (built once)."""
        if self._graphs is not None:
            return self._graphs
        self._graphs = []
        if self.hvp_method != "backward" or self.cache_graph is False:
            return self._graphs
        budget = self.memory_budget
        if self.cache_graph:
            budget = math.inf
        elif budget is None:
            free = _free_memory(self.device)
            if free is not None:
                budget = int(free * graph_memory_share())
            else:
                budget = math.inf if len(self.batches) == 1 else 0
        for xb, yb in self.batches:
            xb = xb.to(self.device)
            with _saved_bytes(exclude=[*self.params, xb]) as size:
                loss = self._batch_loss(self.model(xb), yb.to(self.device))
                g = torch.autograd.grad(loss, self.params, create_graph=True)
            nbytes = size[0] + sum(t.numel() * t.element_size() for t in g)
            if self.graph_bytes + nbytes > budget:
                break
            self.graph_bytes += nbytes
            self._graphs.append(g)
        return self._graphs

    def _hvp_backward(self, xb, yb, vs):
        loss = self._batch_loss(self.model(xb), yb)
        g = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
        return torch.autograd.grad(dot, self.params)

    def _hvp_func(self, xb, yb, vs):
        from torch.func import functional_call, grad, jvp

        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        buffers = dict(self.model.named_buffers())

        def f(params):
            out = functional_call(self.model, ({**dict(zip(names, params)), **buffers},), (xb,))
            return self._batch_loss(out, yb)

        return jvp(grad(f), (tuple(self.params),), (tuple(vs),))[1]

    def gradient(self) -> torch.Tensor:
        """∇θ L as a flat vector."""
        total = [torch.zeros_like(p) for p in self.params]
        for xb, yb in self.batches:
            loss = self._batch_loss(self.model(xb.to(self.device)), yb.to(self.device))
            for t, g in zip(total, torch.autograd.grad(loss, self.params)):
                t += g
        return torch.cat([t.reshape(-1) for t in total])

    def dense(self) -> torch.Tensor:
        """The explicit matrix (dim x dim), for tests on tiny models."""
        eye = torch.eye(self.dim, device=self.device, dtype=self.dtype)
        return torch.stack([self.matvec(e) for e in eye])


@dataclass
class Eigen:
    """Eigenpairs of a symmetric operator, eigenvalues in descending order."""

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    n_hvp: int
    residuals: np.ndarray
    method: str
    converged: bool
    history: list = field(default_factory=list, repr=False)
    n_converged: int | None = None

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


def _orthogonalize(w: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    if basis:
        Q = torch.stack(basis)
        for _ in range(2):
            w = w - Q.T @ (Q @ w)
    return w


def _tridiag(alphas, betas) -> np.ndarray:
    return np.diag(alphas) + np.diag(betas[:len(alphas) - 1], 1) + np.diag(betas[:len(alphas) - 1], -1)


def _bar(progress: bool, total: int, desc: str, unit: str = "HVP"):
    """A progress bar that leaves no line behind (a do-nothing one without ``progress``;
    ``tqdm.auto`` is not imported then: in a notebook without widgets it warns on import)."""
    if progress:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not progress)


def _lanczos_run(op, q: torch.Tensor, max_iter: int, stop=None, check_every: int = 5, bar=None):
    """Lanczos with full reorthogonalization from ``q``; ``stop(alphas, betas)`` is asked
    every ``check_every`` steps. Returns the recurrence coefficients and the basis."""
    q = (q / q.norm()).to(op.device, op.dtype)
    basis, alphas, betas = [q], [], []
    for j in range(max_iter):
        w = op.matvec(basis[j])
        if bar is not None:
            bar.update()
        alphas.append(torch.dot(w, basis[j]).item())
        w = _orthogonalize(w, basis)
        betas.append(w.norm().item())
        breakdown = betas[-1] <= 1e-10 * max(abs(x) for x in alphas)
        if breakdown or (stop is not None and (j + 1) % check_every == 0 and stop(alphas, betas)):
            break
        if j + 1 < max_iter:
            basis.append(w / betas[-1])
    return alphas, betas, basis[:len(alphas)]


def _warn_unconverged(method: str, n_ok: int, k: int, tol: float, n_hvp: int, cap: str) -> None:
    warnings.warn(f"{method}: only {n_ok} of {k} eigenpairs reached the relative tolerance {tol:g} in {n_hvp} "
                  f"Hessian-vector products ({cap}); the others are estimates: raise max_iter",
                  NotConvergedWarning, stacklevel=3)


def lanczos(op, k: int = 20, tol: float = 1e-4, which: str = "largest", max_iter: int | None = None,
            seed: int = 0, check_every: int = 5, progress: bool = False) -> Eigen:
    """Top-``k`` eigenpairs by Lanczos with full reorthogonalization.

    Stops when every wanted Ritz pair has residual ‖Hv − θv‖ ≤ ``tol``·|θ| (estimated from
    the Lanczos recurrence), which bounds each eigenvalue's relative error by ``tol``.
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
    with _bar(progress, max_iter, f"Lanczos top-{k}") as bar:
        alphas, betas, basis = _lanczos_run(op, q0, max_iter, converged, check_every, bar)
    theta, S, idx, res = ritz(alphas, betas)
    ok = within(theta[idx], res)
    done = len(alphas) == n or bool(np.all(ok))
    if not done:
        _warn_unconverged("Lanczos", int(ok.sum()), len(idx), tol, op.n_hvp - start, f"max_iter={max_iter}")
    order = np.argsort(theta[idx])[::-1]
    idx, res = idx[order], res[order]
    vecs = torch.as_tensor(S[:, idx].T.copy(), dtype=op.dtype, device=op.device) @ torch.stack(basis)
    return Eigen(theta[idx], vecs, op.n_hvp - start, res, "lanczos", done, history,
                 len(idx) if done else int(ok.sum()))


def power_iteration(op, k: int = 20, tol: float = 1e-4, max_iter: int = 100, seed: int = 0,
                    progress: bool = False) -> Eigen:
    """The paper's method: power iteration with deflation by projection (as PyHessian).

    Finds eigenvalues of largest magnitude one at a time; each stops when its value
    changes by less than ``tol`` relatively between two iterations (at most ``max_iter``
    products each; one that reaches the cap gives a :class:`NotConvergedWarning`). ``progress``
    shows a bar of eigenvalues found, with the HVPs used.
    """
    n = op.dim
    check(1 <= k <= n, f"k must be in 1..{n}, got {k}")
    start = op.n_hvp
    g = torch.Generator(device="cpu").manual_seed(seed)
    vecs, vals, res, n_ok = [], [], [], 0
    bar = _bar(progress, k, "power iteration", "eigenvalue")
    for _ in range(k):
        v = _orthogonalize(torch.randn(n, generator=g, dtype=torch.float64).to(op.device, op.dtype), vecs)
        v = v / v.norm()
        lam_prev, conv = None, False
        for _ in range(max_iter):
            w = op.matvec(v)
            lam = torch.dot(w, v).item()
            r = (w - lam * v).norm().item()
            w = _orthogonalize(w, vecs)
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
    return Eigen(np.asarray(vals)[order], torch.stack(vecs)[torch.as_tensor(order.copy())],
                 op.n_hvp - start, np.asarray(res)[order], "power", n_ok == k, n_converged=n_ok)


def top_eigen(model: nn.Module, data, k: int = 20, tol: float = 1e-4, method: str = "lanczos",
              which: str = "largest", chunk: int | None = None, hvp: str = "backward", seed: int = 0,
              max_iter: int | None = None, cache_graph: bool | None = None, progress: bool = False) -> Eigen:
    """Top-``k`` eigenpairs of the weight Hessian of the mean loss over ``data``.

    ``data``: an ``(inputs, targets)`` pair or an iterable of batches. ``method``:
    ``"lanczos"`` (default) or ``"power"`` (the paper's; largest magnitude only).
    ``progress``: a progress bar (worth it where one HVP takes seconds, as on a CPU).
    """
    check(method in ("lanczos", "power"), f"unknown eigen-solver {method!r}; choose lanczos or power")
    check(tol > 0, f"tol must be > 0, got {tol}")
    op = HessianOperator(model, data, chunk=chunk, hvp=hvp, cache_graph=cache_graph)
    if method == "power":
        check(which in ("largest", "magnitude"), "power iteration finds eigenvalues of largest magnitude only")
        return power_iteration(op, k, tol, max_iter or 100, seed, progress)
    return lanczos(op, k, tol, which, max_iter, seed, progress=progress)


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
        v = (torch.randint(0, 2, (op.dim,), generator=g) * 2 - 1).to(op.device, op.dtype)
        samples.append(torch.dot(v, op.matvec(v)).item())
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


def input_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, method: str = "power",
                    tol: float = 1e-4, max_iter: int = 100, chunk: int | None = None, seed: int = 0) -> InputCurvature:
    """‖∇ₓℓ(x_i)‖ and the dominant eigenvalue of ∇²ₓℓ(x_i) for every sample, a batch at once.

    In eval mode the samples do not interact, so the Hessian of the summed loss w.r.t. the
    batch is block diagonal and one Hessian-vector product serves every sample.
    ``method="power"`` is the paper's power iteration (any twice-differentiable model);
    ``method="exact"`` uses ∇²ₓℓ = Jᵀ(diag p − ppᵀ)J, exact almost everywhere for ReLU
    networks (Theorem 1's setting), by an eigendecomposition of a c x c matrix per sample.
    """
    check(method in ("power", "exact"), f"unknown method {method!r}; choose power or exact")
    check(len(inputs) == len(targets) and len(inputs) > 0, "inputs and targets must be non-empty and of equal length")
    model.eval()
    chunk = chunk or default_chunk(inputs.device, 512, 4096)
    g = torch.Generator().manual_seed(seed)
    norms, lams, iters, unconverged = [], [], 0, 0
    for i in range(0, len(inputs), chunk):
        x = inputs[i:i + chunk].detach().clone().requires_grad_(True)
        y = targets[i:i + chunk]
        out = model(x)
        loss = F.cross_entropy(out, y, reduction="sum")
        if method == "exact":
            grad = torch.autograd.grad(loss, x, retain_graph=True)[0]
            lam, it, left = _exact_input_lambda(out, x), out.shape[1], 0
        else:
            grad = torch.autograd.grad(loss, x, create_graph=True)[0]
            lam, it, left = _batched_power(model, x, y, grad, g, tol, max_iter)
        norms.append(grad.detach().flatten(1).norm(dim=1).cpu())
        lams.append(lam.detach().cpu())
        iters, unconverged = max(iters, it), unconverged + left
    return InputCurvature(torch.cat(norms).double().numpy(), torch.cat(lams).double().numpy(), iters, method,
                          unconverged)


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
    model.eval()
    d = inputs[0].numel()
    check(d <= 4096, f"explicit input Hessians are for small inputs (d <= 4096), got d = {d}")

    def hess(xi, yi):
        f = lambda z: F.cross_entropy(model(z.view(1, *xi.shape)), yi.view(1))  # noqa: E731
        return torch.autograd.functional.hessian(f, xi.reshape(-1), vectorize=True)

    return torch.stack([hess(xi, yi) for xi, yi in zip(inputs, targets)])
