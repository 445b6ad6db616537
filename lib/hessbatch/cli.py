"""The ``hessbatch`` command line. Bad input: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import HessbatchError

EXIT_USAGE = 2


def _float_or_none(s: str):
    return None if s.lower() in ("none", "null", "off") else float(s)


def _int_list(s: str) -> tuple:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--results", metavar="DIR", help="results folder (default: $HESSBATCH_RESULTS or ./results)")
    if data:
        p.add_argument("--data-root", metavar="DIR", help="torchvision data root (default: $HESSBATCH_DATA or ./data)")
        p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS
    from .train import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="hessbatch", description="Reproduce Yao et al. (NeurIPS 2018), Hessian-based analysis of large batch "
        "training and robustness to adversaries. Every result is cached in a store keyed by its configuration.")
    parser.add_argument("--version", action="version", version=f"hessbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one model to a target loss (cached in the result store)",
                       description="Train one model with SGD until the training loss reaches --target-loss "
                       "or --max-epochs; the result is stored under a hash of the full configuration.")
    t.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)} (default: {d.model})")
    t.add_argument("--dataset", default=d.dataset,
                   help="mnist5k (embedded), mnist, fashion-mnist, cifar10, cifar100 or imagefolder:PATH "
                   f"(default: {d.dataset})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    t.add_argument("--momentum", type=float, default=d.momentum, help=f"(default: {d.momentum})")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay})")
    t.add_argument("--max-epochs", "--epochs", type=int, default=d.max_epochs, dest="max_epochs",
                   help=f"epoch cap (default: {d.max_epochs})")
    t.add_argument("--target-loss", type=_float_or_none, default=d.target_loss,
                   help=f"stop once the full training loss is at most this; 'none' to disable (default: {d.target_loss})")
    t.add_argument("--lr-milestones", type=_int_list, default=d.lr_milestones, metavar="E1,E2",
                   help="epochs after which the lr is multiplied by --lr-gamma (default: none)")
    t.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help=f"(default: {d.lr_gamma})")
    t.add_argument("--lr-scaling", choices=("none", "linear"), default=d.lr_scaling,
                   help="linear: lr x batch/--lr-base-batch (Goyal et al.) (default: none)")
    t.add_argument("--lr-base-batch", type=int, default=d.lr_base_batch, help=f"(default: {d.lr_base_batch})")
    t.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs,
                   help="linear warm-up from --lr to the scaled lr (default: 0)")
    t.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    t.add_argument("--reading", default=None,
                   help="which reading of an ambiguous architecture (see `hessbatch.models`); default per model")
    t.add_argument("--subset", type=int, default=None, help="keep N training samples per class")
    t.add_argument("--test-subset", type=int, default=None, help="keep N test samples per class")
    t.add_argument("--keep-last", action="store_true", help="also train on the last, incomplete batch")
    t.add_argument("--grad-norm", action="store_true", help="record the full-batch gradient norm every epoch")
    t.add_argument("--save-every", type=int, default=0, help="keep a weight snapshot every N epochs (default: 0)")
    _common(t)

    s = sub.add_parser("sweep", help="train every configuration of a parameter file's grid",
                       description="Train the grid of a parameter file (see `hessbatch.params`); "
                       "runs already in the store are skipped.")
    s.add_argument("params", metavar="PARAMS.yaml")
    _common(s)

    sp = sub.add_parser("spectrum", help="top-k Hessian eigenvalues of a trained run (cached)",
                        description="Top-k eigenvalues of the Hessian of a trained run's loss w.r.t. its weights, "
                        "on the whole train or test set or a seeded subsample (the paper's Fig. 1, 6).")
    sp.add_argument("--run", required=True, metavar="KEY", help="training run key or unique prefix (`hessbatch ls`)")
    sp.add_argument("--split", choices=("train", "test"), default="train", help="(default: train)")
    sp.add_argument("--k", type=int, default=20, help="number of eigenvalues (default: 20, the paper's)")
    sp.add_argument("--tol", type=float, default=1e-4, help="relative tolerance per eigenvalue (default: 1e-4)")
    sp.add_argument("--method", choices=("lanczos", "power"), default="lanczos",
                    help="lanczos (default) or the paper's power iteration with deflation")
    sp.add_argument("--which", choices=("largest", "smallest", "magnitude", "both"), default="largest",
                    help="which end of the spectrum (default: largest)")
    sp.add_argument("--subsample", type=int, default=None, help="Hessian of a random subset of this size (|B_H|)")
    sp.add_argument("--epoch", type=int, default=None, help="a weight snapshot saved during training")
    sp.add_argument("--seed", type=int, default=0)
    _common(sp)

    la = sub.add_parser("landscape", help="loss along Hessian eigenvectors of a trained run (cached)",
                        description="Loss and accuracy on the train and test sets along the dominant Hessian "
                        "eigenvector (1d, the paper's Fig. 2/7) or on the plane of the top two (2d, Fig. 3).")
    la.add_argument("--run", required=True, metavar="KEY", help="training run key or unique prefix")
    la.add_argument("--mode", choices=("1d", "2d"), default="1d", help="(default: 1d)")
    la.add_argument("--radius", type=float, default=0.5, help="perturbations in [-r, r] (default: 0.5)")
    la.add_argument("--points", type=int, default=None, help="points per axis (default: 21 in 1d, 11 in 2d)")
    _common(la)

    ls = sub.add_parser("ls", help="list what the result store holds")
    ls.add_argument("--kind", default=None, help="only entries of this kind (e.g. train)")
    _common(ls, data=False)
    return parser


def _cmd_train(a) -> int:
    from .store import Store
    from .train import TrainConfig, resolve_device, train

    cfg = TrainConfig(model=a.model, dataset=a.dataset, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
                      weight_decay=a.weight_decay, max_epochs=a.max_epochs, target_loss=a.target_loss,
                      lr_milestones=a.lr_milestones, lr_gamma=a.lr_gamma, lr_scaling=a.lr_scaling,
                      lr_base_batch=a.lr_base_batch, warmup_epochs=a.warmup_epochs, seed=a.seed,
                      reading=a.reading, subset=a.subset, test_subset=a.test_subset, drop_last=not a.keep_last,
                      grad_norm=a.grad_norm, save_every=a.save_every)
    resolve_device(a.device)
    run = train(cfg, Store(a.results), device=a.device, data_root=a.data_root, download=a.download,
                progress=not a.no_progress)
    r = run.result
    how = "found in the store" if run.cached else f"{r['status']} after {r['epochs']} epochs"
    loss = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4g}"
    acc = "n/a" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
    print(f"{cfg.model} on {cfg.dataset}, batch {cfg.batch_size}: {how}; train loss {loss}, test accuracy {acc}")
    print(f"stored at {run.entry.path}")
    return 0


def _cmd_sweep(a) -> int:
    from .params import expand_grid, load_params
    from .store import Store
    from .sweep import run_sweep

    from .train import resolve_device

    configs = expand_grid(load_params(a.params))
    resolve_device(a.device)
    table = run_sweep(configs, Store(a.results), device=a.device, data_root=a.data_root,
                      download=a.download, progress=not a.no_progress)
    print(table.drop(columns=["error"] if table["error"].isna().all() else []).to_string(index=False))
    counts = table["state"].value_counts()
    print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "cached", "failed")))
    return 1 if counts.get("failed", 0) else 0


def _cmd_spectrum(a) -> int:
    from .analysis import spectrum
    from .store import Store

    entry = spectrum(a.run, a.split, a.k, a.tol, a.method, a.which, a.subsample, a.seed, a.epoch,
                     store=Store(a.results), device=a.device, data_root=a.data_root)
    r = entry.json()
    print(entry.csv("eigenvalues.csv").to_string(index=False))
    print(f"{r['n_hvp']} Hessian-vector products, gradient norm {r['grad_norm']:.4g}; stored at {entry.path}")
    return 0


def _cmd_landscape(a) -> int:
    from .analysis import landscape_1d, landscape_2d
    from .store import Store

    store = Store(a.results)
    if a.mode == "1d":
        entry = landscape_1d(a.run, a.radius, a.points or 21, store=store, device=a.device, data_root=a.data_root)
        table = entry.csv("curve.csv").pivot(index="alpha", columns="split", values="loss")
        print(table.to_string())
    else:
        entry = landscape_2d(a.run, a.radius, a.points or 11, store=store, device=a.device, data_root=a.data_root)
        surface = entry.csv("surface.csv")
        print(surface[surface["split"] == "train"].pivot(index="alpha", columns="beta", values="loss").round(4)
              .to_string())
    print(f"stored at {entry.path}")
    return 0


def _cmd_ls(a) -> int:
    from .store import Store

    store = Store(a.results)
    entries = store.entries(a.kind)
    if not entries:
        print(f"the store at {store.root} is empty")
        return 0
    import pandas as pd

    rows = []
    for e in entries:
        c = e.config["config"]
        row = {"kind": e.kind, "key": e.key, "model": c.get("model"), "dataset": c.get("dataset"),
               "batch_size": c.get("batch_size"), "seed": c.get("seed")}
        if (e.path / "result.json").is_file():
            r = e.json()
            row.update(status=r.get("status"), epochs=r.get("epochs"), train_loss=r.get("train_loss"),
                       test_acc=r.get("test_acc"))
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


COMMANDS = {"train": _cmd_train, "sweep": _cmd_sweep, "spectrum": _cmd_spectrum, "landscape": _cmd_landscape,
            "ls": _cmd_ls}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HessbatchError as e:
        print(f"hessbatch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hessbatch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
