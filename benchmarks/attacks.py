"""What each attack costs per image, and what a Table 4 page (§3.4: five robust models, every
attack scored against each) would cost on this machine at given sizes.

Usage::

    python benchmarks/attacks.py                              # C3, 100 images per chunk, 1 thread
    python benchmarks/attacks.py --model C1 --cg-iters 5 10 20 --threads 2

Prints the CPU model, torch version, thread count and this machine's fp32 GEMM peak, then two
Markdown tables:

1. Each attack (FGSM, FGSM-10, L2 gradient, FHSM and L2 Hessian at each ``--cg-iters``) on a chunk
   of random inputs in [0, 1] to the model at its seeded initialization: ms per image (median of
   ``--repeats``) and its cost against one gradient (a forward and a backward of the loss).
   The CG attacks stop early where every sample's residual is below ``cg_tol`` (1e-3): for a
   piecewise-linear network the input Hessian of the cross-entropy has rank at most c − 1 per
   sample, so CG ends within about c iterations whatever the cap.
2. A Table 4 page from these per-image costs: the five robust models each trained
   ``--robust-epochs`` on adversarial examples of ``--train`` images (the example's cost plus a
   training step, taken as one gradient), and every attack scored on ``--test`` images against
   M_ORI and the five robust models (transfer attacks: the examples are crafted on M_ORI once per
   attack and radius). Hours on one core at the measured speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import SHAPES, _batch, _model, gemm_peak  # noqa: E402

from hessbatch import attacks  # noqa: E402
from hessbatch.devices import cpu_model  # noqa: E402

ATTACKS = ("fgsm", "fgsm10", "grad", "fhsm", "hess")


def _ms_per_image(fn, n: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="C3", choices=sorted(SHAPES))
    ap.add_argument("--chunk", type=int, default=100, help="images per call (default: 100)")
    ap.add_argument("--cg-iters", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=50_000, help="images per robust-training epoch (default: 50,000)")
    ap.add_argument("--robust-epochs", type=int, default=5)
    ap.add_argument("--test", type=int, nargs="+", default=[2000, 10_000], help="images scored per attack")
    ap.add_argument("--radii", type=int, default=2, help="radii scored per attack (default: 2)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {a.threads} thread(s); "
          f"fp32 GEMM peak {gemm_peak():.0f} GFLOP/s (2048^3, this run)\n")
    model = _model(a.model, torch.contiguous_format).eval()
    x, y = _batch(a.model, a.chunk)

    def gradient():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

    base = _ms_per_image(gradient, a.chunk, a.repeats)
    rows = [("gradient (reference)", base)]
    for name in ATTACKS:
        for iters in (a.cg_iters if name in ("fhsm", "hess") else [None]):
            opts = {"cg_iters": iters} if iters else {}
            eps = 0.02 if attacks.get(name).norm == "linf" else 1.0
            rows.append((name + (f", {iters} CG iterations" if iters else ""),
                         _ms_per_image(lambda: attacks.attack(name, model, x, y, eps, **opts), a.chunk, a.repeats)))
    print(f"| {a.model}, {a.chunk} images per call | ms per image | × a gradient |\n|---|---:|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} | {ms / base:.1f} |")

    cost = {label: ms for label, ms in rows}
    per_attack = [cost["fgsm"], cost["fgsm10"], cost["grad"], cost[f"fhsm, {max(a.cg_iters)} CG iterations"],
                  cost[f"hess, {max(a.cg_iters)} CG iterations"]]
    train_h = sum(a.robust_epochs * a.train * (ms + base) for ms in per_attack) / 3.6e6
    print(f"\n| Table 4 page ({a.model}; CG capped at {max(a.cg_iters)}) | robust training (h) | scoring (h) | "
          "total (h, one core) |\n|---|---:|---:|---:|")
    for n in a.test:
        # examples crafted on M_ORI per attack and radius, then each of the six models evaluated on them
        score_h = sum(a.radii * n * (ms + 6 * base / 3) for ms in per_attack) / 3.6e6   # a forward: ~1/3 of a gradient
        print(f"| {a.train:,} training images × {a.robust_epochs} epochs, {n:,} test images | {train_h:.1f} | "
              f"{score_h:.2f} | {train_h + score_h:.1f} |")


if __name__ == "__main__":
    main()
