"""Dry runs: a plan's pages at toy size, computed through the same code and export as the real
run (``hessbatch plan --dry-run``), so that the test suite can run every plan on generated data."""

from __future__ import annotations

import dataclasses

from . import registry

# Toy sizes of a dry run: tiny data, two epochs, small measurements; whole-set measurements
# (``None``) stay whole-set, on the tiny data.
_TOY_TRAIN = {"subset": 4, "test_subset": 2, "max_epochs": 2}
_TOY_VALUES = {"hessian_samples": 32, "curvature_samples": 16, "test_limit": 16, "k": 2, "tol": 0.2,
               "points": 3, "plane_points": 3, "interpolation_points": 3, "robust_epochs": 1,
               "warmup_epochs": 1, "save_every": 1, "base_batch": 8, "direction_points": 3}
_TOY_BATCHES = (8, 32)
_TOY_SUBSAMPLE = 8


def toy_page(page: tuple) -> tuple:
    """A profile's page ``(name, chapter, params, title)`` at dry-run size: :func:`toy` of its
    parameters, with those of its chapter's measurement sizes it leaves at their defaults (a
    tolerance, say) taken at toy size too."""
    name, chapter, params, title = page
    declared = {f.name: f.default for f in dataclasses.fields(registry.chapter(chapter).module.Params)
                if f.name in _TOY_VALUES and f.default is not dataclasses.MISSING}
    return name, chapter, toy({**declared, **params}), title


def toy(params: dict) -> dict:
    """A page's parameters at dry-run size: every training recipe (a mapping with ``lr``) on
    4 training and 2 test samples per class for at most two epochs, gradient chunks of 8; batch-size lists
    as 8, 32 (as many as there were, at most two: a list's code path is the same for two as for eight);
    Hessian subsample sizes at most 8; other measurement sizes small."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict) and "lr" in v:
            v = {**v, **_TOY_TRAIN, "max_epochs": min(v.get("max_epochs", 2), 2)}
            if v.get("micro_batch"):
                v["micro_batch"] = 8
            if "batch_size" in v:
                v["batch_size"] = _TOY_BATCHES[0]
        elif k.endswith("batch_sizes") and isinstance(v, (list, tuple)):
            v = list(_TOY_BATCHES[:min(len(v), len(_TOY_BATCHES))])
        elif k == "subsample_sizes":
            v = sorted({min(s, _TOY_SUBSAMPLE) for s in v})
        elif k in _TOY_VALUES and v is not None:
            v = min(v, _TOY_VALUES[k]) if k in ("k", "robust_epochs", "warmup_epochs", "save_every") else _TOY_VALUES[k]
        out[k] = v
    return out
