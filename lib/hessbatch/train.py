"""Training to a target loss with SGD, seeded, resumable, stored by configuration.

Defaults follow the paper where it speaks (no weight decay, no dropout, train until
the training loss is at most 0.001) and are our choices where it is silent (optimizer
settings of the §2 sweep were not recovered: we use SGD, lr 0.01, momentum 0.9, a
constant learning rate; see the book's methods page).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import models
from .errors import HessbatchError, check
from .store import Entry, Store, atomic_torch_save


@dataclass
class TrainConfig:
    """Everything that determines a training run's result (and so its store key)."""

    model: str = "M1"
    dataset: str = "mnist5k"
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_epochs: int = 100
    target_loss: float | None = 1e-3
    lr_milestones: tuple = ()
    lr_gamma: float = 0.1
    lr_scaling: str = "none"
    lr_base_batch: int = 256
    warmup_epochs: int = 0
    seed: int = 0
    reading: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    drop_last: bool = True
    grad_norm: bool = False
    save_every: int = 0
    adversarial: dict | None = None
    init_from: str | None = None
    micro_batch: int | None = None
    label_smoothing: float | None = None
    confidence_penalty: float | None = None
    sample_smoothing: dict | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        check(not unknown, f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"] or ())
        return cls(**d)

    def resolved(self) -> "TrainConfig":
        """Validated copy with the model name and reading made explicit."""
        name = models.canonical_name(self.model)
        data_mod.check_name(self.dataset)
        for fld, lo in (("batch_size", 1), ("max_epochs", 1)):
            v = getattr(self, fld)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"{fld} must be an integer >= {lo}, got {v!r}")
        check(_num(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        check(_num(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        check(_num(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        check(self.target_loss is None or (_num(self.target_loss) and self.target_loss >= 0),
              f"target_loss must be >= 0 or null, got {self.target_loss!r}")
        check(_num(self.lr_gamma) and self.lr_gamma > 0, f"lr_gamma must be > 0, got {self.lr_gamma!r}")
        check(all(isinstance(m, int) and m > 0 for m in self.lr_milestones),
              f"lr_milestones must be positive epoch numbers, got {list(self.lr_milestones)}")
        check(self.lr_scaling in ("none", "linear"), f"lr_scaling must be 'none' or 'linear', got {self.lr_scaling!r}")
        check(isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0, "warmup_epochs must be an integer >= 0")
        check(isinstance(self.save_every, int) and self.save_every >= 0, "save_every must be an integer >= 0")
        check(self.micro_batch is None or (isinstance(self.micro_batch, int) and self.micro_batch >= 1),
              f"micro_batch must be an integer >= 1 or null, got {self.micro_batch!r}")
        for fld in ("label_smoothing", "confidence_penalty"):
            v = getattr(self, fld)
            check(v is None or (_num(v) and 0 <= v < 1), f"{fld} must be in [0, 1) or null, got {v!r}")
        ss = self.sample_smoothing
        if ss is not None:
            check(isinstance(ss, dict) and set(ss) == {"guide", "alpha"} and isinstance(ss["guide"], str)
                  and _num(ss["alpha"]) and 0 <= ss["alpha"] < 1,
                  f"sample_smoothing must be {{guide: <run key>, alpha: in [0, 1)}} or null, got {ss!r}")
            check(not self.label_smoothing, "sample_smoothing and label_smoothing exclude each other")
        reading = self.reading or models.default_reading(name)
        models.choose(f"reading of {name}", reading, models.READINGS[name])
        from .robust import check_adversarial

        return dataclasses.replace(self, model=name, reading=reading, lr_milestones=tuple(self.lr_milestones),
                                   adversarial=check_adversarial(self.adversarial))

    def to_dict(self) -> dict:
        """The configuration as a dict; options added after the first release are left out while
        they keep their default, so that the store keys of earlier runs stay valid."""
        d = dataclasses.asdict(self)
        for name in _LATER_OPTIONS:
            if d[name] is None:
                del d[name]
        return d


_LATER_OPTIONS = ("micro_batch", "label_smoothing", "confidence_penalty", "sample_smoothing")


def config_key(config: TrainConfig | dict) -> str:
    """The store key a training configuration gets (without training it)."""
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    return Store("/").key("train", cfg.resolved().to_dict())


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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class Run:
    """A finished training run in the store."""

    entry: Entry
    cached: bool = False
    _history: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.entry.config["config"])

    @property
    def result(self) -> dict:
        return self.entry.json("result.json")

    @property
    def status(self) -> str:
        return self.result["status"]

    @property
    def history(self) -> pd.DataFrame:
        if self._history is None:
            self._history = self.entry.csv("history.csv")
        return self._history

    def _build(self) -> nn.Module:
        spec = self.result["model_spec"]
        return models.build_model(spec["name"], spec["input_shape"], spec["num_classes"], spec["mean"], spec["std"],
                                  spec["reading"])

    def model(self, device="cpu", epoch: int | None = None) -> nn.Module:
        """The trained model (eval mode); ``epoch`` picks a snapshot saved with ``save_every``, and
        ``epoch=0`` the initialization (rebuilt from the seed, or the ``init_from`` run's weights)."""
        if epoch == 0:
            if self.config.init_from:
                return Run(_parent(Store(self.entry.path.parent.parent), self.config.init_from, "init_from")).model(device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                return self._build().to(device).eval()
        if self.status == "diverged":
            raise HessbatchError(f"run {self.key} diverged at epoch {self.result['epochs']}: it has no weights")
        model = self._build()
        name = "weights.pt" if epoch is None else f"weights-epoch{epoch:04d}.pt"
        if name not in self.entry.files():
            if name in self.entry.omitted():
                raise HessbatchError(f"run {self.key}: its weights were left out of this store (an export without "
                                     f"weights, {self.entry.path.parent.parent}); train it again to measure more")
            raise HessbatchError(f"run {self.key} has no snapshot for epoch {epoch}")
        model.load_state_dict(self.entry.torch(name))
        return model.to(device).eval()

    def point(self, epoch: int | None = None) -> dict:
        """What identifies the weights ``model(epoch=epoch)`` returns, for the store keys of
        measurements: the run and epoch; at epoch 0 the initialization itself (model, data, seed),
        which runs differing only in how they train share, or the ``init_from`` run's final weights."""
        if epoch != 0:
            return {"run": self.key, "epoch": epoch}
        c = self.config
        if c.init_from:
            return {"run": c.init_from, "epoch": None}
        return {"run": None, "epoch": 0, "init": {"model": c.model, "reading": c.reading, "dataset": c.dataset,
                                                  "subset": c.subset, "test_subset": c.test_subset, "seed": c.seed}}

    def snapshot_epochs(self) -> list[int]:
        return [int(f[len("weights-epoch"):-3]) for f in sorted(self.entry.files() + self.entry.omitted())
                if f.startswith("weights-epoch")]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HessbatchError(f"device {device!r} asked for, but no CUDA GPU is available")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in [0, 1]) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    chunk = chunk or (1000 if x.device.type == "cpu" else 8192)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk])
        loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum").double()
        correct += (out.argmax(1) == y[i:i + chunk]).sum()
    model.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def full_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    """‖∇θ L‖₂ of the mean loss over ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(0, len(y), chunk):
        loss = F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk], reduction="sum") / len(y)
        for t, g in zip(total, torch.autograd.grad(loss, params)):
            t += g
    model.train(was_training)
    return torch.sqrt(sum((t * t).sum() for t in total)).item()


def effective_lr(cfg: TrainConfig) -> float:
    """Peak learning rate: ``lr`` scaled by batch/lr_base_batch under linear scaling (Goyal et al.)."""
    return cfg.lr * (cfg.batch_size / cfg.lr_base_batch if cfg.lr_scaling == "linear" else 1.0)


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at fractional epoch ``epoch`` (0-based): warm-up, then step decay."""
    peak = effective_lr(cfg)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr + (peak - cfg.lr) * epoch / cfg.warmup_epochs
    return peak * cfg.lr_gamma ** sum(int(epoch) >= m for m in cfg.lr_milestones)


def prepare(config: TrainConfig | dict, data_root=None, download=False) -> tuple[TrainConfig, data_mod.Dataset]:
    """Validate a configuration and load its data; every bad-input error is raised here."""
    cfg = (TrainConfig.from_dict(config) if isinstance(config, dict) else config).resolved()
    ds = data_mod.load_dataset(cfg.dataset, data_root, download, cfg.subset, cfg.test_subset)
    check_fits(cfg, ds)
    return cfg, ds


def check_fits(cfg: TrainConfig, ds: data_mod.Dataset) -> None:
    """A batch must fit in the training set."""
    check(cfg.batch_size <= ds.n_train,
          f"batch_size {cfg.batch_size} is larger than the training set of {cfg.dataset} ({ds.n_train} samples)")


def train(config: TrainConfig | dict, store: Store | None = None, device="cpu", data_root=None,
          download: bool = False, progress: bool = True, dataset: data_mod.Dataset | None = None,
          step_hook=None) -> Run:
    """Train one configuration, or return it from the store if it is already there.

    An interrupted run resumes from its last finished epoch. A non-finite loss stops
    the run and records it as ``diverged`` (with its history, without weights).
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
    ds = prepare(cfg, data_root, download)[1] if dataset is None else dataset
    check_fits(cfg, ds)
    with store.lock("train", key):
        if (entry := store.get("train", cfg_dict)) is not None:  # finished by another process meanwhile
            return Run(entry, cached=True)
        return _train(cfg, cfg_dict, key, ds, store, device, progress, step_hook)


def _train(cfg, cfg_dict, key, ds, store, device, progress, step_hook) -> Run:
    dev = resolve_device(device)
    ds = ds.to(dev)
    smoothing = None
    if cfg.sample_smoothing:
        from .related import guided_smoothing

        smoothing = guided_smoothing(Run(_parent(store, cfg.sample_smoothing["guide"], "sample_smoothing guide")),
                                     ds, cfg.sample_smoothing["alpha"], dev)

    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model, ds.input_shape, ds.num_classes, ds.mean, ds.std, cfg.reading).to(dev)
    if cfg.init_from:
        try:
            model.load_state_dict(Run(_parent(store, cfg.init_from, "init_from")).entry.torch())
        except RuntimeError as e:
            raise HessbatchError(f"init_from run {cfg.init_from} does not fit {cfg.model} on {cfg.dataset}: "
                                 f"{str(e).splitlines()[0]}") from None
    if cfg.adversarial and step_hook is None:
        from .robust import adversarial_hook

        step_hook = adversarial_hook(cfg.adversarial)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    work = store.work_dir("train", key)
    ckpt = work / "checkpoint.pt"
    start, history, elapsed = 0, [], 0.0
    if ckpt.is_file():
        try:
            state = torch.load(ckpt, map_location=dev, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, history, elapsed = state["epoch"], state["history"], state["elapsed"]
        except Exception:  # a checkpoint from an incompatible run: start over
            start, history, elapsed = 0, [], 0.0

    status = "running"
    bar = _bar(progress, cfg, start)
    epoch = start
    for epoch in range(start + 1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        run_loss = train_epoch(model, opt, ds, cfg, epoch, step_hook, smoothing)
        train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train)
        test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test)
        row = {"epoch": epoch, "lr": lr_at(cfg, epoch - 1), "running_loss": run_loss, "train_loss": train_loss,
               "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
        if cfg.grad_norm:
            row["grad_norm"] = full_gradient_norm(model, ds.x_train, ds.y_train)
        elapsed += time.perf_counter() - t0
        row["time_s"] = elapsed
        history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4g}", test_acc=f"{test_acc:.4f}")
        if not (math.isfinite(run_loss) and math.isfinite(train_loss)):
            status = "diverged"
            break
        if cfg.save_every and epoch % cfg.save_every == 0:
            atomic_torch_save(model.state_dict(), work / f"weights-epoch{epoch:04d}.pt")
        reached = cfg.target_loss is not None and train_loss <= cfg.target_loss
        if reached or epoch == cfg.max_epochs:
            status = "converged" if reached else "capped"
            break
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                           "history": history, "elapsed": elapsed}, ckpt)
    if bar is not None:
        bar.close()
    if status == "running":  # resumed a checkpoint at the last epoch
        status = "capped"

    last = history[-1] if history else {}
    result = {"status": status, "epochs": epoch, "key": key, "train_loss": last.get("train_loss"),
              "train_acc": last.get("train_acc"), "test_loss": last.get("test_loss"),
              "test_acc": last.get("test_acc"), "time_s": elapsed, "device": str(dev),
              "dataset_label": ds.label, "n_train": ds.n_train, "n_test": len(ds.y_test),
              "n_params": models.n_params(model), "torch": torch.__version__,
              "model_spec": {"name": cfg.model, "reading": cfg.reading, "input_shape": list(ds.input_shape),
                             "num_classes": ds.num_classes, "mean": list(ds.mean), "std": list(ds.std)}}
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
                step_hook=None, smoothing: torch.Tensor | None = None) -> float:
    """One epoch of SGD over ``ds`` (already on the model's device); returns the mean batch loss.
    ``smoothing`` holds a label-smoothing α per training sample.

    The shuffle is fixed by (seed, epoch); the learning rate follows ``lr_at`` step by step;
    nothing waits for the GPU until the epoch's end.
    """
    n = ds.n_train
    steps = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    dev = ds.x_train.device
    model.train()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(dev)
    run_loss = torch.zeros((), device=dev)
    for s in range(steps):
        idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch - 1 + s / steps)
        opt.zero_grad(set_to_none=True)
        for part in idx.split(cfg.micro_batch or len(idx)):
            xb, yb = ds.x_train[part], ds.y_train[part]
            if step_hook is not None:
                xb, yb = step_hook(model, xb, yb)
            alpha = None if smoothing is None else smoothing[part]
            loss = training_loss(model(xb), yb, cfg, alpha) * (len(part) / len(idx))
            loss.backward()
            run_loss += loss.detach()
        opt.step()
    return run_loss.item() / steps


def _parent(store: Store, key: str, option: str) -> Entry:
    entry = store.get("train", key=key)
    if entry is None:
        raise HessbatchError(f"{option} run {key} is not in the store at {store.root}")
    return entry


def _bar(progress: bool, cfg: TrainConfig, start: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_epochs, initial=start, unit="epoch", dynamic_ncols=True, leave=False,
                desc=f"{cfg.model}/{cfg.dataset} B={cfg.batch_size}")
