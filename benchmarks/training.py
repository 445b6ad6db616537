"""Training speed: epoch time per batch size, hessbatch's loop against a plain DataLoader loop,
and several runs at once on one device; then the total time of a computed book profile.

Usage::

    python benchmarks/training.py --device cuda --dataset cifar10-jpeg --data-root DATA
    python benchmarks/training.py                      # M1 on mnist5k, CPU (small)

Prints Markdown tables:

1. One epoch of SGD (lr 0.01, momentum 0.9) on the whole training set, per batch size:
   *DataLoader*: the common baseline (a ``TensorDataset`` in host memory, ``DataLoader`` with
   shuffling, pinned memory and worker processes, a host-to-device copy and ``loss.item()`` per
   step); *hessbatch eager*: ``train.train_epoch`` (data resident on the device, indices shuffled
   there, no synchronisation until the epoch's end); *hessbatch captured* (CUDA only): the same with
   each step replayed from a CUDA graph (``hessbatch.captured``), capture time excluded, and how far
   its weights end from the eager epochs'. Median of ``--repeats`` epochs after one warm-up.
2. ``--parallel`` runs at once, each in its own process (the ``processes`` executor of
   ``hessbatch sweep``/``compute``): time per epoch of each, and the throughput gained.
3. The total wall time that ``hessbatch compute`` recorded for a profile (``--timings``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
import yaml

from hessbatch import captured, catalog, data, models
from hessbatch.config import TrainConfig
from hessbatch.devices import resolve_device
from hessbatch.paper.intro import computed_summary
from hessbatch.train import train_epoch, training_loss


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _model(name, ds, dev):
    torch.manual_seed(0)
    return models.build_model(name, ds.input_shape, ds.num_classes, ds.mean, ds.std,
                              catalog.default_reading(catalog.canonical_name(name))).to(dev)


def dataloader_epoch(model, opt, loader, dev) -> float:
    model.train()
    total = 0.0
    for xb, yb in loader:
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return total


def time_dataloader(name, ds, b, dev, repeats, workers) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    model = _model(name, ds, dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=b, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=dev.type == "cuda", persistent_workers=workers > 0)
    times = []
    for r in range(repeats + 1):
        _sync(dev)
        t0 = time.perf_counter()
        dataloader_epoch(model, opt, loader, dev)
        _sync(dev)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_ours(name, ds_dev, b, dev, repeats, graph: bool = False) -> tuple[float, nn.Module]:
    """Median epoch time, and the model after the epochs (``graph``: steps replayed from a CUDA graph)."""
    model = _model(name, ds_dev, dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cfg = TrainConfig(model=name, batch_size=b, lr=0.01, momentum=0.9)
    step = captured.CapturedStep(model, opt, ds_dev, cfg, training_loss) if graph else None
    times = []
    for r in range(repeats + 1):
        _sync(dev)
        t0 = time.perf_counter()
        train_epoch(model, opt, ds_dev, cfg, r + 1, captured=step)
        _sync(dev)
        if r or not repeats:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), model


def _drift(a: nn.Module, b: nn.Module) -> float:
    """Largest parameter difference relative to the largest parameter."""
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    return diff / max(p.abs().max().item() for p in a.parameters())


def _worker(name, dataset, root, b, device, repeats, barrier, out):
    torch.set_num_threads(1)
    dev = resolve_device(device)
    ds = data.load_dataset(dataset, root).to(dev)
    time_ours(name, ds, b, dev, 0)  # warm-up (kernels, allocator)
    barrier.wait()  # the timed epochs of all runs start together
    out.put(time_ours(name, ds, b, dev, repeats)[0])


def time_parallel(name, dataset, root, b, device, repeats, n) -> float:
    """Median epoch time of each of ``n`` runs trained at the same time in ``n`` processes."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(name, dataset, root, b, device, repeats, barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: C1 on a GPU, M1 on the CPU")
    ap.add_argument("--dataset", default=None, help="default: cifar10-jpeg on a GPU, mnist5k on the CPU")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="16,64,256,1024,2048")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loader-workers", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=6, help="runs at once for table 2 (0: skip)")
    ap.add_argument("--parallel-batch-sizes", default="16,64,256")
    ap.add_argument("--timings", default="paper-results/_timings.yml", help="timings recorded by hessbatch compute")
    a = ap.parse_args()

    dev = resolve_device(a.device)
    name = a.model or ("C1" if dev.type == "cuda" else "M1")
    dataset = a.dataset or ("cifar10-jpeg" if dev.type == "cuda" else "mnist5k")
    ds = data.load_dataset(dataset, a.data_root)
    ds_dev = data.load_dataset(dataset, a.data_root).to(dev)
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()}"
    print(f"\n{name} on {ds.label} ({ds.n_train:,} training samples), {hw}, torch {torch.__version__}\n")
    graphs = dev.type == "cuda"
    print("| batch size | steps | DataLoader loop (s/epoch) | hessbatch eager (s/epoch) | speed-up | "
          "hessbatch captured (s/epoch) | speed-up over eager | weights vs eager (relative) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    sizes = [int(b) for b in a.batch_sizes.split(",")]
    for b in sizes:
        base = time_dataloader(name, ds, b, dev, a.repeats, a.loader_workers)
        ours, eager_model = time_ours(name, ds_dev, b, dev, a.repeats)
        row = f"| {b} | {ds.n_train // b} | {base:.2f} | {ours:.2f} | {base / ours:.1f}× |"
        if graphs:
            cap, cap_model = time_ours(name, ds_dev, b, dev, a.repeats, graph=True)
            row += f" {cap:.2f} | {ours / cap:.1f}× | {_drift(eager_model, cap_model):.1e} |"
        else:
            row += " — | — | — |"
        print(row, flush=True)
    if not graphs:
        print("\n(captured steps need a CUDA device)")
    if a.parallel:
        print(f"\n{a.parallel} runs at once, one process each (same model and data):\n")
        print("| batch size | one run alone (s/epoch) | each of the runs at once (s/epoch) | throughput gain |")
        print("|---:|---:|---:|---:|")
        for b in [int(v) for v in a.parallel_batch_sizes.split(",")]:
            alone = time_ours(name, ds_dev, b, dev, a.repeats)[0]
            each = time_parallel(name, dataset, a.data_root, b, a.device, a.repeats, a.parallel)
            print(f"| {b} | {alone:.2f} | {each:.2f} | {a.parallel * alone / each:.1f}× |", flush=True)
    path = Path(a.timings)
    if path.is_file():
        print(f"\nProfile timings ({path}):\n")
        print("\n".join(computed_summary(yaml.safe_load(path.read_text()))))

if __name__ == "__main__":
    main()
