"""Evaluation leaves the caller's model as it was; one progress helper honours --no-progress."""

import pytest
import torch
from torch import nn

from hessbatch import attacks, progress
from hessbatch.eigensolvers import top_eigen
from hessbatch.evaluation import accuracy, eval_mode, evaluate, full_gradient_norm, pass_chunk, predict
from hessbatch.input_curvature import input_curvature


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3))


def test_eval_mode_restores_the_callers_mode_even_on_error():
    m = _net()
    with eval_mode(m):
        assert not m.training
    assert m.training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError("boom")
    assert m.training
    m.eval()
    with eval_mode(m):
        pass
    assert not m.training


def test_measurements_never_change_the_callers_mode():
    m = _net()
    x, y = torch.rand(20, 8), torch.arange(20) % 3
    for call in (lambda: evaluate(m, x, y), lambda: predict(m, x), lambda: accuracy(m, x, y),
                 lambda: full_gradient_norm(m, x, y), lambda: top_eigen(m, (x, y), k=2, tol=1e-2),
                 lambda: input_curvature(m, x, y), lambda: attacks.fgsm(m, x, y, 0.1),
                 lambda: attacks.hess(m, x, y, 0.1)):
        m.train()
        call()
        assert m.training


def test_chunked_evaluation_matches_one_pass():
    m = _net().eval()
    x, y = torch.rand(50, 8), torch.arange(50) % 3
    loss, acc = evaluate(m, x, y, chunk=7)
    with torch.no_grad():
        out = m(x)
    assert loss == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-6)
    assert acc == (out.argmax(1) == y).sum().item() / len(y)
    torch.testing.assert_close(predict(m, x, chunk=7), out)


@pytest.mark.parametrize("name, shape, chunk", [("C1", (3, 32, 32), 16), ("M1", (1, 28, 28), 256)])
def test_a_cpu_pass_keeps_its_largest_activation_in_cache(name, shape, chunk):
    # C1's first convolution gives 64 x 32 x 32 floats (256 KiB) per sample, M1's largest 15 KiB: 4 MiB / each
    from hessbatch.models import build_model

    m = build_model(name, shape, 10).train()
    x = torch.rand(3, *shape)
    assert pass_chunk(m, x) == chunk
    assert m.training
    assert pass_chunk(nn.Sequential(nn.Flatten(), nn.Linear(8, 3)), torch.rand(2, 8)) == 1024


def test_no_progress_disables_every_bar(capsys):
    for _ in progress.bar(range(3), desc="visible"):
        pass
    assert "visible" in capsys.readouterr().err
    with progress.disabled():
        for _ in progress.bar(range(3), desc="hidden"):
            pass
        bar = progress.bar(total=3, desc="hidden too")
        bar.update(1)
        bar.set_postfix(loss="1")
        bar.close()
    assert capsys.readouterr().err == ""
    assert progress.enabled()


def test_one_attack_registry():
    assert attacks.get("BIM").name == "fgsm10" and attacks.get("l2grad").label == "L2GRAD"
    assert [attacks.get(n).norm for n in attacks.ATTACKS] == ["linf", "linf", "l2", "linf", "l2"]
    assert attacks.get("fgsm").function is attacks.fgsm
    with pytest.raises(ValueError, match="unknown attack 'pgd'"):
        attacks.get("pgd")


def test_bars_report_to_the_events_file_even_when_hidden(tmp_path, monkeypatch):
    import json

    events = tmp_path / "events"
    monkeypatch.setenv(progress.EVENTS_ENV, str(events))
    with progress.disabled():
        for _ in progress.bar(range(3), desc="runs", unit="run"):
            pass
        with progress.bar(total=5, desc="M1 B=64", unit="epoch") as b:
            b.update(2)
            b.set_postfix(loss="0.5")
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines[0] == {**lines[0], "desc": "runs", "n": 0, "total": 3, "done": False}
    assert [x["n"] for x in lines if x["desc"] == "runs" and x["done"]] == [3]
    last = [x for x in lines if x["desc"] == "M1 B=64"][-1]
    assert (last["n"], last["total"], last["postfix"], last["done"]) == (2, 5, "loss=0.5", True)


def test_attacks_and_input_curvature_report_their_samples(tmp_path, monkeypatch):
    import json

    events = tmp_path / "events"
    monkeypatch.setenv(progress.EVENTS_ENV, str(events))
    m = _net().eval()
    x, y = torch.rand(20, 8), torch.arange(20) % 3
    with progress.disabled():
        attacks.adversarial_accuracy(m, x, y, "fgsm10", 0.1, chunk=7, progress=True)
        input_curvature(m, x, y, chunk=7, progress=True)
    done = {e["desc"]: (e["n"], e["total"], e["unit"]) for e in map(json.loads, events.read_text().splitlines())
            if e["done"]}
    assert done == {"FGSM10 ε=0.1": (20, 20, "sample"), "input curvature (exact)": (20, 20, "sample")}
