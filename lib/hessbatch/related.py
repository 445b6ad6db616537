"""Chapters 7 and 8: our experiments in the settings of the two related papers, first-order
adversaries after Deng et al. 2020 (``hessbatch.pga``) and local instability across training
runs after Datta et al. 2023 (``hessbatch.stability``). Like ``hessbatch.experiments``, one
study function per chapter returning tidy tables, everything through the result store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import analysis, claims
from .errors import check, check_options
from .experiments import _bar, _subsample
from .models import predict
from .store import Store
from .train import Run, config_key, train


# ------------------------------------------------------------------ chapter: first-order adversaries (Deng et al.)
def _data_subset(dataset, data_root, n_train, n_test, seed=0):
    from .data import load_dataset

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
    from . import pga
    from .data import check_name

    store = store or Store()
    sweep = {"seed": 0, **sweep}
    check_options(pga.pga_sweep, sweep, "pga_sweep", own=("radii",))
    t = {"dataset": "mnist5k", "n_train": 2000, "n_test": 500, **(training or {})}
    kw = {k: v for k, v in t.items() if k not in ("dataset", "n_train", "n_test")}
    if training:
        check_options(pga.scaled_adversarial_training, t, "pga_training", own=("dataset", "n_train", "n_test"))
        check_name(t["dataset"])
    entry = analysis.cached(store, "pga-sweep", sweep, lambda: (
        {"runs.csv": pga.pga_sweep(**sweep, progress=progress)}, {}))
    runs = entry.csv("runs.csv")
    curves = None
    if training:
        def compute():
            data = _data_subset(t["dataset"], data_root, t["n_train"], t["n_test"])
            return {"curves.csv": pga.scaled_adversarial_training(*data, **kw, progress=progress)}, {}

        curves = analysis.cached(store, "pga-training", t, compute).csv("curves.csv")
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


# ------------------------------------------------------------------ chapter: local instability (Datta et al.)
def stability_configs(model, dataset, batch_sizes, train_options=None, seeds=6, mitigations=None,
                      mitigation_batch=None, snapshot_every=0) -> list[tuple[str, int, int, dict]]:
    """(group, batch size, seed, configuration) of every run: ``seeds`` runs per batch size and
    per mitigation (training options added at ``mitigation_batch``); seed 0 keeps snapshots.

    A mitigation ``{sample_smoothing: alpha}`` (our reading of TGTSS) smooths each training
    label by the temporal label entropy of the guide run, seed 0 at ``mitigation_batch``."""
    check(isinstance(seeds, int) and seeds >= 2, f"instability needs at least 2 seeds, got {seeds!r}")
    base = {**(train_options or {}), "model": model, "dataset": dataset}
    mb = mitigation_batch or batch_sizes[0]

    def config(b, s, extra=None):
        return {**base, **(extra or {}), "batch_size": b, "seed": s, "save_every": snapshot_every if s == 0 else 0}

    check(not mitigations or mb in batch_sizes,
          f"mitigations are compared with the plain runs at batch size {mb}: it must be one of the batch sizes "
          f"{list(batch_sizes)}")
    out = []
    groups = [(f"B={b}", b, {}) for b in batch_sizes]
    for label, opts in (mitigations or {}).items():
        opts = dict(opts)
        if "sample_smoothing" in opts:
            check(snapshot_every, f"mitigation {label!r} (sample_smoothing) is guided by the snapshots of the run "
                                  f"of seed 0 at batch size {mb}: it needs snapshot_every > 0")
            opts["sample_smoothing"] = {"guide": config_key(config(mb, 0)), "alpha": opts["sample_smoothing"]}
        groups.append((f"B={mb} + {label}", mb, opts))
    for label, b, extra in groups:
        for s in range(seeds):
            out.append((label, b, s, config(b, s, extra)))
    return out


def temporal_epochs(run: Run) -> list[int]:
    """A run's snapshot epochs from the second half of its training, before its last epoch (the
    checkpoints of its temporal label entropy, together with the final weights)."""
    last = run.result["epochs"]
    return [e for e in run.snapshot_epochs() if last / 2 < e < last]


def guided_smoothing(guide: Run, ds, alpha: float, device) -> torch.Tensor:
    """Per-training-sample label smoothing from ``guide``'s temporal label entropy on ``ds``'s
    training set (``stability.entropy_smoothing``), on ``device``."""
    from . import stability

    epochs = temporal_epochs(guide)
    check(epochs, f"the sample_smoothing guide run {guide.key} has no snapshot from the second half of its "
                  "training: train it with save_every > 0")
    check(guide.result["n_train"] == ds.n_train and guide.result["dataset_label"] == ds.label,
          f"the sample_smoothing guide run {guide.key} was trained on other data ({guide.result['dataset_label']}, "
          f"{guide.result['n_train']} samples)")
    with torch.no_grad():
        preds = [predict(guide.model(device, e), ds.x_train).argmax(1).cpu().numpy() for e in [*epochs, None]]
    alpha_i = stability.entropy_smoothing(np.stack(preds), ds.num_classes, alpha)
    return torch.as_tensor(alpha_i, dtype=torch.float32, device=device)


def _probs(run: Run, store, device, data_root, epoch=None) -> np.ndarray:
    def compute():
        x, y = analysis.run_data(run, data_root).split("test")
        p = torch.softmax(predict(run.model(analysis.resolve_device(device), epoch), x), 1).cpu()
        return {"probs.csv": pd.DataFrame(p.double().numpy()).rename(columns=lambda c: f"p{c}")}, {}

    entry = analysis.cached(store, "predictions", {"run": run.key, "split": "test", "epoch": epoch}, compute)
    check("probs.csv" not in entry.omitted(),
          f"the test-set predictions of run {run.key} were left out of {store.root} (an export keeps chapter 8's "
          "summary, not the predictions it was computed from)")
    return entry.csv("probs.csv").to_numpy()


def stability_study(model, dataset, batch_sizes, train_options=None, seeds=6, mitigations=None, mitigation_batch=None,
                    snapshot_every=0, ensemble_k=3, neighbours=5, hessian_samples=None, seed=0, show=12, store=None,
                    device="cpu", data_root=None, progress=True) -> dict:
    """Datta et al. 2023 on our models: per-sample label entropy across seeds, churn, clustering
    of unstable samples, ensembles, temporal LE of one run, and each run's top Hessian eigenvalue.

    The measures are stored as one summary entry (``stability``), so a store exported without the
    per-run predictions still renders the chapter: ``samples`` holds the unstable test samples
    (LE > 0) of every group, ``top`` and ``images`` the ``show`` of highest LE in the first group."""
    store = store or Store()
    check(isinstance(ensemble_k, int) and ensemble_k >= 1, f"ensemble_k must be an integer >= 1, got {ensemble_k!r}")
    check(isinstance(neighbours, int) and neighbours >= 1, f"neighbours must be an integer >= 1, got {neighbours!r}")
    check(isinstance(show, int) and show >= 0, f"show must be an integer >= 0, got {show!r}")
    specs = stability_configs(model, dataset, batch_sizes, train_options, seeds, mitigations, mitigation_batch,
                              snapshot_every)
    runs = [(g, b, s, train(cfg, store, device=device, data_root=data_root, progress=progress))
            for g, b, s, cfg in _bar(specs, "training", progress)]
    plain = [f"B={b}" for b in batch_sizes]
    config = {"runs": [[g, b, s, r.key] for g, b, s, r in runs], "plain": plain, "ensemble_k": ensemble_k,
              "neighbours": neighbours, "hessian_samples": hessian_samples, "seed": seed, "show": show}
    entry = analysis.cached(store, "stability", config, lambda: _stability_measures(
        runs, plain, ensemble_k, neighbours, hessian_samples, seed, show, store, device, data_root))
    meta = entry.json()
    table, per_run = entry.csv("groups.csv"), entry.csv("runs.csv")
    pixels = entry.csv("images.csv")
    images = pixels.drop(columns="sample").to_numpy(np.float32).reshape(-1, *meta["image_shape"]) / 255
    images = np.moveaxis(images, 1, -1).squeeze(-1) if images.shape[1] == 1 else np.moveaxis(images, 1, -1)
    out = {"groups": table, "runs": per_run, "samples": entry.csv("samples.csv"), "top": entry.csv("top.csv"),
           "images": images, "sanity": meta["sanity"], "used": [r for *_, r in runs]}
    out["claims"], out["reported"] = stability_claims(table, per_run, meta["sanity"], plain, meta["batch_change"])
    return out


def _stability_measures(runs, plain, ensemble_k, neighbours, hessian_samples, seed, show, store, device, data_root):
    """The files and metadata of a ``stability`` entry (see :func:`stability_study`)."""
    from . import stability

    x_test, y_test = test_inputs(runs[0][3], data_root)
    near = stability.nearest_neighbours(x_test, neighbours)
    per_run, per_sample, groups, group_preds = [], [], [], {}
    for g, items in pd.Series(runs).groupby([r[0] for r in runs], sort=False):
        items = list(items)
        probs = np.stack([_probs(r, store, device, data_root) for *_, r in items])
        preds = group_preds[g] = probs.argmax(2)
        le = stability.label_entropy(preds)
        unstable = le > 0
        nb = le[near].mean(1)
        disagree = stability.sample_disagreement(preds)
        ens = stability.ensemble_churn(probs, ensemble_k, seed=seed) if len(items) >= 2 * ensemble_k else np.array([])
        acc = (preds == y_test).mean(1)
        row = {"group": g, "batch_size": items[0][1], "runs": len(items), "acc_mean": acc.mean(), "acc_std": acc.std(ddof=1),
               "unstable": unstable.mean(), "mean_le": le.mean(), "churn": disagree.mean(),
               "ensemble_churn": ens.mean() if len(ens) else np.nan}
        row["unstable_lo"], row["unstable_hi"] = stability.bootstrap_ci(unstable.astype(float), seed=seed)
        row["churn_lo"], row["churn_hi"] = stability.churn_ci(preds, seed=seed)
        if unstable.any() and (~unstable).any():
            row["nb_le_unstable"], row["nb_le_stable"] = nb[unstable].mean(), nb[~unstable].mean()
            row["nb_p"] = stability.permutation_test(nb[unstable], nb[~unstable], n=5000, seed=seed)
        first = items[0][3]
        epochs = temporal_epochs(first)
        if epochs and unstable.any() and (~unstable).any():
            temporal = np.stack([_probs(first, store, device, data_root, e).argmax(1) for e in epochs] + [preds[0]])
            row["temporal_auroc"] = stability.auroc(stability.label_entropy(temporal), unstable)
            row["temporal_checkpoints"] = len(temporal)
        groups.append(row)
        for i, ((_, b, s, r), a) in enumerate(zip(items, acc)):
            spec = analysis.spectrum(r, "train", k=1, tol=1e-3, subsample=_subsample(r, hessian_samples, "train"),
                                     keep_vectors=0, store=store, device=device, data_root=data_root)
            others = [stability.churn(preds[i], preds[j]) for j in range(len(preds)) if j != i]
            per_run.append({"group": g, "batch_size": b, "seed": s, "test_acc": a, "run": r.key,
                            "lambda_max": spec.json()["lambda_max"], "epochs": r.result["epochs"],
                            "churn_vs_others": float(np.mean(others))})
        per_sample.append(pd.DataFrame({"group": g, "sample": np.arange(len(le)), "label": y_test, "le": le,
                                        "neighbour_le": nb, "majority": [np.bincount(c).argmax() for c in preds.T]}))
    table = pd.DataFrame(groups)
    churn = table.set_index("group")["churn"]

    def change(group, base):
        return (churn[group] - churn[base], *stability.churn_difference_ci(group_preds[group], group_preds[base],
                                                                           seed=seed))

    for i, row in table[~table["group"].isin(plain)].iterrows():
        # its plain group exists: stability_configs checks the mitigation batch
        table.loc[i, ["churn_change", "churn_change_lo", "churn_change_hi"]] = change(row["group"],
                                                                                      f"B={row['batch_size']}")
    by_batch = table[table["group"].isin(plain)].sort_values("batch_size")["group"].tolist()
    batch_change = [by_batch[-1], by_batch[0], *change(by_batch[-1], by_batch[0])] if len(by_batch) >= 2 else None
    samples = pd.concat(per_sample, ignore_index=True)
    top = samples[samples["group"] == table["group"].iloc[0]].nlargest(show, "le")
    pixels = np.rint(x_test[top["sample"].to_numpy()].reshape(len(top), x_test[0].size) * 255).astype(np.uint8)
    images = pd.concat([top[["sample"]].reset_index(drop=True),
                        pd.DataFrame(pixels, columns=[f"x{i}" for i in range(pixels.shape[1])])], axis=1)
    sanity = _stability_sanity(runs[0][3], store, device, data_root)
    files = {"groups.csv": table, "runs.csv": pd.DataFrame(per_run), "samples.csv": samples[samples["le"] > 0],
             "top.csv": top, "images.csv": images}
    return files, {"sanity": sanity, "batch_change": batch_change, "image_shape": list(x_test.shape[1:])}


def test_inputs(run: Run, data_root=None) -> tuple[np.ndarray, np.ndarray]:
    """A run's test inputs and labels as arrays (for showing samples)."""
    return tuple(t.numpy() for t in analysis.run_data(run, data_root).split("test"))


def _stability_sanity(run: Run, store, device, data_root) -> dict:
    """Train ``run``'s configuration again from scratch (a temporary store) and compare predictions."""
    import tempfile

    from . import stability

    def compute():
        with tempfile.TemporaryDirectory() as tmp:
            again = train(run.config.to_dict(), Store(tmp), device=device, data_root=data_root, progress=False)
            x, _ = analysis.run_data(run, data_root).split("test")
            first, second = run.model(), again.model()
            with torch.no_grad():
                a, b = first(x).argmax(1).numpy(), second(x).argmax(1).numpy()
            same = all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
        le = stability.label_entropy(np.stack([a, b] * 3))
        return {}, {"max_le": float(le.max()), "identical_weights": bool(same), "runs": 6}

    return analysis.cached(store, "stability-sanity", {"run": run.key}, compute).json()


def stability_claims(groups: pd.DataFrame, runs: pd.DataFrame, sanity: dict, batch_groups: list[str],
                     batch_change: tuple | None = None):
    """The asserted checks and the reported numbers of chapter 8. ``batch_change`` is
    (largest batch's group, smallest's, churn difference, lo, hi)."""
    src = "Datta et al. 2023"
    rows = [claims.claim("label entropy is 0 for every sample when every run is identical (same seed, retrained)",
                         "sanity check", "max LE", sanity["max_le"], sanity["max_le"] == 0 and sanity["identical_weights"])]
    g0 = groups.iloc[0]
    rows.append(claims.claim(f"retraining with another seed changes predictions at equal accuracy ({g0['group']})",
                             f"{src}, abstract", "share of test samples with LE > 0", g0["unstable"],
                             bool(g0["unstable"] > 0 and g0["churn"] > 0 and g0["acc_std"] < 0.01)))
    nb_p, auc = g0.get("nb_p", np.nan), g0.get("temporal_auroc", np.nan)
    rows.append(claims.claim("unstable samples are clustered: their neighbours are unstable too",
                             f"{src}, abstract", "permutation p", nb_p,
                             bool(pd.notna(nb_p) and g0["nb_le_unstable"] > g0["nb_le_stable"] and nb_p < 0.05)))
    rows.append(claims.claim("label entropy across one run's checkpoints predicts instability across runs",
                             f"{src}, abstract", "AUROC", auc, bool(pd.notna(auc) and auc > 0.6)))
    ratio = g0["ensemble_churn"] / g0["churn"] if g0["churn"] > 0 else np.nan
    rows.append(claims.claim("ensembling (the gold standard) reduces churn", f"{src}, abstract",
                             "ensemble churn / single churn", ratio, bool(pd.notna(ratio) and ratio < 1)))
    reported = []
    plain = groups[groups["group"].isin(batch_groups)].set_index("batch_size")
    for _, g in groups[~groups["group"].isin(batch_groups)].iterrows():
        base = plain.loc[g["batch_size"]]
        gain = base["churn"] - base["ensemble_churn"]
        reported.append({"quantity": f"share of the ensembling gain in churn recovered by {g['group']}",
                         "value": (base["churn"] - g["churn"]) / gain if gain > 0 else np.nan})
        if "churn_change" in g and pd.notna(g["churn_change"]):
            reported.append({"quantity": f"churn of {g['group']} minus churn of {base['group']} "
                                         "(95% interval over runs and samples)",
                             "value": g["churn_change"], "lo": g["churn_change_lo"], "hi": g["churn_change_hi"]})
    batch = runs[runs["group"].isin(batch_groups)]
    reported.append({"quantity": "Spearman ρ(batch size, top Hessian eigenvalue) over runs",
                     "value": claims.spearman(batch["batch_size"], batch["lambda_max"])})
    bg = groups[groups["group"].isin(batch_groups)].sort_values("batch_size")
    reported.append({"quantity": f"share of unstable samples, largest minus smallest batch ({bg['group'].iloc[-1]} − "
                                 f"{bg['group'].iloc[0]})", "value": bg["unstable"].iloc[-1] - bg["unstable"].iloc[0]})
    if batch_change is not None:
        large, small, value, lo, hi = batch_change
        reported.append({"quantity": f"churn of {large} minus churn of {small} (95% interval over runs and samples)",
                         "value": value, "lo": lo, "hi": hi})
    reported.append({"quantity": "Spearman ρ(batch size, share of unstable samples) over batch sizes (≥ 3 sizes)",
                     "value": claims.spearman(bg["batch_size"], bg["unstable"])})
    return claims.table(rows), pd.DataFrame(reported, columns=["quantity", "value", "lo", "hi"])


def late_training_sentence(reported: pd.DataFrame) -> str:
    """The last epoch's rank correlations with the input scale c, as prose for chapter 7."""
    late = reported[reported["case"].str.startswith("training, epoch")]
    if late.empty:
        return "no training curves were computed"
    parts = [f"{q.removeprefix('Spearman ')} = {v:+.2f} (p = {p:.2g})" for q, v, p in
             zip(late["quantity"], late["value"], late["p"])]
    return f"at {late['case'].iloc[0].removeprefix('training, ')}: " + "; ".join(parts)
