"""What a user would write instead of a bnexp sweep: the benchmark's peer cases (issue 22).

    cases = [jax_vmap_case(members, steps)] + torch_ensemble_cases(members, steps)

Both train the same ensemble as the bench's ``sweep_<M>`` case: M copies of the paper MLP
(784-100-100-100-10, sigmoid, BN before each sigmoid, softmax cross-entropy), each with its own
learning rate (0.01 to 1, geometric), plain SGD, all on one shared batch of 60 per step drawn from
4096 random MNIST-shaped examples. They are written the way a skilled user would write them, not
tuned against bnexp, and do less than bnexp's sweep does per step: no divergence guard, no running
BN statistics, no per-step losses kept, no evaluation points (which favours the peers).

- ``jax_vmap_<M>``: plain JAX + optax, one device. A member's loss and ``optax.sgd`` step
  (``optax.inject_hyperparams``, so the learning rate is state), ``jax.vmap`` over the members
  (parameters and optimizer state; the batch shared), ``lax.scan`` over the steps of a call,
  ``jax.jit`` with the carry donated; XLA's default options, the member axis in front of every
  weight (what vmap gives).
- ``torch_ensemble_<M>``: PyTorch eager with stacked weights: each layer's weights as one
  (M, in, out) tensor, the first layer's product ``x @ W`` broadcast over the members, the others
  ``torch.bmm``, BN statistics per member over the batch, the loss the sum of the members' means
  (so each member's gradient is its own), and an in-place update ``W -= lr_m * grad`` under
  ``torch.no_grad()``. With PyTorch's default threads and with one thread (``_1t``), as the
  bench's other PyTorch cases; the comparison takes the faster. Only when PyTorch is importable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WIDTHS = (784, 100, 100, 100, 10)
BATCH = 60
N_TRAIN = 4096
FLOPS_PER_STEP = 3 * 2 * BATCH * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))


def _data(steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((N_TRAIN, WIDTHS[0]), np.float32)
    y = rng.integers(0, 10, N_TRAIN).astype(np.int32)
    idx = np.random.default_rng(1).integers(0, N_TRAIN, (steps, BATCH)).astype(np.int32)
    return x, y, idx


def learning_rates(members: int) -> np.ndarray:
    return (np.geomspace(0.01, 1.0, members) if members > 1 else np.array([0.1])).astype(np.float32)


def _jax_init(key: Any) -> list[dict[str, Any]]:
    """The paper MLP's parameters as a user writes them: a dict per layer."""
    import jax
    import jax.numpy as jnp

    layers = []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        key, k = jax.random.split(key)
        layer = {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a)}
        last = i == len(WIDTHS) - 2
        row = (1, b)  # broadcast over the batch (rows)
        layer |= {"b": jnp.zeros(row)} if last else {"gamma": jnp.ones(row), "beta": jnp.zeros(row)}
        layers.append(layer)
    return layers


def _jax_loss(params: list, x: Any, y: Any) -> Any:
    """BN (batch statistics) before each sigmoid, softmax cross-entropy, mean over the batch."""
    import jax
    import optax

    for layer in params[:-1]:
        h = x @ layer["w"]
        mean, var = h.mean(0, keepdims=True), h.var(0, keepdims=True)
        x = jax.nn.sigmoid((h - mean) * jax.lax.rsqrt(var + 1e-5) * layer["gamma"] + layer["beta"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def jax_vmap_case(members: int, steps: int) -> Any:
    """The plain JAX vmap + lax.scan + optax ensemble as a bench.Case."""
    import jax
    import jax.numpy as jnp
    import optax

    from bnexp.bench import Case

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    def member_init(key: jax.Array, lr: jax.Array) -> tuple[list, Any]:
        params = _jax_init(key)
        state = opt.init(params)
        state.hyperparams["learning_rate"] = lr
        return params, state

    def member_step(params: list, state: Any, x: jax.Array, y: jax.Array) -> tuple[list, Any]:
        grads = jax.grad(_jax_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.vmap(member_step, in_axes=(0, 0, None, None))

    def train(params: list, state: Any, idx: jax.Array, x: jax.Array, y: jax.Array) -> tuple:
        def body(carry: tuple, i: jax.Array) -> tuple[tuple, None]:
            return step(*carry, x[i], y[i]), None

        return jax.lax.scan(body, (params, state), idx)[0]

    dev = jax.devices()[0]
    x, y, idx = (jax.device_put(a, dev) for a in _data(steps))
    keys = jax.random.split(jax.random.key(0), members)
    carry = [jax.jit(jax.vmap(member_init))(keys, jnp.asarray(learning_rates(members)))]
    compiled: list[Any] = []

    def setup() -> float:
        import time

        t = time.perf_counter()
        compiled.append(jax.jit(train, donate_argnums=(0, 1)).lower(*carry[0], idx, x, y).compile())
        seconds = time.perf_counter() - t
        call()  # warm-up
        return seconds

    def call() -> None:
        carry[0] = jax.block_until_ready(compiled[0](*carry[0], idx, x, y))

    what = f"plain JAX vmap of an optax step in lax.scan, {members} members, one device"
    return Case(
        f"jax_vmap_{members}",
        what,
        setup,
        call,
        members * steps,
        members * steps * FLOPS_PER_STEP,
        members,
    )


def torch_ensemble_case(members: int, steps: int, threads: int, suffix: str = "") -> Any:
    """The PyTorch stacked-weight ensemble as a bench.Case, with ``threads`` intra-op threads."""
    import torch
    import torch.nn.functional as F

    from bnexp.bench import Case

    torch.manual_seed(0)
    M, layers = members, list(zip(WIDTHS[:-1], WIDTHS[1:], strict=True))
    ws = [(torch.randn(M, a, b) / a**0.5).requires_grad_() for a, b in layers]
    gammas = [torch.ones(M, 1, b, requires_grad=True) for _, b in layers[:-1]]
    betas = [torch.zeros(M, 1, b, requires_grad=True) for _, b in layers[:-1]]
    bias = torch.zeros(M, 1, WIDTHS[-1], requires_grad=True)
    params = [*ws, *gammas, *betas, bias]
    lr = torch.from_numpy(learning_rates(M)).view(M, 1, 1)
    xs, ys, idxs = _data(steps)
    x, y, idx = torch.from_numpy(xs), torch.from_numpy(ys).long(), torch.from_numpy(idxs).long()

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        h = torch.matmul(xb, ws[0])  # (B, D) @ (M, D, H) -> (M, B, H)
        for i in range(len(layers) - 1):
            mean = h.mean(1, keepdim=True)
            var = h.var(1, unbiased=False, keepdim=True)
            h = torch.sigmoid((h - mean) * torch.rsqrt(var + 1e-5) * gammas[i] + betas[i])
            h = torch.bmm(h, ws[i + 1])
        logits = h + bias
        loss = F.cross_entropy(logits.reshape(-1, WIDTHS[-1]), yb.repeat(M)) * M
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(lr * p.grad)

    def call() -> None:
        torch.set_num_threads(threads)
        for i in range(steps):
            step(x[idx[i]], y[idx[i]])

    def setup() -> None:
        call()  # warm-up; nothing is compiled
        return None

    what = (
        f"PyTorch stacked-weight ensemble (bmm), {M} members, {threads} thread{'s' * (threads > 1)}"
    )
    case = Case(
        f"torch_ensemble_{M}{suffix}", what, setup, call, M * steps, M * steps * FLOPS_PER_STEP, M
    )
    case.info["threads"] = threads
    return case


def torch_ensemble_cases(members: int, steps: int, default_threads: int) -> list[Any]:
    """The ensemble with PyTorch's default threads and, where that is more than one, with one."""
    cases = [torch_ensemble_case(members, steps, default_threads)]
    if default_threads > 1:
        cases.append(torch_ensemble_case(members, steps, 1, "_1t"))
    return cases


__all__ = ["FLOPS_PER_STEP", "jax_vmap_case", "learning_rates", "torch_ensemble_cases"]
