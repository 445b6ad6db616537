"""The ``hessbatch`` command line. Bad input: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import contextlib
import sys

from . import __version__
from .errors import HessbatchError, NotConvergedWarning, check

EXIT_USAGE = 2


def _number(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise HessbatchError(f"expected a number, got {s!r}") from None


def _float_or_none(s: str):
    return None if s.lower() in ("none", "null", "off") else float(s)


def _guided(s: str) -> dict:
    key, sep, alpha = s.rpartition(":")
    try:
        if not (sep and key):
            raise ValueError
        return {"guide": key, "alpha": float(alpha)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY:ALPHA (a training run and a number), got {s!r}") from None


def _int_list(s: str) -> tuple:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def common_flags(p: argparse.ArgumentParser, data: bool = True) -> None:
    """The store flag, and with ``data`` the data, device and progress flags every computing command takes."""
    p.add_argument("--results", metavar="DIR", help="results folder (default: $HESSBATCH_RESULTS or ./results)")
    if data:
        p.add_argument("--data-root", metavar="DIR", help="torchvision data root (default: $HESSBATCH_DATA or ./data)")
        p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _train_flags(p: argparse.ArgumentParser, d, suppress: bool = False) -> None:
    """The training options; with ``suppress`` only flags given on the command line are set."""
    from .models import MODELS

    def add(*names, default=None, **kw):
        p.add_argument(*names, default=argparse.SUPPRESS if suppress else default, **kw)

    add("--model", default=d.model, help=f"one of {', '.join(MODELS)} (default: {d.model})")
    add("--dataset", default=d.dataset, help="mnist5k (embedded), mnist, fashion-mnist, cifar10, cifar100 or "
        f"imagefolder:PATH (default: {d.dataset})")
    add("--batch-size", type=int, default=d.batch_size, help=f"(default: {d.batch_size})")
    add("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    add("--momentum", type=float, default=d.momentum, help=f"(default: {d.momentum})")
    add("--weight-decay", type=float, default=d.weight_decay, help=f"(default: {d.weight_decay})")
    add("--max-epochs", "--epochs", type=int, default=d.max_epochs, dest="max_epochs",
        help=f"epoch cap (default: {d.max_epochs})")
    add("--target-loss", type=_float_or_none, default=d.target_loss,
        help=f"stop once the full training loss is at most this; 'none' to disable (default: {d.target_loss})")
    add("--lr-milestones", type=_int_list, default=d.lr_milestones, metavar="E1,E2",
        help="epochs after which the lr is multiplied by --lr-gamma (default: none)")
    add("--lr-gamma", type=float, default=d.lr_gamma, help=f"(default: {d.lr_gamma})")
    add("--lr-scaling", choices=("none", "linear"), default=d.lr_scaling,
        help="linear: lr x batch/--lr-base-batch (Goyal et al.) (default: none)")
    add("--lr-base-batch", type=int, default=d.lr_base_batch, help=f"(default: {d.lr_base_batch})")
    add("--warmup-epochs", type=int, default=d.warmup_epochs, help="linear warm-up from --lr to the scaled lr (default: 0)")
    add("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    add("--reading", help="which reading of an ambiguous architecture (see `hessbatch.models`); default per model")
    add("--subset", type=int, help="keep N training samples per class")
    add("--test-subset", type=int, help="keep N test samples per class")
    add("--keep-last", action="store_true", default=False, help="also train on the last, incomplete batch")
    add("--grad-norm", action="store_true", default=False, help="record the full-batch gradient norm every epoch")
    add("--save-every", type=int, default=0, help="keep a weight snapshot every N epochs (default: 0)")
    add("--micro-batch", type=int, help="accumulate each batch's gradient over chunks of N samples "
        "(BatchNorm statistics per chunk)")
    add("--label-smoothing", type=float, help="label smoothing α in [0, 1) (Szegedy et al. 2016)")
    add("--confidence-penalty", type=float, help="confidence penalty β in [0, 1) (Pereyra et al. 2017)")
    add("--sample-smoothing", type=_guided, metavar="KEY:ALPHA",
        help="per-sample label smoothing up to ALPHA, from the label entropy of run KEY's late snapshots "
        "(key or unique prefix; our reading of Datta et al.'s TGTSS)")


_NOT_FLAGS = ("drop_last", "adversarial", "init_from")  # --keep-last; robust-train's --attack/--eps and --from


def _config_from_args(a, base: dict) -> dict:
    from .config import TrainConfig

    cfg = dict(base)
    cfg.update({f: getattr(a, f) for f in TrainConfig.fields() if f not in _NOT_FLAGS and hasattr(a, f)})
    if hasattr(a, "keep_last"):
        cfg["drop_last"] = not a.keep_last
    if cfg.get("sample_smoothing"):
        from .runs import resolve_run
        from .store import Store

        guide = resolve_run(cfg["sample_smoothing"]["guide"], Store(a.results))
        cfg["sample_smoothing"] = {**cfg["sample_smoothing"], "guide": guide.key}
    return cfg


def _attack_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="fgsm10: number of steps (default: 10)")
    p.add_argument("--alpha", type=float, default=None, help="fgsm10: step size (default: eps/steps)")
    p.add_argument("--cg-iters", type=int, default=None, help="fhsm/hess: CG iterations (default: 20)")
    p.add_argument("--cg-tol", type=float, default=None, help="fhsm/hess: CG forcing term (default: 1e-3)")
    p.add_argument("--damping", type=float, default=None, help="fhsm/hess: Hessian damping (default: 0)")


def _attack_options(a, name: str) -> dict:
    from . import attacks
    from .errors import check_options

    attack = attacks.get(name)
    given = {k: getattr(a, k) for k in ("steps", "alpha", "cg_iters", "cg_tol", "damping") if getattr(a, k) is not None}
    check_options(attack.function, given, f"attack {attack.name}", spell=lambda n: "--" + n.replace("_", "-"))
    return given


def build_parser(extensions=()) -> argparse.ArgumentParser:
    """The parser of the toolkit's commands; each of ``extensions`` adds its own subcommands
    (``extension(subparsers)``, as the paper layer adds ``book`` and ``compute``)."""
    from .config import TrainConfig
    from .sweep import EXECUTORS

    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="hessbatch", description="Reproduce Yao et al. (NeurIPS 2018), Hessian-based analysis of large batch "
        "training and robustness to adversaries. Every result is cached in a store keyed by its configuration.")
    parser.add_argument("--version", action="version", version=f"hessbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one model to a target loss (cached in the result store)",
                       description="Train one model with SGD until the training loss reaches --target-loss "
                       "or --max-epochs; the result is stored under a hash of the full configuration.")
    _train_flags(t, d)
    common_flags(t)

    r = sub.add_parser("robust-train", help="adversarial training, from scratch or continuing a trained run",
                       description="Train on adversarial examples generated on the fly (the paper's §3.4). "
                       "With --from KEY, continue that run's weights for --max-epochs more epochs (default 5) "
                       "without a target loss; its model, data and optimizer settings are kept unless given.")
    r.add_argument("--from", dest="parent", metavar="KEY", help="training run to continue (key or unique prefix)")
    r.add_argument("--attack", required=True, help="fgsm, fgsm10, grad, fhsm or hess")
    r.add_argument("--eps", type=float, required=True, help="attack radius in pixel units ([0, 1] inputs)")
    r.add_argument("--clean-fraction", type=float, default=0.0, help="share of each batch left clean (default: 0)")
    _attack_flags(r)
    _train_flags(r, d, suppress=True)
    common_flags(r)

    s = sub.add_parser("sweep", help="train every configuration of a parameter file's grid",
                       description="Train the grid of a parameter file (see `hessbatch.params`); "
                       "runs already in the store are skipped.")
    s.add_argument("params", metavar="PARAMS.yaml")
    s.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: one run after another here (default); processes: --workers runs at once here; "
                        "dask: one task per run on a Dask cluster")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://host:8786 (default: start a LocalCluster)")
    s.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: one per core)")
    s.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / workers)")
    common_flags(s)

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
    sp.add_argument("--max-iter", type=int, default=None,
                    help="cap on Hessian-vector products (lanczos, default max(3k+60, 200)) or per eigenvalue "
                    "(power, default 100)")
    common_flags(sp)

    la = sub.add_parser("landscape", help="loss along Hessian eigenvectors of a trained run (cached)",
                        description="Loss and accuracy on the train and test sets along the dominant Hessian "
                        "eigenvector (1d, the paper's Fig. 2/7) or on the plane of the top two (2d, Fig. 3).")
    la.add_argument("--run", required=True, metavar="KEY", help="training run key or unique prefix")
    la.add_argument("--mode", choices=("1d", "2d"), default="1d", help="(default: 1d)")
    la.add_argument("--radius", type=float, default=0.5, help="perturbations in [-r, r] (default: 0.5)")
    la.add_argument("--points", type=int, default=None, help="points per axis (default: 21 in 1d, 11 in 2d)")
    common_flags(la)

    at = sub.add_parser("attack", help="accuracy of a trained run under attack (cached)",
                        description="Accuracy of a trained run on adversarial versions of its train or test set, "
                        "for one or more attacks and radii (the paper's Tables 1, 3, 4, 7).")
    at.add_argument("--run", required=True, metavar="KEY", help="training run key or unique prefix")
    at.add_argument("--attack", default="fgsm", help="comma-separated: fgsm, fgsm10, grad, fhsm, hess (default: fgsm)")
    at.add_argument("--eps", required=True, help="comma-separated radii in pixel units, e.g. 0.01,0.02")
    at.add_argument("--split", choices=("train", "test"), default="test", help="(default: test)")
    at.add_argument("--source", metavar="KEY", default=None,
                    help="craft the examples against this run instead (transfer, as Tables 3/4)")
    at.add_argument("--limit", type=int, default=None, help="only the first N samples")
    _attack_flags(at)
    common_flags(at)

    ex = sub.add_parser("export", help="copy a store without its weight files and per-sample predictions (small enough to commit)",
                        description="Copy every complete entry of the store to DEST, leaving out weight files "
                        "(*.pt) and chapter 8's per-sample test predictions (probs.csv, summarized in its "
                        "`stability` entry); the book renders from such a store, but cannot measure anything new with it.")
    ex.add_argument("dest", metavar="DEST")
    common_flags(ex, data=False)

    ls = sub.add_parser("ls", help="list what the result store holds")
    ls.add_argument("--kind", default=None, help="only entries of this kind (e.g. train)")
    common_flags(ls, data=False)

    ve = sub.add_parser("verify", help="check the SHA-256 of every file in the store",
                        description="Reads check only file sizes (and hash small files), so that listing a large "
                        "store is fast; this checks every file's SHA-256 against its entry's manifest and lists "
                        "the entries that fail. With --remove they are deleted, and computed again when next asked for.")
    ve.add_argument("--kind", default=None, help="only entries of this kind (e.g. train)")
    ve.add_argument("--remove", action="store_true", help="delete the entries that fail")
    common_flags(ve, data=False)
    for extend in extensions:
        extend(sub)
    return parser


def _cmd_train(a) -> int:
    from .config import TrainConfig
    from .devices import resolve_device
    from .store import Store
    from .train import train

    resolve_device(a.device)
    cfg = TrainConfig.from_dict(_config_from_args(a, {}))
    run = train(cfg, Store(a.results), device=a.device, data_root=a.data_root, download=a.download,
                progress=not a.no_progress)
    _report(run)
    return 0


def _report(run) -> None:
    r, cfg = run.result, run.config
    how = "found in the store" if run.cached else f"{r['status']} after {r['epochs']} epochs"
    loss = "n/a" if r["train_loss"] is None else f"{r['train_loss']:.4g}"
    acc = "n/a" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
    print(f"{cfg.model} on {cfg.dataset}, batch {cfg.batch_size}: {how}; train loss {loss}, test accuracy {acc}")
    print(f"stored at {run.entry.path}")


def _cmd_robust_train(a) -> int:
    from .config import TrainConfig
    from .devices import resolve_device
    from .runs import resolve_run
    from .store import Store
    from .train import train

    resolve_device(a.device)
    store = Store(a.results)
    base = {}
    if a.parent:
        parent = resolve_run(a.parent, store)
        base = {**parent.config.to_dict(), "init_from": parent.key, "max_epochs": 5, "target_loss": None,
                "lr_milestones": (), "warmup_epochs": 0, "lr_scaling": "none", "save_every": 0, "grad_norm": False}
    adversarial = {"attack": a.attack, "eps": a.eps, "clean_fraction": a.clean_fraction,
                   **_attack_options(a, a.attack)}
    cfg = TrainConfig.from_dict({**_config_from_args(a, base), "adversarial": adversarial})
    run = train(cfg, store, device=a.device, data_root=a.data_root, download=a.download, progress=not a.no_progress)
    _report(run)
    return 0


def _cmd_attack(a) -> int:
    import pandas as pd

    from .attacks import check_eps
    from .measurements import adversarial_accuracy
    from .store import Store

    store = Store(a.results)
    names = [n for n in a.attack.split(",") if n]
    eps = [check_eps(_number(e)) for e in a.eps.split(",") if e]
    opts = {n: _attack_options(a, n) for n in names}
    rows = []
    for n in names:
        for e in eps:
            entry = adversarial_accuracy(a.run, n, e, a.split, a.source, a.limit, store=store, device=a.device,
                                         data_root=a.data_root, **opts[n])
            r = entry.json()
            rows.append({"attack": n, "eps": e, "split": a.split, "clean_acc": r["clean_accuracy"],
                         "adv_acc": r["accuracy"], "n": r["n_samples"]})
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _cmd_sweep(a) -> int:
    from .params import expand_grid, load_params
    from .devices import resolve_device
    from .store import Store
    from .sweep import run_sweep

    configs = expand_grid(load_params(a.params))
    resolve_device(a.device)
    table = run_sweep(configs, Store(a.results), device=a.device, data_root=a.data_root, download=a.download,
                      progress=not a.no_progress, executor=a.executor, scheduler=a.scheduler, workers=a.workers,
                      threads=a.threads)
    print(table.drop(columns=["error"] if table["error"].isna().all() else []).to_string(index=False))
    counts = table["state"].value_counts()
    print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "cached", "failed")))
    return 1 if counts.get("failed", 0) else 0


def _cmd_spectrum(a) -> int:
    from .measurements import spectrum
    from .store import Store

    entry = spectrum(a.run, a.split, a.k, a.tol, a.method, a.which, a.subsample, a.seed, a.epoch,
                     store=Store(a.results), device=a.device, data_root=a.data_root, progress=not a.no_progress,
                     max_iter=a.max_iter)
    r = entry.json()
    print(entry.csv("eigenvalues.csv").to_string(index=False))
    state = "converged" if r["converged"] else "NOT converged (see the warning)"
    print(f"{r['n_hvp']} Hessian-vector products, {state}, gradient norm {r['grad_norm']:.4g}; "
          f"stored at {entry.path}")
    return 0


def _cmd_landscape(a) -> int:
    from .measurements import landscape_1d, landscape_2d
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


def _cmd_export(a) -> int:
    from .store import Store

    store = Store(a.results)
    check(store.root.is_dir(), f"no result store at {store.root}")
    n, size = store.export(a.dest)
    print(f"exported {n} entries ({size / 1e6:.1f} MB) to {a.dest}")
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


def _cmd_verify(a) -> int:
    import shutil

    from .store import Store

    store = Store(a.results)
    check(store.root.is_dir(), f"no result store at {store.root}")
    n, bad = store.verify(a.kind)
    for e in bad:
        print(f"corrupt: {e.kind}/{e.key}")
        if a.remove:
            shutil.rmtree(e.path)
    print(f"{n} entries checked, {len(bad)} corrupt" + (" (removed)" if bad and a.remove else ""))
    return 1 if bad and not a.remove else 0


COMMANDS = {"train": _cmd_train, "robust-train": _cmd_robust_train, "attack": _cmd_attack, "sweep": _cmd_sweep,
            "spectrum": _cmd_spectrum, "landscape": _cmd_landscape, "export": _cmd_export, "ls": _cmd_ls,
            "verify": _cmd_verify}


def main(argv: list[str] | None = None, extensions=(), commands=None) -> int:
    """Run one command: the toolkit's, or one of ``commands`` added by ``extensions`` (see
    ``build_parser``)."""
    import warnings

    plain = warnings.formatwarning

    def line(message, category, *args, **kw):
        if issubclass(category, NotConvergedWarning):
            return f"hessbatch: warning: {message}\n"
        return plain(message, category, *args, **kw)

    warnings.formatwarning = line
    args = build_parser(extensions).parse_args(argv)
    from . import progress

    try:
        with progress.disabled() if getattr(args, "no_progress", False) else contextlib.nullcontext():
            return {**COMMANDS, **(commands or {})}[args.command](args)
    except HessbatchError as e:
        print(f"hessbatch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hessbatch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
