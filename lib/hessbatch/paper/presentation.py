"""Presentation of a chapter's results: the paper's table layout, the published-vs-reproduced
comparison, and the provenance line under each chapter's heading."""

from __future__ import annotations

import math

import pandas as pd
import torch

from ..runs import Run
from . import figures


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


def paper_style(table: pd.DataFrame) -> pd.DataFrame:
    """Our batch-size table in the paper's layout: 'train (test)' cells, accuracies in %; with each
    run's status, epochs, final training loss and training time."""
    out = pd.DataFrame({"B": table["batch_size"], "status": table["status"], "epochs": table["epochs"]})
    if "final_train_loss" in table:
        out["train loss"] = [f"{v:.2g}" if pd.notna(v) else "—" for v in table["final_train_loss"]]
    if "train_minutes" in table:
        out["training min"] = [f"{m:.0f}" if pd.notna(m) else "—" for m in table["train_minutes"]]

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


def run_label(cfg: dict) -> str:
    """A training configuration in a few words, for a page's list of its runs: the batch size and
    what sets the run apart (robust training, a scaled learning rate, a start from another run)."""
    parts = [f"B = {cfg['batch_size']}"]
    if adv := cfg.get("adversarial"):
        parts.append(f"robust ({adv['attack']}, ε = {adv['eps']:g})")
    if cfg.get("lr_scaling"):
        parts.append(f"lr scaled {cfg['lr_scaling']}" +
                     (f", {cfg['warmup_epochs']} warm-up epochs" if cfg.get("warmup_epochs") else ""))
    if cfg.get("init_from"):
        parts.append(f"from run {cfg['init_from'][:8]}")
    return ", ".join(parts)


def provenance(params: dict, runs: list[Run] | None = None, estimated: list[str] = ()) -> str:
    """One Markdown line: profile, data, model, device (with the CPU model where the runs record it),
    training time of the runs (if any), the Hessian subsample size (if any), commit, configuration;
    then notes on training options that differ by batch size (``batch_train_options``), on runs short
    of the stopping rule and on ``estimated`` spectra (:func:`spectra_note`)."""
    runs = [r for r in (runs or []) if r is not None]
    label = params.get("dataset")
    if runs:
        r = runs[0].result
        sizes = sorted({(x.result["n_train"], x.result["n_test"]) for x in runs})
        label = f"{r.get('dataset_label', label)}; used: " + ", ".join(f"{a:,} train / {b:,} test" for a, b in sizes)
    dev = sorted({r.result.get("device", "?") + (f" ({r.result['cpu']})" if r.result.get("cpu") and
                  r.result.get("device") == "cpu" else "") for r in runs}) or [params.get("device", "cpu")]
    t = sum(r.result.get("time_s", 0.0) for r in runs)
    versions = sorted({r.result.get("torch", torch.__version__) for r in runs}) or [torch.__version__]
    trained = f" · *training time* {t / 60:.1f} min" if runs else ""
    hs = params.get("hessian_samples")
    hessians = f" · *Hessians on* seeded subsets of {hs:,} samples" if hs else ""
    line = (f"*Profile* `{params.get('profile')}` · *data* {label} · *model* `{params.get('model')}` · "
            f"*device* {', '.join(dev)}{trained}{hessians} · *torch* {', '.join(versions)} · "
            f"*commit* `{figures.commit()}` · *configuration* `{figures.config_hash(params)}`")
    per = [f"B = {o['batch_size']}: " + ", ".join(f"{k} {v}" for k, v in o.items() if k != "batch_size")
           for o in params.get("batch_train_options") or () if o["batch_size"] in (params.get("batch_sizes") or [])]
    line += f"\n\n**Training options that differ by batch size:** {'; '.join(per)}." if per else ""
    short = off_protocol(runs)
    return line + ("\n\n**Not at the stopping rule:** " + "; ".join(short) + ". Their rows compare "
                   "end points that are not equally trained; read them with care." if short else "") \
        + spectra_note(list(estimated))


def plane_caption(params: dict) -> str:
    """Fig. 3's caption, naming the subsets its losses were evaluated on (``plane_samples``)."""
    n = params.get("plane_samples")
    return ("Training loss on the plane of the top two Hessian eigenvectors (paper Fig. 3)"
            + (f"; losses on a seeded subset of {n:,} samples of each split (all of a smaller one)" if n else ""))


def off_protocol(runs: list[Run]) -> list[str]:
    """One phrase per run that was to train to a target loss and stopped at its epoch cap (or
    diverged) instead: the paper's protocol trains every batch size to the same loss."""
    out = []
    for r in runs:
        cfg, res = r.config, r.result
        if cfg.target_loss is None or res["status"] == "converged":
            continue
        loss = res["train_loss"]
        at = f"training loss {loss:.3g}" if loss is not None and math.isfinite(loss) else "non-finite loss"
        how = (f"diverged at epoch {res['epochs']} ({at})" if res["status"] == "diverged" else
               f"stopped at its {cfg.max_epochs}-epoch cap at training loss {res['train_loss']:.2g}")
        out.append(f"B = {cfg.batch_size}{f' (seed {cfg.seed})' if cfg.seed else ''} {how} "
                   f"(target {cfg.target_loss:g})")
    return out


def estimated_spectra(record: list) -> list[str]:
    """The spectra among ``measurements.recorded()``'s entries that were stored before residuals were
    measured and Hessian-vector products summed in float64, one label per run and split."""
    labels = {}
    for kind, entry, a in record:
        if kind != "spectrum" or entry.json().get("residuals") == "measured":
            continue
        cfg = a["run"].config
        what = (f"{cfg.model}, B = {cfg.batch_size}" + (f", seed {cfg.seed}" if cfg.seed else "")
                + (f", {cfg.adversarial['attack']} training" if cfg.adversarial else "")
                + (f", epoch {a['epoch']}" if a.get("epoch") is not None else ""))
        labels.setdefault(what, set()).add(a["split"])
    return [f"{w} ({', '.join(sorted(s, reverse=True))})" for w, s in labels.items()]


def spectra_note(estimated: list[str]) -> str:
    """A Markdown note naming the spectra (from :func:`estimated_spectra`) that predate measured
    residuals and float64 sums of Hessian-vector products (see the methods page); empty if none."""
    if not estimated:
        return ""
    return ("\n\n**Spectra stored before measured residuals:** " + "; ".join(estimated) + ". Their "
            "Hessian-vector products were summed in float32 and their `residual` column holds the Lanczos "
            "recurrence's estimate, so an eigenvalue may be up to about 1.3 × 10⁻⁴ (relative) high, beyond "
            "the solver's tolerance but far below every claim's margin (methods page, *The error bound*).")


def whole_set_note(table: pd.DataFrame, samples: int | None) -> str:
    """A Markdown note comparing λ_max on the whole training set with the subsample's, for the
    batch sizes that have both: how far to trust every subsampled column. Empty if none has."""
    if "lambda_theta_train_whole" not in table:
        return ""
    rows = table.dropna(subset=["lambda_theta_train_whole"])
    cells = [f"B = {int(r.batch_size)}: {r.lambda_theta_train_whole:.4g} on the whole set, {r.lambda_theta_train:.4g} "
             f"on {samples:,} samples ({100 * (r.lambda_theta_train / r.lambda_theta_train_whole - 1):+.1f} %)"
             for r in rows.itertuples()]
    return "\n\n**λθ_max of the training set, whole against subsample:** " + "; ".join(cells) + "." if cells else ""
