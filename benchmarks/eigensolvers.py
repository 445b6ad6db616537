"""Top-k Hessian eigenvalues at equal tolerance: Lanczos (ours, default) vs power iteration vs PyHessian.

Usage::

    python benchmarks/eigensolvers.py                      # M1 on mnist5k, CPU, 1,000-sample Hessian
    python benchmarks/eigensolvers.py --model C1 --dataset cifar10-jpeg --data-root DATA --device cuda \
        --samples 10000 --epochs 10

Prints a Markdown table: Hessian-vector products, wall time, and the largest relative
eigenvalue difference from a tight reference (Lanczos at tol 1e-8). ``--samples 0`` uses
the whole training set. Requires the ``dev`` extra (pyhessian).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch import nn

from hessbatch.eigensolvers import lanczos, power_iteration
from hessbatch.hessian import HessianOperator, subsample
from hessbatch.measurements import run_data
from hessbatch.store import Store
from hessbatch.train import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="M1")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1000, help="Hessian subsample size (0: whole training set)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=60, help="training epochs of the model (default: 60)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--skip", nargs="*", default=[], help="methods to skip: power pyhessian")
    a = ap.parse_args()

    dev = torch.device(a.device)
    run = train({"model": a.model, "dataset": a.dataset, "batch_size": a.batch_size, "max_epochs": a.epochs},
                Store(a.results), device=dev, data_root=a.data_root)
    model = run.model(dev)
    data = tuple(t.to(dev) for t in run_data(run, a.data_root).split("train"))
    if a.samples:
        data = subsample(data, a.samples, seed=0)
    chunk = 1024 if dev.type == "cpu" else 10_000

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    ref, _ = timed(lambda: lanczos(HessianOperator(model, data, chunk=chunk), a.k, 1e-8, max_iter=600))
    rows = []
    for name, hvp in (("lanczos (hessbatch default)", "backward"), ("lanczos, torch.func HVP", "func")):
        e, t = timed(lambda: lanczos(HessianOperator(model, data, chunk=chunk, hvp=hvp), a.k, a.tol))
        rows.append((name, e.n_hvp, t, e.eigenvalues))
    if "power" not in a.skip:
        e, t = timed(lambda: power_iteration(HessianOperator(model, data, chunk=chunk), a.k, a.tol))
        rows.append(("power iteration + deflation (paper)", e.n_hvp, t, e.eigenvalues))
    if "pyhessian" not in a.skip:
        from pyhessian import hessian as PyHessian

        counter = {"n": 0}
        ph = PyHessian(model, nn.CrossEntropyLoss(), data=data, cuda=dev.type == "cuda")
        import importlib

        phmod = importlib.import_module("pyhessian.hessian")
        orig = phmod.hessian_vector_product

        def counted(*args, **kw):
            counter["n"] += 1
            return orig(*args, **kw)

        phmod.hessian_vector_product = counted
        (vals, _), t = timed(lambda: ph.eigenvalues(maxIter=100, tol=a.tol, top_n=a.k))
        phmod.hessian_vector_product = orig
        rows.append(("pyhessian 0.1 (power iteration)", counter["n"], t, np.sort(vals)[::-1]))

    ref_vals = ref.eigenvalues
    print(f"\n{a.model} on {a.dataset} (batch {a.batch_size}), Hessian on {len(data[1])} samples, "
          f"top-{a.k}, tol {a.tol}, device {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| method | HVPs | wall time (s) | max rel. eigenvalue error vs reference |")
    print("|---|---:|---:|---:|")
    for name, n, t, vals in rows:
        err = np.max(np.abs(np.asarray(vals[:a.k]) - ref_vals) / np.abs(ref_vals))
        print(f"| {name} | {n} | {t:.1f} | {err:.1e} |")
    print(f"\nreference: Lanczos at tol 1e-8, {ref.n_hvp} HVPs; lambda_1 = {ref_vals[0]:.4g}, "
          f"lambda_{a.k} = {ref_vals[-1]:.4g}")


if __name__ == "__main__":
    main()
