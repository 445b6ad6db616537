import pytest

from hessbatch import HessbatchError
from hessbatch.measurements import adversarial_accuracy
from hessbatch.paper.chapters.large_batch_robust import table8_configs
from hessbatch.robust import check_adversarial
from hessbatch.store import Store
from hessbatch.config import TrainConfig
from hessbatch.train import train

BASE = dict(model="M1", dataset="mnist5k", subset=100, test_subset=30, batch_size=50, lr=0.02, target_loss=None)


def test_robust_training_raises_adversarial_accuracy(tmp_path):
    store = Store(tmp_path)
    clean = train({**BASE, "max_epochs": 8}, store, progress=False)
    robust = train({**BASE, "max_epochs": 4, "init_from": clean.key, "lr": 0.01,
                    "adversarial": {"attack": "fgsm", "eps": 0.1}}, store, progress=False)
    before = adversarial_accuracy(clean, "fgsm", 0.1, store=store).json()
    after = adversarial_accuracy(robust, "fgsm", 0.1, store=store).json()
    assert after["accuracy"] >= before["accuracy"] + 0.10, (before, after)
    assert after["clean_accuracy"] > 0.7
    # transfer, as Tables 3/4: examples crafted against the clean model, scored on the robust one
    transfer = adversarial_accuracy(robust, "fgsm", 0.1, source=clean, store=store).json()
    assert transfer["accuracy"] > before["accuracy"]


def test_a_runs_clean_accuracy_is_computed_once_for_its_attacks(tmp_path, monkeypatch):
    from hessbatch import measurements

    run = train({**BASE, "max_epochs": 1, "seed": 7}, Store(tmp_path), progress=False)  # a run no other test scores
    calls = []
    monkeypatch.setattr(measurements, "accuracy", lambda *a: calls.append(a) or 0.5)
    first = adversarial_accuracy(run, "fgsm", 0.1, store=Store(tmp_path)).json()
    second = adversarial_accuracy(run, "fgsm", 0.05, store=Store(tmp_path)).json()
    on_train = adversarial_accuracy(run, "fgsm", 0.05, "train", store=Store(tmp_path)).json()
    assert first["clean_accuracy"] == second["clean_accuracy"] == on_train["clean_accuracy"] == 0.5
    assert len(calls) == 2


def test_adversarial_spec_is_validated_and_part_of_the_key():
    a = TrainConfig(adversarial={"attack": "FGSM-10", "eps": 0.1, "steps": 5}).resolved()
    assert a.adversarial == {"attack": "fgsm10", "eps": 0.1, "clean_fraction": 0.0, "steps": 5}
    s = Store("/nonexistent")
    b = TrainConfig(adversarial={"attack": "fgsm10", "eps": 0.1, "steps": 6}).resolved()
    assert s.key("train", a.to_dict()) != s.key("train", b.to_dict())


@pytest.mark.parametrize("spec,msg", [
    ({"attack": "fgsm", "eps": -1}, "epsilon must be >= 0"),
    ({"attack": "pgd", "eps": 0.1}, "unknown attack 'pgd'"),
    ({"attack": "fgsm", "eps": 0.1, "steps": 3}, "attack fgsm has no option"),
    ({"eps": 0.1}, "at least 'attack' and 'eps'"),
    ({"attack": "grad", "eps": 1, "clean_fraction": 2}, "clean_fraction must be in"),
])
def test_bad_adversarial_spec(spec, msg):
    with pytest.raises(HessbatchError, match=msg):
        check_adversarial(spec)


def test_table8_recipes():
    rows = table8_configs({"model": "C1", "lr": 0.02}, [8000], {"attack": "fgsm", "eps": 0.01}, warmup_epochs=5,
                          base_batch=128)
    assert [m for m, _ in rows] == ["baseline", "FB", "robust"]
    fb = TrainConfig.from_dict(rows[1][1])
    from hessbatch.config import lr_at
    assert lr_at(fb, 5) == pytest.approx(0.02 * 8000 / 128)
    assert rows[2][1]["adversarial"]["attack"] == "fgsm" and "lr_scaling" not in rows[2][1]
