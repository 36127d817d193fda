"""The fault matrix, item 8: bad data. A dataset file with NaNs, of the wrong shape, or cut
short in the download cache is one line naming the file and the fix (exit 1), before anything
trains; the decompressed cache of the shipped MNIST, when damaged, is rebuilt from the shipped
files. Through cli.main in-process (no training is reached)."""

from __future__ import annotations

import gzip
import signal
import struct
import sys

import numpy as np
import pytest

from bnexp import data
from experiments import runner

FILE = "train-images-idx3-ubyte.gz"


def _idx(array: np.ndarray, type_code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


BAD = {
    "nan floats": gzip.compress(_idx(np.full((60000, 28, 28), np.nan, np.float32), 0x0D)),
    "wrong shape": gzip.compress(_idx(np.zeros((60000, 10, 10), np.uint8), 0x08)),
    "cut short": gzip.compress(_idx(np.zeros((60000, 28, 28), np.uint8), 0x08))[:5000],
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BNEXP_DATA_DIR", str(tmp_path / "cache"))
    data.clear_cache()
    yield tmp_path / "cache"
    data.clear_cache()


@pytest.mark.parametrize("damage", sorted(BAD))
def test_a_bad_dataset_file_is_one_line_naming_it_and_the_fix(
    cache, tmp_path, monkeypatch, capsys, damage
):
    import cli

    path = cache / "fashion-mnist" / FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(BAD[damage])
    trained: list[int] = []
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: trained.append(1))
    out = tmp_path / "runs"
    args = ["run", "lr-sweep", "--preset", "smoke", "--dataset", "fashion-mnist", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["bnexp", *args])
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and "failed verification" in lines[0]
    assert "delete it and run `bnexp download fashion-mnist`" in lines[0]
    assert not trained and not [p for p in out.iterdir() if p.is_dir()]


def test_a_damaged_cache_of_the_shipped_mnist_is_rebuilt(cache):
    good = data.load("mnist")
    x0, y0 = good.x_train[:100].copy(), good.y_train.copy()
    cached = cache / "mnist" / "train-labels-idx1-ubyte"
    assert cached.is_file()
    blob = bytearray(cached.read_bytes())
    blob[8:20] = bytes(12)  # twelve labels changed: the right size, the wrong digest
    cached.write_bytes(bytes(blob))
    data.clear_cache()
    again = data.load("mnist")
    np.testing.assert_array_equal(again.y_train, y0)
    np.testing.assert_array_equal(again.x_train[:100], x0)
    assert cached.read_bytes() != bytes(blob)  # rewritten from the shipped file
