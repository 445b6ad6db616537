"""Which device a computation runs on, and how many samples it takes per pass there."""

from __future__ import annotations

import functools
import platform

import torch

from .errors import HessbatchError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the GPU if there is one; else the named device, which must exist.
    A CUDA device is set up by ``full_fp32``."""
    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise HessbatchError(f"unknown device {device!r}; choose cpu, cuda, cuda:N or auto") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise HessbatchError(f"device {device!r} asked for, but no CUDA GPU is available")
    if dev.type == "cuda":
        full_fp32()
    return dev


def full_fp32() -> None:
    """Matrix products and convolutions on CUDA in full fp32: no TF32, whose 10-bit mantissa would
    swamp the eigen-solvers' 1e-4 tolerance (cuDNN allows it by default); cuDNN benchmarks its
    algorithms per shape (GPU results are then not bitwise repeatable; CPU ones are)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def default_chunk(device, cpu: int = 1024, gpu: int = 8192) -> int:
    """Samples per pass where no model is known; with one, ``evaluation.pass_chunk`` chooses by the
    size of its activations on a CPU (launch-bound GPUs take large ones)."""
    return cpu if torch.device(device).type == "cpu" else gpu


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
