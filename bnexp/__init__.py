"""bnexp: test the claims of the Batch Normalization literature with small, fast JAX experiments."""

__version__ = "0.1.0"
