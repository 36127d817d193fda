"""The Dataset record, preprocessing, and `load` (cached in-process, never downloads)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from . import sources
from .fetch import VerificationError, check_file, read_members
from .formats import idx_images_labels, parse_cifar_records, parse_idx
from .registry import DatasetError, DatasetInfo, cache_dir, dataset_dir, lookup

LAYOUTS = ("flat", "nhwc")
STANDARDIZE = ("global", "feature", "none")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: float32 inputs, int32 labels (float32 (N, K) targets for a regression
    task, where num_classes is K), split into train and test.

    x_*: (N, D) for layout "flat", (N, H, W, C) for "nhwc"; input_shape is one example's shape.
    The arrays are read-only (the same object is shared by every caller of `load`).
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    input_shape: tuple[int, ...]
    source: str

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def _pixel_stats(x_u8: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and std of uint8 pixels over `axes`, on the 0..255 scale (float64, keepdims).

    Sums of integers below 2**53 are exact in float64, and chunks keep memory at one slab.
    """
    total = np.zeros([1 if a in axes else s for a, s in enumerate(x_u8.shape)], dtype=np.float64)
    total_sq = np.zeros_like(total)
    rest = tuple(a for a in axes if a != 0)
    for lo in range(0, x_u8.shape[0], 4096):
        slab = x_u8[lo : lo + 4096].astype(np.float64)
        total += slab.sum(axis=(0, *rest), keepdims=True)
        total_sq += np.square(slab).sum(axis=(0, *rest), keepdims=True)
    count = np.prod([x_u8.shape[a] for a in axes])
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))


def preprocess(
    x_train: np.ndarray, x_test: np.ndarray, standardize: str = "global"
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images -> float32: pixels to [0, 1], then standardized with train statistics.

    standardize="global" (the default): one mean and one standard deviation per colour channel,
    over all training pixels (MNIST: a single pair, about 0.13 and 0.31). It keeps the image intact
    (relative intensities, zero background stays uniform) and well scaled, which is what both MLPs
    and CNNs expect; per-pixel ("feature") standardization divides MNIST's near-constant border
    pixels by a tiny deviation and turns rare strokes there into outliers of hundreds, and it
    would do at the input what the normalization layers under study do inside the network.
    standardize="feature": per-pixel-and-channel mean and std (std floored at one grey level,
    1/255). standardize="none": only the [0, 1] scaling.
    Statistics come from the training split only; the test split is transformed with them.
    """
    if standardize not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {STANDARDIZE}, got {standardize!r}")
    if standardize == "none":
        mean, std = np.zeros((1, 1, 1, 1)), np.full((1, 1, 1, 1), 255.0)
    else:
        axes = (0, 1, 2) if standardize == "global" else (0,)
        mean, std = _pixel_stats(x_train, axes)
        std = np.maximum(std, 1.0)  # one grey level on the 0..255 scale
    scale = (1.0 / std).astype(np.float32)
    shift = (-mean / std).astype(np.float32)

    def apply(x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32)
        out *= scale
        out += shift
        return out

    return apply(x_train), apply(x_test)


def binarize(x_u8: np.ndarray) -> np.ndarray:
    """Binary images: a pixel above 0.5 on the [0, 1] scale (uint8 > 127.5, i.e. >= 128) becomes
    255, every other pixel 0 (uint8, same shape). Ioffe & Szegedy's MNIST run (Sec. 4.1) used
    binary images; standardization (`preprocess`) is applied afterwards, with the statistics of
    the binarized training split."""
    return np.where(x_u8 >= 128, np.uint8(255), np.uint8(0))


def _missing(info: DatasetInfo, path) -> DatasetError:
    return DatasetError(
        f"{info.name} is not available locally ({path} is missing); run `bnexp download {info.name}` "
        f"on a machine with network, or place its files in {dataset_dir(info.name)} by hand"
    )


def _verified(info: DatasetInfo, spec, *, members: bool) -> bytes | None:
    path = dataset_dir(info.name) / spec.name
    if not path.is_file():
        raise _missing(info, path)
    try:
        return check_file(path, spec, members=members)
    except VerificationError as e:
        raise DatasetError(
            f"{info.name}: {path} failed verification ({e}); delete it and run "
            f"`bnexp download {info.name}`"
        ) from None


@functools.lru_cache(maxsize=3)
def _raw_arrays(
    info: DatasetInfo, _cache_key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (x_train NHWC, y_train, x_test NHWC, y_test) of a non-synthetic dataset, verified.

    Cached apart from `_load` so that other layouts and standardizations skip re-verification.
    """
    if info.format == "subset":
        x_tr, y_tr, x_te, y_te = _raw_arrays(lookup(info.parent), _cache_key)
        tr = sources.stratified_subset(y_tr, info.n_train, info.num_classes, sources.SUBSET_SEED)
        te = sources.stratified_subset(y_te, info.n_test, info.num_classes, sources.SUBSET_SEED + 1)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    elif info.format == "idx":
        if info.kind == "bundled":
            blobs = sources.cache_bundled(info)
        else:
            blobs = [_verified(info, spec, members=False) for spec in info.files]
        parsed = [
            parse_idx(blob, what=f"{info.name}/{spec.name}")
            for blob, spec in zip(blobs, info.files, strict=True)
        ]
        x_tr, y_tr = idx_images_labels(*parsed[:2], num_classes=info.num_classes, what=info.name)
        x_te, y_te = idx_images_labels(*parsed[2:], num_classes=info.num_classes, what=info.name)
    elif info.format == "cifar10-bin":
        (spec,) = info.files
        _verified(info, spec, members=False)
        try:
            blobs = read_members(dataset_dir(info.name) / spec.name, spec)
        except VerificationError as e:
            raise DatasetError(f"{info.name}: {spec.name} failed verification ({e})") from None
        splits = {}
        for split in ("train", "test"):
            parts = [
                parse_cifar_records(blobs[m.path], num_classes=info.num_classes, what=m.path)
                for m in spec.members
                if m.split == split
            ]
            splits[split] = (
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
            )
        (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    else:
        raise DatasetError(f"{info.name}: unknown format {info.format!r}")
    got = (x_tr.shape[1:], len(x_tr), len(x_te))
    want = (info.image_shape, info.n_train, info.n_test)
    if got != want:
        raise DatasetError(f"{info.name}: files hold (shape, train, test) = {got}, expected {want}")
    return x_tr, y_tr, x_te, y_te


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


def load(name: str, *, layout: str = "flat", **options) -> Dataset:
    """Load dataset `name` from the local cache (never from the network).

    layout: "flat" gives x of shape (N, D) for MLPs, "nhwc" gives (N, H, W, C) for CNNs.
    Options: `standardize` ("global" default, "feature", "none"; see `preprocess`), `n_train`
    (a class-stratified subset of that many training images, seeded with SUBSET_SEED + 2, so the
    same images every run; standardized with the subset's own statistics; the test split is
    kept whole) and `binarize` (False default; True: pixels > 0.5 -> 1, else 0, before
    standardizing; see `binarize`) for image datasets; for "synthetic" the keywords of
    `sources.synthetic` (n_train, n_test, dim,
    image_shape, num_classes, seed, task, noise). A download dataset that is not in the cache
    raises DatasetError telling the user to run `bnexp download NAME`. Results are cached
    in-process per (dataset, layout, options, cache directory).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    info = lookup(name)
    frozen = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    return _load(info, layout, frozen, str(cache_dir()))


@functools.lru_cache(maxsize=8)
def _load(info: DatasetInfo, layout: str, options: tuple, _cache_key: str) -> Dataset:
    opts = dict(options)
    num_classes = info.num_classes
    if info.kind == "synthetic":
        # The registry entry holds the defaults shown by `bnexp datasets`.
        opts = {"n_train": info.n_train, "n_test": info.n_test, "num_classes": num_classes} | opts
        num_classes = int(opts["num_classes"])
        x_tr, y_tr, x_te, y_te, shape = sources.synthetic(**opts)
        if y_tr.ndim == 2:  # regression targets (task "linear"): one output per target column
            num_classes = int(y_tr.shape[1])
        if layout == "nhwc" and len(shape) != 3:
            raise ValueError("synthetic data in layout 'nhwc' needs image_shape=(H, W, C)")
        source = f"{info.source} ({', '.join(f'{k}={v}' for k, v in options) or 'defaults'})"
    else:
        standardize = opts.pop("standardize", "global")
        n_train = opts.pop("n_train", None)
        binary = bool(opts.pop("binarize", False))
        if opts:
            raise TypeError(
                f"{info.name}: unknown option(s) {sorted(opts)}; only 'standardize', 'n_train', "
                "'binarize'"
            )
        x_tr8, y_tr, x_te8, y_te = _raw_arrays(info, _cache_key)
        if n_train is not None:
            if not isinstance(n_train, (int, np.integer)) or not 0 < n_train <= len(y_tr):
                raise ValueError(
                    f"{info.name}: n_train must be an integer in [1, {len(y_tr)}], got {n_train!r}"
                )
            rows = sources.stratified_subset(
                y_tr, int(n_train), num_classes, sources.SUBSET_SEED + 2
            )
            x_tr8, y_tr = x_tr8[rows], y_tr[rows]
        if binary:  # once, here: every trial of the run sees the same binary images
            x_tr8, x_te8 = binarize(x_tr8), binarize(x_te8)
        x_tr, x_te = preprocess(x_tr8, x_te8, standardize)
        shape = x_tr.shape[1:]
        source = info.source
        if n_train is not None:
            source += f" (stratified subset of {n_train} training images)"
        if binary:
            source += " (binarized: pixels > 0.5 -> 1)"
    if layout == "flat":
        shape = (int(np.prod(shape)),)
    arrays = [
        np.ascontiguousarray(x_tr.reshape(len(x_tr), *shape), dtype=np.float32),
        np.ascontiguousarray(y_tr, dtype=_label_dtype(y_tr)),
        np.ascontiguousarray(x_te.reshape(len(x_te), *shape), dtype=np.float32),
        np.ascontiguousarray(y_te, dtype=_label_dtype(y_te)),
    ]
    for a in arrays:
        a.flags.writeable = False
    return Dataset(info.name, *arrays, num_classes, tuple(int(s) for s in shape), source)


def _label_dtype(y: np.ndarray) -> type:
    """int32 class labels, or float32 regression targets (synthetic task "linear")."""
    return np.float32 if y.dtype.kind == "f" else np.int32


def clear_cache() -> None:
    """Forget every dataset loaded in this process."""
    _load.cache_clear()
    _raw_arrays.cache_clear()
