import json
import os
import threading

import pytest

from hessbatch.store import Store, config_key


def test_key_is_stable_and_order_independent():
    a = config_key("train", {"lr": 0.1, "batch_size": 64, "milestones": (1, 2)})
    b = config_key("train", {"milestones": [1, 2], "batch_size": 64, "lr": 0.1})
    assert a == b and len(a) == 16
    assert a != config_key("train", {"lr": 0.1, "batch_size": 65, "milestones": [1, 2]})
    assert a != config_key("spectrum", {"lr": 0.1, "batch_size": 64, "milestones": [1, 2]})
    # pinned: a change of hashing silently orphans every stored result
    assert config_key("train", {"x": 1}) == "5a297c23d9fb3202"


def _put(store, cfg, text="hello"):
    with store.writer("demo", cfg) as tmp:
        (tmp / "out.txt").write_text(text)
    return store.get("demo", cfg)


def test_roundtrip_and_listing(tmp_path):
    store = Store(tmp_path)
    e = _put(store, {"a": 1})
    assert (e.path / "out.txt").read_text() == "hello"
    assert e.config["config"] == {"a": 1}
    assert e.files() == ["config.json", "out.txt"]
    assert [x.key for x in store.entries()] == [e.key]


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writer("demo", {"a": 1}) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert store.get("demo", {"a": 1}) is None
    assert list((tmp_path / "demo").iterdir()) == []


def test_leftover_temp_folder_is_not_an_entry(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "demo" / ".abc.tmp").mkdir(parents=True)
    (tmp_path / "demo" / "0123456789abcdef").mkdir()  # a folder without manifest
    assert store.entries() == [] and store.get("demo", key="0123456789abcdef") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "delete"])
def test_corrupt_entry_is_detected_and_replaced(tmp_path, damage):
    store = Store(tmp_path)
    e = _put(store, {"a": 1})
    f = e.path / "out.txt"
    if damage == "truncate":
        f.write_text("hel")
    elif damage == "flip":
        f.write_text("jello")
    elif damage == "manifest":
        (e.path / "MANIFEST.json").write_text("{not json")
    else:
        os.remove(f)
    assert store.get("demo", {"a": 1}) is None
    e2 = _put(store, {"a": 1}, text="again")
    assert (e2.path / "out.txt").read_text() == "again"


def test_concurrent_writers_publish_one_entry(tmp_path):
    store = Store(tmp_path)
    barrier = threading.Barrier(4)

    def work(i):
        with store.writer("demo", {"a": 1}) as tmp:
            (tmp / "out.txt").write_text("same")
            barrier.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    folders = [p.name for p in (tmp_path / "demo").iterdir()]
    assert folders == [config_key("demo", {"a": 1})]
    assert json.loads((tmp_path / "demo" / folders[0] / "MANIFEST.json").read_text())["files"]


def test_results_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSBATCH_RESULTS", str(tmp_path / "r"))
    assert Store().root == tmp_path / "r"


def test_export_leaves_out_weights_and_stays_valid(tmp_path, tiny_cfg, monkeypatch):
    from hessbatch.errors import HessbatchError
    from hessbatch.train import train

    run = train({**tiny_cfg, "save_every": 1}, Store(tmp_path / "full"), progress=False)
    n, _ = Store(tmp_path / "full").export(tmp_path / "tidy")
    tidy = Store(tmp_path / "tidy")
    entry = tidy.get("train", key=run.key)
    assert n == 1 and entry is not None and not list(entry.path.glob("*.pt"))
    assert "weights.pt" in entry.omitted() and "history.csv" in entry.files()
    again = train({**tiny_cfg, "save_every": 1}, tidy, progress=False)  # found, not retrained
    assert again.cached and again.result == run.result and again.snapshot_epochs() == [1, 2, 3]
    with pytest.raises(HessbatchError, match="weights were left out"):
        again.model()
    from hessbatch import measurements as analysis

    def no_data(*a, **k):
        raise HessbatchError("dataset 'mnist': no data in /nowhere")

    monkeypatch.setattr(analysis, "run_data", no_data)
    assert tidy.exported() and not Store(tmp_path / "full").exported()
    with pytest.raises(HessbatchError, match="initial-state result is not in .*exported without weights.*no data in"):
        analysis.initial_state(again, tidy)
    with pytest.raises(HessbatchError, match="^dataset 'mnist': no data in"):
        analysis.initial_state(run, Store(tmp_path / "full"))
    (entry.path / "history.csv").write_text("tampered")
    assert tidy.get("train", key=run.key) is None


def _big(store, cfg, blob):
    with store.writer("demo", cfg) as tmp:
        (tmp / "weights.bin").write_bytes(blob)
        (tmp / "small.txt").write_text("hello")
    return store.get("demo", cfg)


def test_reads_do_not_hash_large_files_verify_and_export_do(tmp_path, monkeypatch):
    """Listing is cheap: a file over HASHED_ON_READ is checked by size on every read, by SHA-256
    only in ``verify``, ``get(verify=True)`` and export; a same-size corruption of it is found there."""
    import hessbatch.store as store_mod

    monkeypatch.setattr(store_mod, "HASHED_ON_READ", 10)
    store = Store(tmp_path / "s")
    e = _big(store, {"a": 1}, b"x" * 100)
    hashed = []
    real = store_mod.file_sha256
    monkeypatch.setattr(store_mod, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    assert [x.key for x in store.entries()] == [e.key] and "weights.bin" not in hashed
    (e.path / "weights.bin").write_bytes(b"y" * 100)  # same size: only a hash tells
    assert store.get("demo", {"a": 1}) is not None
    assert store.get("demo", {"a": 1}, verify=True) is None
    n, bad = store.verify()
    assert n == 1 and [b.key for b in bad] == [e.key]
    assert store.export(tmp_path / "copy") == (0, 0)
    (e.path / "small.txt").write_text("jello")  # small files are hashed on every read
    assert store.get("demo", {"a": 1}) is None


def test_a_corrupt_tensor_file_is_refused_when_loaded(tmp_path):
    import torch

    from hessbatch.errors import HessbatchError

    store = Store(tmp_path)
    with store.writer("demo", {"a": 1}) as tmp:
        torch.save({"w": torch.arange(300000.0)}, tmp / "weights.pt")
    e = store.get("demo", {"a": 1})
    assert torch.equal(e.torch()["w"], torch.arange(300000.0))
    blob = bytearray((e.path / "weights.pt").read_bytes())
    blob[-100] ^= 1
    (e.path / "weights.pt").write_bytes(bytes(blob))
    with pytest.raises(HessbatchError, match="is corrupt"):
        e.torch()
