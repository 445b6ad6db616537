"""The paper's qualitative claims as automatic checks: each returns one row, passed or not.

A check never forces a result: a claim that does not reproduce is reported with ✗ and
its statistic, so the book can say so.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def spearman_test(x, y) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value over the finite pairs (nan when undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan"), float("nan")
    r = spearmanr(x[ok], y[ok])
    return float(r.statistic), float(r.pvalue)


def spearman(x, y) -> float:
    return spearman_test(x, y)[0]


def claim(text: str, source: str, statistic: str, value: float, passed: bool | None) -> dict:
    """A claim's row; ``passed`` None: too few points to check it yet (shown as —, not as a failure)."""
    return {"claim": text, "paper": source, "statistic": statistic,
            "value": value, "holds": UNCHECKED if passed is None else "✓" if passed else "✗"}


UNCHECKED = "—"


def trend(text: str, source: str, x, y, sign: int) -> dict:
    """Claim that y rises (sign=+1) or falls (sign=-1) with x: Spearman ρ of the right sign,
    and the value at the largest x beyond the value at the smallest; from fewer than three finite
    points ρ is undefined and the claim unchecked."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if (np.isfinite(x) & np.isfinite(y)).sum() < 3:
        return claim(text, source, "Spearman ρ", float("nan"), None)
    rho = spearman(x, y)
    ends = sign * (y[np.argmax(x)] - y[np.argmin(x)]) > 0
    passed = (not math.isnan(rho)) and sign * rho > 0 and bool(ends)
    return claim(text, source, "Spearman ρ", rho, passed)


def seed_trend(text: str, source: str, x, y, sign: int, n_boot: int = 2000, seed: int = 0) -> dict:
    """Claim that y rises (sign=+1) or falls (sign=-1) with x over runs repeated with several
    seeds (one (x, y) pair per run): Spearman ρ of the means over seeds at each x, and a bootstrap
    interval (seeds resampled within each x, 95 %) for the ratio mean y(x_max) / mean y(x_min).
    Holds when ρ has the sign and the whole interval lies beyond 1 in its direction."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    levels = np.unique(x)
    if len(levels) < 2:
        return claim(text, source, "Spearman ρ (seed means)", float("nan"), None)
    means = np.array([y[x == v].mean() for v in levels])
    rho = spearman(levels, means) if len(levels) >= 3 else float(np.sign(means[-1] - means[0]))
    rng = np.random.default_rng(seed)
    lo_y, hi_y = y[x == levels[0]], y[x == levels[-1]]
    # a mean of 0 at x_min (e.g. FGSM accuracy) makes the ratio inf (a rise from 0) or nan (0/0, no verdict)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.array([rng.choice(hi_y, len(hi_y)).mean() / rng.choice(lo_y, len(lo_y)).mean()
                           for _ in range(n_boot)])
        ratio = means[-1] / means[0]
        lo = np.percentile(ratios, 2.5, method="lower")  # order statistics: no inf - inf
        hi = np.percentile(ratios, 97.5, method="higher")
    beyond = lo > 1 if sign > 0 else hi < 1
    passed = (not math.isnan(rho)) and sign * rho > 0 and bool(beyond)
    row = claim(text, source, f"Spearman ρ (seed means); ratio at the ends {ratio:.3g} "
                              f"[{lo:.3g}, {hi:.3g}]", rho, passed)
    return {**row, "ratio": float(ratio), "ratio_low": float(lo), "ratio_high": float(hi)}


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["claim", "paper", "statistic", "value", "holds"])


def sentence(row) -> str:
    """A claim's verdict for the prose: 'holds (Spearman ρ = 0.95)' or 'does not hold (...)'."""
    verdict = {"✓": "holds", UNCHECKED: "is not checked yet (too few points)"}.get(row["holds"], "does **not** hold")
    value = row["value"]
    shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"
    return f"{verdict} ({row['statistic']} = {shown})"


def verdicts(checks: pd.DataFrame) -> str:
    """Markdown, one line per claim: its mark, its text, where the paper makes it and the statistic;
    the claims that do not hold first, then the unchecked, then those that hold."""
    order = {"✗": 0, UNCHECKED: 1, "✓": 2}
    rows = sorted((r for _, r in checks.iterrows()), key=lambda r: order.get(r["holds"], 0))
    return "\n".join(f"- {r['holds']} {r['claim']} ({r['paper']}): {sentence(r)}" for r in rows)
