import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def write_idx(folder, prefix, images, labels, gz=False):
    """Write images (N, H, W) uint8 and labels (N,) in MNIST's IDX format."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes(),
             f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()}
    for name, blob in blobs.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)


def make_mnist_root(root, sub="MNIST", n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / sub / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw, prefix, rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10)
    return root


def make_cifar_root(root, classes=10, n_per_file=20, seed=0):
    rng = np.random.default_rng(seed)

    def batch(n, key):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(np.arange(n) % classes)}

    if classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            pickle.dump(batch(n_per_file, "labels"), open(folder / f"data_batch_{i}", "wb"))
        pickle.dump(batch(n_per_file, "labels"), open(folder / "test_batch", "wb"))
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(folder / "batches.meta", "wb"))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        pickle.dump(batch(5 * n_per_file, "fine_labels"), open(folder / "train", "wb"))
        pickle.dump(batch(n_per_file, "fine_labels"), open(folder / "test", "wb"))
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, open(folder / "meta", "wb"))
    return root


def make_cifar_jpeg_root(root, n=(3, 2), quality=75, archives=True):
    """CIFAR-10 as JPEG files, ``n`` per class in train and test, as ``../shared/data`` has them:
    ``cifar10-jpeg/{train,test}.tar.gz`` holding ``<part>/<class>/NNNN.jpg`` (or the folders)."""
    import tarfile

    from PIL import Image

    from hessbatch.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    src = root / ("cifar10-jpeg-src" if archives else "cifar10-jpeg")
    for part, k in zip(("train", "test"), n):
        for cls in CIFAR10_CLASSES:
            (src / part / cls).mkdir(parents=True)
            for i in range(k):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    src / part / cls / f"{i:04d}.jpg", quality=quality)
    if archives:
        (root / "cifar10-jpeg").mkdir(parents=True)
        for part in ("train", "test"):
            with tarfile.open(root / "cifar10-jpeg" / f"{part}.tar.gz", "w:gz") as tar:
                tar.add(src / part, arcname=part)
    return root


@pytest.fixture
def no_md5(monkeypatch):
    """Generated CIFAR files cannot match torchvision's MD5 sums of the real ones."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


@pytest.fixture
def mnist_download(tmp_path, monkeypatch):
    """torchvision's MNIST download, served from generated IDX files in ``tmp_path``; the list of
    roots it was asked to fill."""
    import torchvision.datasets as tvd

    calls = []

    def fake_download(self):
        calls.append(self.root)
        make_mnist_root(tmp_path)

    monkeypatch.setattr(tvd.MNIST, "download", fake_download)
    return calls


@pytest.fixture
def tiny_cfg():
    """A training configuration that runs in about a second on CPU."""
    return dict(model="MLP", dataset="mnist5k", subset=20, test_subset=10, batch_size=50, lr=0.05,
                max_epochs=3, target_loss=None)


INJECT = """
import os
how, b, epochs = os.environ["HB_INJECT"].split(":")
import hessbatch.train as t
real = t.train_epoch

def train_epoch(model, opt, ds, cfg, epoch, *a, **kw):
    if cfg.batch_size == int(b) and cfg.max_epochs == int(epochs):
        if how == "die":
            os._exit(9)
        raise RuntimeError("injected")
    return real(model, opt, ds, cfg, epoch, *a, **kw)

t.train_epoch = train_epoch
"""


@pytest.fixture
def inject_failure(tmp_path, monkeypatch):
    """``inject_failure(how, batch_size, max_epochs)``: in every Python process started from now on
    (a pool's spawned workers), training runs of that batch size and epoch cap raise
    (``how="raise"``) or kill their process (``"die"``) at their first epoch."""
    import os

    site = tmp_path / "inject-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(INJECT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    def inject(how, batch_size, max_epochs):
        monkeypatch.setenv("HB_INJECT", f"{how}:{batch_size}:{max_epochs}")

    return inject
