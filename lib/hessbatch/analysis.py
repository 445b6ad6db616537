"""Measurements of trained runs, each cached in the store under (parent run key + settings).

Settings that change only speed (device, chunk size, HVP implementation) are not part
of the key.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings

import numpy as np
import pandas as pd
import torch

from . import hessian, landscape
from .errors import HessbatchError, check
from .store import Entry, Store
from .train import Run, resolve_device


def resolve_run(run: Run | str, store: Store) -> Run:
    """A ``Run`` from a run object, a full key or a unique key prefix."""
    if isinstance(run, Run):
        return run
    matches = [e for e in store.entries("train") if e.key.startswith(str(run))]
    if len(matches) != 1:
        raise HessbatchError(f"{'no' if not matches else 'more than one'} training run in {store.root} "
                             f"matches {run!r}; `hessbatch ls` lists them")
    return Run(matches[0])


def run_data(run: Run, data_root=None, download=False):
    """The dataset a run was trained on (loaded once per process: a chapter measures many runs
    on the same data, and decoding CIFAR-10 takes seconds)."""
    cfg = run.config
    return _load(cfg.dataset, cfg.subset, cfg.test_subset, str(data_root) if data_root else None, download,
                 os.environ.get("HESSBATCH_DATA"))


@functools.lru_cache(maxsize=2)
def _load(dataset, subset, test_subset, data_root, download, _env):
    from .data import load_dataset

    return load_dataset(dataset, data_root, download, subset, test_subset)


def cached(store: Store, kind: str, config: dict, compute) -> Entry:
    """The entry for (kind, config), computed once: ``compute()`` returns ``(files, meta)``; a file is
    written as CSV (a DataFrame), JSON (a name ending in ``.json``) or with ``torch.save``."""
    if (entry := store.get(kind, config)) is not None:
        return entry
    t0 = time.perf_counter()
    try:
        files, meta = compute()
    except HessbatchError as e:
        if store.exported():
            raise HessbatchError(f"this {kind} result is not in {store.root}, a store exported without weights, and "
                                 f"computing it failed: {e} (`hessbatch compute` on the full store adds it)") from None
        raise
    meta["time_s"] = time.perf_counter() - t0
    with store.writer(kind, config) as tmp:
        for name, obj in files.items():
            if isinstance(obj, pd.DataFrame):
                obj.to_csv(tmp / name, index=False)
            elif name.endswith(".json"):
                (tmp / name).write_text(json.dumps(obj, default=float))
            else:
                torch.save(obj, tmp / name)
        (tmp / "result.json").write_text(json.dumps(meta, indent=2, default=float))
    return store.get(kind, config)


def spectrum(run: Run | str, split: str = "train", k: int = 20, tol: float = 1e-4, method: str = "lanczos",
             which: str = "largest", subsample: int | None = None, seed: int = 0, epoch: int | None = None,
             keep_vectors: int = 2, store: Store | None = None, device="cpu", data_root=None,
             chunk: int | None = None, hvp: str = "backward", progress: bool = False,
             max_iter: int | None = None) -> Entry:
    """Top-k Hessian eigenvalues of a run's loss on its train or test set (or a subsample).

    Stores ``eigenvalues.csv`` (rank, eigenvalue, residual), the first ``keep_vectors``
    eigenvectors in ``vectors.pt`` and the gradient norm at that point. ``progress``: a bar
    of Hessian-vector products while it computes. ``max_iter``: the solver's cap (its default
    when None). A result short of ``tol`` gives a :class:`~hessbatch.hessian.NotConvergedWarning`,
    also when it is read back from the store.
    """
    store = store or Store()
    run = resolve_run(run, store)
    check(split in ("train", "test"), f"unknown split {split!r}; choose train or test")
    check(keep_vectors >= 0, "keep_vectors must be >= 0")
    check(max_iter is None or max_iter >= 1, f"max_iter must be >= 1, got {max_iter}")
    config = {**run.point(epoch), "split": split, "k": k, "tol": tol, "method": method,
              "which": which, "subsample": subsample, "seed": seed, "keep_vectors": keep_vectors,
              **({"max_iter": max_iter} if max_iter is not None else {})}
    computed = []

    def compute():
        dev = resolve_device(device)
        model = run.model(dev, epoch)
        data = tuple(t.to(dev) for t in run_data(run, data_root).split(split))
        if subsample:
            data = hessian.subsample(data, subsample, seed)
        computed.append(True)
        e = hessian.top_eigen(model, data, k=k, tol=tol, method=method, which=which, chunk=chunk, hvp=hvp, seed=seed,
                              max_iter=max_iter, progress=progress)
        grad_norm = hessian.HessianOperator(model, data, chunk=chunk).gradient().norm().item()
        table = pd.DataFrame({"rank": np.arange(1, len(e) + 1), "eigenvalue": e.eigenvalues, "residual": e.residuals})
        files = {"eigenvalues.csv": table}
        if keep_vectors:
            files["vectors.pt"] = e.eigenvectors[:keep_vectors].detach().float().cpu().contiguous()
        return files, {"n_hvp": e.n_hvp, "converged": e.converged, "n_converged": e.n_converged,
                       "grad_norm": grad_norm,
                       "lambda_max": float(e.eigenvalues[0]), "n_samples": len(data[1]), "device": str(dev)}

    entry = cached(store, "spectrum", config, compute)
    r = entry.json()
    if not computed and not r["converged"]:
        reached = f"{r['n_converged']} of {k} eigenpairs" if r.get("n_converged") is not None else "not every eigenpair"
        warnings.warn(f"stored spectrum {entry.path.name} ({run.key}, {split}) did not converge: {reached} reached "
                      f"the relative tolerance {tol:g} in {r['n_hvp']} Hessian-vector products; raise max_iter",
                      hessian.NotConvergedWarning, stacklevel=2)
    return entry


def initial_state(run: Run | str, store: Store | None = None, device="cpu", data_root=None) -> dict:
    """A run's training loss, accuracy and full gradient norm at epoch 0 (its initialization, shared
    by runs that differ only in how they train), the quantities its ``history.csv`` holds for every
    later epoch."""
    from .train import evaluate, full_gradient_norm

    store = store or Store()
    run = resolve_run(run, store)

    def compute():
        dev = resolve_device(device)
        model = run.model(dev, 0)
        x, y = (t.to(dev) for t in run_data(run, data_root).split("train"))
        loss, acc = evaluate(model, x, y)
        return {}, {"epoch": 0, "train_loss": loss, "train_acc": acc, "grad_norm": full_gradient_norm(model, x, y)}

    return cached(store, "initial-state", run.point(0), compute).json()


def input_curvature(run: Run | str, split: str = "train", method: str = "power", tol: float = 1e-4,
                    max_iter: int = 100, limit: int | None = None, store: Store | None = None, device="cpu",
                    data_root=None, chunk: int | None = None) -> Entry:
    """Per-sample ‖∇ₓℓ‖ and input-Hessian λ_max over a run's train or test set (``samples.csv``)."""
    store = store or Store()
    run = resolve_run(run, store)
    config = {"run": run.key, "split": split, "method": method, "tol": tol, "max_iter": max_iter, "limit": limit}

    def compute():
        dev = resolve_device(device)
        x, y = run_data(run, data_root).split(split)
        if limit:
            x, y = x[:limit], y[:limit]
        ic = hessian.input_curvature(run.model(dev), x.to(dev), y.to(dev), method, tol, max_iter, chunk)
        table = pd.DataFrame({"grad_norm": ic.grad_norm, "lambda_max": ic.lambda_max})
        return {"samples.csv": table}, {**ic.summary(), "iterations": ic.iterations, "unconverged": ic.unconverged,
                                         "n_samples": len(y)}

    return cached(store, "input-curvature", config, compute)


def landscape_1d(run: Run | str, radius: float = 0.5, points: int = 21, rank: int = 1, spectrum_split: str = "train",
                 store: Store | None = None, device="cpu", data_root=None) -> Entry:
    """Loss and accuracy on train and test along the rank-th Hessian eigenvector (Fig. 2/7)."""
    store = store or Store()
    run = resolve_run(run, store)
    check(radius > 0 and points >= 3, "landscape needs radius > 0 and at least 3 points")
    spec = spectrum(run, spectrum_split, k=max(rank, 2), keep_vectors=max(rank, 2), store=store, device=device,
                    data_root=data_root)
    config = {"run": run.key, "spectrum": spec.key, "rank": rank, "radius": radius, "points": points}

    def compute():
        dev = resolve_device(device)
        ds = run_data(run, data_root).to(dev)
        d = spec.torch("vectors.pt")[rank - 1]
        table = landscape.along_direction(run.model(dev), d, np.linspace(-radius, radius, points),
                                          {"train": ds.split("train"), "test": ds.split("test")})
        return {"curve.csv": table}, {"lambda": float(spec.csv("eigenvalues.csv")["eigenvalue"][rank - 1])}

    return cached(store, "landscape-1d", config, compute)


def landscape_2d(run: Run | str, radius: float = 0.5, points: int = 11, spectrum_split: str = "train",
                 store: Store | None = None, device="cpu", data_root=None) -> Entry:
    """Loss on the plane of the top-2 Hessian eigenvectors (Fig. 3)."""
    store = store or Store()
    run = resolve_run(run, store)
    check(radius > 0 and points >= 3, "landscape needs radius > 0 and at least 3 points")
    spec = spectrum(run, spectrum_split, k=2, keep_vectors=2, store=store, device=device, data_root=data_root)
    config = {"run": run.key, "spectrum": spec.key, "radius": radius, "points": points}

    def compute():
        dev = resolve_device(device)
        ds = run_data(run, data_root).to(dev)
        v = spec.torch("vectors.pt")
        grid = np.linspace(-radius, radius, points)
        table = landscape.plane(run.model(dev), v[0], v[1], grid, grid,
                                {"train": ds.split("train"), "test": ds.split("test")})
        return {"surface.csv": table}, {}

    return cached(store, "landscape-2d", config, compute)


def interpolation(run_a: Run | str, run_b: Run | str, points: int = 21, store: Store | None = None,
                  device="cpu", data_root=None) -> Entry:
    """Loss along (1 − α) θ_a + α θ_b, α in [0, 1] (Fig. 5/10/11)."""
    store = store or Store()
    a, b = resolve_run(run_a, store), resolve_run(run_b, store)
    config = {"run_a": a.key, "run_b": b.key, "points": points}

    def compute():
        dev = resolve_device(device)
        ds = run_data(a, data_root).to(dev)
        table = landscape.interpolate(a.model(dev), b.model(dev), np.linspace(0, 1, points),
                                      {"train": ds.split("train"), "test": ds.split("test")})
        return {"curve.csv": table}, {}

    return cached(store, "interpolation", config, compute)


def adversarial_accuracy(run: Run | str, attack: str, eps: float, split: str = "test", source: Run | str | None = None,
                         limit: int | None = None, store: Store | None = None, device="cpu", data_root=None,
                         chunk: int = 1000, **attack_options) -> Entry:
    """Accuracy of a run on adversarial inputs crafted against ``source`` (default: the run itself).

    With ``source`` the original model M_ORI and ``run`` a robust model, this is one cell
    of the paper's Tables 3/4. ``eps = 0`` gives the clean accuracy.
    """
    from . import attacks

    store = store or Store()
    run = resolve_run(run, store)
    src = resolve_run(source, store) if source is not None else run
    name = attacks.canonical(attack)
    check(isinstance(eps, (int, float)) and eps >= 0, f"epsilon must be >= 0, got {eps!r}")
    check(split in ("train", "test"), f"unknown split {split!r}; choose train or test")
    config = {"run": run.key, "source": src.key, "attack": name, "eps": float(eps), "split": split, "limit": limit,
              "options": attack_options}

    def compute():
        dev = resolve_device(device)
        x, y = run_data(run, data_root).split(split)
        if limit:
            x, y = x[:limit], y[:limit]
        x, y = x.to(dev), y.to(dev)
        model = run.model(dev)
        source_model = model if src.key == run.key else src.model(dev)
        acc = attacks.adversarial_accuracy(model, x, y, name, eps, source=source_model, chunk=chunk, **attack_options)
        return {}, {"accuracy": acc, "clean_accuracy": attacks.accuracy(model, x, y), "n_samples": len(y)}

    return cached(store, "attack", config, compute)
