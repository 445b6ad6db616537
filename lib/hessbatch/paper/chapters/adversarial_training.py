"""Chapter 5, adversarial training: Tables 3/4 (transfer attacks from M_ORI on robust models),
Fig. 5/10/11 (interpolation from M_ORI to each robust model) and Fig. 6/12 (full vs subsampled
Hessian spectra)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ... import attacks, measurements, progress
from ...config import run_key
from ...errors import check, check_options
from ...landscape import second_difference
from .. import claims
from .common import Common, Context, hessian_subsample

NAME = "05-adversarial-training"


@dataclass
class Params(Common):
    base_train: dict = field(default_factory=dict)
    eps_linf: float = 0.1
    eps_l2: float = 2.0
    robust_epochs: int = 5
    attack_options: dict | None = None
    robust_lr: float | None = None
    k: int = 20
    tol: float = 1e-4
    hessian_samples: int | None = None
    subsample_sizes: list = ()
    test_limit: int | None = None
    interpolation_points: int = 21

    def check(self) -> None:
        opts = self.attack_options or {}
        check(isinstance(opts, dict), f"attack_options must map attack names to their options, got {opts!r}")
        for name, given in opts.items():
            a = attacks.get(name)
            check(a.name == name, f"attack_options: name the attack {a.name!r}, not its alias {name!r}")
            check_options(a.function, given or {}, f"attack {a.name}", values=True)


def options(p: Params, name: str) -> dict:
    return dict((p.attack_options or {}).get(name) or {})


def ori_config(p: Params) -> dict:
    return {**p.base_train, "model": p.model, "dataset": p.dataset, "seed": p.seed}


def robust_configs(p: Params) -> dict[str, dict]:
    """Each attack's robust model: M_ORI's weights, trained ``robust_epochs`` more on its adversarial examples."""
    ori = ori_config(p)
    eps = {"linf": p.eps_linf, "l2": p.eps_l2}
    return {name: {**ori, "init_from": run_key(ori), "max_epochs": p.robust_epochs, "target_loss": None,
                   "lr": p.robust_lr or ori.get("lr", 0.01), "save_every": 0, "grad_norm": False,
                   "adversarial": {"attack": name, "eps": eps[attacks.get(name).norm], **options(p, name)}}
            for name in attacks.ATTACKS}


def train_configs(p: Params) -> list[dict]:
    return [ori_config(p), *robust_configs(p).values()]


def compute(p: Params, ctx: Context) -> dict:
    ori = ctx.train(ori_config(p))
    models = {"ORI": ori}
    for name, cfg in progress.bar(list(robust_configs(p).items()), desc="robust training", unit="run",
                                  show=ctx.progress):
        models[attacks.get(name).label] = ctx.train(cfg)
    table = _transfer_table(models, ori, p, ctx)
    curves, spectra = [], []
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root)
    for label, run in ctx.each(models.items(), "curvature"):
        if label != "ORI":
            c = measurements.interpolation(ori, run, p.interpolation_points, **kw)
            curves.append(c.csv("curve.csv").assign(robust=label))
        spectra += _spectra(label, run, p, ctx)
    curves, spectra = pd.concat(curves, ignore_index=True), pd.DataFrame(spectra)
    return {"table": table, "curves": curves, "spectra": spectra,
            "claims": adversarial_claims(table, curves, spectra, attacks.ATTACKS), "used": list(models.values())}


def _transfer_table(models, ori, p: Params, ctx: Context) -> pd.DataFrame:
    """Tables 3/4: each model's clean accuracy and its accuracy on each attack's examples crafted against M_ORI."""
    kw = dict(limit=p.test_limit, store=ctx.store, device=ctx.device, data_root=ctx.data_root, progress=ctx.progress)
    eps = {"linf": p.eps_linf, "l2": p.eps_l2}
    rows = []
    for label, run in ctx.each(models.items(), "transfer attacks"):
        row = {"model": label, "clean": measurements.adversarial_accuracy(run, "fgsm", 0.0, **kw).json()["accuracy"]}
        for name in attacks.ATTACKS:
            a = attacks.get(name)
            row[a.label] = measurements.adversarial_accuracy(run, name, eps[a.norm], "test", source=ori, **kw,
                                                             **options(p, name)).json()["accuracy"]
        row["mean"] = float(np.mean([row[attacks.get(n).label] for n in attacks.ATTACKS]))
        rows.append(row)
    return pd.DataFrame(rows)


def _spectra(label, run, p: Params, ctx: Context) -> list[dict]:
    """A model's top eigenvalues of the full Hessian and of each subsampled one (Fig. 6/12)."""
    rows = []
    for size in [None, *p.subsample_sizes]:
        spec = measurements.spectrum(run, "train", k=p.k, tol=p.tol, which="magnitude" if size else "largest",
                                     subsample=hessian_subsample(run, size if size else p.hessian_samples, "train"),
                                     keep_vectors=0, store=ctx.store, device=ctx.device, data_root=ctx.data_root,
                                     progress=ctx.progress)
        ev = spec.csv("eigenvalues.csv")
        rows += [{"model": label, "hessian": f"|B_H| = {size}" if size else "full", "subsample": size or 0,
                  "rank": int(r), "eigenvalue": float(v)} for r, v in zip(ev["rank"], ev["eigenvalue"])]
    return rows


def adversarial_claims(table, curves, spectra, attack_names) -> pd.DataFrame:
    labels = [attacks.get(n).label for n in attack_names]
    ori = table[table["model"] == "ORI"].iloc[0]
    rob = table[table["model"] != "ORI"]
    better = float((rob[labels].values > ori[labels].values).mean())
    rows = [claims.claim("every robust model beats M_ORI on every adversarial test set", "§3.4, Tables 3/4",
                         "share of cells", better, better == 1.0)]
    full = spectra[spectra["hessian"] == "full"]
    top = full[full["rank"] == 1].set_index("model")["eigenvalue"]
    smaller = float((top.drop("ORI") < top["ORI"]).mean())
    rows.append(claims.claim("robust models have a smaller top Hessian eigenvalue", "§3.4, Fig. 6/12",
                             "share of robust models", smaller, smaller == 1.0))
    flat = [second_difference(c, 1.0) < second_difference(c, 0.0) for _, c in curves.groupby("robust")]
    rows.append(claims.claim("the loss is flatter at the robust end of the interpolation", "Fig. 5/10/11",
                             "share of robust models", float(np.mean(flat)), all(flat)))
    sub = spectra[spectra["subsample"] > 0]
    if len(sub):
        smallest = sub["subsample"].min()
        neg = float((sub[sub["subsample"] == smallest].groupby("model")["eigenvalue"].min() < 0).mean())
        pos = bool((full["eigenvalue"] > 0).all())
        rows.append(claims.claim(f"subsampled Hessians (|B_H| = {smallest}) show negative curvature, the full "
                                 "Hessian's top eigenvalues are positive", "§3.4, Fig. 6/12",
                                 "share of models with a negative eigenvalue", neg, neg > 0 and pos))
    return claims.table(rows)
