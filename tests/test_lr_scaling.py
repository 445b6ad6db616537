"""Chapter 9: the learning-rate rules' runs and the seed-aware verdicts, on hand-made tables."""

import math

import pandas as pd
import pytest

from hessbatch import HessbatchError
from hessbatch.config import TrainConfig, effective_lr, lr_at, run_key
from hessbatch.paper.chapters import batch_size, lr_scaling

OPTS = {"lr": 0.01, "momentum": 0.9, "max_epochs": 5, "target_loss": 0.001}


def params(**kw):
    return lr_scaling.Params.parse({"batch_sizes": [16, 64, 256], "train_options": OPTS, **kw}, lr_scaling.NAME)


def test_each_rule_gives_the_documented_learning_rate():
    p = params()
    for rule, b, want in [("none", 256, 0.01), ("linear", 64, 0.04), ("linear", 256, 0.16), ("sqrt", 64, 0.02),
                          ("sqrt", 256, 0.04), ("linear", 16, 0.01), ("sqrt", 16, 0.01)]:
        cfg = TrainConfig.from_dict(lr_scaling.config(p, rule, b, 0)).resolved()
        assert effective_lr(cfg) == pytest.approx(want), (rule, b)
        assert lr_at(cfg, 0.0) == pytest.approx(0.01)  # the warm-up starts from the base lr
        assert lr_at(cfg, p.warmup_epochs) == pytest.approx(want)


def test_constant_runs_and_the_base_batch_are_chapter_ones():
    p = params()
    ch1 = {run_key(c) for c in batch_size.train_configs(batch_size.Params.parse(
        {"batch_sizes": [16, 64, 256], "train_options": OPTS}, batch_size.NAME))}
    for rule in p.lr_rules:
        assert run_key(lr_scaling.config(p, rule, 16, 0)) in ch1
    assert {run_key(lr_scaling.config(p, "none", b, 0)) for b in (16, 64, 256)} == ch1
    # 3 seeds x 3 batch sizes under none, plus 2 scaled rules x 2 batch sizes above B0 x 3 seeds
    assert len({run_key(c) for c in lr_scaling.train_configs(p)}) == len(lr_scaling.train_configs(p)) == 9 + 12


@pytest.mark.parametrize("bad, message", [({"lr_rules": ["cubic"]}, "unknown rule 'cubic'"),
                                          ({"seeds": 0}, "seeds must be"),
                                          ({"lr_base_batch": 32}, "not among the batch sizes"),
                                          ({"lr_batch_sizes": [64]}, "at least two")])
def test_bad_parameters(bad, message):
    with pytest.raises(HessbatchError, match=message):
        params(**bad)


def _table(lam_none, lam_linear, threshold=10.0):
    rows = []
    for rule, lam in (("none", lam_none), ("linear", lam_linear)):
        for b, base in lam.items():
            for s, noise in enumerate((-0.1, 0.0, 0.1)):
                rows.append({"rule": rule, "batch_size": b, "seed": s, "status": "converged", "test_acc": 0.99 - b / 1e4,
                             "lambda_train": base + noise, "lambda_test": base, "fgsm_0": 0.9 - b / 1e3 + noise / 10,
                             "filter_curvature": base / 10 + noise / 100, "threshold": threshold,
                             "lambda_over_threshold": (base + noise) / threshold})
    return pd.DataFrame(rows)


def test_verdicts_and_claims_on_known_answers():
    t = _table({16: 2.0, 64: 4.0, 256: 8.0}, {16: 2.0, 64: 2.5, 256: 3.0})
    v = lr_scaling.verdicts(t).set_index(["rule", "claim"])
    assert v.loc[(lr_scaling.RULES["none"], "λ_max (train) rises with batch size"), "holds"] == "✓"
    assert v.loc[(lr_scaling.RULES["none"], "test accuracy falls with batch size"), "holds"] == "✓"
    assert v.loc[(lr_scaling.RULES["linear"], "λ_max (train) rises with batch size"), "ratio"] == pytest.approx(1.5)
    c = lr_scaling.lr_claims(t).set_index("claim")
    below = c.loc["under constant lr, the large-batch runs' λ_max stays below 2(1+β)/η"]
    assert below["value"] == pytest.approx(0.81) and below["holds"] == "✓"
    gap = c.loc["the gap between large- and small-batch λ_max shrinks under linear scaling"]
    assert gap["value"] == pytest.approx(1.5 - 4.0) and gap["holds"] == "✓"
    assert c.loc["the paper's ordering survives a filter-normalized curvature (constant lr)", "holds"] == "✓"
    # the other way round: above the threshold, a gap that grows, a curvature that falls
    t2 = _table({16: 8.0, 64: 4.0, 256: 12.0}, {16: 8.0, 64: 12.0, 256: 30.0})
    t2.loc[t2["rule"] == "none", "filter_curvature"] = t2["batch_size"].map({16: 3.0, 64: 2.0, 256: 1.0})
    c2 = lr_scaling.lr_claims(t2).set_index("claim")
    assert (c2["holds"] == "✗").all()
    assert c2["value"].notna().all()


def test_summary_gives_seed_means_and_intervals():
    s = lr_scaling.summary(_table({16: 2.0, 256: 8.0}, {16: 2.0, 256: 3.0})).set_index(["rule", "batch_size"])
    assert s.loc[("none", 256), "lambda_train"] == pytest.approx(8.0)
    assert s.loc[("none", 256), "lambda_train_ci"] == pytest.approx(1.96 * 0.1 / math.sqrt(3))
