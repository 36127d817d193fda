"""What bnexp knows about each dataset: shapes, sizes, files, checksums, mirrors; and where it keeps them.

The registry is a plain dict (`DATASETS`) so that tests can add a small fake dataset
(`monkeypatch.setitem(DATASETS, "fake", DatasetInfo(...))`) and run the real download and load code
against it; `register` adds one for good and refuses a duplicate name.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs

from bnexp.errors import RuntimeFailure


class DatasetError(RuntimeFailure):
    """A dataset is missing, corrupt or could not be fetched. The message is one line meant for users."""


class UnknownDatasetError(DatasetError, KeyError):
    """No dataset has this name; `suggestion` holds the closest registered name, if any."""

    exit_code = 2  # a usage error: the name is the user's input

    def __init__(self, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        self.name = name
        self.suggestion: str | None = close[0] if close else None
        hint = f"; did you mean '{self.suggestion}'?" if self.suggestion else ""
        super().__init__(f"unknown dataset '{name}'{hint} (known: {', '.join(known)})")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def cache_dir() -> Path:
    """$BNEXP_DATA_DIR if set, else the platform's user cache directory (~/.cache/bnexp on Linux)."""
    env = os.environ.get("BNEXP_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_cache_path("bnexp", appauthor=False)


def dataset_dir(name: str) -> Path:
    """Where the files of dataset `name` live: cache_dir()/name."""
    return cache_dir() / name


@dataclass(frozen=True)
class Member:
    """A regular file inside a .tar.gz archive: its path in the archive, exact size and split."""

    path: str
    size: int
    split: Literal["train", "test"]


@dataclass(frozen=True)
class RemoteFile:
    """One file as published on the mirrors, with what we check before using it.

    `digest` is "md5:<hex>" or "sha256:<hex>"; `digest_of` says whether it is the digest of the
    file as downloaded ("file") or of its gunzipped content ("content"; then a re-compressed copy
    of the same data passes too). `size` is the downloaded size, `content_size` the gunzipped size,
    `members` the records an archive must hold.
    """

    name: str
    digest: str
    digest_of: Literal["file", "content"]
    size: int | None = None
    content_size: int | None = None
    members: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        algo, _, hexdigest = self.digest.partition(":")
        if algo not in ("md5", "sha256") or not hexdigest:
            raise ValueError(f"digest must be 'md5:<hex>' or 'sha256:<hex>', got {self.digest!r}")
        if self.digest_of == "content" and not self.name.endswith(".gz"):
            raise ValueError(f"{self.name}: a content digest needs a .gz file")


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one dataset.

    kind: "bundled" (ships with an installed package), "download" (fetched by `bnexp download`) or
    "synthetic" (generated in code). format: how `files` are read: "idx" (files are train images,
    train labels, test images, test labels, gzipped IDX), "cifar10-bin" (one .tar.gz of binary
    records), "subset" (a stratified, seeded subset of each split of dataset `parent`; no files of
    its own), "synthetic". A bundled dataset's `files` ship in the package (bnexp/data/NAME/) and
    are verified on first use; its `mirrors` are only for `bnexp download NAME --mirror`.
    """

    name: str
    kind: Literal["bundled", "download", "synthetic"]
    format: str
    summary: str
    source: str
    num_classes: int
    image_shape: tuple[int, int, int] | None  # (H, W, C); None when configurable
    n_train: int | None
    n_test: int | None
    files: tuple[RemoteFile, ...] = ()
    mirrors: tuple[str, ...] = ()
    parent: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "download" and not (self.files and self.mirrors):
            raise ValueError(f"{self.name}: a download dataset needs files and mirrors")


def _mnist_files(md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    sizes = (16 + 60_000 * 784, 8 + 60_000, 16 + 10_000 * 784, 8 + 10_000)
    return tuple(
        RemoteFile(n, f"md5:{h}", "content", content_size=s)
        for n, h, s in zip(names, md5s, sizes, strict=True)
    )


# MNIST: MD5s of the *uncompressed* canonical IDX files (LeCun's originals; the same values are in
# /work/shared/data/mnist/README.md and in many loaders). Mirrors gzip the files differently, so
# only the content digest is stable across mirrors.
_MNIST = _mnist_files(
    (
        "6bbc9ace898e44ae57da46a324031adb",
        "a25bea736e30d166cdddb491f175f624",
        "2646ac647ad5339dbf082846283269ea",
        "27ae3e4e09519cfbb04c329615203637",
    )
)


def _fashion_file(name: str, sha256: str, size: int, content_size: int) -> RemoteFile:
    return RemoteFile(name, f"sha256:{sha256}", "file", size=size, content_size=content_size)


# Fashion-MNIST: only digests of the .gz files are published. SHA-256 and sizes from
# tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt; the MD5s in Zalando's
# README (and torchvision's FashionMNIST.resources) are of the same .gz files:
# 8d4fb7e6c68d591d4c3dfef9ec88bf0d, 25c81989df183df01b3e8a0aad5dffbe,
# bef4ecab320f06d8554ea6380940ec79, bb300cfdad3c16e7a12a480ee83cd310.
# The gunzipped sizes follow from the IDX format (same layout as MNIST).
_FASHION = (
    _fashion_file(
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        26_421_880,
        16 + 60_000 * 784,
    ),
    _fashion_file(
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        29_515,
        8 + 60_000,
    ),
    _fashion_file(
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        4_422_102,
        16 + 10_000 * 784,
    ),
    _fashion_file(
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        5_148,
        8 + 10_000,
    ),
)

_CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then 1024 R, 1024 G, 1024 B bytes
# CIFAR-10 binary version: MD5 c32a1d4ab5d03f1284b67883e8d87530 of the .tar.gz is published on
# https://www.cs.toronto.edu/~kriz/cifar.html; the SHA-256 and size used here are from
# tensorflow/datasets, tensorflow_datasets/url_checksums/cifar10.txt (same file). Each batch file
# holds exactly 10,000 records (cifar.html, "Binary version").
_CIFAR10 = (
    RemoteFile(
        "cifar-10-binary.tar.gz",
        "sha256:c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "file",
        size=170_052_171,
        members=tuple(
            Member(f"cifar-10-batches-bin/data_batch_{i}.bin", 10_000 * _CIFAR_RECORD, "train")
            for i in range(1, 6)
        )
        + (Member("cifar-10-batches-bin/test_batch.bin", 10_000 * _CIFAR_RECORD, "test"),),
    ),
)

DATASETS: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the registry; a duplicate name is an error."""
    if info.name in DATASETS:
        raise ValueError(f"dataset {info.name!r} is already registered")
    DATASETS[info.name] = info
    return info


def lookup(name: str) -> DatasetInfo:
    """The registry entry for `name`, or UnknownDatasetError naming the closest match."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(name, sorted(DATASETS)) from None


register(
    DatasetInfo(
        name="mnist",
        kind="bundled",
        format="idx",
        summary="full MNIST, 60,000/10,000, shipped with bnexp (offline default)",
        source="the 4 canonical IDX files (LeCun, Cortes & Burges), shipped with bnexp",
        num_classes=10,
        image_shape=(28, 28, 1),
        n_train=60_000,
        n_test=10_000,
        files=_MNIST,
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # used by tensorflow-datasets
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # used by torchvision
            "http://yann.lecun.com/exdb/mnist/",  # the original; often refuses robots (403)
        ),
    )
)
register(
    DatasetInfo(
        name="mnist-10k",
        kind="bundled",
        format="subset",
        summary="8,000 of MNIST's train + 2,000 of its test images, stratified, fixed seed (fast runs)",
        source="derived from the shipped MNIST (stratified by class, seed 20150211)",
        num_classes=10,
        image_shape=(28, 28, 1),
        n_train=8_000,
        n_test=2_000,
        parent="mnist",
    )
)
register(
    DatasetInfo(
        name="fashion-mnist",
        kind="download",
        format="idx",
        summary="Zalando's Fashion-MNIST, 60,000/10,000 (alternative benchmark)",
        source="download: 4 IDX files (Zalando)",
        num_classes=10,
        image_shape=(28, 28, 1),
        n_train=60_000,
        n_test=10_000,
        files=_FASHION,
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's bucket
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # used by Keras
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    )
)
register(
    DatasetInfo(
        name="cifar10",
        kind="download",
        format="cifar10-bin",
        summary="CIFAR-10 binary version, 50,000/10,000 colour 32x32 (CNN experiments)",
        source="download: cifar-10-binary.tar.gz",
        num_classes=10,
        image_shape=(32, 32, 3),
        n_train=50_000,
        n_test=10_000,
        files=_CIFAR10,
        mirrors=(
            "https://www.cs.toronto.edu/~kriz/",
            "http://www.cs.toronto.edu/~kriz/",  # same host without TLS, for broken CA stores
        ),
    )
)
register(
    DatasetInfo(
        name="synthetic",
        kind="synthetic",
        format="synthetic",
        summary="Gaussian clusters or a random teacher network, sized by options (fast tests)",
        source="generated in code",
        num_classes=10,
        image_shape=None,
        n_train=1_024,
        n_test=256,
    )
)
