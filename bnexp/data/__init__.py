"""Datasets for bnexp: the offline default, verified downloads, synthetic data, and batching.

| name          | source                                             | use                          |
|---------------|----------------------------------------------------|------------------------------|
| mnist         | shipped: the 4 canonical IDX files, 60,000/10,000  | default: quick, paper        |
| mnist-10k     | derived from mnist: stratified 8,000/2,000, seeded | small real data (tests)      |
| fashion-mnist | download: 4 IDX files, 60,000/10,000               | alternative benchmark        |
| cifar10       | download: cifar-10-binary.tar.gz, 50,000/10,000    | CNN experiments              |
| synthetic     | generated (Gaussian clusters / random teacher)     | fast tests                   |

Files live in `cache_dir()` ($BNEXP_DATA_DIR or the user cache directory). `load` never touches
the network; `download` fetches, verifies, then atomically installs. Nothing here prints and
nothing is unpickled.
"""

from .batching import batch_indices, epoch_permutation
from .dataset import LAYOUTS, STANDARDIZE, Dataset, binarize, clear_cache, load, preprocess
from .fetch import ProgressFn, VerificationError, download, local_status, mirrors_for
from .formats import parse_cifar_records, parse_idx
from .registry import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    Member,
    RemoteFile,
    UnknownDatasetError,
    cache_dir,
    dataset_dir,
    lookup,
    register,
)

__all__ = [
    "DATASETS",
    "LAYOUTS",
    "STANDARDIZE",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "Member",
    "ProgressFn",
    "RemoteFile",
    "UnknownDatasetError",
    "VerificationError",
    "batch_indices",
    "binarize",
    "cache_dir",
    "clear_cache",
    "dataset_dir",
    "download",
    "epoch_permutation",
    "load",
    "local_status",
    "lookup",
    "mirrors_for",
    "parse_cifar_records",
    "parse_idx",
    "preprocess",
    "register",
]
