"""Run-to-run instability of predictions, after Datta et al. (Findings of ACL 2023).

Predictions are integer arrays of shape (runs, samples): the labels N training runs that
differ only in their seed (or N checkpoints of one run) give to the same samples.
Label entropy LE_i = −Σ_c p_ic log p_ic (nats), p_ic the share of runs predicting c for
sample i: 0 when every run agrees. Datta et al.'s exact normalisation was not recovered;
this is the plain entropy of the empirical label distribution.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .errors import check


def _preds(preds) -> np.ndarray:
    p = np.asarray(preds)
    check(p.ndim == 2 and p.shape[0] >= 1 and p.shape[1] >= 1,
          f"predictions must have shape (runs, samples), got {p.shape}")
    check(np.issubdtype(p.dtype, np.integer), "predictions must be integer labels")
    return p


def label_entropy(preds) -> np.ndarray:
    """Per-sample label entropy (nats) across the rows of ``preds``."""
    p = _preds(preds)
    n = p.shape[0]
    out = np.zeros(p.shape[1])
    for c in np.unique(p):
        q = (p == c).sum(0) / n
        nz = q > 0
        out[nz] -= q[nz] * np.log(q[nz])
    return np.abs(out)


def entropy_smoothing(preds, num_classes: int, alpha: float) -> np.ndarray:
    """Per-sample label-smoothing weights α_i = alpha · LE_i / log(min(T, C)) from the labels that
    T checkpoints of one run give each sample: 0 where they agree, ``alpha`` where they disagree
    as much as T checkpoints over C classes can. Our reading of Datta et al.'s data-centric
    mitigation (TGTSS), whose formula was not recovered."""
    p = _preds(preds)
    check(p.shape[0] >= 2, f"temporal label entropy needs at least 2 checkpoints, got {p.shape[0]}")
    check(isinstance(num_classes, int) and num_classes >= 2, f"num_classes must be >= 2, got {num_classes!r}")
    check(0 <= alpha < 1, f"alpha must be in [0, 1), got {alpha!r}")
    return alpha * label_entropy(p) / np.log(min(p.shape[0], num_classes))


def churn(a, b) -> float:
    """Share of samples on which two prediction vectors disagree."""
    a, b = np.asarray(a), np.asarray(b)
    check(a.shape == b.shape, f"prediction vectors differ in shape: {a.shape} vs {b.shape}")
    return float((a != b).mean())


def sample_disagreement(preds) -> np.ndarray:
    """Per sample, the share of pairs of runs that disagree on it (its mean is the mean churn)."""
    p = _preds(preds)
    check(p.shape[0] >= 2, "churn needs at least 2 runs")
    n = p.shape[0]
    agree = sum(((p == c).sum(0) * ((p == c).sum(0) - 1)) for c in np.unique(p)) / 2
    return 1 - agree / (n * (n - 1) / 2)


def pairwise_churn(preds) -> np.ndarray:
    """Churn of every pair of rows (runs)."""
    p = _preds(preds)
    check(p.shape[0] >= 2, "churn needs at least 2 runs")
    return np.array([churn(p[i], p[j]) for i, j in itertools.combinations(range(len(p)), 2)])


def ensemble_churn(probs, k: int, draws: int = 50, seed: int = 0) -> np.ndarray:
    """Churn between the predictions of two ensembles of ``k`` disjoint runs (mean softmax,
    then argmax), over ``draws`` random disjoint pairs; ``probs`` has shape (runs, samples, classes)."""
    probs = np.asarray(probs)
    check(probs.ndim == 3, f"probabilities must have shape (runs, samples, classes), got {probs.shape}")
    check(k >= 1 and 2 * k <= len(probs), f"two disjoint ensembles of {k} need >= {2 * k} runs, have {len(probs)}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx = rng.permutation(len(probs))
        a, b = probs[idx[:k]].mean(0).argmax(1), probs[idx[k:2 * k]].mean(0).argmax(1)
        out.append(churn(a, b))
    return np.array(out)


def nearest_neighbours(features, k: int = 5, chunk: int = 2048) -> np.ndarray:
    """Indices of each sample's ``k`` nearest neighbours (Euclidean, itself excluded), one row per sample."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float64)).flatten(1)
    check(k >= 1 and len(x) > k, f"need more than k={k} samples")
    rows = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        d[torch.arange(len(d)), torch.arange(i, i + len(d))] = float("inf")
        rows.append(d.topk(k, largest=False).indices)
    return torch.cat(rows).numpy()


def neighbour_mean(features, values, k: int = 5) -> np.ndarray:
    """Mean of ``values`` over each sample's ``k`` nearest neighbours (Euclidean, itself excluded)."""
    v = np.asarray(values, dtype=float)
    check(len(features) == len(v), "need one value per sample")
    return v[nearest_neighbours(features, k)].mean(1)


def permutation_test(a, b, n: int = 10_000, seed: int = 0) -> float:
    """One-sided p-value of mean(a) > mean(b) under random relabelling of the pooled values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    check(len(a) > 0 and len(b) > 0, "permutation test needs two non-empty groups")
    pooled, observed = np.concatenate([a, b]), a.mean() - b.mean()
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        perm = rng.permutation(pooled)
        hits += perm[:len(a)].mean() - perm[len(a):].mean() >= observed
    return (hits + 1) / (n + 1)


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    check(y.any() and (~y).any(), "AUROC needs both positive and negative labels")
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_ci(values, stat=np.mean, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the samples ``values``."""
    v = np.asarray(values)
    check(len(v) > 0, "bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    return _quantiles([stat(v[rng.integers(0, len(v), len(v))]) for _ in range(n)], level)


def churn_ci(preds, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean pairwise churn, resampling runs and samples
    together: each draw takes runs and samples with replacement and averages the churn of every
    pair of drawn runs that are different runs (a copy of a run paired with itself is no pair).
    Unlike a bootstrap over samples alone, its width includes the seed-to-seed variation."""
    group = _Pairs(preds)
    rng = np.random.default_rng(seed)
    return _quantiles([group.draw(rng, _sample_weights(rng, group.m)) for _ in range(n)], level)


def churn_difference_ci(preds_a, preds_b, n: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean churn(a) − mean churn(b) for two groups of runs on the
    same samples: runs are resampled within each group, samples once for both (as ``churn_ci``)."""
    a, b = _Pairs(preds_a), _Pairs(preds_b)
    check(a.m == b.m, f"the two groups predict different numbers of samples: {a.m} vs {b.m}")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        w = _sample_weights(rng, a.m)
        draws.append(a.draw(rng, w) - b.draw(rng, w))
    return _quantiles(draws, level)


class _Pairs:
    """Per pair of runs, the samples on which they disagree."""

    def __init__(self, preds):
        p = _preds(preds)
        check(p.shape[0] >= 2, "churn needs at least 2 runs")
        self.r, self.m = p.shape
        pairs = list(itertools.combinations(range(self.r), 2))
        self.d = np.stack([p[i] != p[j] for i, j in pairs]).astype(np.float32)
        self.a, self.b = np.array(pairs).T

    def draw(self, rng, samples: np.ndarray) -> float:
        """Mean churn over the pairs of distinct runs of one draw of runs, samples weighted."""
        while True:
            runs = np.bincount(rng.integers(0, self.r, self.r), minlength=self.r)
            w = (runs[self.a] * runs[self.b]).astype(np.float32)
            if w.any():
                return float(w @ (self.d @ samples)) / (w.sum() * samples.sum())


def _sample_weights(rng, m: int) -> np.ndarray:
    return np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float32)


def _quantiles(draws, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
