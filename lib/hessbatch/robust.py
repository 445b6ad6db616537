"""Adversarial (robust) training and the paper's large-batch robust-training recipes.

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
    eps = spec["eps"]
    check(isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0, f"epsilon must be >= 0, got {eps!r}")
    frac = spec.get("clean_fraction", 0.0)
    check(isinstance(frac, (int, float)) and 0 <= frac <= 1, f"clean_fraction must be in [0, 1], got {frac!r}")
    extra = {k: v for k, v in spec.items() if k not in _COMMON}
    check_options(attacks.FUNCTIONS[name], extra, f"attack {name}")
    return {"attack": name, "eps": float(eps), "clean_fraction": float(frac), **extra}


def adversarial_hook(spec: dict):
    """A ``step_hook`` for ``train``: replaces each batch by its adversarial version."""
    spec = check_adversarial(spec)
    fn = attacks.FUNCTIONS[spec["attack"]]
    kwargs = {k: v for k, v in spec.items() if k not in _COMMON}
    n_clean = spec["clean_fraction"]
    checked = [False]

    def hook(model, x, y):
        was_training = model.training
        with attacks.trusted() if checked[0] else contextlib.nullcontext():
            adv = fn(model, x, y, spec["eps"], **kwargs)
        checked[0] = True
        model.train(was_training)
        if n_clean:
            k = int(round(n_clean * len(x)))
            adv = torch.cat([x[:k], adv[k:]])
        return adv, y

    return hook


def table8_configs(base: dict, batch_sizes, adversarial: dict, warmup_epochs: int = 5,
                   base_batch: int = 128) -> list[tuple[str, dict]]:
    """The three columns of the paper's Table 8 for each batch size.

    ``baseline``: plain SGD at the base learning rate. ``FB`` (Goyal et al.): the learning
    rate scaled linearly with batch/``base_batch`` after a linear warm-up of
    ``warmup_epochs``. ``robust``: baseline with adversarial training.
    """
    out = []
    for b in batch_sizes:
        out.append(("baseline", {**base, "batch_size": b}))
        out.append(("FB", {**base, "batch_size": b, "lr_scaling": "linear", "lr_base_batch": base_batch,
                           "warmup_epochs": warmup_epochs}))
        out.append(("robust", {**base, "batch_size": b, "adversarial": dict(adversarial)}))
    return out
