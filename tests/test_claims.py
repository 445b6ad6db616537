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
