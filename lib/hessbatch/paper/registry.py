"""The chapters by name: the one registry that ``run_chapter``, the notebooks, ``hessbatch
compute`` and the book's planners read. A profile names a chapter by its notebook
(``01-batch-size``) and a variant as ``<chapter>--<label>``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

from .. import measurements
from ..config import parent_keys, run_key
from ..errors import HessbatchError
from ..store import Store
from .chapters import (adversarial_training, batch_size, dynamics, instability, landscapes, large_batch_robust,
                       lr_scaling, pga_dynamics, saddle_free, your_model)
from . import presentation
from .chapters.common import RUNTIME, Context


@dataclass(frozen=True)
class Chapter:
    """A chapter: its notebook's name and the module with its ``Params``, ``train_configs`` and ``compute``."""

    name: str
    module: ModuleType

    def params(self, params: dict):
        """The chapter's ``Params`` from a notebook's or a profile's mapping (unknown names are errors)."""
        return self.module.Params.parse(params, self.name)

    def parameter_names(self) -> list[str]:
        """Its declared parameters and the runtime ones: the names of its notebook's parameters cell."""
        return [*RUNTIME, *(f.name for f in dataclasses.fields(self.module.Params))]

    def train_configs(self, params: dict) -> list[dict]:
        """Every training configuration the chapter trains, in the order it trains them."""
        return self.module.train_configs(self.params(params))

    @property
    def shows_any_batch_sizes(self) -> bool:
        """Whether a page of it can show some of its ``batch_sizes`` (one column or curve per batch
        size), as its page does while the others are still training (``PARTIAL`` in its module)."""
        return getattr(self.module, "PARTIAL", False)


CHAPTERS = {m.NAME: Chapter(m.NAME, m) for m in (batch_size, landscapes, dynamics, saddle_free, adversarial_training,
                                                   large_batch_robust, pga_dynamics, instability, lr_scaling,
                                                   your_model)}


def chapter(name: str) -> Chapter:
    """The chapter of an executed name: ``01-batch-size`` or a variant ``01-batch-size--C2``."""
    found = CHAPTERS.get(name.split("--")[0])
    if found is None:
        raise HessbatchError(f"no chapter {name!r}; the chapters are {', '.join(CHAPTERS)}")
    return found


def run_chapter(name: str, params: dict, store: Store | None = None, device="cpu", data_root=None,
                progress: bool = False, part: tuple[int, int] = (0, 1)) -> dict:
    """Everything a book chapter shows, from its parameters (a profile's ``common``, chapter and
    variant entries merged, as in the notebook's parameters cell). The notebooks and
    ``hessbatch compute`` both call this, so a chapter computed on a GPU is found by the book.
    ``part`` ``(k, n)``: this call is one of n computing the chapter at once (:meth:`Context.each`)."""
    ch = chapter(name)
    with measurements.recorded() as record:
        res = ch.module.compute(ch.params(params), Context(store or Store(), device, data_root, progress, part))
    res["estimated_spectra"] = presentation.estimated_spectra(record)
    return res


def profile_train_configs(params_by_chapter: dict[str, dict]) -> list[list[dict]]:
    """Every training configuration of these executions (executed name → parameters), in waves:
    a run that starts from another run's weights (``init_from``) or is guided by its snapshots
    (``sample_smoothing``) comes in the second wave. Used to train a profile before the notebooks run."""
    first, second = {}, {}
    for name, params in params_by_chapter.items():
        for cfg in chapter(name).train_configs(params):
            wave = second if parent_keys(cfg) else first
            wave.setdefault(run_key(cfg), cfg)
    return [list(w.values()) for w in (first, second) if w]
