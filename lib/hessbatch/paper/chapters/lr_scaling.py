"""Chapter 9, batch size or learning rate: the paper's batch-size claims under three learning-rate
rules (constant, linear and square-root scaling), over seeds, beside the stability threshold
2(1+β)/η and a curvature that rescaling the weights does not change."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import catalog, measurements
from ...config import epoch_lr, run_key
from ...errors import check
from ...thresholds import threshold_after
from .. import claims
from ...schema import EPS, integer, items, option
from .common import Common, Context, hessian_subsample

NAME = "09-lr-scaling"
RULES = {"none": "constant lr (the paper's)", "linear": "linear scaling + warm-up", "sqrt": "square-root scaling + warm-up"}


@dataclass
class Params(Common):
    lr_batch_sizes: list | None = None  # the batch sizes compared (default: the common ones)
    lr_rules: tuple = ("none", "linear", "sqrt")
    lr_base_batch: int | None = None    # B₀, where every rule has the base lr (default: the smallest batch)
    warmup_epochs: int = option(5, integer(0))
    seeds: int = 3
    eps: tuple = option((0.1,), items(EPS, least=1))
    hessian_samples: int | None = None
    curvature_samples: int | None = None
    tol: float = 1e-3
    direction_radius: float = 0.1       # with 3 points: the second difference at spacing h = 0.1
    direction_points: int = 3

    def check(self) -> None:
        for r in self.lr_rules:
            check(r in catalog.LR_SCALINGS, f"lr_rules: unknown rule {r!r}; choose from {', '.join(catalog.LR_SCALINGS)}")
        check(isinstance(self.seeds, int) and self.seeds >= 1, f"seeds must be an integer >= 1, got {self.seeds!r}")
        check(len(self.batch_list()) >= 2, "lr_batch_sizes needs at least two batch sizes")
        check(self.base_batch() in self.batch_list(), f"lr_base_batch {self.base_batch()} is not among the batch sizes")

    def batch_list(self) -> list[int]:
        return sorted(self.lr_batch_sizes or self.batch_sizes)

    def base_batch(self) -> int:
        return self.lr_base_batch or self.batch_list()[0]


def config(p: Params, rule: str, b: int, seed: int) -> dict:
    """One run. Under ``none``, and at B₀ under every rule (where each gives the base lr at every
    step), it is chapter 1's configuration, so those runs are shared."""
    cfg = {**(p.train_options or {}), "model": p.model, "dataset": p.dataset, "batch_size": b, "seed": p.seed + seed}
    if rule == "none" or b == p.base_batch():
        return cfg
    return {**cfg, "lr_scaling": rule, "lr_base_batch": p.base_batch(), "warmup_epochs": p.warmup_epochs}


def grid(p: Params) -> list[tuple[str, int, int, dict]]:
    return [(rule, b, s, config(p, rule, b, s)) for rule in p.lr_rules for s in range(p.seeds) for b in p.batch_list()]


def train_configs(p: Params) -> list[dict]:
    return list({run_key(cfg): cfg for *_, cfg in grid(p)}.values())


def compute(p: Params, ctx: Context) -> dict:
    rows, used = [], {}
    for rule, b, s, cfg in ctx.each(grid(p), "lr rules"):
        run = used.get(run_key(cfg)) or used.setdefault(run_key(cfg), ctx.train(cfg))
        rows.append(_row(run, rule, b, s, p, ctx))
    table = pd.DataFrame(rows)
    return {"table": table, "summary": summary(table), "claims": lr_claims(table), "verdicts": verdicts(table),
            "used": list(used.values())}


def _row(run, rule, b, s, p: Params, ctx: Context) -> dict:
    r = run.result
    row = {"rule": rule, "batch_size": b, "seed": s, "status": r["status"], "epochs": r["epochs"],
           "final_train_loss": r["train_loss"], "test_acc": r["test_acc"],
           "lr_end": epoch_lr(run.config, max(r["epochs"], 1), run.history["train_loss"]),
           "threshold": threshold_after(run.config, r["epochs"], run.history["train_loss"]), "run": run.key}
    if run.status == "diverged":
        return row
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root)
    for split in ("train", "test"):
        spec = measurements.spectrum(run, split, k=1, tol=p.tol, subsample=hessian_subsample(run, p.hessian_samples, split),
                                     **kw)
        row[f"lambda_{split}"] = float(spec.csv("eigenvalues.csv")["eigenvalue"].iloc[0])
    for i, e in enumerate(p.eps):
        row[f"fgsm_{i}"] = measurements.adversarial_accuracy(run, "fgsm", e, "test", limit=p.curvature_samples,
                                                             **kw).json()["accuracy"]
    curve = measurements.random_landscape_1d(run, p.direction_radius, p.direction_points, seed=s, **kw).json()
    row["filter_curvature"] = curve["curvature_train"]
    row["lambda_over_threshold"] = row["lambda_train"] / row["threshold"]
    return row


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % normal interval half-width over seeds, per rule and batch size."""
    cols = [c for c in ("test_acc", "lambda_train", "lambda_test", "fgsm_0", "filter_curvature", "lambda_over_threshold")
            if c in table]
    g = table.groupby(["rule", "batch_size"], sort=False)[cols]
    mean, half = g.mean(), 1.96 * g.std(ddof=1).fillna(0.0) / g.count().pow(0.5)
    return mean.join(half.add_suffix("_ci")).reset_index()


CLAIMS = [("lambda_train", +1, "λ_max (train) rises with batch size"), ("test_acc", -1, "test accuracy falls with batch size"),
          ("fgsm_0", -1, "FGSM accuracy falls with batch size")]


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Each of the paper's batch-size claims under each rule (seed-aware, :func:`claims.seed_trend`)."""
    ok = table[table["status"] != "diverged"]
    rows = []
    for rule in ok["rule"].unique():
        t = ok[ok["rule"] == rule]
        for col, sign, text in CLAIMS:
            if col in t:
                rows.append({"rule": RULES[rule], **claims.seed_trend(text, "§2–3, Tables 1/7", t["batch_size"], t[col], sign)})
    return pd.DataFrame(rows)


def lr_claims(table: pd.DataFrame) -> pd.DataFrame:
    ok = table[table["status"] != "diverged"]
    rows = []
    const = ok[ok["rule"] == "none"]
    if len(const) and "lambda_over_threshold" in const:
        big = const[const["batch_size"] == const["batch_size"].max()]
        worst = float(big["lambda_over_threshold"].max())
        rows.append(claims.claim("under constant lr, the large-batch runs' λ_max stays below 2(1+β)/η", "Cohen et al. 2021",
                                 "largest λ_max / threshold at B_max", worst, worst < 1))
    ratios = {rule: _end_ratio(ok[ok["rule"] == rule], "lambda_train") for rule in ("none", "linear")}
    if all(v == v for v in ratios.values()):
        rows.append(claims.claim("the gap between large- and small-batch λ_max shrinks under linear scaling",
                                 "Goyal et al. 2017; Smith & Le 2018", "λ_max ratio B_max/B_min: linear − constant",
                                 ratios["linear"] - ratios["none"], ratios["linear"] < ratios["none"]))
    if len(const) and "filter_curvature" in const:
        rows.append(claims.seed_trend("the paper's ordering survives a filter-normalized curvature (constant lr)",
                                      "Dinh et al. 2017; Li et al. 2018", const["batch_size"], const["filter_curvature"], +1))
    return claims.table(rows)


def _end_ratio(t: pd.DataFrame, col: str) -> float:
    if col not in t or t["batch_size"].nunique() < 2:
        return float("nan")
    means = t.groupby("batch_size")[col].mean()
    return float(means.iloc[-1] / means.iloc[0])
