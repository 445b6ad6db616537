"""Training steps replayed from a CUDA graph.

Small-batch training on a GPU is bound by kernel launches, not by arithmetic: one step of C1 at
B = 16 launches some hundred kernels that each finish in microseconds. ``CapturedStep`` records one
whole step (gather the batch, forward, loss, backward, SGD update) once and replays it, so a step
costs one launch. Its inputs are static buffers: the batch's indices and the learning rate (a
tensor, so that warm-up and decay reach the replayed update). The update is ``sgd_update``, the
arithmetic of ``torch.optim.SGD`` written over a tensor learning rate, on the optimizer's own
momentum buffers, so that checkpoints and eager steps share one state.

``self_check`` trains a copy of a model a few steps both ways and reports how far they drift apart.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import schema
from .errors import HessbatchError

ENV = "HESSBATCH_CUDA_GRAPHS"


class CaptureUnavailable(HessbatchError):
    """This run cannot be captured (not on a GPU, or an option the graph does not replay)."""


def enabled(dev: torch.device) -> bool:
    """Graphs are used on CUDA devices unless ``HESSBATCH_CUDA_GRAPHS=0`` (0 or 1; anything else is an error)."""
    return schema.env(ENV, "1") == "1" and dev.type == "cuda"


def sgd_update(params, bufs, neg_lr: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """``torch.optim.SGD.step`` (dampening 0, no Nesterov) with the learning rate a tensor
    holding −η: g ← ∇ + λθ; b ← μb + g; θ ← θ − ηb. ``bufs`` are the momentum buffers (zeros before
    the first step, where SGD would clone the gradient: the same numbers), or Nones when μ = 0."""
    with torch.no_grad():
        for p, buf in zip(params, bufs):
            if p.grad is None:  # frozen, as torch.optim.SGD skips it
                continue
            g = p.grad if not weight_decay else p.grad.add(p, alpha=weight_decay)
            if buf is not None:
                g = buf.mul_(momentum).add_(g)
            p.addcmul_(g, neg_lr)


class CapturedStep:
    """One full-size step of a run over ``ds`` (already on the device), recorded in a CUDA graph.

    ``step(idx, lr)`` trains on the samples at ``idx`` at rate ``lr``; the batch losses add up in
    ``total`` (read it once per epoch). ``capture=False`` runs the same body eagerly at each step:
    the stand-in for a replay in the CPU tests. The caller's model and optimizer are trained in
    place; capturing itself changes neither (its warm-up steps are undone).
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, ds, cfg, loss_fn,
                 smoothing: torch.Tensor | None = None, capture: bool = True, warmup: int = 3):
        if len(opt.param_groups) != 1:
            raise CaptureUnavailable("a captured step replays one parameter group")
        group = opt.param_groups[0]
        if group.get("nesterov") or group.get("dampening"):
            raise CaptureUnavailable("a captured step replays SGD without Nesterov or dampening")
        if capture and ds.x_train.device.type != "cuda":
            raise CaptureUnavailable(f"CUDA graphs need a CUDA device, not {ds.x_train.device}")
        self.model, self.opt, self.ds, self.cfg, self.loss_fn, self.smoothing = model, opt, ds, cfg, loss_fn, smoothing
        dev = ds.x_train.device
        self.params = list(group["params"])
        self.momentum, self.weight_decay = group["momentum"], group["weight_decay"]
        self.bufs = [opt.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) if self.momentum else None
                     for p in self.params]
        self.idx = torch.zeros(cfg.batch_size, dtype=torch.long, device=dev)
        self.neg_lr = torch.zeros((), device=dev)
        self.total = torch.zeros((), device=dev)
        self.graph = self._capture(warmup) if capture else None

    def _body(self) -> None:
        xb, yb = self.ds.x_train[self.idx], self.ds.y_train[self.idx]
        alpha = None if self.smoothing is None else self.smoothing[self.idx]
        loss = self.loss_fn(self.model(xb), yb, self.cfg, alpha)
        loss.backward()
        sgd_update(self.params, self.bufs, self.neg_lr, self.momentum, self.weight_decay)
        self.total += loss.detach()

    def _capture(self, warmup: int) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (cuDNN and cuBLAS pick their kernels and workspaces there), undo
        the warm-up, then record one step."""
        saved = [t.detach().clone() for t in self._state()]
        rng = torch.cuda.get_rng_state(self.idx.device)
        self.idx.copy_(torch.arange(len(self.idx), device=self.idx.device) % self.ds.n_train)
        side = torch.cuda.Stream(self.idx.device)
        side.wait_stream(torch.cuda.current_stream(self.idx.device))
        try:
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.opt.zero_grad(set_to_none=True)
                    self._body()
        finally:
            torch.cuda.current_stream(self.idx.device).wait_stream(side)
            with torch.no_grad():
                for t, s in zip(self._state(), saved):
                    t.copy_(s)
            torch.cuda.set_rng_state(rng, self.idx.device)
            self.total.zero_()
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        return graph

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step changes: parameters, buffers (BatchNorm statistics), momentum."""
        return [*self.model.parameters(), *self.model.buffers(), *(b for b in self.bufs if b is not None)]

    def step(self, idx: torch.Tensor, lr: float) -> None:
        self.idx.copy_(idx)
        self.neg_lr.fill_(-lr)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.opt.zero_grad(set_to_none=True)
            self._body()


def self_check(model: nn.Module, ds, cfg, loss_fn, steps: int = 5, capture: bool = True) -> dict:
    """Train two copies of ``model`` ``steps`` full-size steps from the same state, eagerly
    (``torch.optim.SGD``) and by ``CapturedStep``: the largest parameter difference, absolute and
    relative to the largest parameter, and the loss of each at the end."""
    copies = [copy.deepcopy(model) for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            for m in copies]
    for m in copies:
        m.train()
    captured = CapturedStep(copies[1], opts[1], ds, cfg, loss_fn, capture=capture)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = [0.0, 0.0]
    for s in range(steps):
        idx = torch.randperm(ds.n_train, generator=gen)[:cfg.batch_size].to(ds.x_train.device)
        opts[0].zero_grad(set_to_none=True)
        loss = loss_fn(copies[0](ds.x_train[idx]), ds.y_train[idx], cfg, None)
        loss.backward()
        opts[0].step()
        captured.total.zero_()
        captured.step(idx, cfg.lr)
        losses = [loss.item(), captured.total.item()]
    diff = max((a - b).abs().max().item() for a, b in zip(copies[0].parameters(), copies[1].parameters()))
    scale = max(p.abs().max().item() for p in copies[0].parameters())
    return {"steps": steps, "max_param_diff": diff, "relative_param_diff": diff / scale,
            "eager_loss": losses[0], "captured_loss": losses[1], "captured": captured.graph is not None}
