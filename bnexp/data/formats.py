"""Readers for the on-disk formats: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary records.

Plain byte parsing with NumPy; nothing is unpickled.
"""

from __future__ import annotations

import struct

import numpy as np

from .registry import DatasetError

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); multi-byte types
# are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_IMAGE_SHAPE = (32, 32, 3)
CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3


def parse_idx(buf: bytes, *, what: str = "IDX data") -> np.ndarray:
    """Parse one IDX file (already gunzipped) into an array of its declared type and shape.

    Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32
    sizes, then the data in C order.
    """
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise DatasetError(f"{what}: not an IDX file (bad magic number)")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{what}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetError(f"{what}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise DatasetError(
            f"{what}: IDX header declares shape {shape} ({expected:,} bytes) but the file has "
            f"{len(buf):,} bytes"
        )
    return (
        np.frombuffer(buf, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def parse_cifar_records(
    buf: bytes, *, num_classes: int = 10, what: str = "CIFAR data"
) -> tuple[np.ndarray, np.ndarray]:
    """Parse CIFAR-10 binary records into (images_nhwc uint8 (N, 32, 32, 3), labels uint8 (N,)).

    Each 3073-byte record is a label byte followed by the 32x32 red, green and blue planes, each
    row-major (https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version").
    """
    if len(buf) == 0 or len(buf) % CIFAR_RECORD_BYTES:
        raise DatasetError(
            f"{what}: {len(buf):,} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte records"
        )
    records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() >= num_classes:
        raise DatasetError(f"{what}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
    return np.ascontiguousarray(images), labels


def idx_images_labels(
    images: np.ndarray, labels: np.ndarray, *, num_classes: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check an IDX image/label pair and return (images NHWC uint8, labels uint8)."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{what}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{what}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(f"{what}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    return images[..., None], labels.astype(np.uint8)
