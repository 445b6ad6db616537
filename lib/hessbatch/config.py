"""A training run's configuration: everything that determines its result, and so its store key.

Defaults follow the paper where it speaks (no weight decay, no dropout, train until
the training loss is at most 0.001) and are our choices where it is silent (optimizer
settings of the §2 sweep were not recovered: we use SGD, lr 0.01, momentum 0.9, a
constant learning rate; see the book's methods page).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import catalog
from .errors import check, choose
from .schema import PROBABILITY, SEED, check_fields, integer, items, number, option, text
from .store import KEY, config_key


@dataclass
class TrainConfig:
    """Everything that determines a training run's result (and so its store key)."""

    model: str = "M1"
    dataset: str = "mnist5k"
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = option(0.9, PROBABILITY)
    weight_decay: float = option(0.0, number(0))
    max_epochs: int = 100
    target_loss: float | None = option(1e-3, number(0, null=True))
    lr_milestones: tuple = option((), items(integer()))
    lr_gamma: float = 0.1
    lr_scaling: str = option("none", text(catalog.LR_SCALINGS))
    lr_base_batch: int = 256
    warmup_epochs: int = option(0, integer(0))
    seed: int = option(0, SEED)
    reading: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    drop_last: bool = True
    grad_norm: bool = False
    save_every: int = option(0, integer(0))
    adversarial: dict | None = None
    init_from: str | None = None
    micro_batch: int | None = None
    label_smoothing: float | None = option(None, number(0, below=1, null=True))
    confidence_penalty: float | None = option(None, number(0, below=1, null=True))
    sample_smoothing: dict | None = None
    lr_plateau: dict | None = None

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = set(cls.fields())
        check(isinstance(d, dict), f"a training configuration is a mapping, got {type(d).__name__}")
        unknown = sorted(map(str, set(d) - known))
        check(not unknown, f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "lr_milestones" in d:
            m = d["lr_milestones"]
            d["lr_milestones"] = tuple(m) if isinstance(m, list) else () if m is None else m
        return cls(**d)

    def resolved(self) -> "TrainConfig":
        """Validated copy with the model name and reading made explicit."""
        self._check_numbers()
        name = catalog.canonical_name(self.model)
        catalog.check_dataset(self.dataset)
        ss = self.sample_smoothing
        if ss is not None:
            check(isinstance(ss, dict) and set(ss) == {"guide", "alpha"} and isinstance(ss["guide"], str)
                  and KEY.fullmatch(ss["guide"]) and PROBABILITY.ok(ss["alpha"]),
                  f"sample_smoothing must be {{guide: <run key>, alpha: in [0, 1)}} or null, got {ss!r}")
            check(not self.label_smoothing, "sample_smoothing and label_smoothing exclude each other")
        reading = self.reading or catalog.default_reading(name)
        choose(f"reading of {name}", reading, catalog.readings(name))
        if catalog.is_external(name):
            from .models import check_external

            check_external(name)
        plateau = self.lr_plateau
        if plateau is not None:
            check(isinstance(plateau, dict) and set(plateau) <= set(PLATEAU) and set(plateau) >= {"patience", "after"},
                  f"lr_plateau must be {{patience: epochs, after: epoch[, threshold: relative]}} or null, got {plateau!r}")
            plateau = {**{k: default for k, (_, default) in PLATEAU.items()}, **plateau}
            for field, (spec, _) in PLATEAU.items():
                spec.check(plateau[field], f"lr_plateau.{field}")
        adversarial = None
        if self.adversarial is not None:
            from .robust import check_adversarial

            adversarial = check_adversarial(self.adversarial)
        return dataclasses.replace(self, model=name, reading=reading, lr_milestones=tuple(self.lr_milestones),
                                   adversarial=adversarial, lr_plateau=plateau)

    def _check_numbers(self) -> None:
        check_fields(self)
        check(self.init_from is None or KEY.fullmatch(self.init_from),
              f"init_from must name a training run by its key, got {self.init_from!r}")

    def to_dict(self) -> dict:
        """The configuration as a dict; options added after the first release are left out while
        they keep their default, so that the store keys of earlier runs stay valid."""
        d = dataclasses.asdict(self)
        for name in _LATER_OPTIONS:
            if d[name] is None:
                del d[name]
        return d


_LATER_OPTIONS = ("micro_batch", "label_smoothing", "confidence_penalty", "sample_smoothing", "lr_plateau")
PLATEAU = {"patience": (integer(), None), "after": (integer(0), None), "threshold": (number(0, below=1), 1e-4)}
"""``lr_plateau``'s fields: (what a value must be, default; None: required)."""


def parent_keys(config: TrainConfig | dict) -> set[str]:
    """The runs a configuration needs in the store before it can train: the one it starts from
    (``init_from``) and the one guiding its label smoothing (``sample_smoothing``)."""
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    return {k for k in (cfg.init_from, (cfg.sample_smoothing or {}).get("guide")) if k}


def run_key(config: TrainConfig | dict) -> str:
    """The store key a training configuration gets (without training it)."""
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    return config_key("train", cfg.resolved().to_dict())


def effective_lr(cfg: TrainConfig) -> float:
    """Peak learning rate: ``lr`` times B/B₀ under linear scaling (Goyal et al. 2017), times
    √(B/B₀) under square-root scaling (Krizhevsky 2014; Hoffer et al. 2017), with B₀ = ``lr_base_batch``."""
    ratio = cfg.batch_size / cfg.lr_base_batch
    return cfg.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def plateau_scale(cfg: TrainConfig, losses) -> float:
    """What the plateau rule (``lr_plateau``) has made of the learning rate after epochs with these
    training losses: times ``lr_gamma`` whenever the loss has not improved on its best (by a
    relative ``threshold``) for more than ``patience`` epochs, at the end of epoch ``after`` or
    later. Torch's ``ReduceLROnPlateau`` (mode min, relative threshold, no cooldown), held until
    ``after``; as a function of the losses, a resumed run needs no state of its own."""
    rule = cfg.lr_plateau
    scale, best, bad = 1.0, math.inf, 0
    for epoch, loss in enumerate(losses if rule else (), 1):
        if loss < best * (1 - rule["threshold"]):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > rule["patience"] and epoch >= rule["after"]:
            scale, bad = scale * cfg.lr_gamma, 0
    return scale


def epoch_lr(cfg: TrainConfig, epoch: int, losses=()) -> float:
    """The learning rate at the start of (1-based) ``epoch``, after epochs with training losses ``losses``."""
    return lr_at(cfg, epoch - 1) * plateau_scale(cfg, list(losses)[:epoch - 1])


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at fractional epoch ``epoch`` (0-based): warm-up, then step decay."""
    peak = effective_lr(cfg)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr + (peak - cfg.lr) * epoch / cfg.warmup_epochs
    return peak * cfg.lr_gamma ** sum(int(epoch) >= m for m in cfg.lr_milestones)
