"""Time of each stored measurement a chapter makes of one trained run, alone and with
several processes measuring at once on the same device.

Usage::

    python benchmarks/measurements.py                                    # M1 on mnist5k, CPU
    python benchmarks/measurements.py --model C1 --dataset cifar10-jpeg --data-root DATA --device cuda \
        --samples 5000 --concurrent 1 4

Prints a Markdown table: wall time of a top-20 weight-Hessian spectrum (per chunk size), the
input curvature and FGSM accuracy of ``--curvature-samples`` samples, and a 1-D landscape on the
whole train and test sets, each computed from scratch through ``hessbatch.analysis`` (data
loading included, as ``hessbatch compute`` does). ``--concurrent P`` repeats the spectrum in
P processes at once and reports the median time of one (GPU time-slicing between processes).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import shutil
import statistics
import tempfile
import time

import torch

from hessbatch import hessian
from hessbatch import measurements as analysis
from hessbatch.devices import resolve_device
from hessbatch.runs import resolve_run
from hessbatch.store import Store
from hessbatch.train import train


def _timed(dev, fn, keep=False):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    entry = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    meta = entry.json()
    if not keep:
        shutil.rmtree(entry.path)
    return meta, seconds


def _spectrum(run, store, dev, data_root, samples, chunk, seed=0):
    return analysis.spectrum(run, "train", k=20, tol=1e-4, subsample=samples or None, seed=seed, store=store,
                             device=dev, data_root=data_root, chunk=chunk)


def _concurrent_worker(results, key, data_root, samples, chunk, device, barrier, seed, queue, processes):
    torch.set_num_threads(1)
    hessian.split_graph_memory(processes)
    store = Store(results)
    run = resolve_run(key, store)
    dev = resolve_device(device)
    analysis.run_data(run, data_root)
    barrier.wait()
    _, t = _timed(dev, lambda: _spectrum(run, store, dev, data_root, samples, chunk, seed))
    queue.put(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="M1")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000, help="Hessian subsample (0: whole training set)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--curvature-samples", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, nargs="*", default=[], help="numbers of processes measuring at once")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()

    dev = resolve_device(a.device)
    results = tempfile.mkdtemp(prefix="hessbatch-bench-")
    store = Store(results)
    t0 = time.perf_counter()
    run = train({"model": a.model, "dataset": a.dataset, "batch_size": a.batch_size, "max_epochs": a.epochs,
                 "target_loss": None}, store, device=dev, data_root=a.data_root, progress=False)
    t_train = time.perf_counter() - t0
    kw = {"store": store, "device": dev, "data_root": a.data_root}
    rows = []
    for chunk in a.chunks:
        e, t = _timed(dev, lambda: _spectrum(run, store, dev, a.data_root, a.samples, chunk))
        rows.append((f"spectrum top-20, {e['n_samples']} samples, chunk {chunk}", e["n_hvp"], t))
    for method in ("power", "exact"):
        e, t = _timed(dev, lambda: analysis.input_curvature(run, "test", method=method, limit=a.curvature_samples,
                                                            **kw))
        rows.append((f"input curvature ({method}), {a.curvature_samples} samples", e["iterations"], t))
    e, t = _timed(dev, lambda: analysis.adversarial_accuracy(run, "fgsm", 0.01, "test", limit=a.curvature_samples,
                                                             **kw))
    rows.append((f"FGSM accuracy, {a.curvature_samples} samples", "", t))
    e, t = _timed(dev, lambda: analysis.spectrum(run, "train", k=2, keep_vectors=2, **kw), keep=True)
    rows.append((f"spectrum top-2, whole training set ({e['n_samples']} samples, default chunk)", e["n_hvp"], t))
    e, t = _timed(dev, lambda: analysis.landscape_1d(run, 0.5, 21, **kw))
    rows.append(("1-D landscape, 21 points, whole train + test sets", "", t))

    for p in a.concurrent:
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(p), ctx.Queue()
        procs = [ctx.Process(target=_concurrent_worker, args=(results, run.key, a.data_root, a.samples, a.chunks[-1],
                                                              str(dev), barrier, 100 + i, queue, p))
                 for i in range(p)]
        t0 = time.perf_counter()
        for pr in procs:
            pr.start()
        times = [queue.get() for _ in procs]
        for pr in procs:
            pr.join()
        rows.append((f"spectrum, chunk {a.chunks[-1]}, {p} processes at once (median of one)", "",
                     statistics.median(times)))

    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"\n{a.model} on {a.dataset}, trained {a.epochs} epochs at batch {a.batch_size} in {t_train:.1f} s; "
          f"device {dev} ({hw}), torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| measurement | HVPs / iterations | wall time (s) |")
    print("|---|---:|---:|")
    for name, n, t in rows:
        print(f"| {name} | {n} | {t:.2f} |")
    shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    main()
