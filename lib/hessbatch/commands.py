"""What each of the toolkit's commands does (``hessbatch.cli`` parses them): ``COMMANDS`` maps a
command's name to a function of its parsed arguments that returns the exit code."""

from __future__ import annotations

from .errors import HessbatchError, check


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


def _attack_options(a, name: str) -> dict:
    from . import attacks
    from .errors import check_options

    attack = attacks.get(name)
    given = {k: getattr(a, k) for k in ("steps", "alpha", "cg_iters", "cg_tol", "damping") if getattr(a, k) is not None}
    check_options(attack.function, given, f"attack {attack.name}", spell=lambda n: "--" + n.replace("_", "-"),
                  values=True)
    return given


def _cmd_train(a) -> int:
    from .config import TrainConfig

    cfg = TrainConfig.from_dict(_config_from_args(a, {})).resolved()   # names and values first, before torch
    from .devices import resolve_device
    from .store import Store
    from .train import train

    resolve_device(a.device)
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
    if a.parent is not None:
        parent = resolve_run(a.parent, store)
        base = {**parent.config.to_dict(), "init_from": parent.key, "max_epochs": 5, "target_loss": None,
                "lr_milestones": (), "lr_plateau": None, "warmup_epochs": 0, "lr_scaling": "none", "save_every": 0, "grad_norm": False}
    adversarial = {"attack": a.attack, "eps": a.eps, "clean_fraction": a.clean_fraction,
                   **_attack_options(a, a.attack)}
    cfg = TrainConfig.from_dict({**_config_from_args(a, base), "adversarial": adversarial})
    run = train(cfg, store, device=a.device, data_root=a.data_root, download=a.download, progress=not a.no_progress)
    _report(run)
    return 0


def _cmd_attack(a) -> int:
    import pandas as pd

    from .measurements import adversarial_accuracy
    from .store import Store

    store = Store(a.results)
    names, eps = list(a.attack), list(a.eps)
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
    from .config import TrainConfig
    from .params import expand_grid, load_sweep

    configs = expand_grid(load_sweep(a.params))
    for i, c in enumerate(configs):   # every run's options, before torch and before the store
        try:
            TrainConfig.from_dict(c).resolved()
        except HessbatchError as e:
            raise HessbatchError(f"{a.params}: run {i + 1} of {len(configs)}: {e}") from None
    from .devices import resolve_device
    from .store import Store
    from .sweep import run_sweep

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
    _check_kind(store, a.kind)
    entries, skipped = store.entries(a.kind), store.invalid(a.kind)
    note = (f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} skipped: incomplete, or files that do not "
            "match their manifest (they are computed again when asked for; `hessbatch verify --remove` deletes "
            "them)") if skipped else ""
    if not entries:
        print(f"the store at {store.root} is empty" + (f"; {note}" if note else ""))
        return 0
    import pandas as pd

    trained = {e.key: e.config["config"] for e in (entries if a.kind in (None, "train") else store.entries("train"))
               if e.kind == "train"}
    rows = []
    for e in entries:
        c = e.config["config"]
        run = c.get("run") or c.get("run_a")   # a measurement: the run it measured, as that run's row says
        of = trained.get(run, {}) if isinstance(run, str) else c
        row = {"kind": e.kind, "key": e.key, "model": of.get("model"), "dataset": of.get("dataset"),
               "batch_size": of.get("batch_size"), "seed": of.get("seed"),
               "run": run[:8] if isinstance(run, str) else "", "split": c.get("split", "")}
        if (e.path / "result.json").is_file():
            r = e.json()
            row.update(status=r.get("status"), epochs=r.get("epochs"), train_loss=r.get("train_loss"),
                       test_acc=r.get("test_acc"))
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))
    if note:
        print(note)
    return 0


def _check_kind(store, kind: str | None) -> None:
    from .errors import choose
    from .store import check_kind

    if kind is not None:
        choose(f"kind of entry in {store.root}", check_kind(kind), store.kinds())


def _cmd_verify(a) -> int:
    from .store import Store

    store = Store(a.results)
    check(store.root.is_dir(), f"no result store at {store.root}")
    _check_kind(store, a.kind)
    if a.remove:
        store.clean()
    n, bad = store.verify(a.kind)
    for e in bad:
        print(f"corrupt: {e.kind}/{e.key}")
        if a.remove:
            store.remove(e)
    print(f"{n} entries checked, {len(bad)} corrupt" + (" (removed)" if bad and a.remove else ""))
    return 1 if bad and not a.remove else 0


COMMANDS = {"train": _cmd_train, "robust-train": _cmd_robust_train, "attack": _cmd_attack, "sweep": _cmd_sweep,
            "spectrum": _cmd_spectrum, "landscape": _cmd_landscape, "export": _cmd_export, "ls": _cmd_ls,
            "verify": _cmd_verify}
