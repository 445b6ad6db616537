"""Evaluating a model without changing it: its train/eval mode is restored on the way out,
whatever happens (``eval_mode``), and every pass over a dataset goes in chunks (``outputs``)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .devices import default_chunk


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, in the caller's mode (train or eval) after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def outputs(model: nn.Module, x: torch.Tensor, chunk: int | None = None):
    """``(start, logits)`` per chunk of ``x``, in eval mode and without gradients, on the model's device."""
    device = next(model.parameters()).device
    chunk = chunk or default_chunk(x.device, 1000, 8192)
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), chunk):
            yield i, model(x[i:i + chunk].to(device))


def predict(model: nn.Module, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Logits of ``model`` for ``x`` (eval mode), on the model's device."""
    return torch.cat([out for _, out in outputs(model, x, chunk)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in [0, 1]) of ``model`` in eval mode."""
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i, out in outputs(model, x, chunk):
        yb = y[i:i + len(out)].to(out.device)
        loss += F.cross_entropy(out, yb, reduction="sum").double().to(loss.device)
        correct += (out.argmax(1) == yb).sum().to(correct.device)
    return loss.item() / len(y), correct.item() / len(y)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    return evaluate(model, x, y, chunk)[1]


def full_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    """‖∇θ L‖₂ of the mean cross-entropy over ``(x, y)``, in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    with eval_mode(model):
        for i in range(0, len(y), chunk):
            loss = F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk], reduction="sum") / len(y)
            for t, g in zip(total, torch.autograd.grad(loss, params)):
                t += g
    return torch.sqrt(sum((t * t).sum() for t in total)).item()
