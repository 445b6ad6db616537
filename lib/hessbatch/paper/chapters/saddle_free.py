"""Chapter 4, the saddle-free inner problem: Theorem 1 and Prop. 2 on explicit input-Hessian
spectra of a trained model (chapter 1's smallest batch) and of random networks."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ... import input_curvature, measurements
from ...models import random_network
from .. import claims
from .common import Common, Context, sweep_configs, sweep_runs

NAME = "04-saddle-free"
RANDOM_NETS = ("relu-mlp", "relu-cnn-bn", "tanh-mlp")


@dataclass
class Params(Common):
    n_samples: int = 10
    d: int = 64
    n_random: int = 20


def configs(p: Params) -> dict[int, dict]:
    return sweep_configs(p.model, p.dataset, p.batch_sizes[:1], p.train_options, p.seed)


def train_configs(p: Params) -> list[dict]:
    return list(configs(p).values())


def compute(p: Params, ctx: Context) -> dict:
    run = next(iter(sweep_runs(configs(p), ctx).values()))
    config = {"run": run.key, "n_samples": p.n_samples, "d": p.d, "n_random": p.n_random, "seed": p.seed}
    entry = ctx.store.cached("saddle", config, lambda: ({"samples.json": saddle_free_samples(
        run, p.n_samples, d=p.d, n_random=p.n_random, data_root=ctx.data_root, seed=p.seed).to_dict("records")}, {}))
    samples = pd.DataFrame(entry.json("samples.json"))
    return {"samples": samples, "claims": saddle_claims(samples), "used": [run]}


def saddle_free_samples(run=None, n_samples=10, random_nets=RANDOM_NETS, d=64, classes=10, width=64, n_random=20,
                        rank_tol=1e-7, data_root=None, seed=0) -> pd.DataFrame:
    """Per sample, the smallest and largest eigenvalue of the explicit input Hessian, its
    round-off floor and numerical rank (``hessbatch.input_curvature``), with the number of
    classes, for the first ``n_samples`` test inputs of ``run`` and random inputs of each random net."""
    rows = []

    def add(label, model, x, y, c):
        ev = torch.linalg.eigvalsh(input_curvature.input_hessian(model, x, y))
        for i in range(len(y)):
            floor = input_curvature.roundoff_floor(model, x[i:i + 1], c)
            rank, zero = input_curvature.numerical_rank(ev[i], floor, rank_tol)
            lmax = float(ev[i, -1])
            rows.append({"model": label, "sample": i, "lambda_min": float(ev[i, 0]), "lambda_max": lmax,
                         "floor": floor, "psd": bool(ev[i, 0] >= -zero), "ratio": float(ev[i, 0]) / max(abs(lmax), floor),
                         "rank": rank, "classes": c, "spectrum": ev[i].tolist()})

    if run is not None:
        x, y = measurements.run_data(run, data_root).split("test")
        add(f"trained {run.config.model} (ReLU)", run.model().double(), x[:n_samples].double(), y[:n_samples],
            run.result["model_spec"]["num_classes"])
    g = torch.Generator().manual_seed(seed)
    for kind in random_nets:
        model = random_network(kind, d, classes, width, seed)
        x = torch.rand(n_random, d, generator=g, dtype=torch.float64) * 2 - 0.5
        y = torch.randint(0, classes, (n_random,), generator=g)
        add(f"random {kind}", model, x, y, classes)
    return pd.DataFrame(rows)


def saddle_claims(df: pd.DataFrame) -> pd.DataFrame:
    checks = []
    for label, grp in df.groupby("model", sort=False):
        psd, low = bool(grp["psd"].all()), bool((grp["rank"] <= grp["classes"]).all())
        if "relu" in label.lower():
            checks.append(claims.claim(f"{label}: input Hessian is PSD", "Theorem 1",
                                       "min λ_min / max(λ_max, floor)", float(grp["ratio"].min()), psd))
            checks.append(claims.claim(f"{label}: rank ≤ number of classes", "Proposition 2", "max rank",
                                       float(grp["rank"].max()), low))
        else:
            checks.append(claims.claim(f"{label}: counter-example, the PSD property fails without ReLU",
                                       "Assumption 1", "min λ_min / max(λ_max, floor)", float(grp["ratio"].min()),
                                       not psd))
    return claims.table(checks)
