"""Chapter 8, local instability across training runs after Datta et al. (Findings of ACL 2023):
per-sample label entropy across seeds, churn, clustering of unstable samples, ensembles,
temporal label entropy of one run, mitigations, and each run's top Hessian eigenvalue
(``hessbatch.stability``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ... import measurements, stability
from ... import progress as progress_mod
from ...config import run_key
from ...devices import resolve_device
from ...errors import NotInStore, check
from ...evaluation import predict
from ...runs import Run
from ...sample_smoothing import temporal_epochs
from ...store import Store
from ...train import train
from .. import claims
from ...schema import integer, option
from .common import Common, Context, hessian_subsample

NAME = "08-instability"


@dataclass
class Params(Common):
    stability_batch_sizes: list = (32, 256)
    stability_train: dict | None = None
    seeds: int = 6
    mitigations: dict | None = None
    mitigation_batch: int | None = None
    snapshot_every: int = option(0, integer(0))
    ensemble_k: int = 3
    neighbours: int = 5
    hessian_samples: int | None = None


def specs(p: Params) -> list[tuple[str, int, int, dict]]:
    return stability_configs(p.model, p.dataset, p.stability_batch_sizes, p.stability_train, p.seeds, p.mitigations,
                             p.mitigation_batch, p.snapshot_every)


def train_configs(p: Params) -> list[dict]:
    return [cfg for *_, cfg in specs(p)]


def compute(p: Params, ctx: Context) -> dict:
    return stability_study(p.model, p.dataset, p.stability_batch_sizes, p.stability_train, p.seeds, p.mitigations,
                           p.mitigation_batch, p.snapshot_every, p.ensemble_k, p.neighbours, p.hessian_samples,
                           p.seed, store=ctx.store, device=ctx.device, data_root=ctx.data_root, progress=ctx.progress)


def stability_configs(model, dataset, batch_sizes, train_options=None, seeds=Params.seeds, mitigations=None,
                      mitigation_batch=None, snapshot_every=Params.snapshot_every) -> list[tuple[str, int, int, dict]]:
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
            opts["sample_smoothing"] = {"guide": run_key(config(mb, 0)), "alpha": opts["sample_smoothing"]}
        groups.append((f"B={mb} + {label}", mb, opts))
    for label, b, extra in groups:
        for s in range(seeds):
            out.append((label, b, s, config(b, s, extra)))
    return out


def _probs(run: Run, store, device, data_root, epoch=None) -> np.ndarray:
    def compute():
        x, y = measurements.run_data(run, data_root).split("test")
        p = torch.softmax(predict(run.model(resolve_device(device), epoch), x), 1).cpu()
        return {"probs.csv": pd.DataFrame(p.double().numpy()).rename(columns=lambda c: f"p{c}")}, {}

    entry = store.cached("predictions", {"run": run.key, "split": "test", "epoch": epoch}, compute)
    check("probs.csv" not in entry.omitted(),
          f"the test-set predictions of run {run.key} were left out of {store.root} (an export keeps chapter 8's "
          "summary, not the predictions it was computed from)")
    return entry.csv("probs.csv").to_numpy()


def stability_study(model, dataset, batch_sizes, train_options=None, seeds=Params.seeds, mitigations=None,
                    mitigation_batch=None, snapshot_every=Params.snapshot_every, ensemble_k=Params.ensemble_k,
                    neighbours=Params.neighbours, hessian_samples=None, seed=0, show=12, store=None,
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
            for g, b, s, cfg in progress_mod.bar(specs, desc="training", unit="run", show=progress)]
    plain = [f"B={b}" for b in batch_sizes]
    config = {"runs": [[g, b, s, r.key] for g, b, s, r in runs], "plain": plain, "ensemble_k": ensemble_k,
              "neighbours": neighbours, "hessian_samples": hessian_samples, "seed": seed, "show": show}
    entry = store.cached("stability", config, lambda: _stability_measures(
        runs, plain, ensemble_k, neighbours, hessian_samples, seed, show, store, device, data_root))
    meta = entry.json()
    looked_up = Store(store.root, read_only=True)   # the per-run spectra the entry holds, named on the page
    for *_, r in runs:
        with contextlib.suppress(NotInStore):
            measurements.spectrum(r, "train", k=1, tol=1e-3, keep_vectors=0, store=looked_up, device=device,
                                  subsample=hessian_subsample(r, hessian_samples, "train"), data_root=data_root)
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
    x_test, y_test = test_inputs(runs[0][3], data_root)
    near = stability.nearest_neighbours(x_test, neighbours)
    per_run, per_sample, groups, group_preds = [], [], [], {}
    for g, items in pd.Series(runs).groupby([r[0] for r in runs], sort=False):
        items = list(items)
        probs = np.stack([_probs(r, store, device, data_root) for *_, r in items])
        preds = group_preds[g] = probs.argmax(2)
        row, le, nb, acc = _group_row(g, items, probs, y_test, near, ensemble_k, seed, store, device, data_root)
        groups.append(row)
        for i, ((_, b, s, r), a) in enumerate(zip(items, acc)):
            spec = measurements.spectrum(r, "train", k=1, tol=1e-3, keep_vectors=0, store=store, device=device,
                                         subsample=hessian_subsample(r, hessian_samples, "train"), data_root=data_root)
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


def _group_row(g, items, probs, y_test, near, ensemble_k, seed, store, device, data_root):
    """A group's row of ``groups.csv`` (accuracy, instability, churn and their intervals, clustering,
    temporal AUROC), with its samples' label entropies, neighbour means and its runs' accuracies."""
    preds = probs.argmax(2)
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
    return row, le, nb, acc


def test_inputs(run: Run, data_root=None) -> tuple[np.ndarray, np.ndarray]:
    """A run's test inputs and labels as arrays (for showing samples)."""
    return tuple(t.numpy() for t in measurements.run_data(run, data_root).split("test"))


def _stability_sanity(run: Run, store, device, data_root) -> dict:
    """Train ``run``'s configuration again from scratch (a temporary store) and compare predictions."""
    import tempfile

    def compute():
        with tempfile.TemporaryDirectory() as tmp:
            again = train(run.config.to_dict(), Store(tmp), device=device, data_root=data_root, progress=False)
            x, _ = measurements.run_data(run, data_root).split("test")
            first, second = run.model(), again.model()
            with torch.no_grad():
                a, b = first(x).argmax(1).numpy(), second(x).argmax(1).numpy()
            same = all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), second.state_dict().values()))
        le = stability.label_entropy(np.stack([a, b] * 3))
        return {}, {"max_le": float(le.max()), "identical_weights": bool(same), "runs": 6}

    return store.cached("stability-sanity", {"run": run.key}, compute).json()


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
