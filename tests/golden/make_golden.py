"""Generate PyTorch golden files for tests/test_norms.py (PyTorch is NOT a bnexp dependency).

Run in a throwaway environment, from the repository root:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy
    /tmp/torchenv/bin/python tests/golden/make_golden.py

Inputs are float32 (what bnexp receives); PyTorch computes in float64 from those exact values, so
the files hold the true answer and the tests can demand float32 accuracy. Arrays are stored
channels-last (bnexp's layout), one small .npz (no pickles) per layer.

Keys: "x" (steps, N, ..., C) training inputs, "g" the upstream gradients, "weight", "bias";
per training step "y", "dx", "dweight", "dbias", "running_mean", "running_var"; then
"x_eval", "g_eval", "y_eval", "dx_eval", "dweight_eval", "dbias_eval" (eval mode, batch norms
only). Per-example norms hold a single step (no running state). Scalar settings are 0-d arrays.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).parent
rng = np.random.default_rng(20260101)


def f32(*shape: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def to_last(a: torch.Tensor) -> np.ndarray:
    """NC... -> N...C."""
    a = a.detach().numpy()
    return np.moveaxis(a, 1, -1) if a.ndim > 2 else a


def to_first(a: np.ndarray) -> torch.Tensor:
    """N...C -> NC... float64."""
    a = np.moveaxis(a, -1, 1) if a.ndim > 2 else a
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64)


def run(module: torch.nn.Module, x: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    xt = to_first(x).requires_grad_(True)
    module.zero_grad()
    y = module(xt)
    (y * to_first(g)).sum().backward()
    out = {"y": to_last(y), "dx": to_last(xt.grad)}
    if module.weight is not None:
        out |= {
            "dweight": module.weight.grad.numpy().copy(),
            "dbias": module.bias.grad.numpy().copy(),
        }
    return out


def affine_params(module: torch.nn.Module, c: int) -> dict[str, np.ndarray]:
    w, b = f32(c, loc=1.0, scale=0.5), f32(c, scale=0.5)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(w, dtype=torch.float64))
        module.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return {"weight": w, "bias": b}


def batch_golden(module: torch.nn.Module, shape: tuple[int, ...], steps: int) -> dict:
    c = shape[-1]
    out: dict[str, list | np.ndarray] = affine_params(module, c)
    # Steps with different offsets and scales so the running statistics move visibly.
    xs = np.stack([f32(*shape, loc=3.0 * s - 2.0, scale=0.5 + s) for s in range(steps)])
    gs = np.stack([f32(*shape) for _ in range(steps)])
    rec: dict[str, list] = {
        k: [] for k in ("y", "dx", "dweight", "dbias", "running_mean", "running_var")
    }
    module.train()
    for x, g in zip(xs, gs, strict=True):
        r = run(module, x, g)
        r |= {
            "running_mean": module.running_mean.numpy().copy(),
            "running_var": module.running_var.numpy().copy(),
        }
        for k in rec:
            rec[k].append(r[k])
    out |= {"x": xs, "g": gs} | {k: np.stack(v) for k, v in rec.items()}
    module.eval()
    x_eval, g_eval = f32(*shape, loc=1.0, scale=2.0), f32(*shape)
    r = run(module, x_eval, g_eval)
    out |= {"x_eval": x_eval, "g_eval": g_eval} | {f"{k}_eval": v for k, v in r.items()}
    momentum = np.nan if module.momentum is None else module.momentum
    return out | {"eps": np.array(module.eps), "momentum": np.array(momentum)}


def single_golden(module: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    out = affine_params(module, shape[-1])
    x, g = f32(*shape, loc=2.0, scale=1.5), f32(*shape)
    r = run(module, x, g)
    return out | {"x": x[None], "g": g[None]} | {k: v[None] for k, v in r.items()}


class ChannelLastLayerNorm(torch.nn.Module):
    """LayerNorm over (C, H, W) with a per-channel affine (bnexp's layer_norm on conv inputs)."""

    def __init__(self, c: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(c, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(c, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.layer_norm(x, x.shape[1:], eps=self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def main() -> None:
    torch.set_default_dtype(torch.float64)
    files = {
        "bn1d": batch_golden(torch.nn.BatchNorm1d(3), (6, 3), steps=3),
        "bn1d_cumulative": batch_golden(torch.nn.BatchNorm1d(3, momentum=None), (5, 3), steps=3),
        "bn2d": batch_golden(torch.nn.BatchNorm2d(3), (2, 3, 3, 3), steps=3),
        "gn": single_golden(torch.nn.GroupNorm(2, 4), (2, 3, 2, 4)),
        "ln_dense": single_golden(torch.nn.LayerNorm(5), (3, 5)),
        "ln_conv": single_golden(ChannelLastLayerNorm(3, 1e-5), (2, 3, 2, 3)),
        "in": single_golden(torch.nn.InstanceNorm2d(3, affine=True), (2, 3, 3, 3)),
    }
    for name, arrays in files.items():
        np.savez_compressed(HERE / f"{name}.npz", **arrays)
        print(f"{name}.npz: {(HERE / f'{name}.npz').stat().st_size} bytes")


if __name__ == "__main__":
    main()
