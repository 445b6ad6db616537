"""Which device a computation runs on, and how many samples it takes per pass there."""

from __future__ import annotations

import torch

from .errors import HessbatchError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the GPU if there is one; else the named device, which must exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HessbatchError(f"unknown device {device!r}; choose cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HessbatchError(f"device {device!r} asked for, but no CUDA GPU is available")
    return dev


def default_chunk(device, cpu: int = 1024, gpu: int = 8192) -> int:
    """Samples per forward/backward pass: small on a CPU (cache), large on a GPU (launch-bound)."""
    return cpu if torch.device(device).type == "cpu" else gpu
