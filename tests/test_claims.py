"""The chapters' automatic checks on hand-made tables: each claim can hold and can fail."""

import pandas as pd

from hessbatch.experiments import dynamics_claims


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


def test_dynamics_claims_fail_when_the_picture_differs():
    stuck = _trajectory((40.0, 20.0), (0.5, 0.001), (50.0, 30.0))
    table = dynamics_claims(stuck, robust=True)
    assert list(table["holds"]) == ["✓", "✗", "✗", "✗"]
    assert table["value"].tolist()[1:] == [0.5, 0.1, 0.5]
    assert len(dynamics_claims(stuck, robust=False)) == 3 and dynamics_claims(stuck.iloc[:0], False).empty
