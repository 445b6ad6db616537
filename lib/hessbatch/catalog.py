"""The names a user chooses from (models and their readings, executors), without importing torch:
the command line's help and argument checks answer from here in a fraction of a second."""

from __future__ import annotations

from .errors import choose

READINGS = {"M1": ("text", "lenet"), "C1": ("code", "text"), "C2": ("code", "text"),
            "C3": ("code", "text"), "CR": ("code",), "MLP": ("code",)}
MODELS = tuple(READINGS)
ALIASES = {"RESNET18": "CR", "LENET": "M1"}
EXECUTORS = ("local", "processes", "dask")
LR_SCALINGS = ("none", "linear", "sqrt")   # how the learning rate follows the batch size (config.effective_lr)


def canonical_name(name: str) -> str:
    """A model's name as the store keys it (``resnet18`` → ``CR``); one error line if unknown."""
    key = name.upper()
    key = ALIASES.get(key, key)
    return choose("model", key, MODELS) if key in MODELS else choose("model", name, MODELS)


def default_reading(name: str) -> str:
    return READINGS[canonical_name(name)][0]
