"""Datasets that need no download: the MNIST shipped with bnexp (verified, cached uncompressed),
its derived subsets, and synthetic data."""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from .fetch import VerificationError, check_file
from .registry import DatasetError, DatasetInfo, RemoteFile, dataset_dir

SHIPPED_PACKAGE = "bnexp.data"  # the shipped files live in bnexp/data/<dataset name>/
SUBSET_SEED = 20150211  # fixed: a derived subset must not change between runs


def shipped_dir(info: DatasetInfo) -> Path:
    """Where the files of a bundled dataset ship inside the installed package."""
    return Path(str(importlib.resources.files(SHIPPED_PACKAGE).joinpath(info.name)))


def _cache_path(info: DatasetInfo, spec: RemoteFile) -> Path:
    return dataset_dir(info.name) / spec.name.removesuffix(".gz")


def _content_ok(content: bytes, spec: RemoteFile) -> bool:
    algo, _, want = spec.digest.partition(":")
    return (spec.content_size is None or len(content) == spec.content_size) and hashlib.new(
        algo, content
    ).hexdigest() == want.lower()


def _read_cached(info: DatasetInfo) -> list[bytes] | None:
    """The cached uncompressed files if all are present and match their digests, else None."""
    out = []
    for spec in info.files:
        try:
            content = _cache_path(info, spec).read_bytes()
        except OSError:
            return None
        if not _content_ok(content, spec):
            return None
        out.append(content)
    return out


def cache_bundled(info: DatasetInfo) -> list[bytes]:
    """The verified uncompressed files of a bundled dataset, caching them on first use.

    Warm path: read the uncompressed copies from dataset_dir(name) and check their digests (the
    canonical MD5s; about 0.1 s for MNIST). Cold path: gunzip the shipped files, verify every one
    of them, and only then write the copies (temporary + os.replace): a shipped file that fails
    verification raises one DatasetError line and nothing is cached.
    """
    cached = _read_cached(info)
    if cached is not None:
        return cached
    contents = []
    for spec in info.files:
        path = shipped_dir(info) / spec.name
        if not path.is_file():
            raise DatasetError(f"{info.name}: the shipped file {path} is missing; reinstall bnexp")
        try:
            contents.append(check_file(path, spec))
        except VerificationError as e:
            raise DatasetError(
                f"{info.name}: the shipped file {path} failed verification ({e}); reinstall bnexp"
            ) from None
    target = dataset_dir(info.name)
    target.mkdir(parents=True, exist_ok=True)
    for spec, content in zip(info.files, contents, strict=True):
        final = _cache_path(info, spec)
        write_bytes_atomic(final, content)
    return contents


def bundled_status(info: DatasetInfo) -> str:
    if _cache_path(info, info.files[0]).is_file():
        return "yes (shipped; cached)"
    return "yes (shipped; verified and cached on first use)"


def stratified_subset(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subset of size n (proportional counts), shuffled.

    Class c gets round(n * share_c) examples (largest remainder, so the total is exactly n), drawn
    without replacement by a generator seeded with (seed, c); the union is shuffled with (seed,).
    """
    counts = np.bincount(y, minlength=num_classes)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    for c in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[c] += 1
    parts = [
        np.random.default_rng([seed, c]).choice(np.flatnonzero(y == c), take[c], replace=False)
        for c in range(num_classes)
    ]
    return np.random.default_rng([seed]).permutation(np.concatenate(parts))


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
    task "linear": regression, x ~ N(0, I_d) and float32 targets y = A x (shape (N, d)) for one
    random A with N(0, 1) entries (d x d; Santurkar et al.'s deep linear network task, loss
    ||W_L ... W_1 x - A x||^2); num_classes is ignored, `noise` adds noise * N(0, 1) to y.
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
    elif task == "linear":
        x = rng.standard_normal((n, dim))
        a = rng.standard_normal((dim, dim))
        y = (x @ a.T + noise * rng.standard_normal((n, dim))).astype(np.float32)
    else:
        raise ValueError(f"synthetic task must be 'clusters', 'teacher' or 'linear', got {task!r}")
    x = x.astype(np.float32)
    y = y.astype(np.float32 if task == "linear" else np.int32)
    shape = image_shape if image_shape is not None else (dim,)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], shape
