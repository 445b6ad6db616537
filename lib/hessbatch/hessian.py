"""The weight Hessian as a matrix-free operator (``HessianOperator``).

Its products are exact Hessian-vector products of the mean cross-entropy over a dataset
(Pearlmutter's trick: no Gauss–Newton approximation), accumulated over chunks so memory
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

from .devices import default_chunk
from .errors import check
from .evaluation import eval_mode


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


VECTOR_DTYPE = torch.float64


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
    what was cached. Vectors are flat tensors; products come back in float64 (``VECTOR_DTYPE``):
    each chunk's product is taken in the model's precision and the chunks are summed in float64, so
    that rounding over many chunks and the solvers' inner products cannot bias an eigenvalue
    (float32 sums biased the top eigenvalues of a trained M1 by 1e-4, relative).
    """

    def __init__(self, model: nn.Module, data, loss: Callable = F.cross_entropy, chunk: int | None = None,
                 hvp: str = "backward", cache_graph: bool | None = None, memory_budget: int | None = None):
        check(hvp in ("backward", "func"), f"unknown hvp method {hvp!r}; choose backward or func")
        self.model = model
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
        """H v for a flat vector ``v``, in float64."""
        self.n_hvp += 1
        vs = self._split(v.to(self.device, self.dtype))
        with eval_mode(self.model):
            return self._matvec(vs)

    def _matvec(self, vs):
        total = [torch.zeros(p.shape, dtype=VECTOR_DTYPE, device=self.device) for p in self.params]
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

    def dense(self) -> torch.Tensor:
        """The explicit matrix (dim x dim, float64), for tests on tiny models."""
        eye = torch.eye(self.dim, device=self.device, dtype=VECTOR_DTYPE)
        return torch.stack([self.matvec(e) for e in eye])


def product_rounding(op: HessianOperator, v: torch.Tensor) -> float:
    """‖H̃v − Hv‖ / ‖Hv‖: how far ``op``'s product (in the model's precision) is from the same
    product taken with a float64 copy of the model and data, at ``v`` (an eigenvector, say). The
    eigenvalues ``op`` gives carry this error, relative to the largest, on top of their residuals.
    Costs one product in float64 (0 for a float64 model)."""
    if op.dtype == torch.float64:
        return 0.0
    exact = HessianOperator(copy.deepcopy(op.model).double(), [(x.double(), y) for x, y in op.batches],
                            loss=op.loss, hvp=op.hvp_method, cache_graph=False)
    ref = exact.matvec(v.double())
    return (op.matvec(v) - ref).norm().item() / max(ref.norm().item(), 1e-300)
