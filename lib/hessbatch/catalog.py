"""The names a user chooses from (models and their readings, executors), without importing torch:
the command line's help and argument checks answer from here in a fraction of a second."""

from __future__ import annotations

import re

from .errors import HessbatchError, choose

READINGS = {"M1": ("text", "lenet"), "C1": ("code", "text"), "C2": ("code", "text"),
            "C3": ("code", "text"), "CR": ("code",), "MLP": ("code",)}
MODELS = tuple(READINGS)
ALIASES = {"RESNET18": "CR", "LENET": "M1"}
EXECUTORS = ("local", "processes", "dask")
LR_SCALINGS = ("none", "linear", "sqrt")   # how the learning rate follows the batch size (config.effective_lr)


DATASET_NAMES = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "cifar10-jpeg")
DATASETS = (*DATASET_NAMES, "imagefolder:<path>")
IMAGEFOLDER = "imagefolder:"


def check_dataset(name: str) -> str:
    """Raise a one-line error for a dataset name that is not known."""
    if not isinstance(name, str):
        raise HessbatchError(f"a dataset is named by a string, got {name!r}")
    if name.startswith(IMAGEFOLDER):
        if len(name) == len(IMAGEFOLDER):
            raise HessbatchError("dataset 'imagefolder:' needs a path: imagefolder:/path/to/tree")
        return name
    if name not in DATASET_NAMES:
        raise HessbatchError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return name


TORCHVISION = "torchvision:"   # any torchvision classification architecture: torchvision:resnet18
PLUGIN_GROUP = "hessbatch.models"   # the entry-point group through which installed packages add models
EXTERNAL_READINGS = ("default",)


def plugins() -> dict:
    """The models that installed packages register in the entry-point group ``hessbatch.models``,
    by name (each entry point names a function ``(input_shape, num_classes) -> nn.Module``)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def is_external(name: str) -> bool:
    """Whether a canonical model name is not one of the paper's (a torchvision or plugin model)."""
    return name not in MODELS


def canonical_name(name: str) -> str:
    """A model's name as the store keys it (``resnet18`` → ``CR``; ``torchvision:NAME`` and plugin
    names as given); one error line if unknown."""
    if not isinstance(name, str):
        raise HessbatchError(f"a model is named by a string, got {name!r}")
    if name.startswith(TORCHVISION):
        arch = name[len(TORCHVISION):]
        if not re.fullmatch(r"[a-z][a-z0-9_]*", arch):
            raise HessbatchError(f"model {name!r}: write torchvision:NAME with a torchvision classification "
                                 "model's name, e.g. torchvision:resnet18")
        return name
    key = ALIASES.get(name.upper(), name.upper())
    if key in MODELS:
        return key
    found = plugins()
    if name in found:
        return name
    return choose("model", name, [*MODELS, *sorted(found), f"{TORCHVISION}<name>"])


def readings(name: str) -> tuple:
    """The readings of a canonical model name; the first is the default."""
    return READINGS.get(name, EXTERNAL_READINGS)


def default_reading(name: str) -> str:
    return readings(canonical_name(name))[0]
