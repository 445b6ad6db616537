"""Adversarial (robust) training.

Robust training minimizes the loss on adversarial examples generated on the fly
(the min-max problem, the paper's Eq. 3, with the inner maximization approximated by
one of the attacks). It is a training run like any other: the ``adversarial`` field of
``TrainConfig`` names the attack, so the store keys robust runs by it.

``adversarial`` is a mapping: ``attack`` (a name from ``hessbatch.attacks``), ``eps``,
optionally ``clean_fraction`` (share of each batch left clean; the paper does not say
whether clean and adversarial losses were mixed, default 0) and the attack's own
options (``steps``, ``alpha``, ``cg_iters``, ``cg_tol``, ``damping``).
"""

from __future__ import annotations

import contextlib

import torch

from . import attacks
from .errors import check, check_options

_COMMON = {"attack", "eps", "clean_fraction"}


def check_adversarial(spec: dict | None) -> dict | None:
    """Validated, canonical copy of an ``adversarial`` specification."""
    if spec is None:
        return None
    check(isinstance(spec, dict) and "attack" in spec and "eps" in spec,
          f"adversarial must be a mapping with at least 'attack' and 'eps', got {spec!r}")
    name = attacks.canonical(str(spec["attack"]))
    eps = attacks.check_eps(spec["eps"])
    frac = spec.get("clean_fraction", 0.0)
    check(isinstance(frac, (int, float)) and 0 <= frac <= 1, f"clean_fraction must be in [0, 1], got {frac!r}")
    extra = {k: v for k, v in spec.items() if k not in _COMMON}
    check_options(attacks.get(name).function, extra, f"attack {name}", values=True)
    return {"attack": name, "eps": eps, "clean_fraction": float(frac), **extra}


def adversarial_hook(spec: dict):
    """A ``step_hook`` for ``train``: replaces each batch by its adversarial version."""
    spec = check_adversarial(spec)
    fn = attacks.get(spec["attack"]).function
    kwargs = {k: v for k, v in spec.items() if k not in _COMMON}
    n_clean = spec["clean_fraction"]
    checked = [False]

    def hook(model, x, y):
        with attacks.trusted() if checked[0] else contextlib.nullcontext():
            adv = fn(model, x, y, spec["eps"], **kwargs)
        checked[0] = True
        if n_clean:
            k = int(round(n_clean * len(x)))
            adv = torch.cat([x[:k], adv[k:]])
        return adv, y

    hook.per_sample = not n_clean   # each sample's attack is its own (hessbatch.attacks), unless a share stays clean
    return hook
