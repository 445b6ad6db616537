"""A training run's per-epoch checkpoint, which can tell whether it is whole and whether it fits
its run: the file starts with the SHA-256 of the rest, and resuming checks that and each field
against the run (its key, an epoch within the cap, one history row per epoch). The hashes of the
run's weight snapshots travel in it, so that publishing can check them too."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import torch

from .atomic import atomic_write_bytes

MAGIC = b"hessbatch-checkpoint sha256="


def save(state: dict, path: Path) -> None:
    """Write ``state`` (``torch.save``) behind its SHA-256, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def load(path: Path, map_location="cpu") -> dict:
    """The state in ``path``; ``ValueError`` if its bytes are not the ones hashed. A checkpoint
    written before checkpoints carried a hash is read as it is."""
    raw = Path(path).read_bytes()
    if raw.startswith(MAGIC):
        digest, body = raw[len(MAGIC):len(MAGIC) + 64], raw[len(MAGIC) + 65:]
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise ValueError("its SHA-256 does not match its contents")
        raw = body
    return torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)


def check(state: dict, key: str, max_epochs: int) -> None:
    """``ValueError`` naming the first field of ``state`` that does not fit run ``key``."""
    epoch, history = state.get("epoch"), state.get("history")
    if state.get("key", key) != key:
        raise ValueError(f"it belongs to run {state.get('key')!r}")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= max_epochs):
        raise ValueError(f"its epoch {epoch!r} is not in 1..{max_epochs}")
    if not (isinstance(history, list) and [r.get("epoch") if isinstance(r, dict) else None for r in history]
            == list(range(1, epoch + 1))):
        raise ValueError(f"its history is not one row for each of epochs 1..{epoch}")
    elapsed = state.get("elapsed")
    if not (isinstance(elapsed, (int, float)) and math.isfinite(elapsed) and elapsed >= 0):
        raise ValueError(f"its training time {elapsed!r} is not a time")
    snaps = state.get("snapshots", {})
    if not (isinstance(snaps, dict) and all(isinstance(v, str) and len(v) == 64 for v in snaps.values())):
        raise ValueError("its snapshot hashes are not SHA-256 digests")
