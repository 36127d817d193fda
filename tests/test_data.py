"""bnexp.data: parsing, verified downloads through a real local HTTP server, shipped MNIST, batching, CLI.

Nothing here reaches beyond 127.0.0.1: an autouse guard makes any other connection or DNS lookup
fail (which is also how the "no network" case is tested).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bnexp import data
from bnexp.data import fetch, sources

REPO = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No network beyond loopback; no user mirror leaking in from the environment."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            raise OSError(f"test tried to reach {address}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, f"offline test: no DNS for {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.delenv("BNEXP_MIRROR", raising=False)
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.01)
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache directory for one test."""
    monkeypatch.setenv("BNEXP_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        server = self.server
        server.hits.append(self.path)
        mode, body = server.routes.get(self.path, ("404", b""))
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = mode == "truncate" or (mode == "truncate-once" and server.hits.count(self.path) == 1)
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.close_connection = True

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1; set `server.routes[path] = (mode, bytes)`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---- small generated datasets -------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes()


FAKE_IDX_NAMES = ("tr-img.gz", "tr-lab.gz", "te-img.gz", "te-lab.gz")


def fake_idx_content() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (12, 4, 4), dtype=np.uint8),
        (np.arange(12) % 3).astype(np.uint8),
        rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        (np.arange(6) % 3).astype(np.uint8),
    )
    return {n: idx_bytes(a) for n, a in zip(FAKE_IDX_NAMES, arrays, strict=True)}


def register_fake_idx(monkeypatch, mirrors, name="fake-idx") -> data.DatasetInfo:
    """A 12/6-example 4x4 IDX dataset checked by MD5 of content, like MNIST."""
    files = tuple(
        data.RemoteFile(n, f"md5:{hashlib.md5(c).hexdigest()}", "content", content_size=len(c))
        for n, c in fake_idx_content().items()
    )
    info = data.DatasetInfo(
        name=name,
        kind="download",
        format="idx",
        summary="test",
        source="test server",
        num_classes=3,
        image_shape=(4, 4, 1),
        n_train=12,
        n_test=6,
        files=files,
        mirrors=tuple(mirrors),
    )
    monkeypatch.setitem(data.DATASETS, name, info)
    return info


def serve_idx(server, prefix="/good/", mode="ok", compresslevel=9) -> str:
    for n, c in fake_idx_content().items():
        server.routes[prefix + n] = (mode, gzip.compress(c, compresslevel=compresslevel, mtime=0))
    return server.url + prefix


def cifar_records(labels, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    out = b""
    for label in labels:
        out += bytes([label]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
    return out


def fake_cifar_archive() -> tuple[bytes, dict[str, bytes]]:
    blobs = {
        "fake-cifar/data_1.bin": cifar_records([0, 1, 2, 9]),
        "fake-cifar/test.bin": cifar_records([5, 7], seed=1),
        "fake-cifar/readme.txt": b"ignored",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, blob in blobs.items():
            info = tarfile.TarInfo(path)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue(), blobs


def register_fake_cifar(monkeypatch, archive: bytes, mirrors) -> data.DatasetInfo:
    spec = data.RemoteFile(
        "fake-cifar.tar.gz",
        f"sha256:{hashlib.sha256(archive).hexdigest()}",
        "file",
        size=len(archive),
        members=(
            data.Member("fake-cifar/data_1.bin", 4 * 3073, "train"),
            data.Member("fake-cifar/test.bin", 2 * 3073, "test"),
        ),
    )
    info = data.DatasetInfo(
        name="fake-cifar",
        kind="download",
        format="cifar10-bin",
        summary="test",
        source="test server",
        num_classes=10,
        image_shape=(32, 32, 3),
        n_train=4,
        n_test=2,
        files=(spec,),
        mirrors=tuple(mirrors),
    )
    monkeypatch.setitem(data.DATASETS, "fake-cifar", info)
    return info


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- cache directory and registry ---------------------------------------------------------------


def test_cache_dir_env_then_platform_default(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setenv("BNEXP_DATA_DIR", str(tmp_path / "x"))
    assert data.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("BNEXP_DATA_DIR")
    assert data.cache_dir() == platformdirs.user_cache_path("bnexp", appauthor=False)
    if sys.platform.startswith("linux") and "XDG_CACHE_HOME" not in os.environ:
        assert data.cache_dir() == Path.home() / ".cache" / "bnexp"


def test_registry_lists_the_five_datasets_with_verifiable_files():
    assert {"mnist-10k", "mnist", "fashion-mnist", "cifar10", "synthetic"} <= set(data.DATASETS)
    mnist = data.DATASETS["mnist"]
    assert [f.digest for f in mnist.files] == [
        "md5:6bbc9ace898e44ae57da46a324031adb",
        "md5:a25bea736e30d166cdddb491f175f624",
        "md5:2646ac647ad5339dbf082846283269ea",
        "md5:27ae3e4e09519cfbb04c329615203637",
    ]
    assert [f.content_size for f in mnist.files] == [47_040_016, 60_008, 7_840_016, 10_008]
    for name in ("mnist", "fashion-mnist", "cifar10"):
        info = data.DATASETS[name]
        assert len(info.mirrors) >= 2 and all(m.endswith("/") for m in info.mirrors)
    cifar = data.DATASETS["cifar10"].files[0]
    assert cifar.size == 170_052_171 and len(cifar.members) == 6
    assert all(m.size == 10_000 * 3073 for m in cifar.members)
    with pytest.raises(ValueError, match="already registered"):
        data.register(data.DATASETS["mnist"])


def test_unknown_name_suggests_closest():
    with pytest.raises(data.UnknownDatasetError, match="did you mean 'mnist'"):
        data.load("mnst")


def test_mirror_order_cli_then_env_then_builtin(monkeypatch, tmp_path):
    info = data.DATASETS["mnist"]
    monkeypatch.setenv("BNEXP_MIRROR", "http://env.example/m")
    got = data.mirrors_for(info, "http://cli.example/m/")
    assert got[:2] == ["http://cli.example/m/", "http://env.example/m/"]
    assert got[2:] == list(info.mirrors)
    assert data.mirrors_for(info, str(tmp_path))[0] == tmp_path.as_uri() + "/"


# ---- parsing ------------------------------------------------------------------------------------


def test_parse_idx_types_and_shapes():
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(images)), images)
    ints = np.array([[1, -2], [70000, 3]], dtype=">i4")
    parsed = data.parse_idx(idx_bytes(ints))
    assert parsed.dtype == np.int32 and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, [[1, -2], [70000, 3]])
    floats = np.array([0.5, -1.25], dtype=">f4")
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(floats)), [0.5, -1.25])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
        (lambda b: b[:-1], "declares shape"),
        (lambda b: b + b"\x00", "declares shape"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_parse_idx_rejects_malformed(mutate, message):
    good = idx_bytes(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(data.DatasetError, match=message):
        data.parse_idx(mutate(good))


def test_parse_cifar_records_label_then_rgb_planes_to_nhwc():
    red, green, blue = (np.full((32, 32), v, dtype=np.uint8) for v in (10, 20, 30))
    red[1, 2] = 99  # row 1, column 2 of the red plane
    record = bytes([7]) + red.tobytes() + green.tobytes() + blue.tobytes()
    images, labels = data.parse_cifar_records(record + cifar_records([3]))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [7, 3])
    np.testing.assert_array_equal(images[0, 0, 0], [10, 20, 30])
    assert images[0, 1, 2, 0] == 99 and images[0, 2, 1, 0] == 10
    with pytest.raises(data.DatasetError, match="whole number"):
        data.parse_cifar_records(record[:-1])
    with pytest.raises(data.DatasetError, match="label 10 out of range"):
        data.parse_cifar_records(bytes([10]) + record[1:])


# ---- downloads through a real HTTP server -------------------------------------------------------


def test_download_success_with_progress_then_load(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [serve_idx(server)])
    calls = []
    paths = data.download(
        "fake-idx", progress=lambda f, done, total: calls.append((f, done, total))
    )
    assert [p.name for p in paths] == list(FAKE_IDX_NAMES)
    assert files_in(cache / "fake-idx") == sorted(FAKE_IDX_NAMES)  # no temporaries left
    for name in FAKE_IDX_NAMES:
        mine = [(d, t) for f, d, t in calls if f == name]
        size = len(server.routes["/good/" + name][1])
        assert mine[0] == (0, size) and mine[-1] == (size, size)
        assert all(a[0] <= b[0] for a, b in zip(mine, mine[1:], strict=False))
    ds = data.load("fake-idx", layout="nhwc", standardize="none")
    content = fake_idx_content()
    np.testing.assert_allclose(
        ds.x_train[..., 0], data.parse_idx(content["tr-img.gz"]) / np.float32(255), rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_test, np.arange(6) % 3)
    assert ds.input_shape == (4, 4, 1) and ds.y_train.dtype == np.int32
    # A second download verifies what is there and fetches nothing.
    hits = len(server.hits)
    assert data.download("fake-idx") == paths and len(server.hits) == hits


def test_failed_mirrors_are_skipped_in_order(cache, server, refused_url, monkeypatch):
    good = serve_idx(server)
    register_fake_idx(monkeypatch, [server.url + "/missing/", good])
    paths = data.download("fake-idx", mirror=refused_url)
    assert len(paths) == 4
    assert "/missing/tr-img.gz" in server.hits and "/good/tr-img.gz" in server.hits
    assert server.hits.index("/missing/tr-img.gz") < server.hits.index("/good/tr-img.gz")


def test_user_mirror_from_environment_is_tried_first(cache, server, refused_url, monkeypatch):
    register_fake_idx(monkeypatch, [refused_url])
    monkeypatch.setenv("BNEXP_MIRROR", serve_idx(server))
    assert len(data.download("fake-idx")) == 4


def test_checksum_mismatch_is_rejected_and_leaves_nothing(cache, server, monkeypatch):
    url = serve_idx(server)
    register_fake_idx(monkeypatch, [url])
    body = bytearray(gzip.decompress(server.routes["/good/tr-img.gz"][1]))
    body[-1] ^= 0xFF  # same size, one pixel changed
    server.routes["/good/tr-img.gz"] = ("ok", gzip.compress(bytes(body)))
    with pytest.raises(data.DatasetError) as err:
        data.download("fake-idx")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot download fake-idx: tr-img.gz failed on every mirror")
    assert url in message and "checksum mismatch: md5 of the gunzipped content" in message
    assert "by hand" in message and str(cache / "fake-idx") in message
    assert files_in(cache / "fake-idx") == []  # nothing a later run could mistake for data
    with pytest.raises(data.DatasetError, match="bnexp download fake-idx"):
        data.load("fake-idx")


def test_recompressed_copy_passes_content_digest(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [serve_idx(server, compresslevel=1)])
    assert len(data.download("fake-idx")) == 4


def test_truncated_transfer_is_retried_then_reported(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [serve_idx(server, mode="truncate-once")])
    assert len(data.download("fake-idx")) == 4  # each file cut once, retried, then whole
    assert server.hits.count("/good/tr-img.gz") == 2

    data.clear_cache()
    register_fake_idx(monkeypatch, [serve_idx(server, prefix="/cut/", mode="truncate")], "fake-2")
    with pytest.raises(data.DatasetError, match=r"truncated transfer \([\d,]+ of [\d,]+ bytes\)"):
        data.download("fake-2", retries=0)
    assert files_in(cache / "fake-2") == []


def test_http_status_and_no_network_are_named(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [server.url + "/missing/", "https://mirror.invalid/x/"])
    with pytest.raises(data.DatasetError) as err:
        data.download("fake-idx")
    message = str(err.value)
    assert "/missing/ (HTTP 404 Not Found)" in message
    assert "https://mirror.invalid/x/ (DNS lookup failed: no network or unknown host)" in message
    assert not (cache / "fake-idx").exists()


def test_interrupted_download_leaves_no_partial_file(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [serve_idx(server)])
    fetch_chunk = fetch.CHUNK_BYTES
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 64)

    def interrupt(file, done, total):
        if done >= 64:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.download("fake-idx", progress=interrupt)
    assert files_in(cache / "fake-idx") == []
    monkeypatch.setattr(fetch, "CHUNK_BYTES", fetch_chunk)


def test_files_placed_by_hand_are_verified_without_network(cache, server, refused_url, monkeypatch):
    serve_idx(server)
    register_fake_idx(monkeypatch, [refused_url])
    target = cache / "fake-idx"
    target.mkdir(parents=True)
    for name in FAKE_IDX_NAMES:
        (target / name).write_bytes(server.routes["/good/" + name][1])
    assert len(data.download("fake-idx")) == 4 and server.hits == []
    assert data.load("fake-idx").x_train.shape == (12, 16)


def test_binarize_thresholds_at_half_and_load_applies_it_once(
    cache, server, refused_url, monkeypatch
):
    edges = np.array([0, 1, 127, 128, 200, 255], dtype=np.uint8)
    np.testing.assert_array_equal(data.binarize(edges), [0, 0, 0, 255, 255, 255])  # > 0.5 of 255
    serve_idx(server)
    register_fake_idx(monkeypatch, [refused_url])
    target = cache / "fake-idx"
    target.mkdir(parents=True)
    for name in FAKE_IDX_NAMES:
        (target / name).write_bytes(server.routes["/good/" + name][1])
    content = fake_idx_content()
    raw_tr, raw_te = data.parse_idx(content["tr-img.gz"]), data.parse_idx(content["te-img.gz"])
    ds = data.load("fake-idx", layout="nhwc", standardize="none", binarize=True)
    np.testing.assert_array_equal(ds.x_train[..., 0], (raw_tr / 255.0 > 0.5).astype(np.float32))
    np.testing.assert_array_equal(ds.x_test[..., 0], (raw_te / 255.0 > 0.5).astype(np.float32))
    assert "binarized" in ds.source
    # standardized afterwards with the binary training split's statistics
    g = data.load("fake-idx", binarize=True)
    b = (raw_tr / 255.0 > 0.5).astype(np.float64)
    np.testing.assert_allclose(g.x_train, ((b - b.mean()) / b.std()).reshape(12, 16), rtol=1e-5)
    with pytest.raises(TypeError, match="binarize"):
        data.load("fake-idx", binarise=True)


def test_corrupt_file_in_cache_is_refused_by_load_and_replaced_by_download(
    cache, server, monkeypatch
):
    register_fake_idx(monkeypatch, [serve_idx(server)])
    data.download("fake-idx")
    bad = cache / "fake-idx" / "te-lab.gz"
    bad.write_bytes(gzip.compress(b"\x00" * 14))
    data.clear_cache()
    with pytest.raises(data.DatasetError, match="te-lab.gz failed verification"):
        data.load("fake-idx")
    data.download("fake-idx")
    assert data.load("fake-idx").y_test.shape == (6,)


def test_cifar_archive_download_verify_and_parse(cache, server, monkeypatch):
    archive, blobs = fake_cifar_archive()
    server.routes["/c/fake-cifar.tar.gz"] = ("ok", archive)
    register_fake_cifar(monkeypatch, archive, [server.url + "/c/"])
    calls = []
    data.download("fake-cifar", progress=lambda *a: calls.append(a))
    assert calls[-1] == ("fake-cifar.tar.gz", len(archive), len(archive))
    ds = data.load("fake-cifar", layout="nhwc", standardize="none")
    assert ds.x_train.shape == (4, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 9])
    np.testing.assert_array_equal(ds.y_test, [5, 7])
    expected, _ = data.parse_cifar_records(blobs["fake-cifar/data_1.bin"])
    np.testing.assert_allclose(ds.x_train, expected / np.float32(255), rtol=1e-6)
    assert data.load("fake-cifar").x_train.shape == (4, 3072)


def test_cifar_archive_with_wrong_digest_is_rejected(cache, server, monkeypatch):
    archive, _ = fake_cifar_archive()
    register_fake_cifar(monkeypatch, archive, [server.url + "/c/"])
    server.routes["/c/fake-cifar.tar.gz"] = ("ok", archive[:-1] + bytes([archive[-1] ^ 1]))
    with pytest.raises(data.DatasetError, match="checksum mismatch: sha256 of the file"):
        data.download("fake-cifar")
    assert files_in(cache / "fake-cifar") == []


# ---- load, preprocessing, shipped MNIST, synthetic -----------------------------------------------


def test_load_never_downloads(cache, server, monkeypatch):
    register_fake_idx(monkeypatch, [serve_idx(server)])
    with pytest.raises(data.DatasetError, match=r"run `bnexp download fake-idx`"):
        data.load("fake-idx")
    assert server.hits == []


def test_preprocess_global_uses_train_statistics_only():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (50, 4, 4, 2), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 4, 4, 2), dtype=np.uint8)
    x_tr, x_te = data.preprocess(train, test)
    assert x_tr.dtype == np.float32
    np.testing.assert_allclose(x_tr.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x_tr.std(axis=(0, 1, 2)), 1, rtol=1e-5)
    scaled = train / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    np.testing.assert_allclose(x_te, (test / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    x_tr2, _ = data.preprocess(train, np.full_like(test, 255))
    np.testing.assert_array_equal(x_tr, x_tr2)  # the test split never leaks into the statistics
    f_tr, _ = data.preprocess(train, test, "feature")
    np.testing.assert_allclose(f_tr.mean(axis=0), 0, atol=1e-5)
    n_tr, _ = data.preprocess(train, test, "none")
    assert n_tr.min() >= 0 and n_tr.max() <= 1


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_shipped_mnist_loads_offline_with_canonical_counts(tmp_path):
    code = textwrap.dedent(
        """
        import socket, sys
        import numpy as np
        def no_network(*args, **kwargs):
            raise OSError("network disabled")
        socket.socket.connect = no_network
        socket.getaddrinfo = no_network
        from bnexp import data
        ds = data.load("mnist")
        print(ds.x_train.shape, ds.x_test.shape)
        print(np.bincount(ds.y_train).tolist(), np.bincount(ds.y_test).tolist())
        """
    )
    env = {**os.environ, "BNEXP_DATA_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    shapes, counts = result.stdout.splitlines()
    assert shapes == "(60000, 784) (10000, 784)"
    assert counts == f"{MNIST_TRAIN_COUNTS} {MNIST_TEST_COUNTS}"
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert cached == sorted(f.name.removesuffix(".gz") for f in data.lookup("mnist").files)


def test_corrupt_shipped_mnist_is_rejected_and_nothing_cached(tmp_path, monkeypatch):
    info = data.lookup("mnist")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for spec in info.files:
        (shipped / spec.name).write_bytes((sources.shipped_dir(info) / spec.name).read_bytes())
    labels = shipped / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: valid gzip, valid IDX, wrong MD5
    labels.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setattr(sources, "shipped_dir", lambda info: shipped)
    monkeypatch.setenv("BNEXP_DATA_DIR", str(tmp_path / "cache"))
    data.clear_cache()
    try:
        with pytest.raises(data.DatasetError) as e:
            data.load("mnist")
        assert "\n" not in str(e.value)
        assert "t10k-labels-idx1-ubyte.gz failed verification (checksum mismatch" in str(e.value)
        cache = tmp_path / "cache" / "mnist"
        assert not cache.exists() or not any(cache.iterdir())
    finally:
        data.clear_cache()


def test_mnist_10k_is_a_stratified_subset_identical_across_runs():
    sub = data.load("mnist-10k")
    full = data.load("mnist")
    assert sub.x_train.shape == (8000, 784) and sub.x_test.shape == (2000, 784)
    np.testing.assert_array_equal(
        np.bincount(sub.y_train), [790, 899, 794, 818, 779, 723, 789, 835, 780, 793]
    )
    np.testing.assert_array_equal(
        np.bincount(sub.y_test), [196, 227, 206, 202, 196, 178, 192, 206, 195, 202]
    )
    assert len(set(sub.y_train[:40].tolist())) >= 8  # shuffled, not sorted by label
    data.clear_cache()
    again = data.load("mnist-10k")
    np.testing.assert_array_equal(again.x_train, sub.x_train)
    np.testing.assert_array_equal(again.y_test, sub.y_test)
    idx = sources.stratified_subset(full.y_train, 8000, 10, sources.SUBSET_SEED)
    assert len(set(idx.tolist())) == 8000
    np.testing.assert_array_equal(sub.y_train, full.y_train[idx])


def test_n_train_option_takes_a_fixed_stratified_subset_of_the_train_split():
    sub = data.load("mnist-10k", n_train=1000)
    whole = data.load("mnist-10k")
    assert sub.x_train.shape == (1000, 784)
    np.testing.assert_array_equal(sub.y_test, whole.y_test)  # the test split is kept whole
    counts = np.bincount(sub.y_train, minlength=10)
    share = np.bincount(whole.y_train, minlength=10) * 1000 / 8000  # proportional, +-1 rounding
    assert counts.sum() == 1000 and np.all(np.abs(counts - share) < 1)
    assert data.load("mnist-10k", n_train=1000) is sub  # same options: the cached dataset
    data.clear_cache()
    again = data.load("mnist-10k", n_train=1000)
    np.testing.assert_array_equal(again.x_train, sub.x_train)
    with pytest.raises(ValueError, match="n_train"):
        data.load("mnist-10k", n_train=8001)


def test_synthetic_is_deterministic_and_configurable():
    a = data.load("synthetic", n_train=100, n_test=20, dim=8, num_classes=4, seed=3)
    b = data.load("synthetic", seed=3, dim=8, n_test=20, num_classes=4, n_train=100)
    assert a is b  # option order does not matter to the in-process cache
    assert a.x_train.shape == (100, 8) and a.x_test.shape == (20, 8) and a.num_classes == 4
    np.testing.assert_array_equal(np.bincount(a.y_train, minlength=4) > 0, True)
    c = data.load("synthetic", n_train=100, n_test=20, dim=8, num_classes=4, seed=4)
    assert not np.array_equal(a.x_train, c.x_train)
    img = data.load("synthetic", layout="nhwc", image_shape=(6, 6, 2), task="teacher")
    assert img.x_train.shape == (1024, 6, 6, 2) and img.input_shape == (6, 6, 2)
    with pytest.raises(ValueError, match="image_shape"):
        data.load("synthetic", layout="nhwc")
    with pytest.raises(TypeError, match="unknown option"):
        data.load("mnist-10k", dim=3)


def test_synthetic_clusters_are_learnable():
    ds = data.load("synthetic", n_train=400, n_test=200, dim=16, num_classes=4, noise=0.5)
    centroids = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(4)])
    distance = ((ds.x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    assert (distance.argmin(1) == ds.y_test).mean() > 0.9


# ---- batching -----------------------------------------------------------------------------------


def test_batch_indices_epochs_are_permutations():
    idx = data.batch_indices(7, 0, 30, 100, 10)
    assert idx.shape == (30, 10) and idx.dtype == np.int32
    epochs = idx.reshape(3, 100)
    for e in range(3):
        np.testing.assert_array_equal(np.sort(epochs[e]), np.arange(100))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[1], data.epoch_permutation(7, 1, 100))


def test_batch_indices_drop_last_partial_batch_and_chunking():
    idx = data.batch_indices(1, 0, 6, 25, 8)  # 3 steps per epoch, 1 example dropped each epoch
    for e in range(2):
        epoch = idx[3 * e : 3 * e + 3].ravel()
        assert len(set(epoch.tolist())) == 24
        np.testing.assert_array_equal(epoch, data.epoch_permutation(1, e, 25)[:24])
    whole = data.batch_indices(5, 0, 200, 1000, 32)
    parts = [data.batch_indices(5, s, n, 1000, 32) for s, n in ((0, 100), (100, 1), (101, 99))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(data.batch_indices(5, 50, 20, 1000, 32), whole[50:70])
    np.testing.assert_array_equal(data.batch_indices(5, 0, 200, 1000, 32), whole)  # same seed
    assert not np.array_equal(data.batch_indices(6, 0, 200, 1000, 32), whole)
    assert data.batch_indices(5, 10, 0, 1000, 32).shape == (0, 32)
    with pytest.raises(ValueError):
        data.batch_indices(5, 0, 1, 10, 32)


def test_batch_indices_are_fast_at_paper_scale():
    start = time.perf_counter()
    idx = data.batch_indices(0, 0, 50_000, 60_000, 60)
    assert idx.shape == (50_000, 60) and idx.max() < 60_000
    assert time.perf_counter() - start < 5.0  # about 0.1 s unloaded


# ---- rules that hold everywhere -----------------------------------------------------------------


def test_no_pickle_anywhere_in_the_data_package():
    for path in (REPO / "bnexp" / "data").glob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        assert "np.load(" not in text or "allow_pickle=False" in text, path


# ---- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_app():
    sys.path.insert(0, str(REPO))
    try:
        import cli
    finally:
        sys.path.remove(str(REPO))
    return cli.app


def invoke(app, *args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


def test_cli_datasets_lists_everything(cli_app, cache):
    result = invoke(cli_app, "datasets")
    assert result.exit_code == 0, result.output
    for name in ("mnist-10k", "mnist", "fashion-mnist", "cifar10", "synthetic"):
        assert name in result.stdout
    assert "60,000" in result.stdout and "28x28x1" in result.stdout and "32x32x3" in result.stdout
    assert str(cache) in result.stdout.replace("\n", "")


def test_cli_download_success_and_failure(cli_app, cache, server, refused_url, monkeypatch):
    register_fake_idx(monkeypatch, [refused_url])
    ok = invoke(cli_app, "download", "fake-idx", "--mirror", serve_idx(server))
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.count("downloaded; md5 of gunzipped content verified") == 4
    assert "fake-idx: ready in" in ok.stdout
    again = invoke(cli_app, "datasets")
    assert "fake-idx" in again.stdout

    register_fake_idx(monkeypatch, [refused_url], name="fake-bad")
    bad = invoke(cli_app, "download", "fake-bad", "--mirror", server.url + "/missing/")
    assert bad.exit_code == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnexp: error: cannot download fake-bad")
    assert "HTTP 404" in lines[0] and "connection refused" in lines[0]
    assert "Traceback" not in bad.output


def test_cli_unknown_dataset_is_a_usage_error(cli_app):
    result = invoke(cli_app, "download", "mnst")
    assert result.exit_code == 2
    assert "did you mean 'mnist'" in result.stderr and "Traceback" not in result.output


def test_console_entry_point_exit_codes(tmp_path, refused_url):
    """Through cli.main(), as the installed `bnexp` script runs: exit codes and one stderr line."""
    setup = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from bnexp import data; import cli; "
        "spec = data.RemoteFile('f.gz', 'md5:' + '0' * 32, 'content'); "
        "data.register(data.DatasetInfo('fake', 'download', 'idx', 's', 's', 3, (4, 4, 1), 1, 1, "
        f"(spec,), ({refused_url!r},))); cli.main()"
    )
    env = {**os.environ, "BNEXP_DATA_DIR": str(tmp_path)}
    env.pop("BNEXP_MIRROR", None)
    for args, code, text in (
        (["download", "mnst"], 2, "did you mean 'mnist'"),
        (["download", "fake"], 1, "cannot download fake: f.gz failed on every mirror"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", setup, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert text in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.returncode == code, result.stderr
