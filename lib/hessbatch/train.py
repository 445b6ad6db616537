"""Training to a target loss with SGD, seeded, resumable, stored by configuration
(``TrainConfig``, in ``hessbatch.config``)."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
import warnings

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import captured as captured_mod
from . import data as data_mod
from . import catalog, checkpoints, fastpath, models, progress
from .config import TrainConfig, epoch_lr, lr_at, plateau_scale
from .devices import cpu_model, resolve_device
from .errors import HessbatchError, NotInStore, ResumeWarning, check, describe
from .evaluation import evaluate, full_gradient_norm
from .runs import Run, parent_entry
from .store import Store, atomic_torch_save, file_sha256


def training_loss(out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                  smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """The loss SGD minimizes: cross-entropy, with optional label smoothing (Szegedy et al. 2016),
    per-sample label smoothing ``smoothing`` (one α per row of ``out``) and confidence penalty
    −β·H(softmax) (Pereyra et al. 2017). Reported losses are plain CE."""
    if smoothing is None:
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing or 0.0)
    else:
        logp = F.log_softmax(out, 1)
        nll = -logp.gather(1, y[:, None])[:, 0]
        loss = ((1 - smoothing) * nll - smoothing * logp.mean(1)).mean()
    if cfg.confidence_penalty:
        logp = F.log_softmax(out, 1)
        loss = loss + cfg.confidence_penalty * (logp.exp() * logp).sum(1).mean()
    return loss


def prepare(config: TrainConfig | dict, data_root=None, download=False) -> tuple[TrainConfig, data_mod.Dataset]:
    """Validate a configuration and load its data; every bad-input error is raised here."""
    cfg = (TrainConfig.from_dict(config) if isinstance(config, dict) else config).resolved()
    ds = data_mod.load_dataset(cfg.dataset, data_root, download, cfg.subset, cfg.test_subset)
    check_fits(cfg, ds)
    return cfg, ds


def check_fits(cfg: TrainConfig, ds: data_mod.Dataset) -> None:
    """A batch must fit in the training set, and a model from outside the paper must take the data
    (built once here: its own check of the inputs and outputs, before the store is touched)."""
    check(cfg.batch_size <= ds.n_train,
          f"batch_size {cfg.batch_size} is larger than the training set of {cfg.dataset} ({ds.n_train} samples)")
    if catalog.is_external(cfg.model):
        with torch.random.fork_rng(devices=[]):   # the caller's random state stays as it was
            models.build_model(cfg.model, ds.input_shape, ds.num_classes, ds.mean, ds.std, cfg.reading)


def train(config: TrainConfig | dict, store: Store | None = None, device="cpu", data_root=None,
          download: bool = False, progress: bool = True, dataset: data_mod.Dataset | None = None,
          step_hook=None) -> Run:
    """Train one configuration, or return it from the store if it is already there.

    An interrupted run resumes from its last finished epoch. A non-finite loss stops
    the run and records it as ``diverged`` (with its history, without weights), as does a collapse
    to a constant output (``collapsed``).
    With ``config.adversarial`` set, each batch is replaced by adversarial examples
    (robust training, see ``hessbatch.robust``); ``step_hook(model, x, y)`` may replace a
    batch in any other way.
    """
    cfg = (TrainConfig.from_dict(config) if isinstance(config, dict) else config).resolved()
    store = store or Store()
    cfg_dict = cfg.to_dict()
    if (entry := store.get("train", cfg_dict)) is not None:
        return Run(entry, cached=True)
    key = store.key("train", cfg_dict)
    if store.read_only:
        raise NotInStore(f"training run {key} is not in the read-only store at {store.root}")
    ds = prepare(cfg, data_root, download)[1] if dataset is None else dataset
    check_fits(cfg, ds)
    with store.lock("train", key):
        if (entry := store.get("train", cfg_dict)) is not None:  # finished by another process meanwhile
            return Run(entry, cached=True)
        return _train(cfg, key, ds, store, resolve_device(device), progress, step_hook)


def _train(cfg, key, ds, store, dev, show, step_hook) -> Run:
    ds = ds.to(dev)
    smoothing = None
    if cfg.sample_smoothing:
        from .sample_smoothing import guided_smoothing

        guide = Run(parent_entry(store, cfg.sample_smoothing["guide"], "sample_smoothing guide"))
        smoothing = guided_smoothing(guide, ds, cfg.sample_smoothing["alpha"], dev)
    model = _initial_model(cfg, ds, dev)
    if cfg.init_from:
        try:
            model.load_state_dict(Run(parent_entry(store, cfg.init_from, "init_from")).entry.torch())
        except RuntimeError as e:
            raise HessbatchError(f"init_from run {cfg.init_from} does not fit {cfg.model} on {cfg.dataset}: "
                                 f"{str(e).splitlines()[0]}") from None
    if cfg.adversarial and step_hook is None:
        from .robust import adversarial_hook

        step_hook = adversarial_hook(cfg.adversarial)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    work = store.work_dir("train", key)
    start, history, elapsed, resumed, snapshots = _resume(work / "checkpoint.pt", model, opt, dev, key, cfg.max_epochs)
    captured, step_path = _captured_step(model, opt, ds, cfg, dev, step_hook, smoothing)
    forward, step_path = _forward(model, ds, cfg, dev, captured, step_path, step_hook, smoothing)
    parts = cfg.micro_batch or fastpath.training_parts(model, ds.x_train, cfg.batch_size, dev, step_hook)
    bar = progress.bar(total=cfg.max_epochs, initial=start, unit="epoch", show=show,
                       desc=f"{cfg.model}/{cfg.dataset} B={cfg.batch_size}")
    with bar:
        status, epoch = _epochs(model, opt, ds, cfg, start, history, elapsed, resumed, work, bar, step_hook,
                                smoothing, captured, forward, key, snapshots, parts)
    return _publish(cfg, key, ds, store, dev, model, status, epoch, history, work, resumed, step_path, snapshots,
                    parts)


def _initial_model(cfg: TrainConfig, ds: data_mod.Dataset, dev) -> nn.Module:
    """The run's model at its seeded initialization, on ``dev``, in its fastest layout (``hessbatch.fastpath``)."""
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model, ds.input_shape, ds.num_classes, ds.mean, ds.std, cfg.reading)
    return fastpath.to_fast(model, dev)


def check_capture(config: TrainConfig | dict, device, data_root=None, steps: int = 5) -> dict:
    """``captured.self_check`` on a configuration's model and data: a few steps replayed from a CUDA
    graph against the same eager steps (on a CPU, the graph's body run eagerly)."""
    cfg, ds = prepare(config, data_root)
    dev = resolve_device(device)
    model = _initial_model(cfg, ds, dev)
    return captured_mod.self_check(model, ds.to(dev), cfg, training_loss, steps, capture=dev.type == "cuda")


def _captured_step(model, opt, ds, cfg, dev, step_hook, smoothing):
    """The run's full-size step in a CUDA graph where graphs are enabled and the step is plain, else
    None; and which path trained, for the run's result. A capture that fails falls back to eager steps."""
    if not captured_mod.enabled(dev):
        return None, "eager"
    if step_hook is not None or cfg.micro_batch:
        return None, "eager (a step hook or micro-batches are not captured)"
    try:
        return captured_mod.CapturedStep(model, opt, ds, cfg, training_loss, smoothing), "cuda-graph"
    except Exception as e:  # noqa: BLE001 -- whatever stops a capture, the eager step trains the same run
        why = describe(e)
        warnings.warn(f"CUDA graph capture failed ({why}); training with eager steps", RuntimeWarning, stacklevel=3)
        return None, f"eager (capture failed: {why})"


def _forward(model, ds, cfg, dev, captured, step_path, step_hook, smoothing):
    """What a step's forward goes through (the model, or its compiled form where
    ``fastpath.compiles`` says it pays) and the path the run records."""
    if captured is not None or step_hook is not None or smoothing is not None \
            or not fastpath.compiles(model, cfg.batch_size, dev):
        return model, step_path
    first = torch.arange(min(cfg.micro_batch or cfg.batch_size, ds.n_train), device=dev)
    return fastpath.compiled_forward(model, ds.x_train[first], ds.y_train[first],
                                     lambda out, y: training_loss(out, y, cfg))


def _resume(ckpt, model, opt, dev, key: str, max_epochs: int) -> tuple[int, list, float, list, dict]:
    """The epoch, history, training time, earlier resumes and snapshot hashes of an interrupted run's
    checkpoint (loaded into ``model`` and ``opt``), or a fresh start. A checkpoint that cannot be read,
    whose hash does not match or whose fields do not fit the run (``hessbatch.checkpoints``) is set
    aside with a warning, not silently ignored."""
    if not ckpt.is_file():
        return 0, [], 0.0, [], {}
    try:
        state = checkpoints.load(ckpt, dev)
        checkpoints.check(state, key, max_epochs)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return (state["epoch"], state["history"], state["elapsed"], [*state.get("resumed", []), state["epoch"]],
                dict(state.get("snapshots", {})))
    except (RuntimeError, KeyError, ValueError, EOFError, TypeError, pickle.UnpicklingError) as e:
        bad = ckpt.parent.parent / f".{ckpt.parent.name}.unreadable-checkpoint.pt"
        os.replace(ckpt, bad)
        warnings.warn(f"the checkpoint of this run could not be resumed ({describe(e)}); it is kept as {bad} "
                      "and training starts over", ResumeWarning, stacklevel=3)
        return 0, [], 0.0, [], {}


SCHEDULE = ("lr_milestones", "lr_gamma", "lr_plateau")


def adopt(old: TrainConfig | dict, new: TrainConfig | dict, store: Store) -> int:
    """Carry the unfinished run ``old``'s checkpoint to run ``new``, whose options differ from its
    only in the learning-rate schedule (``SCHEDULE``) and whose rate equals its rate in every epoch
    the checkpoint has trained: the shuffle depends on the seed and the epoch only, so resuming it
    gives, bit for bit, what training ``new`` from the start gives. Returns the epochs carried (0
    when ``old`` has no checkpoint); ``new``'s result records them as ``adopted_from``."""
    old_cfg, new_cfg = (TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in (old, new))
    old_cfg, new_cfg = old_cfg.resolved(), new_cfg.resolved()
    a, b = old_cfg.to_dict(), new_cfg.to_dict()
    other = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in SCHEDULE)
    check(not other, f"the runs differ in {', '.join(other)}, not only in their learning-rate schedule")
    old_key, new_key = store.key("train", a), store.key("train", b)
    check(store.get("train", key=new_key) is None, f"run {new_key} is already trained")
    src, dst = store.work_dir("train", old_key), store.work_dir("train", new_key)
    with store.lock("train", old_key), store.lock("train", new_key):
        if not (src / "checkpoint.pt").is_file():
            return 0
        check(not (dst / "checkpoint.pt").is_file(), f"run {new_key} has a checkpoint of its own in {dst}")
        try:
            state = checkpoints.load(src / "checkpoint.pt")
            checkpoints.check(state, old_key, old_cfg.max_epochs)
        except (RuntimeError, KeyError, ValueError, EOFError, TypeError, pickle.UnpicklingError) as e:
            raise HessbatchError(f"the checkpoint of run {old_key} cannot be carried: {describe(e)}") from None
        epochs, losses = state["epoch"], [r.get("train_loss") for r in state["history"]]
        differ = next((e for e in range(1, epochs + 1)
                       if epoch_lr(old_cfg, e, losses) != epoch_lr(new_cfg, e, losses)), None)
        check(differ is None, f"the schedules differ from epoch {differ}, which run {old_key} has trained")
        check(epochs < new_cfg.max_epochs, f"run {old_key} has trained {epochs} epochs, run {new_key} stops at "
                                           f"{new_cfg.max_epochs}")
        dst.mkdir(parents=True, exist_ok=True)
        for snap in src.glob("weights-epoch*.pt"):
            os.replace(snap, dst / snap.name)
        (dst / "adopted.json").write_text(json.dumps({"key": old_key, "epochs": epochs}))
        checkpoints.save({**state, "key": new_key}, dst / "checkpoint.pt")
        shutil.rmtree(src)
    return epochs


def in_progress(store: Store, key: str) -> dict | None:
    """Where an unfinished training run stands, from its last per-epoch checkpoint: ``epoch``,
    ``elapsed`` (seconds of training), ``resumed`` and the last row of its history (losses,
    accuracies); ``None`` if it has no checkpoint."""
    ckpt = store.work_dir("train", key) / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    try:
        state = checkpoints.load(ckpt)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    last = state["history"][-1] if state.get("history") else {}
    return {**last, "epoch": state["epoch"], "elapsed": state["elapsed"], "resumed": state.get("resumed", [])}


def _epochs(model, opt, ds, cfg, start, history, elapsed, resumed, work, bar, step_hook,
            smoothing, captured=None, forward=None, key: str = "", snapshots: dict | None = None,
            parts: int | None = None) -> tuple[str, int]:
    """Train from epoch ``start`` until the target loss, the cap or divergence; checkpoint every epoch.
    ``snapshots`` collects each weight snapshot's SHA-256 (its file name → digest)."""
    snapshots = {} if snapshots is None else snapshots
    epoch = start
    for epoch in range(start + 1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        scale = plateau_scale(cfg, [r["train_loss"] for r in history])
        run_loss = train_epoch(model, opt, ds, cfg, epoch, step_hook, smoothing, captured, forward, scale, parts)
        train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train)
        test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test)
        row = {"epoch": epoch, "lr": lr_at(cfg, epoch - 1) * scale, "running_loss": run_loss, "train_loss": train_loss,
               "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        if cfg.grad_norm:
            row["grad_norm"] = full_gradient_norm(model, ds.x_train, ds.y_train)
        elapsed += time.perf_counter() - t0
        row["time_s"] = elapsed
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.4g}", test_acc=f"{test_acc:.4f}")
        if not (math.isfinite(run_loss) and math.isfinite(train_loss)) or \
                collapsed([r["train_loss"] for r in history], ds.num_classes):
            return "diverged", epoch
        if cfg.save_every and epoch % cfg.save_every == 0:
            name = f"weights-epoch{epoch:04d}.pt"
            snapshots[name] = atomic_torch_save(model.state_dict(), work / name)
        reached = cfg.target_loss is not None and train_loss <= cfg.target_loss
        if reached or epoch == cfg.max_epochs:
            return ("converged" if reached else "capped"), epoch
        checkpoints.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "key": key,
                          "history": history, "elapsed": elapsed, "resumed": resumed, "snapshots": snapshots},
                         work / "checkpoint.pt")
    return "capped", epoch  # resumed a checkpoint of the last epoch


def collapsed(losses, classes: int, epochs: int = 2) -> bool:
    """Whether training losses (one per epoch) end with ``epochs`` epochs at the loss of a uniform
    prediction, ln ``classes`` (within 1 %), after having fallen below half of it: the network has
    collapsed to a constant output instead of learning, which a run counts as divergence."""
    losses, chance = list(losses), math.log(classes)
    return (len(losses) > epochs and min(losses[:-epochs]) < chance / 2
            and all(x >= 0.99 * chance for x in losses[-epochs:]))


def _publish(cfg, key, ds, store, dev, model, status, epoch, history, work, resumed, step_path="eager",
             snapshots: dict | None = None, parts: int | None = None) -> Run:
    """Write the finished run into the store (history, result, weights and snapshots) and drop its work
    folder. A snapshot whose bytes are not those written (its hash in ``snapshots``) stops it."""
    for snap in sorted(work.glob("weights-epoch*.pt")):
        check(snap.name not in (snapshots or {}) or file_sha256(snap) == snapshots[snap.name],
              f"the weight snapshot {snap} changed after it was written; delete {work} to train run {key} again")
    last = history[-1] if history else {}
    result = {"status": status, "epochs": epoch, "key": key, "train_loss": last.get("train_loss"),
              "train_acc": last.get("train_acc"), "test_loss": last.get("test_loss"),
              "test_acc": last.get("test_acc"), "time_s": last.get("time_s", 0.0), "device": str(dev),
              "step": step_path, "parts": parts, "memory_format": fastpath.format_name(fastpath.memory_format(model, dev)),
              "threads": torch.get_num_threads(), "cpu": cpu_model(), "dataset_label": ds.label, "n_train": ds.n_train, "n_test": len(ds.y_test),
              "n_params": models.n_params(model), "torch": torch.__version__, "resumed_from": resumed,
              "model_spec": {"name": cfg.model, "reading": cfg.reading, "input_shape": list(ds.input_shape),
                             "num_classes": ds.num_classes, "mean": list(ds.mean), "std": list(ds.std)}}
    if (adopted := work / "adopted.json").is_file():
        result["adopted_from"] = json.loads(adopted.read_text())
    cfg_dict = cfg.to_dict()
    with store.writer("train", cfg_dict) as tmp:
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        (tmp / "result.json").write_text(pd.Series(result).to_json(indent=2))
        if status != "diverged":
            torch.save(model.state_dict(), tmp / "weights.pt")
            for snap in sorted(work.glob("weights-epoch*.pt")):
                shutil.copy2(snap, tmp / snap.name)
    shutil.rmtree(work, ignore_errors=True)
    return Run(store.get("train", cfg_dict))


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, ds: data_mod.Dataset, cfg: TrainConfig, epoch: int,
                step_hook=None, smoothing: torch.Tensor | None = None,
                captured: captured_mod.CapturedStep | None = None, forward=None, lr_scale: float = 1.0,
                parts: int | None = None) -> float:
    """One epoch of SGD over ``ds`` (already on the model's device); returns the mean batch loss.
    ``smoothing`` holds a label-smoothing α per training sample. With ``captured``, full-size
    steps replay its CUDA graph and a last partial batch (``drop_last=False``) is stepped eagerly.
    ``forward``: what the batches go through (``model`` by default; its compiled form, say).
    ``parts``: samples per part of a step, whose gradients are summed before the update
    (default ``cfg.micro_batch``; None: the whole batch in one pass).

    The shuffle is fixed by (seed, epoch); the learning rate follows ``lr_at`` step by step, times
    ``lr_scale`` (the plateau rule's factor for this epoch);
    nothing waits for the GPU until the epoch's end.
    """
    n = ds.n_train
    steps = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    dev = ds.x_train.device
    model.train()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(dev)
    run_loss = torch.zeros((), device=dev)
    if captured is not None:
        captured.total.zero_()
    for s in range(steps):
        idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        lr = lr_at(cfg, epoch - 1 + s / steps) * lr_scale
        if captured is not None and len(idx) == cfg.batch_size:
            captured.step(idx, lr)
            continue
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for part in idx.split(parts or cfg.micro_batch or len(idx)):
            xb, yb = ds.x_train[part], ds.y_train[part]
            if step_hook is not None:
                xb, yb = step_hook(model, xb, yb)
            alpha = None if smoothing is None else smoothing[part]
            loss = training_loss((forward or model)(xb), yb, cfg, alpha) * (len(part) / len(idx))
            loss.backward()
            run_loss += loss.detach()
        opt.step()
    if captured is not None:
        run_loss += captured.total
    return run_loss.item() / steps
