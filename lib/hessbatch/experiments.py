"""One function per chapter of the book: runs (or loads from the store) everything a
chapter shows and returns tidy ``pandas`` tables. Notebooks only call these and plot.

Every training run, spectrum and attack goes through the result store, so chapters that
share runs (the batch-size sweep feeds the landscape chapter, say) compute them once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import analysis, attacks, claims, hessian
from .errors import check
from .robust import table8_configs
from .store import Store
from .train import Run, config_key, train


def _bar(items, desc, progress):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="run", leave=False)


def _subsample(run: Run, size: int | None, split: str) -> int | None:
    n = run.result["n_train"] if split == "train" else run.result["n_test"]
    return size if size and size < n else None


def sweep_configs(model, dataset, batch_sizes, train_options=None, seed=0) -> dict[int, dict]:
    """One training configuration per batch size, same conditions otherwise."""
    return {b: {**(train_options or {}), "model": model, "dataset": dataset, "batch_size": b, "seed": seed}
            for b in batch_sizes}


def sweep_runs(model, dataset, batch_sizes, train_options=None, seed=0, store=None, device="cpu", data_root=None,
               progress=True) -> dict[int, Run]:
    """One training run per batch size, same conditions otherwise."""
    store = store or Store()
    return {b: train(cfg, store, device=device, data_root=data_root, progress=progress)
            for b, cfg in sweep_configs(model, dataset, batch_sizes, train_options, seed).items()}


def dynamics_options(train_options, save_every, adversarial) -> dict:
    return {**(train_options or {}), "save_every": save_every, "grad_norm": True, "adversarial": adversarial}


def ori_config(model, dataset, base_train, seed=0) -> dict:
    return {**base_train, "model": model, "dataset": dataset, "seed": seed}


def robust_config(ori: dict, ori_key: str, attack: str, eps: float, robust_epochs: int, robust_lr) -> dict:
    return {**ori, "init_from": ori_key, "max_epochs": robust_epochs, "target_loss": None,
            "lr": robust_lr or ori.get("lr", 0.01), "save_every": 0, "grad_norm": False,
            "adversarial": {"attack": attack, "eps": eps}}


# ------------------------------------------------------------------ chapter: batch size
def batch_size_study(model, dataset, batch_sizes, train_options=None, seed=0, k=20, tol=1e-4, eps=(0.02, 0.01),
                     attack="fgsm", hessian_samples=None, curvature_samples=None, store=None, device="cpu",
                     data_root=None, progress=True) -> dict:
    """Tables 1/2/7 and Fig. 1: accuracy, weight and input curvature, adversarial accuracy per batch size."""
    store = store or Store()
    runs = sweep_runs(model, dataset, batch_sizes, train_options, seed, store, device, data_root, progress)
    rows, spectra = [], []
    for b, run in _bar(list(runs.items()), "curvature", progress):
        r = run.result
        row = {"batch_size": b, "status": r["status"], "epochs": r["epochs"], "final_train_loss": r["train_loss"],
               "train_acc": r["train_acc"], "test_acc": r["test_acc"], "run": run.key}
        if r["status"] == "diverged":
            rows.append(row)
            continue
        for split in ("train", "test"):
            spec = analysis.spectrum(run, split, k=k, tol=tol, subsample=_subsample(run, hessian_samples, split),
                                     store=store, device=device, data_root=data_root, progress=progress)
            ev = spec.csv("eigenvalues.csv")
            spectra += [{"batch_size": b, "split": split, "rank": int(i), "eigenvalue": float(v)}
                        for i, v in zip(ev["rank"], ev["eigenvalue"])]
            row[f"lambda_theta_{split}"] = float(ev["eigenvalue"].iloc[0])
            row[f"n_hvp_{split}"] = spec.json()["n_hvp"]
            ic = analysis.input_curvature(run, split, limit=curvature_samples, store=store, device=device,
                                          data_root=data_root).json()
            row[f"lambda_x_{split}"], row[f"grad_x_{split}"] = ic["lambda_max"], ic["grad_norm"]
            for tag, e in zip(("a", "b"), eps):
                acc = analysis.adversarial_accuracy(run, attack, e, split, limit=curvature_samples, store=store,
                                                    device=device, data_root=data_root).json()
                row[f"adv_{tag}_{split}"] = acc["accuracy"]
        rows.append(row)
    table = pd.DataFrame(rows)
    return {"table": table, "spectra": pd.DataFrame(spectra), "claims": batch_size_claims(table, pd.DataFrame(spectra)),
            "used": list(runs.values())}


def batch_size_claims(table: pd.DataFrame, spectra: pd.DataFrame) -> pd.DataFrame:
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
        s = spectra[spectra["split"] == "train"]
        bmin, bmax = s["batch_size"].min(), s["batch_size"].max()
        lo = s[s["batch_size"] == bmin].set_index("rank")["eigenvalue"]
        hi = s[s["batch_size"] == bmax].set_index("rank")["eigenvalue"]
        frac = float((hi > lo.reindex(hi.index)).mean())
        rows.append(claims.claim("the whole top spectrum shifts up (largest vs smallest batch, train)", "Fig. 1",
                                 "share of ranks larger", frac, frac > 0.5))
        top = spectra.groupby(["batch_size", "split"])["eigenvalue"].min()
        rows.append(claims.claim("no saddle at convergence: all computed top eigenvalues are positive", "§2, Fig. 4",
                                 "smallest computed eigenvalue", float(top.min()), bool((top > 0).all())))
    if "test_acc" in ok and len(ok) >= 2:
        best = ok["test_acc"].max()
        last = ok.loc[ok["batch_size"].idxmax(), "test_acc"]
        rows.append(claims.claim("test accuracy eventually degrades with batch size", "§2, Tables 1/7",
                                 "acc(B_max) − max acc", float(last - best), bool(last < best)))
    return claims.table(rows)


def published_comparison(table: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per quantity, a (paper, ours) column pair per batch size both share; all of the
    paper's batch sizes if there is no shared one."""
    cols = [c for c in published.columns if c in table.columns and c != "batch_size"]
    pub, ours = published.set_index("batch_size"), table.set_index("batch_size")
    shared = sorted(set(pub.index) & set(ours.index))
    rows = []
    for col in cols:
        row = {"quantity": col}
        for b in shared or sorted(pub.index):
            row[f"B={b} paper"] = pub.loc[b, col]
            if shared:
                row[f"B={b} ours"] = ours.loc[b, col]
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ chapter: landscapes
def landscape_study(runs: dict[int, Run], radius=0.5, points=21, plane_batch_sizes=None, plane_points=11,
                    store=None, device="cpu", data_root=None, progress=True) -> dict:
    """Fig. 2/7 (1-D along the dominant eigenvector, every batch size) and Fig. 3 (2-D, chosen batch sizes)."""
    store = store or Store()
    curves, surfaces = [], []
    for b, run in _bar(list(runs.items()), "landscape", progress):
        if run.status == "diverged":
            continue
        c = analysis.landscape_1d(run, radius, points, store=store, device=device, data_root=data_root)
        curves.append(c.csv("curve.csv").assign(batch_size=b, lambda_max=c.json()["lambda"]))
    for b in plane_batch_sizes or []:
        s = analysis.landscape_2d(runs[b], radius, plane_points, store=store, device=device, data_root=data_root)
        surfaces.append(s.csv("surface.csv").assign(batch_size=b))
    curves = pd.concat(curves, ignore_index=True)
    rows = []
    for split in ("train", "test"):
        sharp = curves[curves["split"] == split].groupby("batch_size").apply(
            lambda c: _rise(c), include_groups=False)
        rows.append(claims.trend(f"the {split} loss rises faster along v₁ for larger batches", "Fig. 2/7",
                                 sharp.index, sharp.values, +1))
    return {"curves": curves, "surfaces": pd.concat(surfaces, ignore_index=True) if surfaces else pd.DataFrame(),
            "claims": claims.table(rows), "used": list(runs.values())}


def _rise(curve: pd.DataFrame) -> float:
    """Mean loss increase at the ends of a 1-D curve over its value at 0."""
    c = curve.sort_values("alpha")
    at0 = c.loc[(c["alpha"]).abs().idxmin(), "loss"]
    return float((c["loss"].iloc[0] + c["loss"].iloc[-1]) / 2 - at0)


# ------------------------------------------------------------------ chapter: dynamics
def dynamics_study(model, dataset, batch_sizes, train_options=None, adversarial=None, save_every=1, k=1,
                   tol=1e-3, hessian_samples=None, seed=0, store=None, device="cpu", data_root=None,
                   progress=True) -> dict:
    """Fig. 4: λ_max of the weight Hessian and the full gradient norm after each saved epoch,
    for each batch size, plain and (if ``adversarial``) robust training."""
    store = store or Store()
    methods = [("plain", None)] + ([("robust", adversarial)] if adversarial else [])
    rows, used = [], []
    for method, adv in methods:
        opts = dynamics_options(train_options, save_every, adv)
        runs = sweep_runs(model, dataset, batch_sizes, opts, seed, store, device, data_root, progress)
        used += list(runs.values())
        for b, run in runs.items():
            if run.status == "diverged":
                continue
            hist = run.history.set_index("epoch")
            for ep in _bar([0, *run.snapshot_epochs()], f"λ_max B={b} {method}", progress):
                spec = analysis.spectrum(run, "train", k=k, tol=tol, epoch=ep, keep_vectors=0,
                                         subsample=_subsample(run, hessian_samples, "train"), store=store,
                                         device=device, data_root=data_root, progress=progress)
                state = analysis.initial_state(run, store, device, data_root) if ep == 0 else hist.loc[ep]
                rows.append({"batch_size": b, "method": method, "epoch": ep,
                             "lambda_max": float(spec.csv("eigenvalues.csv")["eigenvalue"].iloc[0]),
                             "grad_norm": float(state["grad_norm"]), "train_loss": float(state["train_loss"])})
    df = pd.DataFrame(rows)
    return {"trajectory": df, "claims": dynamics_claims(df, bool(adversarial)), "used": used}


def dynamics_claims(df: pd.DataFrame, robust: bool) -> pd.DataFrame:
    """Fig. 4's claims on a trajectory (batch_size, method, epoch, lambda_max, grad_norm): the larger
    batch ends sharper; its λ_max grows from the first point (the initialization, if epoch 0 is in
    the trajectory) to the last, and, separately, from the first saved epoch on; it is not at a
    stationary point (its final gradient norm exceeds the smallest batch's, which converges);
    robust training ends flatter."""
    checks = []
    if not len(df):
        return claims.table(checks)
    last = df.sort_values("epoch").groupby(["method", "batch_size"]).tail(1)
    plain = last[last["method"] == "plain"].sort_values("batch_size")
    lam, grad = plain["lambda_max"].to_numpy(), plain["grad_norm"].to_numpy()
    checks.append(claims.trend("final λ_max is larger for the larger batch", "Fig. 4",
                               plain["batch_size"], plain["lambda_max"], +1) if len(plain) >= 3 else
                  claims.claim("final λ_max is larger for the larger batch", "Fig. 4", "λ(B_max) / λ(B_min)",
                               float(lam[-1] / lam[0]), bool(lam[-1] > lam[0])))
    big = df[(df["method"] == "plain") & (df["batch_size"] == plain["batch_size"].iloc[-1])].sort_values("epoch")
    lams, epochs = big["lambda_max"].to_numpy(), big["epoch"].to_numpy()
    growth = float(lams[-1] / lams[0])
    span = "initialization to last epoch" if epochs[0] == 0 else "first to last snapshot"
    checks.append(claims.claim(f"λ_max grows during large-batch training ({span})", "Fig. 4",
                               f"λ(epoch {epochs[-1]}) / λ(epoch {epochs[0]}) at B_max", growth, growth > 1))
    if epochs[0] == 0:
        first = epochs[min(1, len(epochs) - 1)]
        later = float(lams[-1] / lams[1]) if len(epochs) >= 3 else float("nan")
        checks.append(claims.claim(f"λ_max still grows after the first saved epoch (epoch {first} to {epochs[-1]})",
                                   "Fig. 4", f"λ(epoch {epochs[-1]}) / λ(epoch {first}) at B_max", later, later > 1))
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


# ------------------------------------------------------------------ chapter: saddle-free inner problem
def _random_net(kind: str, d: int, classes: int, width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "relu-cnn-bn":
        side = int(round(d ** 0.5))
        m = nn.Sequential(nn.Unflatten(1, (1, side, side)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * (side // 2) ** 2, width), nn.ReLU(), nn.Linear(width, classes))
        with torch.no_grad():
            m[3].running_mean.uniform_(-0.5, 0.5)
            m[3].running_var.uniform_(0.5, 2.0)
    else:
        act = {"relu-mlp": nn.ReLU, "tanh-mlp": nn.Tanh, "softplus-mlp": nn.Softplus}[kind]
        m = nn.Sequential(nn.Linear(d, width), act(), nn.Linear(width, width), act(), nn.Linear(width, classes))
    return m.double().eval()


def saddle_free_study(run: Run | None = None, n_samples=10, random_nets=("relu-mlp", "relu-cnn-bn", "tanh-mlp"),
                      d=64, classes=10, width=64, n_random=20, rank_tol=1e-7, store=None, data_root=None,
                      seed=0) -> dict:
    """Theorem 1 and Prop. 2: explicit input-Hessian spectra of a trained model and of random nets.

    Returns per sample the smallest and largest eigenvalue and the numerical rank, with the
    number of classes for reference. An eigenvalue counts as zero when it lies within the
    round-off floor δ = 64·d·ε·‖J‖²_F (J = ∂z/∂x, ε the float64 machine epsilon) or below
    ``rank_tol``·λ_max: for confidently classified samples diag(p) − ppᵀ is a difference of
    nearly equal terms, so λ_max itself can be far below the round-off of the computation.
    """
    rows = []

    def add(label, model, x, y, c):
        ev = torch.linalg.eigvalsh(hessian.input_hessian(model, x, y))
        for i in range(len(y)):
            xi = x[i:i + 1].detach().clone().requires_grad_(True)
            out = model(xi)
            jac = torch.stack([torch.autograd.grad(out[0, j], xi, retain_graph=True)[0].flatten() for j in range(c)])
            floor = 64 * xi.numel() * torch.finfo(torch.float64).eps * float((jac ** 2).sum())
            lmax = float(ev[i, -1])
            zero = max(rank_tol * abs(lmax), floor)
            rows.append({"model": label, "sample": i, "lambda_min": float(ev[i, 0]), "lambda_max": lmax,
                         "floor": floor, "psd": bool(ev[i, 0] >= -zero), "ratio": float(ev[i, 0]) / max(abs(lmax), floor),
                         "rank": int((ev[i].abs() > zero).sum()), "classes": c, "spectrum": ev[i].tolist()})

    if run is not None:
        model = run.model().double()
        x, y = analysis.run_data(run, data_root).split("test")
        add(f"trained {run.config.model} (ReLU)", model, x[:n_samples].double(), y[:n_samples],
            run.result["model_spec"]["num_classes"])
    g = torch.Generator().manual_seed(seed)
    for kind in random_nets:
        model = _random_net(kind, d, classes, width, seed)
        x = torch.rand(n_random, d, generator=g, dtype=torch.float64) * 2 - 0.5
        y = torch.randint(0, classes, (n_random,), generator=g)
        add(f"random {kind}", model, x, y, classes)
    df = pd.DataFrame(rows)
    return {"samples": df, "claims": saddle_claims(df)}


def saddle_claims(df: pd.DataFrame) -> pd.DataFrame:
    checks = []
    for label, grp in df.groupby("model", sort=False):
        psd, low = bool(grp["psd"].all()), bool((grp["rank"] <= grp["classes"]).all())
        if "relu" in label.lower():
            checks.append(claims.claim(f"{label}: input Hessian is PSD", "Theorem 1",
                                       "min λ_min / max(λ_max, floor)", float(grp["ratio"].min()), psd))
            checks.append(claims.claim(f"{label}: rank ≤ number of classes", "Proposition 2", "max rank",
                                       float(grp["rank"].max()), low))
        else:
            checks.append(claims.claim(f"{label}: counter-example, the PSD property fails without ReLU",
                                       "Assumption 1", "min λ_min / max(λ_max, floor)", float(grp["ratio"].min()),
                                       not psd))
    return claims.table(checks)


# ------------------------------------------------------------------ chapter: adversarial training
EPS_KEYS = {"fgsm": "linf", "fgsm10": "linf", "fhsm": "linf", "grad": "l2", "hess": "l2"}


def adversarial_training_study(model, dataset, base_train, eps_linf, eps_l2, robust_epochs=5, robust_lr=None,
                               attack_names=attacks.ATTACKS, test_limit=None, k=20, tol=1e-4, hessian_samples=None,
                               subsample_sizes=(), interpolation_points=21, seed=0, store=None, device="cpu",
                               data_root=None, progress=True) -> dict:
    """Tables 3/4, Fig. 5/10/11 (interpolation) and Fig. 6/12 (full vs subsampled spectra)."""
    store = store or Store()
    eps = {"linf": eps_linf, "l2": eps_l2}
    base = ori_config(model, dataset, base_train, seed)
    ori = train(base, store, device=device, data_root=data_root, progress=progress)
    models = {"ORI": ori}
    for name in _bar(list(attack_names), "robust training", progress):
        cfg = robust_config(base, ori.key, name, eps[EPS_KEYS[name]], robust_epochs, robust_lr)
        models[attacks.LABELS[name]] = train(cfg, store, device=device, data_root=data_root, progress=progress)
    rows = []
    for label, run in _bar(list(models.items()), "transfer attacks", progress):
        row = {"model": label, "clean": analysis.adversarial_accuracy(run, "fgsm", 0.0, limit=test_limit, store=store,
                                                                      device=device, data_root=data_root).json()["accuracy"]}
        for name in attack_names:
            row[attacks.LABELS[name]] = analysis.adversarial_accuracy(
                run, name, eps[EPS_KEYS[name]], "test", source=ori, limit=test_limit, store=store, device=device,
                data_root=data_root).json()["accuracy"]
        row["mean"] = float(np.mean([row[attacks.LABELS[n]] for n in attack_names]))
        rows.append(row)
    table = pd.DataFrame(rows)
    curves, spectra = [], []
    for label, run in models.items():
        if label != "ORI":
            c = analysis.interpolation(ori, run, interpolation_points, store=store, device=device, data_root=data_root)
            curves.append(c.csv("curve.csv").assign(robust=label))
        for size in [None, *subsample_sizes]:
            n = _subsample(run, size if size else hessian_samples, "train")
            spec = analysis.spectrum(run, "train", k=k, tol=tol, which="magnitude" if size else "largest",
                                     subsample=n, keep_vectors=0, store=store, device=device, data_root=data_root,
                                     progress=progress)
            ev = spec.csv("eigenvalues.csv")
            spectra += [{"model": label, "hessian": f"|B_H| = {size}" if size else "full", "subsample": size or 0,
                         "rank": int(r), "eigenvalue": float(v)} for r, v in zip(ev["rank"], ev["eigenvalue"])]
    curves, spectra = pd.concat(curves, ignore_index=True), pd.DataFrame(spectra)
    return {"table": table, "curves": curves, "spectra": spectra,
            "claims": adversarial_claims(table, curves, spectra, attack_names), "used": list(models.values())}


def adversarial_claims(table, curves, spectra, attack_names) -> pd.DataFrame:
    from .landscape import second_difference

    labels = [attacks.LABELS[n] for n in attack_names]
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
    flat = []
    for label, c in curves.groupby("robust"):
        flat.append(second_difference(c, 1.0) < second_difference(c, 0.0))
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


# ------------------------------------------------------------------ chapter: large-batch robust training
def large_batch_robust_study(model, dataset, base_train, batch_sizes, adversarial, warmup_epochs=5, base_batch=128,
                             seed=0, store=None, device="cpu", data_root=None, progress=True) -> dict:
    """Table 8: test accuracy of baseline, FB (linear scaling + warm-up) and robust large-batch training."""
    store = store or Store()
    check(len(batch_sizes) > 0, "batch_sizes must not be empty")
    rows, used = [], []
    recipes = table8_configs({**base_train, "model": model, "dataset": dataset, "seed": seed}, batch_sizes,
                             adversarial, warmup_epochs, base_batch)
    for method, cfg in _bar(recipes, "Table 8", progress):
        run = train(cfg, store, device=device, data_root=data_root, progress=progress)
        used.append(run)
        r = run.result
        rows.append({"batch_size": cfg["batch_size"], "method": method, "status": r["status"],
                     "test_acc": r["test_acc"] if r["status"] != "diverged" else float("nan"), "epochs": r["epochs"]})
    df = pd.DataFrame(rows)
    wide = df.pivot(index="batch_size", columns="method", values="test_acc")[["baseline", "FB", "robust"]]
    gain = (wide["robust"] - wide["baseline"])
    checks = [claims.claim("robust training beats the baseline at every batch size", "Table 8",
                           "min accuracy gain", float(gain.min()), bool((gain > 0).all())),
              claims.trend("the robust gain grows with batch size", "Table 8", wide.index, gain.values, +1)]
    return {"runs": df, "table": wide.reset_index(), "claims": claims.table(checks), "used": used}


# ------------------------------------------------------------------ chapters by name
def _chapter01(p, kw, progress):
    return batch_size_study(p["model"], p["dataset"], p["batch_sizes"], p.get("train_options"), p.get("seed", 0),
                            p.get("k", 20), p.get("tol", 1e-4), p.get("eps", (0.02, 0.01)), "fgsm",
                            p.get("hessian_samples"), p.get("curvature_samples"), progress=progress, **kw)


def _chapter02(p, kw, progress):
    runs = sweep_runs(p["model"], p["dataset"], p["batch_sizes"], p.get("train_options"), p.get("seed", 0),
                      progress=progress, **kw)
    planes = p.get("plane_batch_sizes") or [min(p["batch_sizes"]), max(p["batch_sizes"])]
    return landscape_study(runs, p.get("radius", 0.5), p.get("points", 21), planes, p.get("plane_points", 11),
                           progress=progress, **kw)


def _chapter03(p, kw, progress):
    return dynamics_study(p["model"], p["dataset"], p["dyn_batch_sizes"], p.get("dyn_train_options"),
                          p.get("adversarial"), p.get("save_every", 1), hessian_samples=p.get("hessian_samples"),
                          seed=p.get("seed", 0), progress=progress, **kw)


def _chapter04(p, kw, progress):
    store, b = kw["store"], p["batch_sizes"][0]
    run = sweep_runs(p["model"], p["dataset"], [b], p.get("train_options"), p.get("seed", 0), progress=progress,
                     **kw)[b]
    config = {"run": run.key, "n_samples": p.get("n_samples", 10), "d": p.get("d", 64),
              "n_random": p.get("n_random", 20), "seed": p.get("seed", 0)}
    entry = analysis.cached(store, "saddle", config, lambda: ({"samples.json": saddle_free_study(
        run, config["n_samples"], d=config["d"], n_random=config["n_random"], data_root=kw["data_root"],
        seed=config["seed"])["samples"].to_dict("records")}, {}))
    samples = pd.DataFrame(entry.json("samples.json"))
    return {"samples": samples, "claims": saddle_claims(samples), "used": [run]}


def _chapter05(p, kw, progress):
    return adversarial_training_study(p["model"], p["dataset"], p["base_train"], p["eps_linf"], p["eps_l2"],
                                      p.get("robust_epochs", 5), p.get("robust_lr"), test_limit=p.get("test_limit"),
                                      k=p.get("k", 20), tol=p.get("tol", 1e-4), hessian_samples=p.get("hessian_samples"),
                                      subsample_sizes=p.get("subsample_sizes", ()),
                                      interpolation_points=p.get("interpolation_points", 21), seed=p.get("seed", 0),
                                      progress=progress, **kw)


def _chapter06(p, kw, progress):
    return large_batch_robust_study(p["model"], p["dataset"], p["t8_train"], p["t8_batch_sizes"], p["adversarial"],
                                    p.get("warmup_epochs", 5), p.get("base_batch", 128), p.get("seed", 0),
                                    progress=progress, **kw)


def _chapter07(p, kw, progress):
    from .related import pga_study

    return pga_study(p["pga_sweep"], p.get("pga_training"), kw["store"], kw["data_root"], progress)


def _chapter08(p, kw, progress):
    from .related import stability_study

    return stability_study(p["model"], p["dataset"], p["stability_batch_sizes"], p.get("stability_train"),
                           p.get("seeds", 6), p.get("mitigations"), p.get("mitigation_batch"),
                           p.get("snapshot_every", 0), p.get("ensemble_k", 3), p.get("neighbours", 5),
                           p.get("hessian_samples"), p.get("seed", 0), progress=progress, **kw)


CHAPTERS = {"01": _chapter01, "02": _chapter02, "03": _chapter03, "04": _chapter04, "05": _chapter05,
            "06": _chapter06, "07": _chapter07, "08": _chapter08}


def run_chapter(chapter: str, params: dict, store: Store | None = None, device="cpu", data_root=None,
                progress: bool = False) -> dict:
    """Everything a book chapter shows, from its parameters (a profile's ``common``, chapter and
    variant entries merged, as in the notebook's parameters cell). The notebooks and
    ``hessbatch compute`` both call this, so a chapter computed on a GPU is found by the book."""
    from .errors import HessbatchError

    fn = CHAPTERS.get(chapter[:2])
    if fn is None:
        raise HessbatchError(f"no chapter {chapter!r}")
    return fn(params, {"store": store or Store(), "device": device, "data_root": data_root}, progress)


# ------------------------------------------------------------------ a profile's training runs
def profile_train_configs(params_by_chapter: dict[str, dict]) -> list[list[dict]]:
    """Every training configuration a book profile needs, in waves: the runs of a wave depend
    only on runs of earlier waves (robust continuations start from M_ORI). Used to train a
    profile on a Dask cluster before the notebooks run."""
    from .related import stability_configs

    first, second = [], []
    for name, p in params_by_chapter.items():
        model, dataset, seed = p.get("model"), p.get("dataset"), p.get("seed", 0)
        if name.startswith(("01-", "02-")):
            first += sweep_configs(model, dataset, p["batch_sizes"], p.get("train_options"), seed).values()
        elif name.startswith("04-"):
            first += sweep_configs(model, dataset, p["batch_sizes"][:1], p.get("train_options"), seed).values()
        elif name.startswith("03-"):
            for adv in [None] + ([p["adversarial"]] if p.get("adversarial") else []):
                opts = dynamics_options(p.get("dyn_train_options"), p.get("save_every", 1), adv)
                first += sweep_configs(model, dataset, p["dyn_batch_sizes"], opts, seed).values()
        elif name.startswith("05-"):
            ori = ori_config(model, dataset, p["base_train"], seed)
            first.append(ori)
            key = config_key(ori)
            eps = {"linf": p["eps_linf"], "l2": p["eps_l2"]}
            second += [robust_config(ori, key, a, eps[EPS_KEYS[a]], p.get("robust_epochs", 5), p.get("robust_lr"))
                       for a in attacks.ATTACKS]
        elif name.startswith("08-"):
            for *_, cfg in stability_configs(model, dataset, p["stability_batch_sizes"], p.get("stability_train"),
                                             p.get("seeds", 6), p.get("mitigations"), p.get("mitigation_batch"),
                                             p.get("snapshot_every", 0)):
                (second if cfg.get("sample_smoothing") else first).append(cfg)
        elif name.startswith("06-"):
            first += [cfg for _, cfg in table8_configs(
                {**p["t8_train"], "model": model, "dataset": dataset, "seed": seed}, p["t8_batch_sizes"],
                p["adversarial"], p.get("warmup_epochs", 5), p.get("base_batch", 128))]
    dedup = lambda cfgs: list({config_key(c): c for c in cfgs}.values())  # noqa: E731
    return [w for w in (dedup(first), dedup(second)) if w]


# ------------------------------------------------------------------ presentation helpers
def paper_style(table: pd.DataFrame) -> pd.DataFrame:
    """Our batch-size table in the paper's layout: 'train (test)' cells, accuracies in %."""
    out = pd.DataFrame({"B": table["batch_size"], "status": table["status"], "epochs": table["epochs"]})

    def pair(col, fmt, scale=1.0):
        tr, te = table.get(f"{col}_train"), table.get(f"{col}_test")
        if tr is None or te is None:
            return None
        return [f"{fmt.format(a * scale)} ({fmt.format(b * scale)})" if pd.notna(a) else "—" for a, b in zip(tr, te)]

    out["Acc. %"] = [f"{100 * a:.2f} ({100 * b:.2f})" if pd.notna(a) else "—"
                     for a, b in zip(table["train_acc"], table["test_acc"])]
    for col, label, fmt, scale in (("lambda_theta", "λθ_max", "{:.3g}", 1), ("lambda_x", "λx_max", "{:.3g}", 1),
                                   ("grad_x", "‖∇x J‖", "{:.3g}", 1), ("adv_a", "Acc ε_a %", "{:.2f}", 100),
                                   ("adv_b", "Acc ε_b %", "{:.2f}", 100)):
        cells = pair(col, fmt, scale)
        if cells is not None:
            out[label] = cells
    return out


def provenance(params: dict, runs: list[Run] | None = None) -> str:
    """One Markdown line: profile, data, model, device, training time of the runs (if any), commit,
    configuration."""
    from . import figures

    runs = [r for r in (runs or []) if r is not None]
    label = params.get("dataset")
    if runs:
        r = runs[0].result
        sizes = sorted({(x.result["n_train"], x.result["n_test"]) for x in runs})
        label = f"{r.get('dataset_label', label)}; used: " + ", ".join(f"{a:,} train / {b:,} test" for a, b in sizes)
    dev = sorted({r.result.get("device", "?") for r in runs}) or [params.get("device", "cpu")]
    t = sum(r.result.get("time_s", 0.0) for r in runs)
    versions = sorted({r.result.get("torch", torch.__version__) for r in runs}) or [torch.__version__]
    trained = f" · *training time* {t / 60:.1f} min" if runs else ""
    return (f"*Profile* `{params.get('profile')}` · *data* {label} · *model* `{params.get('model')}` · "
            f"*device* {', '.join(dev)}{trained} · *torch* {', '.join(versions)} · "
            f"*commit* `{figures.commit()}` · *configuration* `{figures.config_hash(params)}`")
