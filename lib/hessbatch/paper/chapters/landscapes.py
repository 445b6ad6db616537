"""Chapter 2, loss landscapes: Fig. 2/7 (1-D along the dominant eigenvector, every batch size)
and Fig. 3 (2-D, chosen batch sizes). Its runs are chapter 1's."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import measurements
from ...landscape import end_rise
from .. import claims
from .common import Context, Sweep, batch_size_sweep, batch_size_sweep_configs, hessian_subsample, sweep_runs

NAME = "02-landscapes"
PARTIAL = True  # a page can show some of its batch sizes while the others train


@dataclass
class Params(Sweep):
    radius: float = 0.5
    points: int = 21
    plane_batch_sizes: list | None = None   # None: the smallest and the largest; []: no 2-D surface
    plane_points: int = 11
    plane_samples: int | None = None     # the 2-D surface's losses on a seeded subset of each split (None: all)
    hessian_samples: int | None = None   # eigenvectors of the Hessian on a seeded subsample of the training set
    tol: float = 1e-4                    # the eigenvectors' relative tolerance (Lanczos)


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    runs = sweep_runs(batch_size_sweep(p), ctx)
    curves = curves_1d(runs, p, ctx)
    surfaces = []
    planes = [min(p.batch_sizes), max(p.batch_sizes)] if p.plane_batch_sizes is None else p.plane_batch_sizes
    planes = [b for b in planes if runs[b].status != "diverged"]
    for b in ctx.each(planes, "plane"):
        s = measurements.landscape_2d(runs[b], p.radius, p.plane_points, store=ctx.store, device=ctx.device,
                                      data_root=ctx.data_root,
                                      subsample=hessian_subsample(runs[b], p.hessian_samples, "train"),
                                      eval_samples=p.plane_samples, tol=p.tol)
        surfaces.append(s.csv("surface.csv").assign(batch_size=b))
    return {"curves": curves, "surfaces": pd.concat(surfaces, ignore_index=True) if surfaces else pd.DataFrame(),
            "plane_batch_sizes": planes, "claims": claims.table(rise_claims(curves)), "used": list(runs.values())}


def curves_1d(runs: dict, p, ctx: Context) -> pd.DataFrame:
    """Fig. 2/7: loss along the top eigenvector of each run (batch size → run) that did not diverge;
    ``p`` gives ``radius``, ``points``, ``hessian_samples`` and ``tol``."""
    curves = []
    for b, run in ctx.each(runs.items(), "landscape"):
        if run.status == "diverged":
            continue
        c = measurements.landscape_1d(run, p.radius, p.points, store=ctx.store, device=ctx.device,
                                      data_root=ctx.data_root,
                                      subsample=hessian_subsample(run, p.hessian_samples, "train"), tol=p.tol)
        curves.append(c.csv("curve.csv").assign(batch_size=b, lambda_max=c.json()["lambda"]))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def rise_claims(curves: pd.DataFrame, splits=("train", "test")) -> list[dict]:
    """Fig. 2/7's claim per split: the loss rises faster along v₁ for larger batches."""
    rows = []
    for split in splits:
        part = curves[curves["split"] == split] if len(curves) else curves
        sharp = (part.groupby("batch_size").apply(end_rise, include_groups=False) if len(part)
                 else pd.Series(dtype=float))
        rows.append(claims.trend(f"the {split} loss rises faster along v₁ for larger batches", "Fig. 2/7",
                                 sharp.index, sharp.values, +1))
    return rows
