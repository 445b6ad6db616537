"""Chapter 7, first-order adversaries after Deng et al. (ICML 2020): PGA end points and speed on
two-layer networks across input scales, and early adversarial training on rescaled real inputs
(``hessbatch.pga``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ... import pga
from ...catalog import check_dataset
from ...data import load_dataset
from ...errors import check_options
from ...store import Store
from .. import claims
from .common import Common, Context

NAME = "07-pga-dynamics"


@dataclass
class Params(Common):
    pga_sweep: dict = field(default_factory=dict)
    pga_training: dict | None = None


def train_configs(p: Params) -> list[dict]:
    return []


def compute(p: Params, ctx: Context) -> dict:
    return pga_study(p.pga_sweep, p.pga_training, ctx.store, ctx.data_root, ctx.progress)


def _data_subset(dataset, data_root, n_train, n_test, seed=0):
    ds = load_dataset(dataset, data_root)
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(ds.n_train, generator=g)[:n_train]
    te = torch.randperm(len(ds.y_test), generator=g)[:n_test]
    return ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te]


def pga_study(sweep: dict, training: dict | None = None, store=None, data_root=None, progress=True) -> dict:
    """Deng et al. 2020 on a two-layer network: PGA end points and speed across input scales
    (``sweep``: keyword arguments of ``pga.pga_sweep``), and early adversarial training on real
    inputs rescaled by c (``training``: ``dataset``, ``n_train``, ``n_test`` and keyword
    arguments of ``pga.scaled_adversarial_training``). Options are checked before any compute."""
    store = store or Store()
    sweep = {"seed": 0, **sweep}
    check_options(pga.pga_sweep, sweep, "pga_sweep", own=("radii",))
    t = {"dataset": "mnist5k", "n_train": 2000, "n_test": 500, **(training or {})}
    kw = {k: v for k, v in t.items() if k not in ("dataset", "n_train", "n_test")}
    if training:
        check_options(pga.scaled_adversarial_training, t, "pga_training", own=("dataset", "n_train", "n_test"))
        check_dataset(t["dataset"])
    entry = store.cached("pga-sweep", sweep, lambda: (
        {"runs.csv": pga.pga_sweep(**sweep, progress=progress)}, {}))
    runs = entry.csv("runs.csv")
    curves = None
    if training:
        def compute():
            data = _data_subset(t["dataset"], data_root, t["n_train"], t["n_test"])
            return {"curves.csv": pga.scaled_adversarial_training(*data, **kw, progress=progress)}, {}

        curves = store.cached("pga-training", t, compute).csv("curves.csv")
    out = {"runs": runs, "summary": pga.summarize(runs), "curves": curves}
    out["claims"], out["reported"] = pga_claims(runs, curves)
    return out


def pga_claims(runs: pd.DataFrame, curves: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checks asserted (claims) and numbers only reported (the η ∝ ε and ReLU cases)."""
    src = "Deng et al. 2020"
    rows, reported = [], []
    smooth = runs[runs["activation"].isin(["tanh", "softplus"])]
    share = float(smooth["local_max"].mean()) if len(smooth) else float("nan")
    rows.append(claims.claim("PGA ends at an approximate local maximum (smooth activations, ≥ 95% of runs)",
                             f"{src}, main theorem", "share of runs", share, share >= 0.95))
    rhos = []
    for (act, rule), g in runs.groupby(["activation", "step_rule"], sort=False):
        rho, p = claims.spearman_test(g["radius"], g["iterations"])
        if rule == "fixed" and act in ("tanh", "softplus"):
            rhos.append((rho, p))
        else:
            reported.append({"case": f"{act}, {rule} η", "quantity": "Spearman ρ(r, iterations)", "value": rho,
                             "p": p})
        reported.append({"case": f"{act}, {rule} η", "quantity": "share at an approximate local maximum",
                         "value": float(g["local_max"].mean()), "p": np.nan})
    worst = min(rhos, default=(float("nan"), float("nan")))
    rows.append(claims.claim("PGA needs more iterations at a larger input scale r (fixed η; each smooth activation)",
                             f"{src}, abstract", "smallest Spearman ρ (each p < 0.05)", worst[0],
                             bool(rhos) and all(r > 0 and p < 0.05 for r, p in rhos)))
    nets = runs.groupby(["activation", "step_rule", "radius", "seed"], sort=False)["end_loss_cv"].first().reset_index()
    rho, p = claims.spearman_test(nets["radius"], nets["end_loss_cv"])
    rows.append(claims.claim("a smaller input scale gives a more regular landscape (end losses of restarts agree)",
                             f"{src}, abstract", "Spearman ρ(r, end-loss CV)", rho, bool(rho > 0 and p < 0.05)))
    relu = runs[runs["activation"] == "relu"]
    if len(relu):
        worst = float((relu["hess_min"] / relu["hess_max"].abs().clip(lower=1e-300)).min())
        reported.append({"case": "relu", "quantity": "min λ_min/λ_max of ∇²ℓ at end points (Yao's Theorem 1: ≥ 0)",
                         "value": worst, "p": np.nan})
    first = curves[curves["epoch"] == 1] if curves is not None else pd.DataFrame(columns=["seed"])
    per_seed = [claims.spearman_test(g["scale"], g["adv_train_loss"])[0] for _, g in first.groupby("seed")]
    wins = sum(r > 0 for r in per_seed if not np.isnan(r))
    need = int(np.ceil(2 * len(per_seed) / 3))
    if curves is not None and len(curves):
        last = curves[curves["epoch"] == curves["epoch"].max()]
        for col, what in (("adv_train_loss", "adversarial training loss"), ("robust_acc", "robust test accuracy"),
                          ("clean_acc", "clean test accuracy")):
            rho, p = claims.spearman_test(last["scale"], last[col])
            reported.append({"case": f"training, epoch {int(last['epoch'].iloc[0])}",
                             "quantity": f"Spearman ρ(c, {what})", "value": rho, "p": p})
    rows.append(claims.claim("early adversarial training loss is lower at a smaller input scale "
                             f"(epoch 1, in ≥ {need} of {len(per_seed)} seeds)", f"{src}, abstract",
                             "seeds with Spearman ρ(c, loss) > 0", float(wins) if per_seed else float("nan"),
                             bool(per_seed) and wins >= need))
    return claims.table(rows), pd.DataFrame(reported, columns=["case", "quantity", "value", "p"])


def late_training_sentence(reported: pd.DataFrame) -> str:
    """The last epoch's rank correlations with the input scale c, as prose for chapter 7."""
    late = reported[reported["case"].str.startswith("training, epoch")]
    if late.empty:
        return "no training curves were computed"
    parts = [f"{q.removeprefix('Spearman ')} = {v:+.2f} (p = {p:.2g})" for q, v, p in
             zip(late["quantity"], late["value"], late["p"])]
    return f"at {late['case'].iloc[0].removeprefix('training, ')}: " + "; ".join(parts)
