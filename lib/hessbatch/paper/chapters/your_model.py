"""Chapter 10, the paper's analysis on a model of the reader's choice: any paper model, torchvision
architecture (``torchvision:NAME``) or installed plugin, trained to the protocol at each batch
size, with chapter 1's columns and claims, per-layer spectra and the 1-D landscape."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import claims
from . import batch_size, landscapes
from ...schema import integer, option
from .common import Context, batch_size_sweep_configs

NAME = "10-your-model"


@dataclass
class Params(batch_size.Params):
    model: str = "torchvision:resnet18"
    curvature_method: str = "auto"     # exact where the model is piecewise linear, else power iteration
    layer_k: int = option(1, integer(0))                 # top eigenvalues of each layer's diagonal block
    layer_depth: int | None = 2         # blocks: modules this many levels down (2: a wrapped ResNet's stages)
    radius: float = 0.5
    points: int = 21


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    res = batch_size.compute(p, ctx)
    curves = landscapes.curves_1d({run.config.batch_size: run for run in res["used"]}, p, ctx)
    rows = landscapes.rise_claims(curves, ("train",)) if len(curves) and curves["batch_size"].nunique() >= 2 else []
    return {**res, "curves": curves, "claims": pd.concat([res["claims"], claims.table(rows)], ignore_index=True)}
