"""Measurements of trained runs, each cached in the store under its parent run and settings.

Every measurement is a function decorated with :func:`measurement`, which owns what they
share (as joblib's ``Memory.cache`` does): the store, run arguments given as keys or
prefixes, the device, and the key, made of every argument but those that change only speed
(device, chunk size, HVP implementation, progress bars, the data folder). The function body
runs only when its entry is missing and returns ``(files, meta)``; callers get the ``Entry``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import math
import os
import warnings

import numpy as np
import pandas as pd

from . import attacks, eigensolvers, fastpath, hessian, landscape
from . import input_curvature as input_curvature_mod
from .devices import resolve_device
from .errors import NotConvergedWarning, check
from .evaluation import accuracy, evaluate, full_gradient_norm
from .runs import Run, resolve_run
from .store import Entry, Store

SPEED_ONLY = ("store", "device", "data_root", "chunk", "hvp", "progress")
_RECORD = contextvars.ContextVar("hessbatch_measurements_record", default=None)


@contextlib.contextmanager
def recorded():
    """Collect ``(kind, entry, arguments)`` for every measurement called inside the block, computed
    or read from the store: what a page shows, so that it can say how each of its entries was made."""
    log = []
    token = _RECORD.set(log)
    try:
        yield log
    finally:
        _RECORD.reset(token)


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


def measurement(kind: str, *, runs=("run",), ignore=SPEED_ONLY, key=None, on_read=None):
    """Cache the decorated measurement in the store as entries of ``kind``.

    ``runs``: arguments naming training runs (a ``Run``, a key or a unique prefix), resolved
    before the call and entering the key as their keys. ``ignore``: arguments left out of the
    key. ``key(args)``: the key's fields where they are not the arguments
    themselves (it also validates them, before any lookup). ``on_read(entry, args)``: called
    when the entry came from the store instead of being computed.
    """
    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            store = a["store"] = a.get("store") or Store()
            for name in runs:
                if a.get(name) is not None:
                    a[name] = resolve_run(a[name], store)
            config = key(a) if key else {n: (v.key if isinstance(v, Run) else v) for n, v in a.items()
                                         if n not in ignore}
            computed = []

            def compute():
                computed.append(True)
                a["device"] = resolve_device(a["device"])
                return fn(*bound.args, **bound.kwargs)

            entry = store.cached(kind, config, compute)
            if on_read is not None and not computed:
                on_read(entry, a)
            if (log := _RECORD.get()) is not None:
                log.append((kind, entry, dict(a)))
            return entry

        return wrapper

    return decorate


def _split(run: Run, split: str, device, data_root, subsample: int | None = None, seed: int = 0):
    """``(inputs, targets)`` of a run's split on ``device``, or a seeded ``subsample`` of it."""
    data = tuple(t.to(device) for t in run_data(run, data_root).split(split))
    return hessian.subsample(data, subsample, seed) if subsample else data


def _check_split(split) -> None:
    check(split in ("train", "test"), f"unknown split {split!r}; choose train or test")


def _check_size(value, name: str) -> None:
    check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
          f"{name} must be an integer >= 1, or omitted for the whole set; got {value!r}")


def _spectrum_key(a) -> dict:
    _check_split(a["split"])
    _check_size(a["subsample"], "subsample")
    check(a["keep_vectors"] >= 0, "keep_vectors must be >= 0")
    check(a["max_iter"] is None or a["max_iter"] >= 1, f"max_iter must be >= 1, got {a['max_iter']}")
    check(isinstance(a["seed"], int) and not isinstance(a["seed"], bool) and 0 <= a["seed"] < 2**63,
          f"seed must be an integer in [0, 2^63), got {a['seed']!r}")
    fields = ("split", "k", "tol", "method", "which", "subsample", "seed", "keep_vectors")
    return {**a["run"].weights_id(a["epoch"]), **{f: a[f] for f in fields},
            **({"max_iter": a["max_iter"]} if a["max_iter"] is not None else {})}


def _warn_if_short(entry: Entry, a) -> None:
    r = entry.json()
    if not r["converged"]:
        reached = f"{r['n_converged']} of {a['k']} eigenpairs" if r.get("n_converged") is not None else \
            "not every eigenpair"
        warnings.warn(f"stored spectrum {entry.path.name} ({a['run'].key}, {a['split']}) did not converge: {reached} "
                      f"reached the relative tolerance {a['tol']:g} in {r['n_hvp']} Hessian-vector products; "
                      "raise max_iter", NotConvergedWarning, stacklevel=3)


@measurement("spectrum", key=_spectrum_key, on_read=_warn_if_short)
def spectrum(run: Run | str, split: str = "train", k: int = 20, tol: float = 1e-4, method: str = "lanczos",
             which: str = "largest", subsample: int | None = None, seed: int = 0, epoch: int | None = None,
             keep_vectors: int = 2, store: Store | None = None, device="cpu", data_root=None,
             chunk: int | None = None, hvp: str = "backward", progress: bool = False,
             max_iter: int | None = None) -> Entry:
    """Top-k Hessian eigenvalues of a run's loss on its train or test set (or a subsample).

    Stores ``eigenvalues.csv`` (rank, eigenvalue, residual ‖Hv − θv‖/|θ| measured with the product,
    the product's rounding error against float64 at the top vector, and their sum: each eigenvalue's
    relative error bound), the first ``keep_vectors``
    eigenvectors in ``vectors.pt`` and the gradient norm at that point. ``progress``: a bar
    of Hessian-vector products while it computes. ``max_iter``: the solver's cap (its default
    when None). A result short of ``tol`` gives a :class:`~hessbatch.errors.NotConvergedWarning`,
    also when it is read back from the store.
    """
    model = fastpath.for_hessian(run.model(device, epoch))
    data = _split(run, split, device, data_root, subsample, seed)
    e = eigensolvers.top_eigen(model, data, k=k, tol=tol, method=method, which=which, chunk=chunk, hvp=hvp,
                               seed=seed, max_iter=max_iter, progress=progress, rounding=True)
    grad_norm = full_gradient_norm(model, *data, chunk=chunk)
    table = pd.DataFrame({"rank": np.arange(1, len(e) + 1), "eigenvalue": e.eigenvalues, "residual": e.residuals,
                          "rounding": e.rounding, "bound": e.error_bounds()})
    files = {"eigenvalues.csv": table}
    if keep_vectors:
        files["vectors.pt"] = e.eigenvectors[:keep_vectors].detach().float().cpu().contiguous()
    return files, {"n_hvp": e.n_hvp, "residuals": "measured", "rounding": e.rounding, "converged": e.converged, "n_converged": e.n_converged, "grad_norm": grad_norm,
                   "lambda_max": float(e.eigenvalues[0]), "n_samples": len(data[1]), "device": str(device)}


def _layer_spectra_key(a) -> dict:
    _check_split(a["split"])
    _check_size(a["subsample"], "subsample")
    _check_size(a["depth"], "depth")
    check(isinstance(a["k"], int) and a["k"] >= 1, f"k must be an integer >= 1, got {a['k']!r}")
    return {**a["run"].weights_id(None), **{f: a[f] for f in ("split", "k", "tol", "depth", "subsample", "seed")}}


@measurement("layer-spectra", key=_layer_spectra_key)
def layer_spectra(run: Run | str, split: str = "train", k: int = 1, tol: float = 1e-3, depth: int | None = None,
                  subsample: int | None = None, seed: int = 0, store: Store | None = None, device="cpu",
                  data_root=None, chunk: int | None = None, progress: bool = False) -> Entry:
    """Top-``k`` eigenvalues of each layer's diagonal block of the Hessian (``layers.csv``; see
    :func:`hessbatch.eigensolvers.per_layer_spectra`, ``depth`` groups layers), on a run's train or
    test set or a seeded ``subsample`` of it."""
    model = fastpath.for_hessian(run.model(device))
    data = _split(run, split, device, data_root, subsample, seed)
    table = eigensolvers.per_layer_spectra(model, data, k=k, tol=tol, depth=depth, chunk=chunk, seed=seed,
                                           progress=progress)
    return {"layers.csv": table}, {"n_samples": len(data[1]), "residuals": "measured"}


@measurement("initial-state", key=lambda a: a["run"].weights_id(0))
def initial_state(run: Run | str, store: Store | None = None, device="cpu", data_root=None) -> Entry:
    """A run's training loss, accuracy and full gradient norm at epoch 0 (its initialization, shared
    by runs that differ only in how they train), the quantities its ``history.csv`` holds for every
    later epoch."""
    model = run.model(device, 0)
    x, y = (t.to(device) for t in run_data(run, data_root).split("train"))
    loss, acc = evaluate(model, x, y)
    return {}, {"epoch": 0, "train_loss": loss, "train_acc": acc, "grad_norm": full_gradient_norm(model, x, y)}


@functools.lru_cache(maxsize=None)
def _auto_method(spec: str) -> str:
    """The input-curvature method ``"auto"`` chooses for a model spec (built once per process)."""
    from .models import build_model

    s = json.loads(spec)
    model = build_model(s["name"], s["input_shape"], s["num_classes"], s["mean"], s["std"], s["reading"])
    return input_curvature_mod.resolve_method(model, "auto")


def _input_curvature_key(a) -> dict:
    _check_split(a["split"])
    _check_size(a["limit"], "limit")
    methods = input_curvature_mod.METHODS
    check(a["method"] in methods, f"unknown method {a['method']!r}; choose {', '.join(methods)}")
    if a["method"] == "auto":   # keyed as the method it chooses, so "auto" and that method share an entry
        a["method"] = _auto_method(json.dumps(a["run"].result["model_spec"], sort_keys=True))
    return {"run": a["run"].key, **{f: a[f] for f in ("split", "method", "tol", "max_iter", "limit")}}


@measurement("input-curvature", key=_input_curvature_key)
def input_curvature(run: Run | str, split: str = "train", method: str = "auto", tol: float = 1e-4,
                    max_iter: int = 100, limit: int | None = None, store: Store | None = None, device="cpu",
                    data_root=None, chunk: int | None = None, progress: bool = False) -> Entry:
    """Per-sample ‖∇ₓℓ‖ and input-Hessian λ_max over a run's train or test set (``samples.csv``, in
    float32, the precision of the model's products; the summary means are of the float64 values).
    ``method``: as :func:`hessbatch.input_curvature.input_curvature`; ``"auto"`` is stored as the
    method it chooses for the run's model."""
    x, y = run_data(run, data_root).split(split)
    if limit:
        x, y = x[:limit], y[:limit]
    ic = input_curvature_mod.input_curvature(run.model(device), x.to(device), y.to(device), method, tol, max_iter,
                                             chunk, progress=progress)
    table = pd.DataFrame({"grad_norm": ic.grad_norm, "lambda_max": ic.lambda_max}).astype(np.float32)
    return {"samples.csv": table}, {**ic.summary(), "iterations": ic.iterations, "unconverged": ic.unconverged,
                                     "n_samples": len(y), "method": ic.method}


def _directions(run, split, k: int, store, device, data_root, subsample: int | None = None,
                tol: float = 1e-4) -> Entry:
    """The spectrum whose eigenvectors span a landscape (computed first if missing)."""
    return spectrum(run, split, k=k, tol=tol, keep_vectors=k, store=store, device=device, data_root=data_root,
                    subsample=subsample)


def _landscape_key(a, k: int) -> dict:
    check(math.isfinite(a["radius"]) and a["radius"] > 0 and a["points"] >= 3,
          f"landscape needs a finite radius > 0 and at least 3 points, got radius {a['radius']!r}, points {a['points']!r}")
    spec = _directions(a["run"], a["spectrum_split"], k, a["store"], a["device"], a["data_root"], a["subsample"],
                       a["tol"])
    return {"run": a["run"].key, "spectrum": spec.key, "radius": a["radius"], "points": a["points"]}


def _landscape_1d_key(a) -> dict:
    return {**_landscape_key(a, max(a["rank"], 2)), "rank": a["rank"]}


@measurement("landscape-1d", key=_landscape_1d_key)
def landscape_1d(run: Run | str, radius: float = 0.5, points: int = 21, rank: int = 1, spectrum_split: str = "train",
                 store: Store | None = None, device="cpu", data_root=None, subsample: int | None = None,
                 tol: float = 1e-4) -> Entry:
    """Loss and accuracy on the whole train and test sets along the rank-th Hessian eigenvector
    (Fig. 2/7); the eigenvector of the Hessian on ``spectrum_split``, or on a seeded ``subsample`` of it,
    to the relative tolerance ``tol``."""
    spec = _directions(run, spectrum_split, max(rank, 2), store, device, data_root, subsample, tol)
    ds = run_data(run, data_root).to(device)
    d = spec.torch("vectors.pt")[rank - 1]
    table = landscape.along_direction(run.model(device), d, np.linspace(-radius, radius, points),
                                      {"train": ds.split("train"), "test": ds.split("test")})
    return {"curve.csv": table}, {"lambda": float(spec.csv("eigenvalues.csv")["eigenvalue"][rank - 1])}


def _random_landscape_key(a) -> dict:
    check(math.isfinite(a["radius"]) and a["radius"] > 0 and a["points"] >= 3,
          f"landscape needs a finite radius > 0 and at least 3 points, got radius {a['radius']!r}, points {a['points']!r}")
    check(a["normalize"] in (None, "filter"), f"normalize must be 'filter' or None, got {a['normalize']!r}")
    return {"run": a["run"].key, **{f: a[f] for f in ("radius", "points", "seed", "normalize")}}


@measurement("landscape-random", key=_random_landscape_key)
def random_landscape_1d(run: Run | str, radius: float = 1.0, points: int = 21, seed: int = 0,
                        normalize: str | None = "filter", store: Store | None = None, device="cpu",
                        data_root=None) -> Entry:
    """Loss and accuracy on train and test along a seeded random direction, filter-normalized by
    default (Li et al. 2018): a sharpness that rescaling the weights does not change, unlike
    λ_max (Dinh et al. 2017). ``curvature_<split>``: the curve's second difference at the run."""
    model = run.model(device)
    ds = run_data(run, data_root).to(device)
    table = landscape.along_direction(model, landscape.random_direction(model, seed, normalize),
                                      np.linspace(-radius, radius, points),
                                      {"train": ds.split("train"), "test": ds.split("test")})
    return {"curve.csv": table}, {f"curvature_{s}": landscape.second_difference(table, 0.0, s)
                                  for s in ("train", "test")}


def _landscape_2d_key(a) -> dict:
    _check_size(a["eval_samples"], "eval_samples")
    return {**_landscape_key(a, 2), **({"eval_samples": a["eval_samples"]} if a["eval_samples"] else {})}


@measurement("landscape-2d", key=_landscape_2d_key)
def landscape_2d(run: Run | str, radius: float = 0.5, points: int = 11, spectrum_split: str = "train",
                 store: Store | None = None, device="cpu", data_root=None, subsample: int | None = None,
                 eval_samples: int | None = None, tol: float = 1e-4) -> Entry:
    """Loss on the train and test sets on the plane of the top-2 Hessian eigenvectors (Fig. 3), of
    the Hessian on ``spectrum_split`` or on a seeded ``subsample`` of it (to the relative tolerance
    ``tol``). ``eval_samples``: the
    losses on a seeded subset of that many samples of each split (seed 0, so a training subset
    holds the Hessian's ``subsample`` of the same seed); None, or a split no larger: all of it."""
    v = _directions(run, spectrum_split, 2, store, device, data_root, subsample, tol).torch("vectors.pt")
    data = {s: _split(run, s, device, data_root, eval_samples if (eval_samples or 0) < run.result[f"n_{s}"] else None)
            for s in ("train", "test")}
    grid = np.linspace(-radius, radius, points)
    table = landscape.plane(run.model(device), v[0], v[1], grid, grid, data)
    return {"surface.csv": table}, {"eval_samples": {s: len(d[1]) for s, d in data.items()}}


@measurement("interpolation", runs=("run_a", "run_b"))
def interpolation(run_a: Run | str, run_b: Run | str, points: int = 21, store: Store | None = None,
                  device="cpu", data_root=None) -> Entry:
    """Loss along (1 − α) θ_a + α θ_b, α in [0, 1] (Fig. 5/10/11)."""
    ds = run_data(run_a, data_root).to(device)
    table = landscape.interpolate(run_a.model(device), run_b.model(device), np.linspace(0, 1, points),
                                  {"train": ds.split("train"), "test": ds.split("test")})
    return {"curve.csv": table}, {}


def _attack_key(a) -> dict:
    _check_split(a["split"])
    _check_size(a["limit"], "limit")
    source = a["source"] if a["source"] is not None else a["run"]
    return {"run": a["run"].key, "source": source.key, "attack": attacks.canonical(a["attack"]),
            "eps": attacks.check_eps(a["eps"]), "split": a["split"], "limit": a["limit"],
            "options": a["attack_options"]}


@measurement("attack", runs=("run", "source"), key=_attack_key)
def adversarial_accuracy(run: Run | str, attack: str, eps: float, split: str = "test", source: Run | str | None = None,
                         limit: int | None = None, store: Store | None = None, device="cpu", data_root=None,
                         chunk: int | None = None, progress: bool = False, **attack_options) -> Entry:
    """Accuracy of a run on adversarial inputs crafted against ``source`` (default: the run itself).

    With ``source`` the original model M_ORI and ``run`` a robust model, this is one cell
    of the paper's Tables 3/4. ``eps = 0`` gives the clean accuracy.
    """
    x, y = run_data(run, data_root).split(split)
    if limit:
        x, y = x[:limit], y[:limit]
    x, y = x.to(device), y.to(device)
    model = run.model(device)
    source_model = model if source is None or source.key == run.key else source.model(device)
    acc = attacks.adversarial_accuracy(model, x, y, attacks.canonical(attack), eps, source=source_model, chunk=chunk,
                                       progress=progress,
                                       **attack_options)
    clean = (run.key, run.entry.digest("weights.pt"), split, limit, str(device), str(data_root), chunk)
    if clean not in _CLEAN:
        _CLEAN[clean] = accuracy(model, x, y, chunk)
    return {}, {"accuracy": acc, "clean_accuracy": _CLEAN[clean], "n_samples": len(y)}


# A run's clean accuracy on a split, once per process and set of weights: a chapter scores several
# attacks and radii on the same samples (a pass over CIFAR-10's training set takes a minute on a CPU core).
_CLEAN: dict[tuple, float] = {}
