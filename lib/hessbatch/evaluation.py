"""Evaluating a model without changing it: its train/eval mode is restored on the way out,
whatever happens (``eval_mode``), and every pass over a dataset goes in batches (``batches``):
chunks of tensors held in memory, or the batches a DataLoader streams."""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .devices import default_chunk
from .errors import check


def is_pair(data) -> bool:
    """Whether ``data`` is an ``(inputs, targets)`` pair of tensors (held in memory)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])


def batches(data, chunk: int | None = None, model: nn.Module | None = None):
    """``data`` as a re-iterable of ``(inputs, targets)`` batches: an ``(inputs, targets)`` pair of
    tensors cut into chunks of ``chunk`` samples (a list; default: :func:`pass_chunk`'s for
    ``model``), or a re-iterable of batches (a DataLoader) as it is, to be streamed."""
    if is_pair(data):
        x, y = data
        check(len(x) == len(y), f"{len(x)} inputs and {len(y)} targets")
        step = chunk or (pass_chunk(model, x) if model is not None else default_chunk(x.device, 1000, 8192))
        return [(x[i:i + step], y[i:i + step]) for i in range(0, len(y), step)]
    check(iter(data) is not data, "data must be an (inputs, targets) pair or re-iterable (a DataLoader, a list "
                                  "of batches), not a one-pass iterator: it may be read more than once")
    return data


CACHE_BYTES = 4 << 20
_CHUNKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pass_chunk(model: nn.Module, x: torch.Tensor, gpu: int = 8192) -> int:
    """Samples per forward/backward pass of ``model`` over inputs like ``x``: ``gpu`` on a GPU
    (launch-bound); on a CPU the largest power of two from 16 to 1,024 whose largest activation
    (one module's output) fits in ``CACHE_BYTES`` (4 MiB), so that a pass stays in cache. C1's
    passes take about half the time per sample at 16 samples (256 KiB each) than at 1,024, M1's
    (15 KiB) are as fast at 256 (``benchmarks/cpu.py --parts chunks``)."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        return gpu
    key = (tuple(x.shape[1:]), x.dtype)
    known = _CHUNKS.setdefault(model, {})
    if key not in known:
        known[key] = _cache_chunk(model, x[:1].to(device))
    return known[key]


def _cache_chunk(model: nn.Module, x1: torch.Tensor) -> int:
    sizes = [0]

    def hook(module, inputs, out):
        if torch.is_tensor(out):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with eval_mode(model), torch.no_grad():
            model(x1)
    except (RuntimeError, ValueError, TypeError):
        return 1024   # the pass itself reports what does not fit
    finally:
        for h in handles:
            h.remove()
    chunk = 1024
    while chunk > 16 and chunk * max(sizes) > CACHE_BYTES:
        chunk //= 2
    return chunk


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
    chunk = chunk or pass_chunk(model, x)
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), chunk):
            yield i, model(x[i:i + chunk].to(device))


def predict(model: nn.Module, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Logits of ``model`` for ``x`` (eval mode), on the model's device."""
    return torch.cat([out for _, out in outputs(model, x, chunk)])


def evaluate(model: nn.Module, x, y: torch.Tensor | None = None, chunk: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in [0, 1]) of ``model`` in eval mode on inputs ``x`` and
    targets ``y``, or on ``x`` alone when it is data as :func:`batches` takes it (a DataLoader)."""
    device = next(model.parameters()).device
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with eval_mode(model), torch.no_grad():
        for xb, yb in batches((x, y) if y is not None else x, chunk, model):
            out, yb = model(xb.to(device)), yb.to(device)
            loss += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(1) == yb).sum()
            n += len(yb)
    check(n > 0, "evaluate needs at least one sample")
    return loss.item() / n, correct.item() / n


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    return evaluate(model, x, y, chunk)[1]


def full_gradient_norm(model: nn.Module, x, y: torch.Tensor | None = None, chunk: int | None = None) -> float:
    """‖∇θ L‖₂ of the mean cross-entropy over ``(x, y)`` (or over data ``x``, as :func:`evaluate`),
    in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    known = len(y) if y is not None else None   # in memory: each chunk's share; streamed: divided at the end
    total = [torch.zeros_like(p) for p in params]
    n = 0
    with eval_mode(model):
        for xb, yb in batches((x, y) if y is not None else x, chunk, model):
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device), reduction="sum")
            for t, g in zip(total, torch.autograd.grad(loss / known if known else loss, params)):
                t += g
            n += len(yb)
    check(n > 0, "full_gradient_norm needs at least one sample")
    return (torch.sqrt(sum((t * t).sum() for t in total)) / (1 if known else n)).item()
