"""Strict JAX for every test: rank promotion raises, float32 by default, CPU only."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("BNEXP_CALIBRATE", "0")  # fixed layouts; tests/test_calibrate.py turns it on

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own bnexp cache directory ($BNEXP_DATA_DIR) unless a test sets one."""
    if "BNEXP_TEST_KEEP_CACHE" not in os.environ:
        cache = tmp_path_factory.getbasetemp() / "bnexp-cache"
        monkeypatch.setenv("BNEXP_DATA_DIR", str(cache))
    yield
