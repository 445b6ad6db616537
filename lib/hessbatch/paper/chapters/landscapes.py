"""Chapter 2, loss landscapes: Fig. 2/7 (1-D along the dominant eigenvector, every batch size)
and Fig. 3 (2-D, chosen batch sizes). Its runs are chapter 1's."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import measurements
from ...landscape import end_rise
from .. import claims
from .common import Common, Context, batch_size_sweep, batch_size_sweep_configs, hessian_subsample, sweep_runs

NAME = "02-landscapes"
PARTIAL = True  # a page can show some of its batch sizes while the others train


@dataclass
class Params(Common):
    radius: float = 0.5
    points: int = 21
    plane_batch_sizes: list | None = None   # None: the smallest and the largest; []: no 2-D surface
    plane_points: int = 11
    hessian_samples: int | None = None   # eigenvectors of the Hessian on a seeded subsample of the training set


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    runs = sweep_runs(batch_size_sweep(p), ctx)
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root)
    curves, surfaces = [], []
    for b, run in ctx.each(runs.items(), "landscape"):
        if run.status == "diverged":
            continue
        c = measurements.landscape_1d(run, p.radius, p.points, subsample=hessian_subsample(run, p.hessian_samples,
                                                                                           "train"), **kw)
        curves.append(c.csv("curve.csv").assign(batch_size=b, lambda_max=c.json()["lambda"]))
    planes = [min(p.batch_sizes), max(p.batch_sizes)] if p.plane_batch_sizes is None else p.plane_batch_sizes
    for b in ctx.each(planes, "plane"):
        s = measurements.landscape_2d(runs[b], p.radius, p.plane_points,
                                      subsample=hessian_subsample(runs[b], p.hessian_samples, "train"), **kw)
        surfaces.append(s.csv("surface.csv").assign(batch_size=b))
    curves = pd.concat(curves, ignore_index=True)
    rows = []
    for split in ("train", "test"):
        sharp = curves[curves["split"] == split].groupby("batch_size").apply(end_rise, include_groups=False)
        rows.append(claims.trend(f"the {split} loss rises faster along v₁ for larger batches", "Fig. 2/7",
                                 sharp.index, sharp.values, +1))
    return {"curves": curves, "surfaces": pd.concat(surfaces, ignore_index=True) if surfaces else pd.DataFrame(),
            "plane_batch_sizes": planes, "claims": claims.table(rows), "used": list(runs.values())}
