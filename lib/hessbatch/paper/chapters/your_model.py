"""Chapter 10, the paper's analysis on a model of the reader's choice: any paper model, torchvision
architecture (``torchvision:NAME``) or installed plugin, trained to the protocol at each batch
size, with chapter 1's columns and claims, per-layer spectra and the 1-D landscape."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import measurements
from ...landscape import end_rise
from .. import claims
from . import batch_size
from .common import Context, batch_size_sweep_configs, hessian_subsample

NAME = "10-your-model"


@dataclass
class Params(batch_size.Params):
    model: str = "torchvision:resnet18"
    curvature_method: str = "auto"     # exact where the model is piecewise linear, else power iteration
    layer_k: int = 1                    # top eigenvalues of each layer's diagonal block
    layer_depth: int | None = 2         # blocks: modules this many levels down (2: a wrapped ResNet's stages)
    radius: float = 0.5
    points: int = 21


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    res = batch_size.compute(p, ctx)
    curves = []
    for run in ctx.each(res["used"], "landscape"):
        if run.status != "diverged":
            c = measurements.landscape_1d(run, p.radius, p.points, store=ctx.store, device=ctx.device,
                                          data_root=ctx.data_root,
                                          subsample=hessian_subsample(run, p.hessian_samples, "train"))
            curves.append(c.csv("curve.csv").assign(batch_size=run.config.batch_size))
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    rows = []
    if len(curves) and curves["batch_size"].nunique() >= 2:
        sharp = curves[curves["split"] == "train"].groupby("batch_size").apply(end_rise, include_groups=False)
        rows.append(claims.trend("the train loss rises faster along v₁ for larger batches", "Fig. 2/7",
                                 sharp.index, sharp.values, +1))
    return {**res, "curves": curves, "claims": pd.concat([res["claims"], claims.table(rows)], ignore_index=True)}
