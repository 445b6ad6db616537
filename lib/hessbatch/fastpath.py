"""How a model's arithmetic is laid out on the CPU: the fast path, chosen by measurement
(``benchmarks/cpu.py``).

A training step of a convolutional model on a CPU (oneDNN) takes 6–35 % less time on channels-last
tensors (NHWC) than on the default NCHW layout: oneDNN's kernels are NHWC-native, and NCHW costs a
reorder of activations on the way in and out. A convolution runs channels-last when its weight
is, whatever the input's layout, so converting the model's parameters is enough: inputs stay in
[0, 1], NCHW, as everywhere else. Hessian-vector products (double backward) are the exception:
C1, C2 and C3 take them 6–37 % slower channels-last (M1 the same), so ``for_hessian`` takes them in NCHW.

A pass over a batch also stays in cache when it takes few samples at a time (C1's first
convolution holds 256 KiB of activations per sample): ``hessbatch.evaluation.pass_chunk``. So a
training step of a model whose loss is a sum over its samples (no batch norm, no dropout: M1, C3)
sums the gradients of parts of that size before its update (``training_parts``): C3 at B = 128
takes about 22 % less time per step on one core, M1 at B = 1,024 about 10 %. Models with batch
norm (C1, C2) train on whole batches, since their batch statistics would change.

The layout changes float32 rounding, not the model: the same parameters, the same function, the
same state dict. A run records which layout trained it (``result.json``: ``memory_format``).
On a GPU nothing changes (NCHW, as every CUDA-graph check was made), and ``HESSBATCH_CHANNELS_LAST=0``
turns the fast path off everywhere.

At large batches, models with batch norm (C1, C2) are memory-bound in their element-wise passes
(batch norm, ReLU, pooling); ``torch.compile`` fuses them, and their training steps at B ≥ 512
take 11–28 % less time, while it slows the other models and smaller batches. So training compiles
exactly there (``compiles``; ``HESSBATCH_COMPILE=0`` never, ``1`` always on a CPU), after a check
on a copy of the model; a model that does not compile trains eagerly, with a warning, and the run
records which (``result.json``: ``step``).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from . import schema
from .evaluation import pass_chunk

ENV = "HESSBATCH_CHANNELS_LAST"
PARTS_ENV = "HESSBATCH_PARTS"
COMPILE_ENV = "HESSBATCH_COMPILE"
COMPILE_FROM = 512  # the smallest batch whose C1 and C2 steps compile faster (benchmarks/cpu.py)


def enabled() -> bool:
    """Channels-last unless ``HESSBATCH_CHANNELS_LAST=0`` (``1`` or unset: on)."""
    return schema.env(ENV, "1") == "1"


def memory_format(model: nn.Module, device) -> torch.memory_format:
    """The layout ``model`` computes fastest in on ``device``: channels-last for a model with 2-D
    convolutions on a CPU, else the default."""
    cpu = torch.device(device).type == "cpu"
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if cpu and has_conv and enabled() else torch.contiguous_format


def to_fast(model: nn.Module, device) -> nn.Module:
    """``model`` on ``device`` in its fastest layout (in place, as ``Module.to``)."""
    return model.to(device=device, memory_format=memory_format(model, device))


def for_hessian(model: nn.Module) -> nn.Module:
    """``model`` (in place) in the layout Hessian-vector products are fastest in: NCHW everywhere."""
    return model.to(memory_format=torch.contiguous_format)


def format_name(fmt: torch.memory_format) -> str:
    """``channels_last`` or ``contiguous``, as a run's result records its layout."""
    return "channels_last" if fmt == torch.channels_last else "contiguous"


def compiles(model: nn.Module, batch_size: int, device) -> bool:
    """Whether training compiles ``model``'s forward: on a CPU, for a model with batch norm at
    B ≥ ``COMPILE_FROM``, unless ``HESSBATCH_COMPILE`` says ``0`` (never) or ``1`` (always)."""
    raw = schema.env(COMPILE_ENV, "auto")
    if torch.device(device).type != "cpu" or raw == "0":
        return False
    has_bn = any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules())
    return raw == "1" or (has_bn and batch_size >= COMPILE_FROM)


def training_parts(model: nn.Module, x: torch.Tensor, batch_size: int, device, step_hook=None) -> int | None:
    """Samples per part of a training step whose gradients are summed before the update: on a CPU,
    ``pass_chunk``'s when it is smaller than the batch and the step is a sum over samples (no batch
    norm or dropout in the model; no step hook, or one marked ``per_sample``); else None, one pass
    per batch. ``HESSBATCH_PARTS=0`` never."""
    if torch.device(device).type != "cpu" or schema.env(PARTS_ENV, "1") == "0":
        return None
    mixing = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if any(isinstance(m, mixing) for m in model.modules()):
        return None
    if step_hook is not None and not getattr(step_hook, "per_sample", False):
        return None
    chunk = pass_chunk(model, x)
    return chunk if chunk < batch_size else None


def compiled_forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
    """``torch.compile(model)`` and ``compiled``, if a forward and backward of ``(x, y)`` compile on a
    copy of the model (whose compiled code the run then reuses from the cache); else ``model`` and
    why not, with a warning. ``loss_fn(out, y)`` is the training loss."""
    trial = copy.deepcopy(model).train()
    try:
        loss_fn(torch.compile(trial)(x), y).backward()
    except Exception as e:  # noqa: BLE001 -- whatever stops a compile, the eager step trains the same run
        from .errors import describe

        why = describe(e)
        warnings.warn(f"torch.compile failed ({why}); training with eager steps", RuntimeWarning, stacklevel=3)
        return model, f"eager (compile failed: {why})"
    return torch.compile(model), "compiled"
