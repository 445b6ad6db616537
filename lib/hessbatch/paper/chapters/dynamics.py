"""Chapter 3, training dynamics: Fig. 4 (λ_max of the weight Hessian and the full gradient norm
after each saved epoch, for each batch size, plain and robust training)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import measurements
from ...thresholds import threshold_after
from .. import claims
from .common import Common, Context, hessian_subsample, sweep_configs, sweep_runs

NAME = "03-dynamics"


@dataclass
class Params(Common):
    dyn_batch_sizes: list = (32, 1024)
    dyn_train_options: dict | None = None
    save_every: int = 1
    adversarial: dict | None = None
    hessian_samples: int | None = None
    tol: float = 1e-3   # λ_max's relative tolerance at each epoch


def configs(p: Params) -> dict[str, dict[int, dict]]:
    """The sweep of each method: plain, and robust if the chapter has an ``adversarial`` attack."""
    methods = [("plain", None)] + ([("robust", p.adversarial)] if p.adversarial else [])
    return {method: sweep_configs(p.model, p.dataset, p.dyn_batch_sizes, {
        **(p.dyn_train_options or {}), "save_every": p.save_every, "grad_norm": True, "adversarial": adv}, p.seed)
        for method, adv in methods}


def train_configs(p: Params) -> list[dict]:
    return [cfg for sweep in configs(p).values() for cfg in sweep.values()]


def compute(p: Params, ctx: Context) -> dict:
    rows, used = [], []
    for method, sweep in configs(p).items():
        runs = sweep_runs(sweep, ctx)
        used += list(runs.values())
        for b, run in runs.items():
            if run.status != "diverged":
                rows += _trajectory(run, b, method, p, ctx)
    df = pd.DataFrame(rows)
    return {"trajectory": df, "claims": dynamics_claims(df, bool(p.adversarial)), "used": used}


def _trajectory(run, b, method, p: Params, ctx: Context) -> list[dict]:
    """λ_max, gradient norm and training loss at the initialization and every snapshot of a run."""
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root)
    hist = run.history.set_index("epoch")
    rows = []
    for ep in ctx.each([0, *run.snapshot_epochs()], f"λ_max B={b} {method}", "epoch"):
        spec = measurements.spectrum(run, "train", k=1, tol=p.tol, epoch=ep, keep_vectors=0,
                                     subsample=hessian_subsample(run, p.hessian_samples, "train"),
                                     progress=ctx.progress, **kw)
        state = measurements.initial_state(run, **kw).json() if ep == 0 else hist.loc[ep]
        rows.append({"batch_size": b, "method": method, "epoch": ep,
                     "lambda_max": float(spec.csv("eigenvalues.csv")["eigenvalue"].iloc[0]),
                     "grad_norm": float(state["grad_norm"]), "train_loss": float(state["train_loss"]),
                     "threshold": threshold_after(run.config, ep, run.history["train_loss"])})
    return rows


def dynamics_claims(df: pd.DataFrame, robust: bool) -> pd.DataFrame:
    """Fig. 4's claims on a trajectory (batch_size, method, epoch, lambda_max, grad_norm): the larger
    batch ends sharper; its λ_max grows from the first point (the initialization, if epoch 0 is in
    the trajectory) to the last, and, separately, from the first saved epoch on; it is not at a
    stationary point (its final gradient norm exceeds the smallest batch's, which converges);
    robust training ends flatter."""
    if not len(df):
        return claims.table([])
    last = df.sort_values("epoch").groupby(["method", "batch_size"]).tail(1)
    plain = last[last["method"] == "plain"].sort_values("batch_size")
    lam, grad = plain["lambda_max"].to_numpy(), plain["grad_norm"].to_numpy()
    checks = [claims.trend("final λ_max is larger for the larger batch", "Fig. 4",
                           plain["batch_size"], plain["lambda_max"], +1) if len(plain) >= 3 else
              claims.claim("final λ_max is larger for the larger batch", "Fig. 4", "λ(B_max) / λ(B_min)",
                           float(lam[-1] / lam[0]), bool(lam[-1] > lam[0]))]
    big = df[(df["method"] == "plain") & (df["batch_size"] == plain["batch_size"].iloc[-1])].sort_values("epoch")
    checks += _growth_claims(big["lambda_max"].to_numpy(), big["epoch"].to_numpy())
    ratio = float(grad[-1] / grad[0])
    checks.append(claims.claim("the large batch is not at a stationary point (no saddle): its final gradient norm "
                               "exceeds the smallest batch's", "Fig. 4", "‖∇L‖(B_max) / ‖∇L‖(B_min), last epoch",
                               ratio, bool(len(plain) >= 2 and ratio > 1)))
    if robust:
        m = last.pivot(index="batch_size", columns="method", values="lambda_max")
        frac = float((m["robust"] < m["plain"]).mean())
        checks.append(claims.claim("robust training ends at a smaller λ_max than plain training", "§3.4, Fig. 4",
                                   "share of batch sizes", frac, frac == 1.0))
    return claims.table(checks)


def _growth_claims(lams, epochs) -> list[dict]:
    """λ_max grows during the largest batch's training: over the whole trajectory, and after the
    first saved epoch when the trajectory starts at the initialization."""
    growth = float(lams[-1] / lams[0])
    span = "initialization to last epoch" if epochs[0] == 0 else "first to last snapshot"
    out = [claims.claim(f"λ_max grows during large-batch training ({span})", "Fig. 4",
                        f"λ(epoch {epochs[-1]}) / λ(epoch {epochs[0]}) at B_max", growth, growth > 1)]
    if epochs[0] == 0:
        first = epochs[min(1, len(epochs) - 1)]
        later = float(lams[-1] / lams[1]) if len(epochs) >= 3 else float("nan")
        out.append(claims.claim(f"λ_max still grows after the first saved epoch (epoch {first} to {epochs[-1]})",
                                "Fig. 4", f"λ(epoch {epochs[-1]}) / λ(epoch {first}) at B_max", later, later > 1))
    return out
