"""Run a grid of training configurations, skipping those already in the store."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from . import train as train_mod
from .store import Store


@dataclass
class Outcome:
    key: str
    state: str  # done | cached | failed
    status: str | None = None
    error: str | None = None
    seconds: float = 0.0


def validate(configs: list[dict], data_root=None, download=False) -> list:
    """Check every configuration and load its data before any run starts."""
    datasets, prepared = {}, []
    for cfg in configs:
        c = train_mod.TrainConfig.from_dict(cfg).resolved()
        ident = (c.dataset, c.subset, c.test_subset)
        if ident not in datasets:
            datasets[ident] = train_mod.prepare(c, data_root, download)[1]
        train_mod.check(c.batch_size <= datasets[ident].n_train,
                        f"batch_size {c.batch_size} is larger than the training set of {c.dataset} "
                        f"({datasets[ident].n_train} samples)")
        prepared.append((c, datasets[ident]))
    return prepared


def run_sweep(configs: list[dict], store: Store, device="cpu", data_root=None, download=False,
              progress: bool = True) -> pd.DataFrame:
    """Train every configuration in turn; one progress bar, one summary row per run."""
    prepared = validate(configs, data_root, download)
    outcomes = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(prepared), unit="run", desc="sweep", dynamic_ncols=True)
    for cfg, ds in prepared:
        t0 = time.perf_counter()
        if bar is not None:
            bar.set_postfix_str(f"{cfg.model}/{cfg.dataset} B={cfg.batch_size} seed={cfg.seed}")
        try:
            run = train_mod.train(cfg, store, device=device, progress=False, dataset=ds)
            outcomes.append(Outcome(run.key, "cached" if run.cached else "done", run.status,
                                    seconds=time.perf_counter() - t0))
        except Exception as e:  # one failing run must not lose the rest of the sweep
            outcomes.append(Outcome(store.key("train", cfg.to_dict()), "failed",
                                    error=f"{type(e).__name__}: {e}".splitlines()[0]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows = [{"key": o.key, "model": c.model, "dataset": c.dataset, "batch_size": c.batch_size, "seed": c.seed,
             "state": o.state, "status": o.status, "seconds": round(o.seconds, 1), "error": o.error}
            for o, (c, _) in zip(outcomes, prepared)]
    return pd.DataFrame(rows)
