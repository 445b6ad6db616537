"""Chapter 10, the paper's analysis on a model of the reader's choice: any paper model, torchvision
architecture (``torchvision:NAME``) or installed plugin, trained to the protocol at each batch
size, with chapter 1's columns and claims, per-layer spectra and the 1-D landscape."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import measurements
from ...errors import check
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
    layer_tol: float = 1e-3
    layer_depth: int | None = 2         # blocks: modules this many levels down (2: a wrapped ResNet's stages)
    radius: float = 0.5
    points: int = 21

    def check(self) -> None:
        super().check()
        check(isinstance(self.layer_k, int) and self.layer_k >= 1, f"layer_k must be an integer >= 1, got {self.layer_k!r}")
        check(self.layer_depth is None or (isinstance(self.layer_depth, int) and self.layer_depth >= 1),
              f"layer_depth must be an integer >= 1 or null, got {self.layer_depth!r}")


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    res = batch_size.compute(p, ctx)
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root)
    layers, curves = [], []
    for run in ctx.each(res["used"], "layers and landscape"):
        if run.status == "diverged":
            continue
        b, sub = run.config.batch_size, hessian_subsample(run, p.hessian_samples, "train")
        spec = measurements.layer_spectra(run, "train", k=p.layer_k, tol=p.layer_tol, depth=p.layer_depth,
                                          subsample=sub, progress=ctx.progress, **kw)
        layers.append(spec.csv("layers.csv").assign(batch_size=b))
        c = measurements.landscape_1d(run, p.radius, p.points, subsample=sub, **kw)
        curves.append(c.csv("curve.csv").assign(batch_size=b))
    layers = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame()
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return {**res, "layers": layers, "curves": curves,
            "claims": pd.concat([res["claims"], claims.table(_claims(layers, curves))], ignore_index=True)}


def _claims(layers: pd.DataFrame, curves: pd.DataFrame) -> list[dict]:
    rows = []
    if len(curves) and curves["batch_size"].nunique() >= 2:
        train = curves[curves["split"] == "train"]
        sharp = train.groupby("batch_size").apply(end_rise, include_groups=False)
        rows.append(claims.trend("the train loss rises faster along v₁ for larger batches", "Fig. 2/7",
                                 sharp.index, sharp.values, +1))
    if len(layers) and layers["batch_size"].nunique() >= 2:
        top = layers[layers["rank"] == 1].pivot(index="layer", columns="batch_size", values="eigenvalue")
        share = float((top[top.columns.max()] > top[top.columns.min()]).mean())
        rows.append(claims.claim("the largest batch is sharper in most layers (top eigenvalue of each layer's "
                                 "block)", "§2, per layer (ours)", "share of layers", share, share > 0.5))
    return rows
