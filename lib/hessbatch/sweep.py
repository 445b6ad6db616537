"""Run a grid of training configurations, in process or on a Dask cluster.

Every run is one task that writes only through the result store (atomic publication,
a per-configuration lock), so two workers given the same configuration, or a worker
killed mid-run, never leave a corrupt or duplicated entry: a re-submitted sweep skips
finished runs and resumes interrupted ones from their last epoch checkpoint.

Executors
---------
``local`` (default)  one run after another in this process.
``processes``        ``workers`` runs at once, each in its own process on this machine. On a GPU
                     this runs several small-batch runs side by side on one device (their
                     kernel launches overlap), which is where one run alone leaves it idle.
``dask``             one task per run on a Dask ``distributed`` cluster: the scheduler at
                     ``scheduler`` (``tcp://host:8786``), or a ``LocalCluster`` of
                     ``workers`` processes started for the sweep. The results folder must
                     be a path every worker sees (a shared filesystem on a cluster).
"""

from __future__ import annotations

import os
import time

import pandas as pd

from . import progress as progress_mod
from . import train as train_mod
from .catalog import EXECUTORS
from .config import TrainConfig
from .errors import HessbatchError, check, describe
from .pool import Pool
from .store import Store



def validate(configs: list[dict], data_root=None, download=False) -> list:
    """Check every configuration and load its data before any run starts."""
    datasets, prepared = {}, []
    for cfg in configs:
        c = TrainConfig.from_dict(cfg).resolved()
        ident = (c.dataset, c.subset, c.test_subset)
        if ident not in datasets:
            datasets[ident] = train_mod.prepare(c, data_root, download)[1]
        train_mod.check_fits(c, datasets[ident])
        prepared.append((c, datasets[ident]))
    return prepared


def run_one(config: dict, results: str, device="cpu", data_root=None, download=False, threads: int | None = None,
            dataset=None, progress: bool = False) -> dict:
    """Train one configuration (the task of every executor); never raises. ``progress``: its own
    bar of epochs (the local executor's, under the sweep's bar of runs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    store = Store(results)
    try:
        run = train_mod.train(config, store, device=device, data_root=data_root, download=download,
                              progress=progress, dataset=dataset)
        return {"key": run.key, "state": "cached" if run.cached else "done", "status": run.status,
                "seconds": round(time.perf_counter() - t0, 1), "error": None}
    except Exception as e:  # one failing run must not lose the rest of the sweep
        key = store.key("train", TrainConfig.from_dict(config).resolved().to_dict())
        return {"key": key, "state": "failed", "status": None, "seconds": round(time.perf_counter() - t0, 1),
                "error": describe(e)}


def run_sweep(configs: list[dict], store: Store, device="cpu", data_root=None, download=False,
              progress: bool = True, executor: str = "local", scheduler: str | None = None,
              workers: int | None = None, threads: int | None = None, retries: int = 2) -> pd.DataFrame:
    """Train every configuration; one progress bar (runs done / total) and one summary row per run."""
    check(executor in EXECUTORS, f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    check(scheduler is None or executor == "dask", "--scheduler needs --executor dask")
    check(workers is None or workers >= 1, f"workers must be >= 1, got {workers}")
    prepared = validate(configs, data_root, download)
    bar = progress_mod.bar(total=len(prepared), unit="run", desc=f"sweep ({executor})", show=progress, leave=True)
    root = str(store.root.resolve())
    if executor == "local":
        outcomes = []
        for cfg, ds in prepared:
            bar.set_postfix_str(f"{cfg.model}/{cfg.dataset} B={cfg.batch_size} seed={cfg.seed}")
            outcomes.append(run_one(cfg.to_dict(), root, device, data_root, download, threads, dataset=ds,
                                    progress=progress))
            bar.update(1)
    elif executor == "processes":
        outcomes = _run_processes([c.to_dict() for c, _ in prepared], root, device, data_root, download,
                                  workers, threads, bar)
    else:
        outcomes = _run_dask([c.to_dict() for c, _ in prepared], root, device, data_root, download, scheduler,
                             workers, threads, retries, bar)
    bar.close()
    rows = [{**{k: o[k] for k in ("key", "state", "status", "seconds", "error")}, "model": c.model,
             "dataset": c.dataset, "batch_size": c.batch_size, "seed": c.seed} for o, (c, _) in zip(outcomes, prepared)]
    cols = ["key", "model", "dataset", "batch_size", "seed", "state", "status", "seconds", "error"]
    return pd.DataFrame(rows, columns=cols)


def _pool_size(configs, workers, threads) -> tuple[int, int]:
    n = workers or max(1, min(len(configs), os.cpu_count() or 1))
    return n, threads or max(1, (os.cpu_count() or 1) // n)


def _collect(futures: dict, configs, root, as_completed, bar) -> list[dict]:
    """Outcomes in the order of ``configs``; a task that could not run at all (its worker died)
    becomes a ``failed`` outcome instead of stopping the others."""
    outcomes: list[dict | None] = [None] * len(configs)
    for fut in as_completed(futures):
        i = futures[fut]
        try:
            outcomes[i] = fut.result()
        except Exception as e:
            outcomes[i] = _not_run(root, configs[i], describe(e))
        bar.update(1)
    return outcomes


def _not_run(root, config: dict, error: str) -> dict:
    """The outcome of a run whose task could not run at all."""
    return {"key": Store(root).key("train", config), "state": "failed", "status": None, "seconds": 0.0,
            "error": error}


def _run_processes(configs, root, device, data_root, download, workers, threads, bar) -> list[dict]:
    """Outcomes in the order of ``configs``; a run whose process dies fails alone (:class:`Pool`)."""
    n, threads = _pool_size(configs, workers, threads)
    outcomes: list[dict | None] = [None] * len(configs)
    queue = list(enumerate(configs))
    with Pool(n) as pool:
        while queue or pool.busy():
            while queue and pool.free():
                i, cfg = queue.pop(0)
                pool.submit(i, run_one, cfg, root, device, data_root, download, threads)
            for i, outcome, error in pool.wait():
                outcomes[i] = outcome or _not_run(root, configs[i], error)
                bar.update(1)
    return outcomes


def _run_dask(configs, root, device, data_root, download, scheduler, workers, threads, retries, bar) -> list[dict]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise HessbatchError("--executor dask needs Dask: pip install 'hessbatch[dist]'") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise HessbatchError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    else:
        n, threads = _pool_size(configs, workers, threads)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {}
        for i, cfg in enumerate(configs):
            key = Store(root).key("train", cfg)
            fut = client.submit(run_one, cfg, root, device, data_root, download, threads, key=f"hessbatch-{key}-{i}",
                                pure=False, retries=retries)
            futures[fut] = i
        return _collect(futures, configs, root, as_completed, bar)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
