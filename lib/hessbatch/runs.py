"""A finished training run in the store (``Run``) and how a run is named: by its key or a
unique prefix of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from . import fastpath, models
from .config import TrainConfig
from .errors import HessbatchError
from .store import Entry, Store, check_key


@dataclass
class Run:
    """A finished training run in the store."""

    entry: Entry
    cached: bool = False
    _history: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.entry.config["config"])

    @property
    def result(self) -> dict:
        return self.entry.json("result.json")

    @property
    def status(self) -> str:
        return self.result["status"]

    @property
    def history(self) -> pd.DataFrame:
        if self._history is None:
            self._history = self.entry.csv("history.csv")
        return self._history

    def build(self) -> nn.Module:
        """A freshly initialized model of this run's architecture and data."""
        spec = self.result["model_spec"]
        return models.build_model(spec["name"], spec["input_shape"], spec["num_classes"], spec["mean"], spec["std"],
                                  spec["reading"])

    def model(self, device="cpu", epoch: int | None = None) -> nn.Module:
        """The trained model (eval mode, in its fastest layout: ``hessbatch.fastpath``); ``epoch`` picks a snapshot saved with ``save_every``, and
        ``epoch=0`` the initialization (rebuilt from the seed, or the ``init_from`` run's weights)."""
        if epoch == 0:
            if self.config.init_from:
                store = Store(self.entry.path.parent.parent)
                return Run(parent_entry(store, self.config.init_from, "init_from")).model(device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                return fastpath.to_fast(self.build(), device).eval()
        if self.status == "diverged":
            raise HessbatchError(f"run {self.key} diverged at epoch {self.result['epochs']}: it has no weights")
        model = self.build()
        name = "weights.pt" if epoch is None else f"weights-epoch{epoch:04d}.pt"
        if name not in self.entry.files():
            if name in self.entry.omitted():
                raise HessbatchError(f"run {self.key}: its weights were left out of this store (an export without "
                                     f"weights, {self.entry.path.parent.parent}); train it again to measure more")
            raise HessbatchError(f"run {self.key} has no snapshot for epoch {epoch}")
        model.load_state_dict(self.entry.torch(name))
        return fastpath.to_fast(model, device).eval()

    def weights_id(self, epoch: int | None = None) -> dict:
        """What identifies the weights ``model(epoch=epoch)`` returns, for the store keys of
        measurements: the run and epoch; at epoch 0 the initialization itself (model, data, seed),
        which runs differing only in how they train share, or the ``init_from`` run's final weights."""
        if epoch != 0:
            return {"run": self.key, "epoch": epoch}
        c = self.config
        if c.init_from:
            return {"run": c.init_from, "epoch": None}
        return {"run": None, "epoch": 0, "init": {"model": c.model, "reading": c.reading, "dataset": c.dataset,
                                                  "subset": c.subset, "test_subset": c.test_subset, "seed": c.seed}}

    def snapshot_epochs(self) -> list[int]:
        return [int(f[len("weights-epoch"):-3]) for f in sorted(self.entry.files() + self.entry.omitted())
                if f.startswith("weights-epoch")]


def parent_entry(store: Store, key: str, option: str) -> Entry:
    """The training run ``key`` that option ``option`` (``init_from``, a guide) names."""
    entry = store.get("train", key=check_key(key, f"{option} run"))
    if entry is None:
        raise HessbatchError(f"{option} run {key} is not in the store at {store.root}")
    return entry


def resolve_run(run: Run | str, store: Store) -> Run:
    """A ``Run`` from a run object, a full key or a unique key prefix."""
    if isinstance(run, Run):
        return run
    prefix = check_key(str(run))
    matches = [e for e in store.entries("train") if e.key.startswith(prefix)]
    if len(matches) != 1:
        raise HessbatchError(f"{'no' if not matches else 'more than one'} training run in {store.root} "
                             f"matches {run!r}; `hessbatch ls` lists them")
    return Run(matches[0])
