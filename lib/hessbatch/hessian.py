"""Curvature in the weights as matrix-free operators: the Hessian (``HessianOperator``) and the
generalized Gauss–Newton matrix (``GGNOperator``), over all parameters or a block of them.

Hessian products are exact Hessian-vector products of the mean loss (cross-entropy, or any
callable) over a dataset (Pearlmutter's trick: no Gauss–Newton approximation), accumulated over
chunks of tensors held in memory or over the batches of a streamed DataLoader, so memory
stays bounded. Products are taken in **eval mode**: batch-norm uses its running statistics,
so the loss is a fixed function of the weights and the dataset (the paper's and PyHessian's
convention); the caller's model keeps its own mode. Solvers over it are in
``hessbatch.eigensolvers``; curvature with respect to the inputs in ``hessbatch.input_curvature``.
"""

from __future__ import annotations

import copy
import math
import os
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import schema
from .errors import HessbatchError, check
from .evaluation import batches, eval_mode, is_pair


def subsample(data: tuple[torch.Tensor, torch.Tensor], size: int, seed: int = 0):
    """A seeded random subset of ``size`` samples: the paper's subsampled Hessian H_B."""
    x, y = data
    check(0 < size <= len(x), f"subsample size must be in 1..{len(x)}, got {size}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:size]
    return x[idx.to(x.device)], y[idx.to(y.device)]


def free_memory(device: torch.device) -> int | None:
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
    return schema.env("HESSBATCH_GRAPH_MEMORY", 0.5)


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


VECTOR_DTYPE = torch.float64


def _parameters(model: nn.Module, params) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of ``params`` (parameters of ``model`` or their names; None: every one that
    requires a gradient), in the model's order."""
    named = list(model.named_parameters())
    if params is None:
        return [(n, p) for n, p in named if p.requires_grad]
    by_id, names = {id(p): n for n, p in named}, set()
    for q in params:
        if isinstance(q, str):
            check(q in by_id.values(), f"params: the model has no parameter {q!r}")
            names.add(q)
        else:
            check(id(q) in by_id, "params must be parameters of the model, or their names")
            names.add(by_id[id(q)])
    check(names, "params chooses no parameter")
    return [(n, p) for n, p in named if n in names]


class _Float64:
    """A re-iterable of batches with float64 inputs."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return ((x.double(), y) for x, y in self.batches)


class CurvatureOperator:
    """A curvature matrix of L(θ), the mean loss over ``data``, as a matrix-free operator over the
    parameters ``params`` (default: all that require a gradient). Subclasses give one batch's
    product (:meth:`_batch_product`) of the matrix of the batch's summed loss.

    ``data``: an ``(inputs, targets)`` pair of tensors, split into chunks of ``chunk`` samples and
    held in memory; or any re-iterable of ``(inputs, targets)`` batches (a ``DataLoader``), streamed
    on every product so that memory holds one batch at a time. Each pass must yield the same
    samples. ``loss(output, target)``: the mean loss of a batch (default cross-entropy).
    Vectors are flat tensors; products come back in float64 (``VECTOR_DTYPE``): each batch's product
    is taken in the model's precision and the batches are summed in float64, so that rounding over
    many batches and the solvers' inner products cannot bias an eigenvalue (float32 sums biased the
    top eigenvalues of a trained M1 by 1e-4, relative). The caller's model is never changed;
    products are taken in eval mode (batch-norm uses its running statistics).
    """

    def __init__(self, model: nn.Module, data, loss: Callable = F.cross_entropy, chunk: int | None = None,
                 params=None):
        check(callable(loss), f"loss must be a callable (output, target) -> mean loss, got {loss!r}")
        self.model = model
        self.named_params = _parameters(model, params)
        self.params = [p for _, p in self.named_params]
        self.shapes = [p.shape for p in self.params]
        self.dim = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.loss = loss
        self.streamed = not is_pair(data)
        self.batches = batches(data, chunk, model)
        self.n = None if self.streamed else len(data[1])   # streamed: counted on the first product
        check(self.n is None or self.n > 0, "the curvature needs at least one sample")
        self.n_hvp = 0

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(torch.split(v, [math.prod(s) for s in self.shapes]), self.shapes)]

    def _batch_loss(self, out, y):
        """The batch's summed loss (the mean over the whole data is the sum over batches / n)."""
        return self.loss(out, y) * len(y)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The product with a flat vector ``v``, in float64."""
        self.n_hvp += 1
        vs = self._split(v.to(self.device, self.dtype))
        with eval_mode(self.model):
            try:
                return self._matvec(vs)
            except RuntimeError as e:
                if "derivative for" not in str(e) or "not implemented" not in str(e):
                    raise
                raise HessbatchError(f"{type(self).__name__} needs second derivatives of the model, and PyTorch has "
                                     f"none for one of its operations ({str(e).splitlines()[0]}); replace that layer "
                                     "(hard-sigmoid and hard-swish are common ones)") from None

    def _matvec(self, vs):
        total = [torch.zeros(p.shape, dtype=VECTOR_DTYPE, device=self.device) for p in self.params]
        graphs = self._cached_gradients()
        for g in graphs:
            dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
            for t, h in zip(total, torch.autograd.grad(dot, self.params, retain_graph=True)):
                t += h
        n = sum(len(b[1]) for b in self.batches[:len(graphs)]) if graphs else 0
        it = iter(self.batches if self.streamed else self.batches[len(graphs):])
        while (batch := next(it, None)) is not None:
            xb, yb = batch
            check(len(xb) == len(yb) > 0, f"a batch of data has {len(xb)} inputs and {len(yb)} targets")
            n += len(yb)
            hv = self._batch_product(xb.to(self.device), yb.to(self.device), vs)
            del batch, xb, yb       # a streamed batch is freed before the next is read
            for t, h in zip(total, hv):
                t += h.detach()
        if self.n is None:
            check(n > 0, "the curvature needs at least one sample; data yielded no batch")
            self.n = n
        check(n == self.n, f"data yielded {n} samples on this pass and {self.n} on the first: a streamed "
                           "dataset must give the same samples on every pass (no shuffling)")
        return torch.cat([t.reshape(-1) for t in total]) / self.n

    __matmul__ = matvec

    def _cached_gradients(self) -> list:
        return []

    def _batch_product(self, xb, yb, vs) -> list[torch.Tensor]:
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The explicit matrix (dim x dim, float64), for tests on tiny models."""
        eye = torch.eye(self.dim, device=self.device, dtype=VECTOR_DTYPE)
        return torch.stack([self.matvec(e) for e in eye])


class HessianOperator(CurvatureOperator):
    """H = ∇²θ L(θ): exact Hessian-vector products (Pearlmutter's trick; no Gauss–Newton
    approximation). See :class:`CurvatureOperator` for ``data``, ``loss`` and ``params``.

    ``hvp="backward"`` differentiates twice with autograd; ``hvp="func"`` uses ``torch.func``
    forward-over-reverse. A cached chunk keeps the graph of its gradient, so each product is one
    backward pass instead of a forward and two (1.4x faster for M1 and C1 on a CPU), at the memory
    of the graph. ``cache_graph``: ``None`` (default) caches in-memory chunks while their graphs fit
    in ``memory_budget`` bytes (default: :func:`graph_memory_share`, half, of the memory free when
    the first product is taken: the GPU's, or the host's on Linux; where that is unknown, data of one
    chunk is cached); ``True`` caches every chunk, ``False`` none; streamed data is never cached.
    ``graph_bytes`` and ``cached_chunks`` say what was cached.
    """

    def __init__(self, model: nn.Module, data, loss: Callable = F.cross_entropy, chunk: int | None = None,
                 hvp: str = "backward", cache_graph: bool | None = None, memory_budget: int | None = None,
                 params=None):
        check(hvp in ("backward", "func"), f"unknown hvp method {hvp!r}; choose backward or func")
        super().__init__(model, data, loss, chunk, params)
        self.hvp_method = hvp
        self.cache_graph = cache_graph
        self.memory_budget = memory_budget
        self.graph_bytes = 0
        self._graphs = None

    @property
    def cached_chunks(self) -> int:
        """How many chunks keep their gradient's graph (known after the first product)."""
        return len(self._graphs or [])

    def _cached_gradients(self) -> list:
        """The gradients, with graphs, of the leading chunks that fit the budget (built once)."""
        if self._graphs is not None:
            return self._graphs
        self._graphs = []
        if self.hvp_method != "backward" or self.cache_graph is False or self.streamed:
            return self._graphs
        budget = self.memory_budget
        if self.cache_graph:
            budget = math.inf
        elif budget is None:
            free = free_memory(self.device)
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

    def _batch_product(self, xb, yb, vs):
        return self._hvp_func(xb, yb, vs) if self.hvp_method == "func" else self._hvp_backward(xb, yb, vs)

    def _hvp_backward(self, xb, yb, vs):
        loss = self._batch_loss(self.model(xb), yb)
        g = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((gi * vi).sum() for gi, vi in zip(g, vs))
        return torch.autograd.grad(dot, self.params)

    def _hvp_func(self, xb, yb, vs):
        from torch.func import functional_call, grad, jvp

        names = [n for n, _ in self.named_params]
        fixed = {**dict(self.model.named_buffers()), **dict(self.model.named_parameters())}

        def f(params):
            out = functional_call(self.model, ({**fixed, **dict(zip(names, params))},), (xb,))
            return self._batch_loss(out, yb)

        return jvp(grad(f), (tuple(self.params),), (tuple(vs),))[1]


class GGNOperator(CurvatureOperator):
    """G = Jᵀ ∇²_f ℓ J, the generalized Gauss–Newton matrix of L(θ) (J: the Jacobian of the model's
    outputs f with respect to the parameters; ∇²_f ℓ: the Hessian of the loss in the outputs). It
    equals the Hessian less the terms of the network's own second derivatives, and is positive
    semi-definite for a convex loss. See :class:`CurvatureOperator` for the arguments."""

    def _batch_product(self, xb, yb, vs):
        out = self.model(xb)
        u = torch.zeros_like(out, requires_grad=True)              # J v by the double-vjp trick
        jt_u = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True, retain_graph=True)
        jv = torch.autograd.grad(jt_u, u, grad_outputs=vs)[0]
        f = out.detach().requires_grad_(True)
        gf = torch.autograd.grad(self._batch_loss(f, yb), f, create_graph=True)[0]
        hjv = torch.autograd.grad(gf, f, grad_outputs=jv)[0]
        return torch.autograd.grad(out, self.params, grad_outputs=hjv)


ROUNDING_SAMPLES = 5000


def product_rounding(op: CurvatureOperator, v: torch.Tensor, max_samples: int = ROUNDING_SAMPLES) -> float:
    """‖H̃v − Hv‖ / ‖Hv‖: how far ``op``'s product (in the model's precision) is from the same
    product taken with a float64 copy of the model and data, at ``v`` (an eigenvector, say). The
    eigenvalues ``op`` gives carry this error, relative to the largest, on top of their residuals.
    Costs one product in float64 (0 for a float64 model), which on a CPU takes several times a
    float32 one: on in-memory data of more than ``max_samples`` samples both products are taken on
    chunks spread evenly over the data, about ``max_samples`` samples. The chunks' products are summed
    in float64, so their independent rounding errors partly cancel: the estimate on fewer samples
    is the larger one."""
    if op.dtype == torch.float64:
        return 0.0
    names = [n for n, _ in op.named_params]
    options = dict(hvp=op.hvp_method, cache_graph=False) if isinstance(op, HessianOperator) else {}
    if not op.streamed and op.n > max_samples:
        per = max(1, round(max_samples / len(op.batches[0][1])))
        picked = sorted({round(i) for i in torch.linspace(0, len(op.batches) - 1, per).tolist()})
        spread = [op.batches[i] for i in picked]
        op = type(op)(op.model, spread, loss=op.loss, params=names, **options)
    exact = type(op)(copy.deepcopy(op.model).double(), _Float64(op.batches), loss=op.loss, params=names, **options)
    ref = exact.matvec(v.double())
    return (op.matvec(v) - ref).norm().item() / max(ref.norm().item(), 1e-300)
