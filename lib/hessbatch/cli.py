"""The ``hessbatch`` command line. Bad input: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import contextlib
import sys

from . import __version__, schema
from .commands import COMMANDS
from .errors import HessbatchError, HessbatchWarning, check

EXIT_USAGE = 2


def typed(spec):
    """An argparse ``type`` that parses and checks a flag's value with its spec (``hessbatch.schema``)."""
    def parse(s: str):
        try:
            return spec.parse(s)
        except HessbatchError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__, parse.spec = spec.kind, spec
    return parse


def _guided(s: str) -> dict:
    key, sep, alpha = s.rpartition(":")
    try:
        if not (sep and key):
            raise ValueError
        return {"guide": key, "alpha": float(alpha)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY:ALPHA (a training run and a number), got {s!r}") from None


def _plateau(s: str) -> dict:
    patience, sep, after = s.partition(":")
    try:
        return {"patience": int(patience), "after": int(after or 0)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PATIENCE[:AFTER] (two whole numbers of epochs), got {s!r}") from None


def common_flags(p: argparse.ArgumentParser, data: bool = True) -> None:
    """The store flag, and with ``data`` the data, device and progress flags every computing command takes."""
    p.add_argument("--results", metavar="DIR", help="results folder (default: $HESSBATCH_RESULTS or ./results)")
    if data:
        p.add_argument("--data-root", metavar="DIR", help="torchvision data root (default: $HESSBATCH_DATA or ./data)")
        p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
        p.add_argument("--device", default="cpu", type=typed(schema.DEVICE), help="cpu, cuda, cuda:N or auto (default: cpu)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _train_flags(p: argparse.ArgumentParser, d, suppress: bool = False) -> None:
    """The training options; with ``suppress`` only flags given on the command line are set."""
    from .catalog import LR_SCALINGS, MODELS
    from .config import TrainConfig

    fields = schema.specs(TrainConfig)

    def add(*names, default=None, **kw):
        spec = fields.get(kw.get("dest", names[0][2:].replace("-", "_")))
        if spec is not None and "action" not in kw and "choices" not in kw:
            kw.setdefault("type", typed(spec))
        p.add_argument(*names, default=argparse.SUPPRESS if suppress else default, **kw)

    add("--model", default=d.model, help=f"one of {', '.join(MODELS)}, torchvision:NAME (any torchvision "
        "classification architecture, untrained) or a model an installed package registers in the entry-point group "
        f"hessbatch.models (default: {d.model})")
    add("--dataset", default=d.dataset, help="mnist5k (embedded), mnist, fashion-mnist, cifar10, cifar100 or "
        f"imagefolder:PATH (default: {d.dataset})")
    add("--batch-size", default=d.batch_size, help=f"(default: {d.batch_size})")
    add("--lr", default=d.lr, help=f"learning rate (default: {d.lr})")
    add("--momentum", default=d.momentum, help=f"(default: {d.momentum})")
    add("--weight-decay", default=d.weight_decay, help=f"(default: {d.weight_decay})")
    add("--max-epochs", "--epochs", default=d.max_epochs, dest="max_epochs",
        help=f"epoch cap (default: {d.max_epochs})")
    add("--target-loss", default=d.target_loss,
        help=f"stop once the full training loss is at most this; 'none' to disable (default: {d.target_loss})")
    add("--lr-milestones", default=d.lr_milestones, metavar="E1,E2",
        help="epochs after which the lr is multiplied by --lr-gamma (default: none)")
    add("--lr-gamma", default=d.lr_gamma, help=f"(default: {d.lr_gamma})")
    add("--lr-plateau", type=_plateau, metavar="PATIENCE[:AFTER]",
        help="multiply the lr by --lr-gamma whenever the training loss has not improved for more than PATIENCE "
             "epochs, from the end of epoch AFTER on (torch's ReduceLROnPlateau; default: off)")
    add("--lr-scaling", choices=LR_SCALINGS, default=d.lr_scaling,
        help="linear: lr x batch/--lr-base-batch (Goyal et al.); sqrt: lr x sqrt(batch/--lr-base-batch) "
             "(default: none)")
    add("--lr-base-batch", default=d.lr_base_batch, help=f"(default: {d.lr_base_batch})")
    add("--warmup-epochs", default=d.warmup_epochs, help="linear warm-up from --lr to the scaled lr (default: 0)")
    add("--seed", default=d.seed, help=f"(default: {d.seed})")
    add("--reading", help="which reading of an ambiguous architecture (see `hessbatch.models`); default per model")
    add("--subset", help="keep N training samples per class")
    add("--test-subset", help="keep N test samples per class")
    add("--keep-last", action="store_true", default=False, help="also train on the last, incomplete batch")
    add("--grad-norm", action="store_true", default=False, help="record the full-batch gradient norm every epoch")
    add("--save-every", default=0, help="keep a weight snapshot every N epochs (default: 0)")
    add("--micro-batch", help="accumulate each batch's gradient over chunks of N samples "
        "(BatchNorm statistics per chunk)")
    add("--label-smoothing", help="label smoothing α in [0, 1) (Szegedy et al. 2016)")
    add("--confidence-penalty", help="confidence penalty β in [0, 1) (Pereyra et al. 2017)")
    add("--sample-smoothing", type=_guided, metavar="KEY:ALPHA",
        help="per-sample label smoothing up to ALPHA, from the label entropy of run KEY's late snapshots "
        "(key or unique prefix; our reading of Datta et al.'s TGTSS)")


def _attack_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=typed(schema.integer()), help="fgsm10: number of steps (default: 10)")
    p.add_argument("--alpha", type=typed(schema.number(above=0)), help="fgsm10: step size (default: eps/steps)")
    p.add_argument("--cg-iters", type=typed(schema.integer()), help="fhsm/hess: CG iterations (default: 20)")
    p.add_argument("--cg-tol", type=typed(schema.number(0)), help="fhsm/hess: CG forcing term (default: 1e-3)")
    p.add_argument("--damping", type=typed(schema.number(0)), help="fhsm/hess: Hessian damping (default: 0)")


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr and exit 2, like every other bad input."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"hessbatch: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser(extensions=()) -> argparse.ArgumentParser:
    """The parser of the toolkit's commands; each of ``extensions`` adds its own subcommands
    (``extension(subparsers)``, as the paper layer adds ``book`` and ``compute``)."""
    from .config import TrainConfig
    from .catalog import EXECUTORS
    from .store import KEY, KIND

    run_key = typed(schema.Spec("str", pattern=KEY.pattern, what="a run's key or a unique prefix (1 to 16 hex digits)"))
    kind = typed(schema.Spec("str", pattern=KIND.pattern, what="a kind of entry (e.g. train)"))
    d = TrainConfig()
    parser = OneLineParser(
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
    r.add_argument("--from", dest="parent", metavar="KEY", type=run_key, help="training run to continue (key or unique prefix)")
    r.add_argument("--attack", required=True, type=typed(schema.text()), help="fgsm, fgsm10, grad, fhsm or hess")
    r.add_argument("--eps", type=typed(schema.EPS), required=True, help="attack radius in pixel units ([0, 1] inputs)")
    r.add_argument("--clean-fraction", type=typed(schema.number(0, 1)), default=0.0,
                   help="share of each batch left clean (default: 0)")
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
    s.add_argument("--workers", type=typed(schema.integer()), help="LocalCluster worker processes (default: one per core)")
    s.add_argument("--threads", type=typed(schema.integer(1, 1024)), help="torch threads per run (default: cores / workers)")
    common_flags(s)

    sp = sub.add_parser("spectrum", help="top-k Hessian eigenvalues of a trained run (cached)",
                        description="Top-k eigenvalues of the Hessian of a trained run's loss w.r.t. its weights, "
                        "on the whole train or test set or a seeded subsample (the paper's Fig. 1, 6).")
    sp.add_argument("--run", required=True, metavar="KEY", type=run_key, help="training run key or unique prefix (`hessbatch ls`)")
    sp.add_argument("--split", choices=("train", "test"), default="train", help="(default: train)")
    sp.add_argument("--k", type=typed(schema.integer()), default=20, help="number of eigenvalues (default: 20, the paper's)")
    sp.add_argument("--tol", type=typed(schema.number(above=0, below=1)), default=1e-4, help="relative tolerance per eigenvalue (default: 1e-4)")
    sp.add_argument("--method", choices=("lanczos", "power"), default="lanczos",
                    help="lanczos (default) or the paper's power iteration with deflation")
    sp.add_argument("--which", choices=("largest", "smallest", "magnitude", "both"), default="largest",
                    help="which end of the spectrum (default: largest)")
    sp.add_argument("--subsample", type=typed(schema.integer()), help="Hessian of a random subset of this size (|B_H|)")
    sp.add_argument("--epoch", type=typed(schema.integer(0)), help="a weight snapshot saved during training")
    sp.add_argument("--seed", type=typed(schema.SEED), default=0, help="the subsample's and the start vector's (default: 0)")
    sp.add_argument("--max-iter", type=typed(schema.integer()),
                    help="cap on Hessian-vector products (lanczos, default max(3k+60, 200)) or per eigenvalue "
                    "(power, default 100)")
    common_flags(sp)

    la = sub.add_parser("landscape", help="loss along Hessian eigenvectors of a trained run (cached)",
                        description="Loss and accuracy on the train and test sets along the dominant Hessian "
                        "eigenvector (1d, the paper's Fig. 2/7) or on the plane of the top two (2d, Fig. 3).")
    la.add_argument("--run", required=True, metavar="KEY", type=run_key, help="training run key or unique prefix")
    la.add_argument("--mode", choices=("1d", "2d"), default="1d", help="(default: 1d)")
    la.add_argument("--radius", type=typed(schema.number(above=0)), default=0.5, help="perturbations in [-r, r] (default: 0.5)")
    la.add_argument("--points", type=typed(schema.integer(3, 10_000)), help="points per axis (default: 21 in 1d, 11 in 2d)")
    common_flags(la)

    at = sub.add_parser("attack", help="accuracy of a trained run under attack (cached)",
                        description="Accuracy of a trained run on adversarial versions of its train or test set, "
                        "for one or more attacks and radii (the paper's Tables 1, 3, 4, 7).")
    at.add_argument("--run", required=True, metavar="KEY", type=run_key, help="training run key or unique prefix")
    at.add_argument("--attack", default=("fgsm",), type=typed(schema.items(schema.text(), least=1)), help="comma-separated: fgsm, fgsm10, grad, fhsm, hess (default: fgsm)")
    at.add_argument("--eps", required=True, type=typed(schema.items(schema.EPS, least=1)), help="comma-separated radii in pixel units, e.g. 0.01,0.02")
    at.add_argument("--split", choices=("train", "test"), default="test", help="(default: test)")
    at.add_argument("--source", metavar="KEY", type=run_key,
                    help="craft the examples against this run instead (transfer, as Tables 3/4)")
    at.add_argument("--limit", type=typed(schema.integer()), help="only the first N samples")
    _attack_flags(at)
    common_flags(at)

    ex = sub.add_parser("export", help="copy a store without its weight files and per-sample predictions (small enough to commit)",
                        description="Copy every complete entry of the store to DEST, leaving out weight files "
                        "(*.pt) and chapter 8's per-sample test predictions (probs.csv, summarized in its "
                        "`stability` entry); the book renders from such a store, but cannot measure anything new with it.")
    ex.add_argument("dest", metavar="DEST")
    common_flags(ex, data=False)

    ls = sub.add_parser("ls", help="list what the result store holds")
    ls.add_argument("--kind", type=kind, help="only entries of this kind (e.g. train)")
    common_flags(ls, data=False)

    ve = sub.add_parser("verify", help="check the SHA-256 of every file in the store",
                        description="Reads check only file sizes (and hash small files), so that listing a large "
                        "store is fast; this checks every file's SHA-256 against its entry's manifest and lists "
                        "the entries that fail. With --remove they are deleted, and computed again when next asked for.")
    ve.add_argument("--kind", type=kind, help="only entries of this kind (e.g. train)")
    ve.add_argument("--remove", action="store_true", help="delete the entries that fail")
    common_flags(ve, data=False)
    for extend in extensions:
        extend(sub)
    return parser


def main(argv: list[str] | None = None, extensions=(), commands=None) -> int:
    """Run one command: the toolkit's, or one of ``commands`` added by ``extensions`` (see
    ``build_parser``)."""
    import warnings

    from . import progress

    plain = warnings.formatwarning

    def line(message, category, *args, **kw):
        if issubclass(category, HessbatchWarning):
            return f"hessbatch: warning: {message}\n"
        return plain(message, category, *args, **kw)

    warnings.formatwarning = line
    try:
        args = build_parser(extensions).parse_args(argv)
        _check_folders(args)
        with progress.disabled() if getattr(args, "no_progress", False) else contextlib.nullcontext():
            return {**COMMANDS, **(commands or {})}[args.command](args)
    except SystemExit as e:  # argparse: --help, or one line for a bad argument
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except HessbatchError as e:
        print(f"hessbatch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # the disk, during a computation: one line, not a traceback
        print(f"hessbatch: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hessbatch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain


_READ_ONLY = ("ls", "verify")


def _check_folders(a) -> None:
    """Before anything runs: the environment's variables, and each folder named (store, data,
    destinations) can be one; where something is written, it is writable."""
    import os

    from .store import results_root

    schema.check_environment()
    named = {flag: schema.folder(getattr(a, flag), "--" + flag.replace("_", "-") if flag != "dest" else "DEST")
             for flag in ("results", "data_root", "dest", "out") if getattr(a, flag, None) is not None}
    folders = [results_root(a.results)] if hasattr(a, "results") else []   # the default, or $HESSBATCH_RESULTS
    folders += [named[f] for f in ("dest", "out") if f in named]
    if a.command in _READ_ONLY:
        return
    for folder in folders:
        near = next(p for p in [folder.absolute(), *folder.absolute().parents] if p.exists())
        check(near.is_dir() and os.access(near, os.W_OK | os.X_OK),
              f"cannot write {folder}: {near} is not a writable folder")


if __name__ == "__main__":
    sys.exit(main())
