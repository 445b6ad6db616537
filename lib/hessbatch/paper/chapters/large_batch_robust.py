"""Chapter 6, large-batch robust training: Table 8 (test accuracy of baseline, FB and robust
training at batch sizes up to the whole training set)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ... import progress
from ...errors import check
from .. import claims
from ...schema import integer, option
from .common import Common, Context

NAME = "06-large-batch-robust"


@dataclass
class Params(Common):
    t8_batch_sizes: list = ()
    t8_train: dict = field(default_factory=dict)
    adversarial: dict | None = None
    warmup_epochs: int = option(5, integer(0))
    base_batch: int = 128


def table8_configs(base: dict, batch_sizes, adversarial: dict, warmup_epochs: int = Params.warmup_epochs,
                   base_batch: int = Params.base_batch) -> list[tuple[str, dict]]:
    """The three columns of the paper's Table 8 for each batch size.

    ``baseline``: plain SGD at the base learning rate. ``FB`` (Goyal et al.): the learning
    rate scaled linearly with batch/``base_batch`` after a linear warm-up of
    ``warmup_epochs``. ``robust``: baseline with adversarial training.
    """
    out = []
    for b in batch_sizes:
        out.append(("baseline", {**base, "batch_size": b}))
        out.append(("FB", {**base, "batch_size": b, "lr_scaling": "linear", "lr_base_batch": base_batch,
                           "warmup_epochs": warmup_epochs}))
        out.append(("robust", {**base, "batch_size": b, "adversarial": dict(adversarial)}))
    return out


def recipes(p: Params) -> list[tuple[str, dict]]:
    check(len(p.t8_batch_sizes) > 0, "t8_batch_sizes must not be empty")
    return table8_configs({**p.t8_train, "model": p.model, "dataset": p.dataset, "seed": p.seed}, p.t8_batch_sizes,
                          p.adversarial, p.warmup_epochs, p.base_batch)


def train_configs(p: Params) -> list[dict]:
    return [cfg for _, cfg in recipes(p)]


def linear_scaling_diverges(df: pd.DataFrame, classes: int) -> dict:
    """Linear scaling with warm-up diverges above the smallest batch (§8 claim 14: "accuracy = 1/c at
    B ≥ 10k"): a run counts as diverged when its loss became non-finite or its test accuracy is
    within half of chance (at most 1.5/c)."""
    fb = df[df["method"] == "FB"].sort_values("batch_size")
    gone = (fb["status"] == "diverged") | (fb["test_acc"].fillna(0) <= 1.5 / classes)
    return claims.claim("linear scaling with warm-up diverges above the smallest batch", "Table 8",
                        "batch sizes where it diverged", int(gone.sum()), bool(gone.iloc[1:].all()))


def compute(p: Params, ctx: Context) -> dict:
    rows, used = [], []
    for method, cfg in progress.bar(recipes(p), desc="Table 8", unit="run", show=ctx.progress):
        run = ctx.train(cfg)
        used.append(run)
        r = run.result
        rows.append({"batch_size": cfg["batch_size"], "method": method, "status": r["status"],
                     "test_acc": r["test_acc"] if r["status"] != "diverged" else float("nan"), "epochs": r["epochs"]})
    df = pd.DataFrame(rows)
    wide = df.pivot(index="batch_size", columns="method", values="test_acc")[["baseline", "FB", "robust"]]
    gain = (wide["robust"] - wide["baseline"])
    checks = [claims.claim("robust training beats the baseline at every batch size", "Table 8",
                           "min accuracy gain", float(gain.min()), bool((gain > 0).all())),
              claims.trend("the robust gain grows with batch size", "Table 8", wide.index, gain.values, +1),
              linear_scaling_diverges(df, used[0].result["model_spec"]["num_classes"])]
    return {"runs": df, "table": wide.reset_index(), "claims": claims.table(checks), "used": used}
