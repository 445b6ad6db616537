"""Chapter 1, the batch-size sweep: Tables 1/2/7 and Fig. 1 (accuracy, weight and input
curvature, adversarial accuracy per batch size)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ... import attacks, input_curvature, measurements
from ...errors import check, check_options
from .. import claims
from ...schema import EPS, integer, items, option
from .common import Context, Sweep, batch_size_sweep, batch_size_sweep_configs, hessian_subsample, sweep_runs

NAME = "01-batch-size"
PARTIAL = True  # a page can show some of its batch sizes while the others train
REFERENCE = "fgsm"  # the paper's attack of Tables 1/2/7, which another attack is compared with


@dataclass
class Params(Sweep):
    k: int = 20
    tol: float = 1e-4
    attack: str = REFERENCE
    attack_options: dict | None = None
    eps: tuple = option((0.02, 0.01), items(EPS, least=1))
    hessian_samples: int | None = None
    curvature_samples: int | None = None
    curvature_method: str = "power"
    whole_set_batch_sizes: list | None = None   # also λ_max on the whole training set for these (a subsample's check)
    layer_k: int = option(0, integer(0))                 # top eigenvalues of each layer's block of the Hessian (0: none)
    layer_tol: float = 1e-3
    layer_depth: int | None = None      # a layer: a module this many levels down (None: each module with parameters)

    def check(self) -> None:
        check(self.curvature_method in input_curvature.METHODS,
              f"curvature_method must be one of {', '.join(input_curvature.METHODS)}, got {self.curvature_method!r}")
        a = attacks.get(self.attack)
        check(self.attack_options is None or isinstance(self.attack_options, dict),
              f"attack_options must be a mapping of {a.name}'s options, got {self.attack_options!r}")
        check_options(a.function, self.attack_options or {}, f"attack {a.name}", values=True)
        for e in self.eps:
            attacks.check_eps(e)
        check(isinstance(self.layer_k, int) and not isinstance(self.layer_k, bool) and self.layer_k >= 0,
              f"layer_k must be an integer >= 0, got {self.layer_k!r}")
        check(self.layer_depth is None or (isinstance(self.layer_depth, int) and self.layer_depth >= 1),
              f"layer_depth must be an integer >= 1 or null, got {self.layer_depth!r}")
        extra = sorted(set(self.whole_set_batch_sizes or []) - set(self.batch_sizes))
        check(not extra, f"whole_set_batch_sizes must be among batch_sizes; not: {', '.join(map(str, extra))}")


train_configs = batch_size_sweep_configs


def compute(p: Params, ctx: Context) -> dict:
    runs = sweep_runs(batch_size_sweep(p), ctx)
    rows, spectra, layers = [], [], []
    for b, run in ctx.each(runs.items(), "curvature"):
        row = {"batch_size": b, "status": run.result["status"], "epochs": run.result["epochs"],
               "final_train_loss": run.result["train_loss"], "train_acc": run.result["train_acc"],
               "test_acc": run.result["test_acc"], "train_minutes": run.result.get("time_s", float("nan")) / 60,
               "run": run.key}
        if run.status != "diverged":
            for split in ("train", "test"):
                spectra += _measure(run, split, row, p, ctx)
            if b in (p.whole_set_batch_sizes or []) and hessian_subsample(run, p.hessian_samples, "train"):
                whole = measurements.spectrum(run, "train", k=1, tol=p.tol, store=ctx.store, device=ctx.device,
                                              data_root=ctx.data_root, progress=ctx.progress)
                row["lambda_theta_train_whole"] = float(whole.csv("eigenvalues.csv")["eigenvalue"].iloc[0])
            if p.layer_k:
                blocks = measurements.layer_spectra(run, "train", k=p.layer_k, tol=p.layer_tol, depth=p.layer_depth,
                                                    subsample=hessian_subsample(run, p.hessian_samples, "train"),
                                                    store=ctx.store, device=ctx.device, data_root=ctx.data_root,
                                                    progress=ctx.progress)
                layers.append(blocks.csv("layers.csv", dtype={"layer": str}).assign(batch_size=b))
        rows.append(row)
    table, spectra = pd.DataFrame(rows), pd.DataFrame(spectra)
    layers = pd.concat(layers, ignore_index=True) if layers else pd.DataFrame()
    return {"table": table, "spectra": spectra, "layers": layers, "claims": batch_size_claims(table, spectra, layers),
            "used": list(runs.values())}


def _measure(run, split, row, p: Params, ctx: Context) -> list[dict]:
    """One split's columns of a run's row (filled in place); its spectrum as rows."""
    kw = dict(store=ctx.store, device=ctx.device, data_root=ctx.data_root, progress=ctx.progress)
    b = row["batch_size"]
    spec = measurements.spectrum(run, split, k=p.k, tol=p.tol, subsample=hessian_subsample(run, p.hessian_samples, split),
                                 **kw)
    ev = spec.csv("eigenvalues.csv")
    row[f"lambda_theta_{split}"] = float(ev["eigenvalue"].iloc[0])
    row[f"n_hvp_{split}"] = spec.json()["n_hvp"]
    ic = measurements.input_curvature(run, split, method=p.curvature_method, limit=p.curvature_samples, **kw).json()
    row[f"lambda_x_{split}"], row[f"grad_x_{split}"] = ic["lambda_max"], ic["grad_norm"]
    for tag, e in zip(("a", "b"), p.eps):
        acc = measurements.adversarial_accuracy(run, p.attack, e, split, limit=p.curvature_samples, **kw,
                                                **(p.attack_options or {})).json()
        row[f"adv_{tag}_{split}"] = acc["accuracy"]
        if attacks.canonical(p.attack) != REFERENCE:
            row[f"ref_{tag}_{split}"] = measurements.adversarial_accuracy(run, REFERENCE, e, split,
                                                                          limit=p.curvature_samples, **kw).json()["accuracy"]
    return [{"batch_size": b, "split": split, "rank": int(i), "eigenvalue": float(v)}
            for i, v in zip(ev["rank"], ev["eigenvalue"])]


def batch_size_claims(table: pd.DataFrame, spectra: pd.DataFrame, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    ok = table[table["status"] != "diverged"]
    rows = []
    for split in ("train", "test"):
        if f"lambda_theta_{split}" in ok:
            rows.append(claims.trend(f"λ_max of the weight Hessian ({split}) rises with batch size", "§2, Tables 1/7",
                                     ok["batch_size"], ok[f"lambda_theta_{split}"], +1))
    for split in ("train", "test"):
        for tag in ("a", "b"):
            if f"adv_{tag}_{split}" in ok:
                rows.append(claims.trend(f"adversarial accuracy at ε_{tag} ({split}) falls with batch size",
                                         "§3.3, Tables 1/7", ok["batch_size"], ok[f"adv_{tag}_{split}"], -1))
    if len(spectra):
        rows += _spectrum_claims(spectra)
    if "test_acc" in ok and len(ok) >= 2:
        best = ok["test_acc"].max()
        last = ok.loc[ok["batch_size"].idxmax(), "test_acc"]
        rows.append(claims.claim("test accuracy eventually degrades with batch size", "§2, Tables 1/7",
                                 "acc(B_max) − max acc", float(last - best), bool(last < best)))
    if any(c.startswith("ref_") for c in ok):
        rows.append(_same_ordering_claim(ok))
    if layers is not None and len(layers) and layers["batch_size"].nunique() >= 2:
        top = layers[layers["rank"] == 1].pivot(index="layer", columns="batch_size", values="eigenvalue")
        share = float((top[top.columns.max()] > top[top.columns.min()]).mean())
        rows.append(claims.claim("the largest batch is sharper in most layers (top eigenvalue of each layer's "
                                 "block, train)", "§2, per layer (ours)", "share of layers", share, share > 0.5))
    rows += [_untracked_claim(ok, split) for split in ("train", "test")
             if {f"lambda_x_{split}", f"grad_x_{split}", f"adv_a_{split}"} <= set(ok)]
    return claims.table(rows)


def _untracked_claim(ok: pd.DataFrame, split: str) -> dict:
    """§8's claim 7: λ_x and ‖∇_x J‖ do not track adversarial accuracy. It holds if some batch size's
    model has both a smaller λ_x and a smaller ‖∇_x J‖ than another's, yet a lower accuracy under
    attack at ε_a (the paper: C1 at B = 512 against B = 16); the value counts such pairs (nan from
    fewer than two batch sizes)."""
    text = (f"λ_x and ‖∇_x J‖ do not track adversarial accuracy ({split}, ε_a)", "§3.3, Tables 1/7",
            "pairs less robust despite smaller λ_x and ‖∇_x J‖")
    if len(ok) < 2:
        return claims.claim(*text, float("nan"), None)
    lam, grad, adv = (ok[f"{c}_{split}"].to_numpy(float) for c in ("lambda_x", "grad_x", "adv_a"))
    pairs = sum(bool(lam[i] < lam[j] and grad[i] < grad[j] and adv[i] < adv[j])
                for i in range(len(ok)) for j in range(len(ok)))
    return claims.claim(*text, float(pairs), pairs > 0)


def _spectrum_claims(spectra: pd.DataFrame) -> list[dict]:
    s = spectra[spectra["split"] == "train"]
    bmin, bmax = s["batch_size"].min(), s["batch_size"].max()
    lo = s[s["batch_size"] == bmin].set_index("rank")["eigenvalue"]
    hi = s[s["batch_size"] == bmax].set_index("rank")["eigenvalue"]
    frac = float((hi > lo.reindex(hi.index)).mean())
    top = spectra.groupby(["batch_size", "split"])["eigenvalue"].min()
    return [claims.claim("the whole top spectrum shifts up (largest vs smallest batch, train)", "Fig. 1",
                         "share of ranks larger", frac, frac > 0.5),
            claims.claim("no saddle at convergence: all computed top eigenvalues are positive", "§2, Fig. 4",
                         "smallest computed eigenvalue", float(top.min()), bool((top > 0).all()))]


def _same_ordering_claim(ok: pd.DataFrame) -> dict:
    """§3.3: the paper "did not see any difference with FGSM-10 attack" (Tables 1/2): the batch-size
    ordering of adversarial accuracy under this page's attack against FGSM's, per split and radius
    (Spearman ρ over batch sizes), and whether both fall with the batch size; unchecked from fewer
    than three batch sizes, where ρ is undefined."""
    text = ("no difference from FGSM: the same batch-size ordering of adversarial accuracy, and both "
            "fall with the batch size", "§3.3, Tables 1/2", "smallest Spearman ρ with FGSM's ordering")
    if len(ok) < 3:
        return claims.claim(*text, float("nan"), None)
    rhos, both_fall = [], True
    for col in (c for c in ok if c.startswith("adv_")):
        ref = "ref_" + col[4:]
        rhos.append(claims.spearman(ok[col], ok[ref]))
        both_fall &= claims.spearman(ok["batch_size"], ok[col]) < 0 and claims.spearman(ok["batch_size"], ok[ref]) < 0
    worst = float(min(rhos))
    return claims.claim(*text, worst, bool(worst >= 0.8 and both_fall))
