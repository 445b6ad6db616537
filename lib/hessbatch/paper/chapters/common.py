"""What every chapter shares: the parameters every notebook has (``Common``), the context a
chapter computes in, and batch-size sweeps of training runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ... import progress as progress_mod
from ...errors import check
from ...schema import PER_BATCH, SEED, check_fields, integer, items, option
from ...runs import Run
from ...store import Store
from ...train import train

RUNTIME = ("profile", "variant", "results", "device", "data_root")


@dataclass
class Context:
    """Where a chapter computes: its store, device, data folder, whether it shows progress, and
    which part ``(k, n)`` of the chapter's computation this process is (see :meth:`each`)."""

    store: Store
    device: str = "cpu"
    data_root: str | None = None
    progress: bool = True
    part: tuple = (0, 1)

    def train(self, config: dict) -> Run:
        return train(config, self.store, device=self.device, data_root=self.data_root, progress=self.progress)

    def each(self, items, desc: str, unit: str = "run"):
        """``items`` under a progress bar. Part k of n starts k/n of the way in and wraps around, so
        that n processes computing one chapter at once measure different items first and read the
        rest from the store (where one waits while another computes the same entry). What a part
        with k > 0 returns is in that order: it is only for filling the store."""
        items = list(items)
        k, n = self.part
        start = len(items) * k // n
        return progress_mod.bar(items[start:] + items[:start], desc=desc, unit=unit, show=self.progress)


@dataclass
class Common:
    """The parameters of every chapter's notebook (a profile's ``common`` block)."""

    model: str = "M1"
    dataset: str = "mnist5k"
    seed: int = option(0, SEED)
    batch_sizes: list = option([16, 32, 64, 128, 256], items(integer(), least=1))
    train_options: dict | None = None

    @classmethod
    def parse(cls, params: dict, chapter: str):
        """The chapter's parameters from a notebook's or a profile's mapping, checked (``check``);
        the runtime keys (profile, variant, results, device, data_root) are not parameters, any
        other unknown key is an error."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(known) - set(RUNTIME))
        check(not unknown, f"chapter {chapter} has no parameter(s) {', '.join(map(str, unknown))}; "
                           f"it takes: {', '.join(known)}")
        out = cls(**{k: v for k, v in params.items() if k in known})
        check_fields(out, f"chapter {chapter}: ")
        out.check()
        return out

    def check(self) -> None:
        """Values a chapter can check before anything runs (unknown names, say); none by default."""


@dataclass
class Sweep(Common):
    """The parameters of a chapter over the batch-size sweep (chapters 1 and 2): also
    ``batch_train_options``, a list of ``{batch_size: B, option: value, ...}`` that change
    ``train_options`` for batch size B."""

    batch_train_options: dict | None = option(None, PER_BATCH)


def sweep_configs(model, dataset, batch_sizes, train_options=None, seed=0, per_batch=()) -> dict[int, dict]:
    """One training configuration per batch size, same conditions otherwise, except the options that
    ``per_batch`` (``{batch_size: B, option: value, ...}`` each) changes for its batch sizes."""
    changed = {}
    for o in per_batch or ():
        changed.setdefault(o["batch_size"], {}).update({k: v for k, v in o.items() if k != "batch_size"})
    return {b: {**(train_options or {}), **changed.get(b, {}), "model": model, "dataset": dataset,
                "batch_size": b, "seed": seed} for b in batch_sizes}


def batch_size_sweep(p: Sweep) -> dict[int, dict]:
    """The common batch-size sweep (chapter 1's runs, which chapter 2 measures too)."""
    return sweep_configs(p.model, p.dataset, p.batch_sizes, p.train_options, p.seed, p.batch_train_options)


def batch_size_sweep_configs(p: Sweep) -> list[dict]:
    return list(batch_size_sweep(p).values())


def sweep_runs(configs: dict[int, dict], ctx: Context) -> dict[int, Run]:
    """The training run of each batch size's configuration."""
    return {b: ctx.train(cfg) for b, cfg in configs.items()}


def hessian_subsample(run: Run, size: int | None, split: str) -> int | None:
    """``size`` if it is smaller than the run's split, else None (the whole split)."""
    n = run.result["n_train"] if split == "train" else run.result["n_test"]
    return size if size and size < n else None
