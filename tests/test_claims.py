"""The chapters' automatic checks on hand-made tables: each claim can hold and can fail."""

import math

import pandas as pd

from hessbatch.paper.chapters.dynamics import dynamics_claims


def _trajectory(big_lam, big_grad, robust_lam):
    rows = []
    for method, lams in (("plain", {32: (5.0, 1.0), 1024: big_lam}), ("robust", {32: (2.0, 0.5), 1024: robust_lam})):
        for b, (first, last) in lams.items():
            grads = (1.0, 0.01) if b == 32 else big_grad
            rows += [{"batch_size": b, "method": method, "epoch": e, "lambda_max": lam, "grad_norm": g}
                     for e, lam, g in ((3, first, grads[0]), (6, last, grads[1]))]
    return pd.DataFrame(rows)


def test_dynamics_claims_hold_on_the_papers_picture():
    table = dynamics_claims(_trajectory((10.0, 40.0), (1.0, 0.5), (8.0, 20.0)), robust=True)
    assert list(table["holds"]) == ["✓"] * 4
    assert table["value"].tolist() == [40.0, 4.0, 50.0, 1.0]


def test_dynamics_claims_from_the_initialization():
    """With epoch 0 in the trajectory, growth is checked from the initialization and, separately,
    from the first saved epoch: a rise then a fall passes the first and fails the second."""
    traj = _trajectory((40.0, 20.0), (1.0, 0.5), (8.0, 10.0))
    init = traj[traj["epoch"] == 3].assign(epoch=0, lambda_max=2.0)
    table = dynamics_claims(pd.concat([init, traj], ignore_index=True), robust=True)
    assert list(table["holds"]) == ["✓", "✓", "✗", "✓", "✓"]
    assert table["value"].tolist()[1:3] == [10.0, 0.5]
    assert "initialization" in table["claim"][1] and "epoch 3 to 6" in table["claim"][2]
    short = pd.concat([init, traj[traj["epoch"] == 6]], ignore_index=True)
    row = dynamics_claims(short, robust=False).iloc[2]
    assert row["holds"] == "✗" and math.isnan(row["value"])


def test_dynamics_claims_fail_when_the_picture_differs():
    stuck = _trajectory((40.0, 20.0), (0.5, 0.001), (50.0, 30.0))
    table = dynamics_claims(stuck, robust=True)
    assert list(table["holds"]) == ["✓", "✗", "✗", "✗"]
    assert table["value"].tolist()[1:] == [0.5, 0.1, 0.5]
    assert len(dynamics_claims(stuck, robust=False)) == 3 and dynamics_claims(stuck.iloc[:0], False).empty


def test_seed_trend_on_hand_made_runs():
    """Three seeds per batch size: a clear rise holds with an interval above 1; the same means
    with seed noise that swamps the ends do not; a fall is not a rise."""
    from hessbatch.paper.claims import seed_trend

    b = [16, 16, 16, 64, 64, 64, 256, 256, 256]
    rise = seed_trend("rises", "x", b, [1.0, 1.1, 0.9, 2.0, 2.2, 1.8, 9.0, 10.0, 11.0], +1)
    assert rise["holds"] == "✓" and rise["value"] == 1.0 and rise["ratio"] == 10.0
    assert 8.0 < rise["ratio_low"] < 10.0 < rise["ratio_high"] < 12.5
    noisy = seed_trend("rises", "x", b, [0.1, 1.0, 1.9, 1.0, 1.2, 1.4, 0.2, 1.3, 2.1], +1)
    assert noisy["holds"] == "✗" and noisy["ratio_low"] < 1 < noisy["ratio_high"]
    assert seed_trend("rises", "x", b, [9.0, 10.0, 11.0, 2.0, 2.2, 1.8, 1.0, 1.1, 0.9], +1)["holds"] == "✗"
    assert seed_trend("falls", "x", b, [9.0, 10.0, 11.0, 2.0, 2.2, 1.8, 1.0, 1.1, 0.9], -1)["holds"] == "✓"


def test_seed_trend_from_zero_without_warnings():
    """A mean of 0 at the smallest x (FGSM accuracy of a broken model): a rise from 0 holds with an
    infinite ratio, a fall does not, all zeros give no verdict, and numpy warns of nothing."""
    import warnings

    from hessbatch.paper.claims import seed_trend

    b = [16, 16, 64, 64]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rise = seed_trend("rises", "x", b, [0.0, 0.0, 0.3, 0.5], +1)
        fall = seed_trend("falls", "x", b, [0.0, 0.0, 0.3, 0.5], -1)
        flat = seed_trend("rises", "x", b, [0.0, 0.0, 0.0, 0.0], +1)
    assert rise["holds"] == "✓" and rise["ratio"] == float("inf")
    assert fall["holds"] == "✗" and flat["holds"] == "✗"


def test_linear_scaling_diverges_above_the_smallest_batch():
    """§8 claim 14's second half: FB at chance (or a non-finite loss) at every batch but the smallest."""
    import pandas as pd

    from hessbatch.paper.chapters.large_batch_robust import linear_scaling_diverges

    def df(accs, statuses=None):
        statuses = statuses or ["capped"] * len(accs)
        return pd.DataFrame({"batch_size": [8000, 10000, 25000, 50000], "method": "FB", "test_acc": accs,
                             "status": statuses})

    assert linear_scaling_diverges(df([0.6, 0.1, 0.12, 0.1]), 10)["holds"] == "✓"
    assert linear_scaling_diverges(df([0.6, float("nan"), 0.1, 0.1], ["capped", "diverged", "capped", "capped"]),
                                   10)["value"] == 3
    assert linear_scaling_diverges(df([0.6, 0.5, 0.1, 0.1]), 10)["holds"] == "✗"


def _columns(rows):
    """Chapter 1's table from (B, λ_x, ‖∇_x J‖, FGSM accuracy at ε_a) per batch size, train = test."""
    out = []
    for b, lam, grad, adv in rows:
        out.append({"batch_size": b, "status": "converged", **{f"{c}_{s}": v for s in ("train", "test")
                    for c, v in (("lambda_x", lam), ("grad_x", grad), ("adv_a", adv))}})
    return pd.DataFrame(out)


def test_claim_7_input_metrics_do_not_track_robustness():
    from hessbatch.paper.chapters.batch_size import batch_size_claims

    def seven(rows):
        t = batch_size_claims(_columns(rows), pd.DataFrame())
        return t[t["claim"].str.startswith("λ_x and ‖∇_x J‖ do not track")]

    # Table 1's C1 rows B = 16 and 512 (train): smaller λ_x and ‖∇_x J‖ at 512, and less robust
    paper = seven([(16, 2.69, 0.05, 0.4807), (512, 1.97, 0.04, 0.1417)])
    assert list(paper["holds"]) == ["✓", "✓"] and paper["value"].tolist() == [1.0, 1.0]
    # the metrics track: the less robust model has the larger λ_x (or gradient) in every pair
    tracked = seven([(16, 1.0, 0.01, 0.5), (64, 2.0, 0.02, 0.4), (256, 3.0, 0.01, 0.3)])
    assert list(tracked["holds"]) == ["✗", "✗"] and tracked["value"].tolist() == [0.0, 0.0]
    one = seven([(16, 1.0, 0.01, 0.5)])
    assert list(one["holds"]) == ["—", "—"] and all(math.isnan(v) for v in one["value"])   # unchecked, not failed


def test_a_trend_of_two_points_is_unchecked_not_failed():
    from hessbatch.paper.claims import sentence, trend

    two = trend("λ_max rises with batch size", "§2", [64, 128], [1.6, 1.7], +1)
    assert two["holds"] == "—" and math.isnan(two["value"])
    assert sentence(two) == "is not checked yet (too few points) (Spearman ρ = n/a)"
    assert trend("λ_max rises with batch size", "§2", [64, 128, 256], [1.6, 1.7, 1.5], +1)["holds"] == "✗"


def test_the_fgsm10_ordering_claim_needs_three_batch_sizes():
    """§3.3's "no difference with FGSM-10": from two batch sizes ρ is undefined, so unchecked, not failed."""
    from hessbatch.paper.chapters.batch_size import batch_size_claims

    def same(adv, ref):
        t = pd.DataFrame({"batch_size": [16, 64, 256, 1024][:len(adv)], "status": "converged",
                          "adv_a_test": adv, "ref_a_test": ref})
        t = batch_size_claims(t, pd.DataFrame())
        return t[t["claim"].str.startswith("no difference from FGSM")].iloc[0]

    two = same([0.4, 0.3], [0.5, 0.35])
    assert two["holds"] == "—" and math.isnan(two["value"])
    assert same([0.4, 0.3, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2])["holds"] == "✓"
    swapped = same([0.4, 0.3, 0.2, 0.1], [0.2, 0.3, 0.4, 0.5])
    assert swapped["holds"] == "✗" and swapped["value"] == -1.0
