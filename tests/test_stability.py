"""Instability measures against hand-computed examples."""

import math

import numpy as np
import pandas as pd
import pytest

from hessbatch import HessbatchError, stability


def test_label_entropy_by_hand():
    preds = np.array([[0, 1, 2, 5], [0, 1, 1, 6], [0, 2, 1, 5], [0, 1, 1, 6]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert np.allclose(stability.label_entropy(preds), [0.0, h, h, math.log(2)])
    assert (stability.label_entropy(np.stack([preds[0]] * 5)) == 0).all()


def test_churn_by_hand():
    preds = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 0]])
    assert np.allclose(stability.pairwise_churn(preds), [0.25, 0.5, 0.25])
    with pytest.raises(HessbatchError, match="differ in shape"):
        stability.churn([0, 1], [0, 1, 2])
    with pytest.raises(HessbatchError, match="integer labels"):
        stability.label_entropy(np.zeros((2, 3)))


def test_ensembles_of_identical_runs_agree():
    probs = np.tile(np.array([[0.7, 0.3], [0.2, 0.8]]), (6, 1, 1))
    assert (stability.ensemble_churn(probs, 3, draws=5) == 0).all()
    with pytest.raises(HessbatchError, match="need >= 8 runs"):
        stability.ensemble_churn(probs, 4)


def test_ensemble_averages_probabilities():
    probs = np.array([[[0.6, 0.4]], [[0.0, 1.0]], [[0.6, 0.4]], [[0.6, 0.4]]])
    churn = stability.ensemble_churn(probs, 2, draws=200, seed=1)
    # an ensemble holding run 1 votes class 1 (mean 0.3 vs 0.7), any other votes class 0
    assert set(np.unique(churn)) == {1.0}


def test_nearest_neighbours_in_chunks_match_a_full_sort():
    x = np.random.default_rng(0).normal(size=(50, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1)[:, :4]
    for chunk in (7, 2048):
        assert np.array_equal(np.sort(stability.nearest_neighbours(x, 4, chunk=chunk), 1), np.sort(expected, 1))


def test_neighbour_mean_by_hand():
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    v = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.allclose(stability.neighbour_mean(x, v, k=1), [2.0, 1.0, 2.0, 3.0])
    assert np.allclose(stability.neighbour_mean(x, v, k=2), [2.5, 2.0, 1.5, 2.5])


def test_permutation_test_auroc_and_bootstrap():
    a, b = np.arange(20) + 100.0, np.arange(50.0)
    assert stability.permutation_test(a, b, n=500) < 0.01
    assert stability.permutation_test(b[:20], b[20:40], n=500) > 0.5
    assert stability.auroc([3, 4, 1, 2], [1, 1, 0, 0]) == 1.0
    assert stability.auroc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert stability.auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    lo, hi = stability.bootstrap_ci(np.r_[np.zeros(90), np.ones(10)])
    assert lo < 0.1 < hi and 0.03 < lo and hi < 0.17


def test_sample_disagreement_averages_to_the_pairwise_churn():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 3, (5, 40))
    d = stability.sample_disagreement(preds)
    assert np.isclose(d.mean(), stability.pairwise_churn(preds).mean())
    assert np.allclose(stability.sample_disagreement(np.array([[0, 1], [0, 2], [0, 1]])), [0.0, 2 / 3])


def test_entropy_smoothing_by_hand():
    preds = np.array([[0, 1, 2, 3], [0, 1, 2, 4], [0, 2, 1, 5]])
    got = stability.entropy_smoothing(preds, 10, 0.3)
    le = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    np.testing.assert_allclose(got, [0.0, 0.3 * le / math.log(3), 0.3 * le / math.log(3), 0.3])
    np.testing.assert_allclose(stability.entropy_smoothing(np.array([[0, 1], [1, 1]]), 2, 0.5), [0.5, 0.0])
    with pytest.raises(HessbatchError, match="at least 2 checkpoints"):
        stability.entropy_smoothing(preds[:1], 10, 0.3)


def test_guided_smoothing_from_the_guide_runs_checkpoints(tmp_path, tiny_cfg):
    """TGTSS (our reading): the guide is seed 0 at the mitigation batch; each training sample's α
    comes from the labels of the guide's late snapshots and final weights."""
    import torch

    from hessbatch.data import load_dataset
    from hessbatch.paper.chapters.instability import stability_configs
    from hessbatch.sample_smoothing import guided_smoothing
    from hessbatch.store import Store
    from hessbatch.config import run_key as config_key
    from hessbatch.train import train

    opts = {k: v for k, v in tiny_cfg.items() if k not in ("model", "dataset", "batch_size")} | {"max_epochs": 4}
    specs = stability_configs("MLP", "mnist5k", [50, 100], opts, seeds=2,
                              mitigations={"TGTSS": {"sample_smoothing": 0.3}}, snapshot_every=1)
    guide_cfg, tgtss = specs[0][3], [cfg for g, *_, cfg in specs if "TGTSS" in g]
    assert len(tgtss) == 2 and all(c["sample_smoothing"] == {"guide": config_key(guide_cfg), "alpha": 0.3} for c in tgtss)
    store = Store(tmp_path)
    guide = train(guide_cfg, store, progress=False)
    ds = load_dataset("mnist5k", subset=20, test_subset=10)
    alpha = guided_smoothing(guide, ds, 0.3, "cpu")
    with torch.no_grad():
        preds = np.stack([guide.model(epoch=e)(ds.x_train).argmax(1).numpy() for e in (3, None)])
    expected = 0.3 * stability.label_entropy(preds) / math.log(2)
    np.testing.assert_allclose(alpha.numpy(), expected, rtol=1e-6)
    assert 0 < (alpha > 0).sum() < len(alpha)
    run = train(tgtss[0], store, progress=False)
    assert run.status == "capped" and run.key != guide.key

    plain = train(tiny_cfg, store, progress=False)
    with pytest.raises(HessbatchError, match="no snapshot from the second half"):
        train({**tiny_cfg, "sample_smoothing": {"guide": plain.key, "alpha": 0.1}}, store, progress=False)
    with pytest.raises(HessbatchError, match="sample_smoothing guide run 0123 is not in the store"):
        train({**tiny_cfg, "sample_smoothing": {"guide": "0123", "alpha": 0.1}}, store, progress=False)
    with pytest.raises(HessbatchError, match="plain runs at batch size 25: it must be one of the batch sizes"):
        stability_configs("MLP", "mnist5k", [50], opts, mitigations={"L": {"label_smoothing": 0.1}},
                          mitigation_batch=25, snapshot_every=1)
    with pytest.raises(HessbatchError, match="needs snapshot_every > 0"):
        stability_configs("MLP", "mnist5k", [50], opts, mitigations={"T": {"sample_smoothing": 0.3}})


def _churn_ci_by_indexing(preds, n, seed=0):
    """The same draws as churn_ci, built by copying runs and samples explicitly."""
    rng = np.random.default_rng(seed)
    r, m = preds.shape
    draws = []
    for _ in range(n):
        cols = rng.integers(0, m, m)
        runs = rng.integers(0, r, r)
        while len(set(runs)) < 2:
            runs = rng.integers(0, r, r)
        sub = preds[runs][:, cols]
        pairs = [(u, v) for u in range(r) for v in range(u + 1, r) if runs[u] != runs[v]]
        draws.append(np.mean([(sub[u] != sub[v]).mean() for u, v in pairs]))
    return tuple(np.quantile(draws, [0.025, 0.975]))


def test_churn_ci_matches_explicit_resampling_and_sees_seed_variation():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 3, (5, 60))
    assert np.allclose(stability.churn_ci(preds, n=300), _churn_ci_by_indexing(preds, 300), atol=1e-6)
    # five identical runs and one that differs on half the samples: the mean churn is 5/15 * 0.5
    odd = np.zeros((6, 400), dtype=int)
    odd[5, :200] = 1
    mean = stability.pairwise_churn(odd).mean()
    assert np.isclose(mean, 1 / 6)
    lo, hi = stability.churn_ci(odd)
    s_lo, s_hi = stability.bootstrap_ci(stability.sample_disagreement(odd))
    assert s_lo > 0.14 and s_hi < 0.19          # over samples alone: narrow
    assert lo == 0.0 and hi > 0.25              # drawing the odd run 0 or 2+ times moves the churn a lot


def test_churn_difference_ci():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 500)
    noisy = np.where(rng.random((8, 500)) < 0.2, rng.integers(0, 4, (8, 500)), truth)
    quiet = np.where(rng.random((8, 500)) < 0.02, rng.integers(0, 4, (8, 500)), truth)
    lo, hi = stability.churn_difference_ci(noisy, quiet)
    diff = stability.pairwise_churn(noisy).mean() - stability.pairwise_churn(quiet).mean()
    assert 0 < lo < diff < hi
    lo, hi = stability.churn_difference_ci(noisy[:4], noisy[4:])
    assert lo < 0 < hi
    with pytest.raises(HessbatchError, match="different numbers of samples"):
        stability.churn_difference_ci(noisy, quiet[:, :10])


def test_mitigations_are_compared_with_the_plain_runs_at_their_batch_size():
    from hessbatch.paper.chapters.instability import stability_claims

    groups = pd.DataFrame({"group": ["B=32", "B=256", "B=256 + LS"], "batch_size": [32, 256, 256],
                           "unstable": [0.1, 0.2, 0.15], "churn": [0.05, 0.10, 0.07],
                           "ensemble_churn": [0.03, 0.06, 0.05], "acc_std": [0.001] * 3,
                           "churn_change": [np.nan, np.nan, -0.03], "churn_change_lo": [np.nan, np.nan, -0.05],
                           "churn_change_hi": [np.nan, np.nan, -0.01]})
    runs = pd.DataFrame({"group": ["B=32", "B=256"], "batch_size": [32, 256], "lambda_max": [1.0, 2.0]})
    _, reported = stability_claims(groups, runs, {"max_le": 0.0, "identical_weights": True}, ["B=32", "B=256"],
                                   ("B=256", "B=32", 0.05, 0.01, 0.09))
    rows = reported.set_index("quantity")
    batch = rows.loc["churn of B=256 minus churn of B=32 (95% interval over runs and samples)"]
    assert np.allclose(batch[["value", "lo", "hi"]].astype(float), [0.05, 0.01, 0.09])
    assert np.isclose(rows.loc["share of the ensembling gain in churn recovered by B=256 + LS", "value"], 0.75)
    change = rows.loc["churn of B=256 + LS minus churn of B=256 (95% interval over runs and samples)"]
    assert np.allclose(change[["value", "lo", "hi"]].astype(float), [-0.03, -0.05, -0.01])


def test_stability_study_renders_from_an_export_without_predictions(tmp_path, tiny_cfg):
    """Chapter 8 is one summary entry: an export keeps it (and leaves out the per-sample predictions),
    and the study read from the export equals the one computed; a new measure on the export fails
    with one clear line."""
    from hessbatch.paper.chapters.instability import stability_study
    from hessbatch.store import Store

    opts = {k: v for k, v in tiny_cfg.items() if k not in ("model", "dataset", "batch_size")}
    args = ("MLP", "mnist5k", [10, 50], opts)
    kw = dict(seeds=3, mitigations={"LS": {"label_smoothing": 0.1}}, ensemble_k=1, neighbours=2, hessian_samples=20,
              show=4, progress=False)
    full = stability_study(*args, **kw, store=Store(tmp_path / "full"))
    Store(tmp_path / "full").export(tmp_path / "tidy")
    assert list((tmp_path / "full").rglob("probs.csv")) and not list((tmp_path / "tidy").rglob("probs.csv"))
    tidy = stability_study(*args, **kw, store=Store(tmp_path / "tidy"))
    for name in ("groups", "runs", "samples", "top", "claims", "reported"):
        pd.testing.assert_frame_equal(tidy[name], full[name])
    assert (full["samples"]["le"] > 0).all() and len(full["top"]) == len(full["images"]) <= 4
    assert full["images"].shape[1:] == (28, 28) and 0 <= full["images"].min() and full["images"].max() <= 1
    rows = full["reported"].set_index("quantity")
    change = rows.loc["churn of B=50 minus churn of B=10 (95% interval over runs and samples)"]
    groups = full["groups"].set_index("group")
    assert np.isclose(change["value"], groups.loc["B=50", "churn"] - groups.loc["B=10", "churn"])
    assert change["lo"] <= change["value"] <= change["hi"]
    with pytest.raises(HessbatchError, match="predictions of run .* were left out of"):
        stability_study(*args, **{**kw, "neighbours": 3}, store=Store(tmp_path / "tidy"))
