"""The CUDA-graph training step (``hessbatch.captured``): its update against ``torch.optim.SGD``, its
body against the eager step, the fallback when a capture fails, and on a GPU the graph itself."""

import copy

import pytest
import torch
from torch import nn

from hessbatch import captured
from hessbatch.config import TrainConfig
from hessbatch.data import Dataset
from hessbatch.store import Store
from hessbatch.train import train, train_epoch, training_loss


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def _data(n=70, device="cpu"):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset("toy", x, y, x[:10], y[:10], 10, (0.0,), (1.0,), "toy").to(device)


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.0)])
def test_sgd_update_is_torch_sgd(momentum, weight_decay):
    """Ten steps at changing rates: the same parameters as torch.optim.SGD, to the last bit."""
    a, b = _net(), _net()
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    params = list(b.parameters())
    bufs = [torch.zeros_like(p) if momentum else None for p in params]
    x, y = _data().x_train, _data().y_train
    for step in range(10):
        lr = 0.1 / (1 + step)
        for g in opt.param_groups:
            g["lr"] = lr
        for net in (a, b):
            net.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        captured.sgd_update(params, bufs, torch.tensor(-lr), momentum, weight_decay)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(_net().parameters()))


def test_captured_body_trains_as_the_eager_epoch():
    """Two epochs with a partial last batch (drop_last off, stepped eagerly), warm-up and momentum:
    the step's body, run where a graph would replay, ends at the eager epoch's weights, BatchNorm
    statistics, momentum and mean loss."""
    cfg = TrainConfig(model="toy", batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3, drop_last=False,
                      warmup_epochs=1)
    ds = _data()
    nets = [_net(), _net()]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-3) for m in nets]
    step = captured.CapturedStep(nets[1], opts[1], ds, cfg, training_loss, capture=False)
    for epoch in (1, 2):
        eager = train_epoch(nets[0], opts[0], ds, cfg, epoch)
        replayed = train_epoch(nets[1], opts[1], ds, cfg, epoch, captured=step)
        assert replayed == pytest.approx(eager, rel=1e-6)
    sa, sb = nets[0].state_dict(), nets[1].state_dict()
    assert all(torch.allclose(sa[k].float(), sb[k].float(), rtol=0, atol=1e-6) for k in sa)
    assert torch.equal(sa["2.num_batches_tracked"], sb["2.num_batches_tracked"])
    ma = [opts[0].state[p]["momentum_buffer"] for p in nets[0].parameters()]
    mb = [opts[1].state[p]["momentum_buffer"] for p in nets[1].parameters()]
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(ma, mb))


def test_self_check_and_capture_needs_a_gpu():
    cfg = TrainConfig(model="toy", batch_size=16, lr=0.05, momentum=0.9)
    report = captured.self_check(_net(), _data(), cfg, training_loss, steps=4, capture=False)
    assert report["captured"] is False and report["max_param_diff"] < 1e-6
    assert report["captured_loss"] == pytest.approx(report["eager_loss"], rel=1e-5)
    with pytest.raises(captured.CaptureUnavailable, match="CUDA device"):
        captured.CapturedStep(_net(), torch.optim.SGD(_net().parameters(), lr=0.1), _data(), cfg, training_loss)
    nesterov = torch.optim.SGD(_net().parameters(), lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(captured.CaptureUnavailable, match="Nesterov"):
        captured.CapturedStep(_net(), nesterov, _data(), cfg, training_loss, capture=False)
    assert not captured.enabled(torch.device("cpu"))


def test_failed_capture_falls_back_to_the_eager_run(tmp_path, tiny_cfg, monkeypatch):
    """Graphs 'enabled' on the CPU, where capturing fails: the run warns, trains eagerly to the
    same numbers as a plain run, and its result says which path trained it."""
    plain = train(tiny_cfg, Store(tmp_path / "a"), progress=False)
    assert plain.result["step"] == "eager"
    monkeypatch.setattr(captured, "enabled", lambda dev: True)
    with pytest.warns(RuntimeWarning, match="capture failed .*CaptureUnavailable"):
        fell = train(tiny_cfg, Store(tmp_path / "b"), progress=False)
    assert fell.result["step"].startswith("eager (capture failed: CaptureUnavailable")
    assert fell.history["train_loss"].tolist() == plain.history["train_loss"].tolist()
    hooked = train({**tiny_cfg, "micro_batch": 10}, Store(tmp_path / "c"), progress=False)
    assert hooked.result["step"] == "eager (a step hook or micro-batches are not captured)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_replays_the_eager_steps_on_a_gpu():
    """On a GPU: the captured graph against eager steps, in full fp32."""
    from hessbatch.devices import resolve_device

    dev = resolve_device("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    cfg = TrainConfig(model="toy", batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4)
    report = captured.self_check(_net().to(dev), _data(device=dev), cfg, training_loss, steps=8)
    assert report["captured"] is True and report["relative_param_diff"] < 1e-5
    net = _net().to(dev)
    before = copy.deepcopy(net.state_dict())
    captured.CapturedStep(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), _data(device=dev), cfg,
                          training_loss)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the warm-up is undone


@pytest.mark.parametrize("value", ["false", "off", "no", " "])
def test_the_graphs_switch_is_0_or_1(monkeypatch, value):
    from hessbatch.errors import HessbatchError

    monkeypatch.setenv(captured.ENV, value)
    with pytest.raises(HessbatchError, match="HESSBATCH_CUDA_GRAPHS must be one of 0, 1"):
        captured.enabled(torch.device("cpu"))
    monkeypatch.setenv(captured.ENV, "0")
    assert captured.enabled(torch.device("cuda")) is False
