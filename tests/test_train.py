import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hessbatch import HessbatchError, checkpoints
from hessbatch.store import Store
from hessbatch.config import TrainConfig, lr_at
from hessbatch.train import collapsed, prepare, train


def _same_weights(a, b):
    sa, sb = a.entry.torch(), b.entry.torch()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seed_fixes_the_result(tmp_path, tiny_cfg):
    a = train(tiny_cfg, Store(tmp_path / "a"), progress=False)
    b = train(tiny_cfg, Store(tmp_path / "b"), progress=False)
    c = train({**tiny_cfg, "seed": 1}, Store(tmp_path / "c"), progress=False)
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert a.history["train_loss"].tolist() == b.history["train_loss"].tolist()
    assert a.status == "capped" and a.result["epochs"] == 3 and len(a.history) == 3


def test_epoch_zero_is_the_initialization(tmp_path, tiny_cfg):
    """``Run.model(epoch=0)`` rebuilds the weights the first SGD step saw, without touching the
    global RNG; a continuation's epoch 0 is its parent's final model."""
    seen = {}

    def hook(model, x, y):
        seen.setdefault("init", {k: v.clone() for k, v in model.state_dict().items()})
        return x, y

    run = train(tiny_cfg, Store(tmp_path), progress=False, step_hook=hook)
    state = torch.get_rng_state()
    init = run.model(epoch=0).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(init[k], seen["init"][k]) for k in init)
    assert not all(torch.equal(init[k], run.model().state_dict()[k]) for k in init)
    more = train({**tiny_cfg, "init_from": run.key, "max_epochs": 1}, Store(tmp_path), progress=False)
    assert all(torch.equal(more.model(epoch=0).state_dict()[k], run.model().state_dict()[k]) for k in init)
    # measurement keys: runs that differ only in how they train share their initialization
    other = train({**tiny_cfg, "batch_size": 25, "max_epochs": 1}, Store(tmp_path), progress=False)
    assert other.weights_id(0) == run.weights_id(0) and run.weights_id(0)["init"]["seed"] == tiny_cfg.get("seed", 0)
    assert run.weights_id(2) == {"run": run.key, "epoch": 2} and run.weights_id() == {"run": run.key, "epoch": None}
    assert more.weights_id(0) == run.weights_id() != train({**tiny_cfg, "seed": 1, "max_epochs": 1}, Store(tmp_path),
                                                 progress=False).weights_id(0)


def test_second_call_comes_from_the_store(tmp_path, tiny_cfg, monkeypatch):
    store = Store(tmp_path)
    first = train(tiny_cfg, store, progress=False)

    def no_compute(*a, **k):
        raise AssertionError("a cached run must not load data or build a model")

    monkeypatch.setattr("hessbatch.train.prepare", no_compute)
    monkeypatch.setattr("hessbatch.models.build_model", no_compute)
    again = train(tiny_cfg, store, progress=False)
    assert again.cached and not first.cached and again.key == first.key
    assert _same_weights(first, again)


def test_reaches_target_loss_and_stops(tmp_path, tiny_cfg):
    run = train({**tiny_cfg, "max_epochs": 200, "target_loss": 0.05, "lr": 0.1}, Store(tmp_path), progress=False)
    h = run.history
    assert run.status == "converged" and h["train_loss"].iloc[-1] <= 0.05
    assert (h["train_loss"].iloc[:-1] > 0.05).all() and len(h) < 200
    model = run.model()
    x, y = prepare(run.config)[1].split("train")
    loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert loss == pytest.approx(h["train_loss"].iloc[-1], rel=1e-5)


def test_divergence_is_recorded_not_saved(tmp_path, tiny_cfg):
    run = train({**tiny_cfg, "lr": 1e6, "momentum": 0.9}, Store(tmp_path), progress=False)
    assert run.status == "diverged" and "weights.pt" not in run.entry.files()
    assert not math.isfinite(run.history["train_loss"].iloc[-1])
    with pytest.raises(HessbatchError, match="diverged"):
        run.model()


# C1 at B = 16 on CIFAR-10 (lr 0.02, momentum 0.9), epochs 25-32: it fell to ln 10 and stayed there
C1_B16 = [1.04485, 1.35314, 1.23217, 1.15005, 1.72962, 2.30576, 2.30285, 2.30338]


@pytest.mark.parametrize("losses, out", [
    (C1_B16, True), (C1_B16[:-1], True), (C1_B16[:-2], False),       # two epochs at chance, not one
    ([2.31, 2.305, 2.303, 2.302], False),                            # never learned: a slow start, not a collapse
    ([2.275, 3.43, 1.19, 0.28], False),                              # a spike that came back (M1, warm-up to lr 0.16)
    ([0.9, 0.5, 2.2, 2.2], False),                                   # not at ln 10 (within 1 %)
    ([0.5, 2.29, 2.29], True), ([0.5, 2.29], False)])
def test_collapse_to_a_constant_output(losses, out):
    assert collapsed(losses, 10) is out
    assert collapsed([x * math.log(2) / math.log(10) for x in losses], 2) is out   # ln C scales with C


def test_a_collapsed_run_stops_as_diverged(tmp_path, tiny_cfg, monkeypatch):
    from hessbatch import train as train_mod
    real, calls = train_mod.evaluate, []

    def evaluate(model, x, y):   # each epoch evaluates train then test; from the third epoch on, chance
        calls.append(1)
        loss, acc = real(model, x, y)
        return (math.log(10), 0.1) if len(calls) > 4 else (min(loss, 0.5), acc)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    run = train({**tiny_cfg, "max_epochs": 10}, Store(tmp_path), progress=False)
    assert run.status == "diverged" and run.result["epochs"] == 4 and "weights.pt" not in run.entry.files()
    assert run.history["train_loss"].tolist()[2:] == [math.log(10)] * 2


def test_grad_norm_and_snapshots(tmp_path, tiny_cfg):
    run = train({**tiny_cfg, "grad_norm": True, "save_every": 1}, Store(tmp_path), progress=False)
    assert (run.history["grad_norm"] > 0).all()
    assert run.snapshot_epochs() == [1, 2, 3]
    final, last = run.model(), run.model(epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values()))


def test_lr_schedule():
    cfg = TrainConfig(lr=0.1, lr_milestones=(2, 4), lr_gamma=0.5)
    assert [lr_at(cfg, e) for e in (0, 1.9, 2, 3.5, 4)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    goyal = TrainConfig(lr=0.1, batch_size=1024, lr_scaling="linear", lr_base_batch=256, warmup_epochs=5)
    assert lr_at(goyal, 0) == pytest.approx(0.1) and lr_at(goyal, 2.5) == pytest.approx(0.25)
    assert lr_at(goyal, 5) == pytest.approx(0.4) and lr_at(goyal, 50) == pytest.approx(0.4)
    root = TrainConfig(lr=0.01, batch_size=256, lr_scaling="sqrt", lr_base_batch=16, warmup_epochs=2)
    assert lr_at(root, 0) == pytest.approx(0.01) and lr_at(root, 1) == pytest.approx(0.025)
    assert lr_at(root, 2) == pytest.approx(0.04) and lr_at(root, 9) == pytest.approx(0.04)  # 0.01·√16
    assert lr_at(TrainConfig(lr=0.01, batch_size=4, lr_scaling="sqrt", lr_base_batch=16), 0) == pytest.approx(0.005)


@pytest.mark.parametrize("seed", range(5))
def test_plateau_rule_is_torchs_reduce_on_plateau(seed):
    """From ``after`` = 0 on, the plateau rule's rate per epoch is that of torch's ReduceLROnPlateau
    (mode min, relative threshold, no cooldown) fed the same losses."""
    from hessbatch.config import epoch_lr, plateau_scale

    g = torch.Generator().manual_seed(seed)
    losses = (0.3 * torch.rand(60, generator=g) + torch.linspace(1.0, 0.2, 60)).tolist()   # noisy, slowly falling
    cfg = TrainConfig(lr=0.02, lr_gamma=0.2, lr_plateau={"patience": 3, "after": 0}).resolved()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.2, patience=3, threshold=1e-4, eps=0)
    expected = [0.02]
    for loss in losses:
        ref.step(loss)
        expected.append(opt.param_groups[0]["lr"])
    ours = [epoch_lr(cfg, e, losses) for e in range(1, 62)]
    assert ours == pytest.approx(expected, rel=1e-12) and min(expected) < 0.02 * 0.2   # it did decay, twice or more
    assert plateau_scale(TrainConfig(lr_plateau=None), losses) == 1.0


def test_plateau_rule_waits_for_its_first_epoch():
    """A loss flat from the start: no decay before the end of epoch ``after``, then one every patience + 1 epochs."""
    from hessbatch.config import epoch_lr

    cfg = TrainConfig(lr=1.0, lr_gamma=0.5, lr_plateau={"patience": 2, "after": 6}).resolved()
    assert cfg.lr_plateau == {"patience": 2, "after": 6, "threshold": 1e-4} and cfg.model == TrainConfig().resolved().model
    assert [epoch_lr(cfg, e, [1.0] * 12) for e in range(1, 13)] == [1, 1, 1, 1, 1, 1, .5, .5, .5, .25, .25, .25]
    with pytest.raises(HessbatchError, match="lr_plateau must be"):
        TrainConfig(lr_plateau={"patience": 2}).resolved()
    with pytest.raises(HessbatchError, match="lr_plateau.patience must be"):
        TrainConfig(lr_plateau={"patience": 0, "after": 1}).resolved()


def _kill_after_first_checkpoint(args: list[str], ckpt: Path) -> None:
    """Start ``hessbatch`` with ``args`` and SIGKILL it as soon as ``ckpt`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "hessbatch.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_cfg):
    """SIGKILL a real training process after its first checkpoint, then resume."""
    cfg = {**tiny_cfg, "max_epochs": 6, "model": "M1", "subset": 40}
    args = ["train", "--model", "M1", "--dataset", "mnist5k", "--subset", "40", "--test-subset", "10",
            "--batch-size", "50", "--lr", "0.05", "--max-epochs", "6", "--target-loss", "none",
            "--results", str(tmp_path / "killed"), "--no-progress"]
    store = Store(tmp_path / "killed")
    key = store.key("train", TrainConfig.from_dict(cfg).resolved().to_dict())
    ckpt = store.work_dir("train", key) / "checkpoint.pt"
    _kill_after_first_checkpoint(args, ckpt)
    assert ckpt.exists(), "the run should have written a checkpoint before it was killed"
    assert store.get("train", key=key) is None, "a killed run must not leave a complete entry"
    done_epochs = checkpoints.load(ckpt)["epoch"]
    assert 1 <= done_epochs < 6

    resumed = train(cfg, store, progress=False)
    fresh = train(cfg, Store(tmp_path / "fresh"), progress=False)
    assert resumed.result["resumed_from"] == [done_epochs] and fresh.result["resumed_from"] == []
    assert resumed.key == key and _same_weights(resumed, fresh)
    assert resumed.history["train_loss"].tolist() == fresh.history["train_loss"].tolist()
    assert not store.work_dir("train", key).exists()


def test_an_unreadable_checkpoint_is_set_aside_with_a_warning(tmp_path, tiny_cfg):
    from hessbatch.errors import ResumeWarning

    store = Store(tmp_path)
    key = store.key("train", TrainConfig.from_dict(tiny_cfg).resolved().to_dict())
    ckpt = store.work_dir("train", key) / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.warns(ResumeWarning, match="could not be resumed.*training starts over"):
        run = train(tiny_cfg, store, progress=False)
    assert run.result["resumed_from"] == [] and run.result["epochs"] == 3
    assert (tmp_path / "train" / f".{key}.work.unreadable-checkpoint.pt").read_bytes() == b"not a checkpoint"


def _interrupted(tmp_path, cfg) -> tuple[Store, str, Path]:
    """A store holding the work folder of ``cfg`` stopped after its second epoch (as a kill leaves it)."""
    first = train({**cfg, "max_epochs": 2, "target_loss": None}, Store(tmp_path / "first"), progress=False)
    store = Store(tmp_path / "store")
    key = store.key("train", TrainConfig.from_dict(cfg).resolved().to_dict())
    work = store.work_dir("train", key)
    work.mkdir(parents=True)
    model = first.model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.get("lr", 0.01), momentum=0.9)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "key": key, "elapsed": 1.0,
             "resumed": [], "snapshots": {}, "history": first.history.to_dict("records")}
    checkpoints.save(state, work / "checkpoint.pt")
    return store, key, work


class _Stop(Exception):
    pass


def test_a_checkpoint_carried_to_a_new_schedule_resumes_bit_for_bit(tmp_path, tiny_cfg, monkeypatch):
    """A run stopped after epoch 2 at a constant rate, carried to a schedule that decays from epoch 3,
    ends where that schedule trained from the start ends; a schedule that differs earlier is refused."""
    import hessbatch.train as t

    old = {**tiny_cfg, "max_epochs": 5}
    new = {**old, "lr_milestones": [2], "lr_gamma": 0.2}
    real = t.train_epoch

    def stop_at_3(model, opt, ds, cfg, epoch, *a, **kw):
        if epoch == 3:
            raise _Stop
        return real(model, opt, ds, cfg, epoch, *a, **kw)

    monkeypatch.setattr(t, "train_epoch", stop_at_3)
    store = Store(tmp_path / "store")
    with pytest.raises(_Stop):
        train(old, store, progress=False)
    monkeypatch.undo()
    with pytest.raises(HessbatchError, match="schedules differ from epoch 2"):
        t.adopt(old, {**old, "lr_milestones": [1]}, store)
    with pytest.raises(HessbatchError, match="differ in lr, not only"):
        t.adopt(old, {**new, "lr": 0.1}, store)
    assert t.adopt(old, new, store) == 2 and t.adopt(old, new, store) == 0
    carried, fresh = train(new, store, progress=False), train(new, Store(tmp_path / "fresh"), progress=False)
    assert carried.result["adopted_from"] == {"key": store.key("train", TrainConfig.from_dict(old).resolved().to_dict()),
                                              "epochs": 2}
    assert carried.result["resumed_from"] == [2] and carried.history["lr"].tolist() == pytest.approx([0.05, 0.05, 0.01, 0.01, 0.01])
    assert _same_weights(carried, fresh) and carried.history["train_loss"].tolist() == fresh.history["train_loss"].tolist()
    assert not _same_weights(fresh, train(old, Store(tmp_path / "old"), progress=False))


@pytest.mark.parametrize("damage,why", [
    ("flip", "SHA-256 does not match"),
    ("epoch", "epoch 1000000 is not in 1..3"),
    ("key", "belongs to run"),
    ("history", "history is not one row for each of epochs 1..2"),
])
def test_a_checkpoint_that_is_damaged_or_does_not_fit_is_set_aside(tmp_path, tiny_cfg, damage, why):
    from hessbatch.errors import ResumeWarning

    store, key, work = _interrupted(tmp_path, tiny_cfg)
    ckpt = work / "checkpoint.pt"
    if damage == "flip":
        raw = bytearray(ckpt.read_bytes())
        raw[len(raw) // 2] ^= 1
        ckpt.write_bytes(bytes(raw))
    else:
        state = checkpoints.load(ckpt)
        state.update({"epoch": {"epoch": 10**6}, "key": {"key": "0123456789abcdef"},
                      "history": {"history": state["history"][:1]}}[damage])
        checkpoints.save(state, ckpt)
    with pytest.warns(ResumeWarning, match=why):
        run = train(tiny_cfg, store, progress=False)
    fresh = train(tiny_cfg, Store(tmp_path / "fresh"), progress=False)
    assert run.result["resumed_from"] == [] and _same_weights(run, fresh)


def test_a_checkpoint_that_fits_resumes(tmp_path, tiny_cfg):
    store, key, work = _interrupted(tmp_path, tiny_cfg)
    assert train(tiny_cfg, store, progress=False).result["resumed_from"] == [2]


def test_a_snapshot_changed_on_disk_is_not_published(tmp_path, tiny_cfg):
    cfg = {**tiny_cfg, "save_every": 1, "max_epochs": 30, "target_loss": None}
    store = Store(tmp_path)
    key = store.key("train", TrainConfig.from_dict(cfg).resolved().to_dict())
    args = ["train", "--model", cfg["model"], "--dataset", "mnist5k", "--subset", str(cfg["subset"]),
            "--test-subset", str(cfg["test_subset"]), "--batch-size", str(cfg["batch_size"]), "--lr", str(cfg["lr"]),
            "--max-epochs", "30", "--target-loss", "none", "--save-every", "1", "--results", str(tmp_path),
            "--no-progress"]
    ckpt = store.work_dir("train", key) / "checkpoint.pt"
    _kill_after_first_checkpoint(args, ckpt)
    snap = store.work_dir("train", key) / "weights-epoch0001.pt"
    assert snap.exists() and ckpt.exists()
    raw = bytearray(snap.read_bytes())
    raw[-100] ^= 1
    snap.write_bytes(bytes(raw))
    with pytest.raises(HessbatchError, match="weights-epoch0001.pt changed after it was written"):
        train(cfg, store, progress=False)
    assert store.get("train", key=key) is None


@pytest.mark.parametrize("change,msg", [
    (dict(model="VGG"), "unknown model"),
    (dict(dataset="svhn"), "unknown dataset"),
    (dict(batch_size=0), r"batch_size must be an integer in \[1, 2147483647\], got 0"),
    (dict(batch_size=201), "larger than the training set of mnist5k"),
    (dict(lr=0.0), r"lr must be a finite number in \(0, 1e\+06\], got 0.0"),
    (dict(momentum=1.5), r"momentum must be a finite number in \[0, 1\), got 1.5"),
    (dict(target_loss=-1), "target_loss must be"),
    (dict(colour="red"), "unknown training option"),
])
def test_bad_configuration_fails_before_compute(tmp_path, tiny_cfg, change, msg):
    with pytest.raises(HessbatchError, match=msg):
        train({**tiny_cfg, **change}, Store(tmp_path), progress=False)
    assert not (tmp_path / "train").exists()


def test_micro_batches_accumulate_the_same_step(tmp_path, tiny_cfg):
    """Without BatchNorm, gradients accumulated over micro-batches give the full-batch step."""
    a = train(tiny_cfg, Store(tmp_path / "a"), progress=False)
    b = train({**tiny_cfg, "micro_batch": 16}, Store(tmp_path / "b"), progress=False)
    assert a.key != b.key and "micro_batch" not in a.entry.config["config"]
    sa, sb = a.entry.torch(), b.entry.torch()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)
    with pytest.raises(HessbatchError, match="micro_batch must be"):
        TrainConfig(micro_batch=0).resolved()


def test_label_smoothing_and_confidence_penalty_losses(tmp_path, tiny_cfg):
    """The training objective against its definitions; options stay out of the key while unset."""
    import torch.nn.functional as F

    from hessbatch.train import training_loss

    out, y = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    soft = torch.full((7, 4), 0.1 / 4) + 0.9 * F.one_hot(y, 4)
    ls = training_loss(out, y, TrainConfig(label_smoothing=0.1))
    assert torch.allclose(ls, -(soft * F.log_softmax(out, 1)).sum(1).mean())
    p = F.softmax(out, 1)
    entropy = -(p * p.log()).sum(1).mean()
    cp = training_loss(out, y, TrainConfig(confidence_penalty=0.3))
    assert torch.allclose(cp, F.cross_entropy(out, y) - 0.3 * entropy)
    assert torch.equal(training_loss(out, y, TrainConfig()), F.cross_entropy(out, y))
    a = train(tiny_cfg, Store(tmp_path), progress=False)
    b = train({**tiny_cfg, "label_smoothing": 0.1}, Store(tmp_path), progress=False)
    assert "label_smoothing" not in a.entry.config["config"] and a.key != b.key
    with pytest.raises(HessbatchError, match=r"confidence_penalty must be a finite number in \[0, 1\)"):
        TrainConfig(confidence_penalty=-0.1).resolved()


def test_per_sample_smoothing_loss():
    """Per-sample label smoothing is soft-target cross-entropy with one α per row; a constant α
    is PyTorch's label smoothing."""
    import torch.nn.functional as F

    from hessbatch.train import training_loss

    out, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 1, 1, 0])
    alpha = torch.tensor([0.0, 0.5, 0.1, 0.0, 0.9])
    soft = alpha[:, None] / 3 + (1 - alpha[:, None]) * F.one_hot(y, 3)
    got = training_loss(out, y, TrainConfig(), alpha)
    assert torch.allclose(got, -(soft * F.log_softmax(out, 1)).sum(1).mean())
    assert torch.allclose(training_loss(out, y, TrainConfig(), torch.full((5,), 0.2)),
                          F.cross_entropy(out, y, label_smoothing=0.2))
    for bad, msg in (({"guide": "k", "alpha": 1.0}, "sample_smoothing must be"), ({"alpha": 0.1}, "sample_smoothing must be"),
                     (0.1, "sample_smoothing must be")):
        with pytest.raises(HessbatchError, match=msg):
            TrainConfig(sample_smoothing=bad).resolved()
    with pytest.raises(HessbatchError, match="exclude each other"):
        TrainConfig(sample_smoothing={"guide": "0123", "alpha": 0.1}, label_smoothing=0.1).resolved()


def test_a_page_flags_the_runs_that_stopped_at_their_cap(tmp_path, tiny_cfg):
    """The paper's protocol trains every batch size to the same loss: a run capped short of its
    target is named on the page with its loss; a converged one, or one with no target, is not."""
    from hessbatch.paper.presentation import off_protocol, provenance

    store = Store(tmp_path)
    capped = train({**tiny_cfg, "target_loss": 1e-9, "max_epochs": 2}, store, progress=False)
    reached = train({**tiny_cfg, "batch_size": 20, "target_loss": 10.0}, store, progress=False)
    fixed = train({**tiny_cfg, "batch_size": 40}, store, progress=False)
    assert (capped.status, reached.status, fixed.status) == ("capped", "converged", "capped")
    loss = capped.result["train_loss"]
    assert off_protocol([capped, reached, fixed]) == [
        f"B = 50 stopped at its 2-epoch cap at training loss {loss:.2g} (target 1e-09)"]
    gone = train({**tiny_cfg, "batch_size": 10, "target_loss": 1e-9, "lr": 1e6, "momentum": 0.9}, store, progress=False)
    assert off_protocol([gone]) == [f"B = 10 diverged at epoch {gone.result['epochs']} (non-finite loss) (target 1e-09)"]
    line = provenance({"profile": "smoke", "model": "MLP", "dataset": "mnist5k"}, [capped, reached, fixed])
    assert "**Not at the stopping rule:** B = 50 stopped" in line
    assert "Not at the stopping rule" not in provenance({"profile": "smoke"}, [reached, fixed])
