"""Santurkar et al. 2018 probes: internal covariate shift, loss landscape, scale invariance.

Santurkar, Tsipras, Ilyas & Madry, "How does batch normalization help optimization?" (NeurIPS
2018) test two explanations of BN against each other: the original one (BN reduces internal
covariate shift, ICS) and theirs (BN makes the loss landscape smoother). This module holds the
measurements, in two layers:

1. Pure math over a generic loss of a parameter pytree (no model, no engine), so closed forms can
   check them (tests/test_probes.py uses a quadratic L(theta) = 1/2 theta^T H theta - b^T theta):

   ``ics(grad_fn, layers, lr)``  Def. 2.1. layers = per-layer parameter pytrees in forward order,
       grad_fn(layers) -> their gradients. For layer i, G_i = grad_fn(layers)[i] and
       G'_i = grad_fn(layers')[i] with layers'_j = layers_j - lr G_j for j < i (layers 1..i-1 took
       their step-t SGD update; layer i and later did not), on the same batch. Returns
       ||G_i - G'_i||_2 and cos(G_i, G'_i) per layer. For i = 1 nothing moves, so G' = G by
       definition (0 and 1 are returned without another gradient evaluation).
   ``landscape(loss_and_grad, theta, g, etas)``  Fig. 4. With g = grad L(theta) and each step size
       eta: L(theta - eta g) (loss band = [min, max] over the etas), ||g - grad L(theta - eta g)||_2
       (gradient predictiveness band = [min, max]) and the effective beta-smoothness
       max_eta ||g - grad L(theta - eta g)|| / ||eta g||. For the quadratic the difference is
       eta H g, so beta = ||H g|| / ||g|| for every eta. With per-leaf factors D (``scale``) it
       also returns beta in the coordinates theta / D ("beta_relative"; the adapter takes
       D = ||W|| for every hidden layer's weight, layer_scales: BN's scale-invariant weights
       are then measured by their direction, the baseline's in the same relative units).
   ``scale_invariance(fn, w, scales)``  Ioffe & Szegedy Sec. 3.3: BN(aWu) = BN(Wu) and
       dL/d(aW) = (1/a) dL/dW. fn(w) -> (loss, output); for each a: the relative output change
       ||out(aw) - out(w)|| / ||out(w)||, the gradient ratio ||grad(aw)|| / ||grad(w)|| (1/a when
       invariant) and the relative error ||a grad(aw) - grad(w)|| / ||grad(w)|| (0 when invariant).
       With eps > 0 in the norm the identity is BN_eps(aWu) = BN_{eps/a^2}(Wu): invariance is exact
       only for eps = 0 and approximate (relative change ~ eps/(2 var) |1 - 1/a^2|) otherwise.

2. Registry adapters (bnexp.probes interface) that apply them to the member's model at each
   evaluation point, inside the engine's vmap and jit: "ics", "landscape", "scale_invariance"
   (factories: a configured grid comes as the trial's probe options, Trial.probe_options).
   Every adapter evaluates the loss in train mode (batch statistics; for noisy BN the noise of the
   probe key, the same draw in every evaluation of one point) on the probe batch, with the member's
   ``hp["norm_call"]``; the returned running statistics are discarded, so the running statistics,
   the parameters and hence the training trajectory are untouched (a probe only reads the state).

   Choices: the "step-t update" of the earlier layers in ICS is the plain SGD step lr * G on the
   probe batch, as in Santurkar et al. (who train with SGD). The probe sees no optimizer state, so
   for "momentum" and "adam" it still uses lr * G: ICS then measures the shift a plain gradient step
   of that size would cause. The layers W_i are every weight matrix or conv kernel: the conv blocks,
   the hidden dense layers and the output layer, in forward order; the update of layers 1..i-1
   moves all their parameters (weights, biases and the norms' scale and bias).
   Landscape step sizes are factors x hp["lr"] (default 0.5x..4x, 8 points, linearly spaced), and
   the loss is of all parameters together. Scale invariance scales the weight of each hidden
   (normalized) layer alone and compares that layer's norm output (the input of its nonlinearity).

Output keys and shapes (E evaluation points are prepended by the engine); L = weight layers
(hidden + output), H = hidden layers, K = step sizes or scales:

    "ics":              ics_norm (L,), ics_cos (L,), ics_grad_norm (L,) = ||G_i||
    "landscape":        loss_band (2,), grad_pred_band (2,), beta_smooth (), beta_relative (),
                        landscape_loss (K,),
                        landscape_grad_diff (K,), landscape_grad_norm () = ||g||, loss_at () = L(theta)
    "scale_invariance": si_out_diff (H, K), si_grad_ratio (H, K), si_grad_err (H, K)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnexp import models
from bnexp.models import ModelSpec

ProbeFn = Callable[..., dict[str, jax.Array]]  # bnexp.probes.ProbeFn (no import: no cycle)

Array = jax.Array
Tree = Any
TINY = 1e-30  # guards 0/0 (a zero gradient) without changing any non-degenerate ratio
ETA_FACTORS = (0.5, 4.0, 8)  # landscape step sizes: linspace(0.5, 4, 8) x learning rate
SCALES = (0.1, 0.5, 2.0, 10.0)  # scale-invariance factors a


# ---- pytree arithmetic -----------------------------------------------------------------------


def tree_dot(a: Tree, b: Tree) -> Array:
    return sum(
        (jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)),
        jnp.zeros((), jnp.float32),
    )


def tree_norm(a: Tree) -> Array:
    """Euclidean norm of all leaves together (||.||_2 of the flattened pytree)."""
    return jnp.sqrt(tree_dot(a, a))


def tree_sub(a: Tree, b: Tree) -> Tree:
    return jax.tree.map(jnp.subtract, a, b)


def cosine(a: Tree, b: Tree) -> Array:
    return tree_dot(a, b) / jnp.maximum(tree_norm(a) * tree_norm(b), TINY)


# ---- the pure measurements -------------------------------------------------------------------


def ics(
    grad_fn: Callable[[list[Tree]], Sequence[Tree]],
    layers: Sequence[Tree],
    lr: Array | float,
    *,
    measure: Callable[[Tree], Tree] = lambda t: t,
) -> dict[str, Array]:
    """Internal covariate shift of every layer (Santurkar et al. Def. 2.1; see module doc).

    grad_fn(layers) -> per-layer gradients (same structure as layers); measure(layer_tree) picks
    the part compared (the model adapter: the weight "w"). Returns {"norm": (L,) ||G - G'||_2,
    "cos": (L,) cos(G, G'), "grad_norm": (L,) ||G||}. Layers 2..L take one gradient evaluation
    each, in one lax.map (one compiled body whatever L).
    """
    layers = list(layers)
    n = len(layers)
    g = list(grad_fn(layers))
    grad_norm = jnp.stack([tree_norm(measure(g[j])) for j in range(n)])
    if n == 1:
        return {
            "norm": jnp.zeros((1,), jnp.float32),
            "cos": jnp.ones((1,), jnp.float32),
            "grad_norm": grad_norm,
        }

    def shifted(i: Array) -> tuple[Array, Array]:
        # layers j < i take their SGD step; the others stay exactly as they were
        moved = [
            jax.tree.map(lambda p, d, j=j: jnp.where(j < i, p - lr * d, p), layers[j], g[j])
            for j in range(n)
        ]
        g2 = list(grad_fn(moved))
        norms = jnp.stack([tree_norm(tree_sub(measure(g[j]), measure(g2[j]))) for j in range(n)])
        cos = jnp.stack([cosine(measure(g[j]), measure(g2[j])) for j in range(n)])
        return norms, cos

    idx = jnp.arange(1, n)
    norms, cos = jax.lax.map(shifted, idx)  # (n-1, n): row k measured with layers < k+1 moved
    rows = jnp.arange(n - 1)
    return {
        "norm": jnp.concatenate([jnp.zeros((1,), norms.dtype), norms[rows, idx]]),
        "cos": jnp.concatenate([jnp.ones((1,), cos.dtype), cos[rows, idx]]),
        "grad_norm": grad_norm,
    }


def landscape(
    loss_and_grad: Callable[[Tree], tuple[Array, Tree]],
    theta: Tree,
    g: Tree,
    etas: Array,
    scale: Tree | None = None,
) -> dict[str, Array]:
    """Loss landscape along the gradient (Santurkar et al. Fig. 4; see module doc).

    loss_and_grad(theta) -> (loss, grad); g = grad L(theta); etas (K,). Returns "loss" (K,)
    L(theta - eta g), "grad_diff" (K,) ||g - grad L(theta - eta g)||, "loss_band" (2,),
    "grad_pred_band" (2,), "beta_smooth" () and "grad_norm" () = ||g||, and "beta_relative"
    (): beta in coordinates where each leaf is divided by its factor D of ``scale`` (a pytree of
    scalars like theta; None: all 1, so beta_relative = beta_smooth):
    max_eta ||D (g - g')|| / ||eta D^-1 g||. With D = ||W|| for a weight W the loss only sees
    through W / ||W|| (a scale-invariant layer), this is the beta of the loss as a function of
    the direction u = W / ||W||: its gradient there is D g, the step moves u by eta D^-1 g. So
    at a * W (steps a^2 * eta: the same path in u) it is the same, while the raw beta is
    1 / a^2 of it (tests/test_probes.py).
    """
    etas = jnp.asarray(etas, jnp.float32)
    g_norm = tree_norm(g)
    d = jax.tree.map(lambda _: jnp.float32(1.0), theta) if scale is None else scale
    step_norm = tree_norm(jax.tree.map(lambda x, s: x / s, g, d))

    def at(eta: Array) -> tuple[Array, Array, Array]:
        loss, g2 = loss_and_grad(jax.tree.map(lambda p, v: p - eta * v, theta, g))
        diff = tree_sub(g, g2)
        return loss, tree_norm(diff), tree_norm(jax.tree.map(lambda x, s: x * s, diff, d))

    losses, diffs, scaled = jax.lax.map(at, etas)
    beta = jnp.max(diffs / jnp.maximum(etas * g_norm, TINY))
    return {
        "loss": losses,
        "grad_diff": diffs,
        "loss_band": jnp.stack([losses.min(), losses.max()]),
        "grad_pred_band": jnp.stack([diffs.min(), diffs.max()]),
        "beta_smooth": beta,
        "beta_relative": jnp.max(scaled / jnp.maximum(etas * step_norm, TINY)),
        "grad_norm": g_norm,
    }


def scale_invariance(
    fn: Callable[[Tree], tuple[Array, Array]], w: Tree, scales: Array
) -> dict[str, Array]:
    """Output and gradient of fn at a*w against w, for each a (see module doc).

    fn(w) -> (scalar loss, output array). Returns (K,) arrays "out_diff" (relative output change),
    "grad_ratio" ||grad(a w)|| / ||grad(w)|| and "grad_err" ||a grad(a w) - grad(w)|| / ||grad(w)||.
    """
    vg = jax.value_and_grad(fn, has_aux=True)
    (_, out0), g0 = vg(w)
    g0_norm = jnp.maximum(tree_norm(g0), TINY)
    out_norm = jnp.maximum(jnp.linalg.norm(out0.reshape(-1)), TINY)

    def at(a: Array) -> tuple[Array, Array, Array]:
        (_, out), ga = vg(jax.tree.map(lambda p: a * p, w))
        diff = jnp.linalg.norm((out - out0).reshape(-1)) / out_norm
        err = tree_norm(tree_sub(jax.tree.map(lambda d: a * d, ga), g0)) / g0_norm
        return diff, tree_norm(ga) / g0_norm, err

    diff, ratio, err = jax.lax.map(at, jnp.asarray(scales, jnp.float32))
    return {"out_diff": diff, "grad_ratio": ratio, "grad_err": err}


# ---- the model's layers --------------------------------------------------------------------


def weight_layers(params: dict) -> list[tuple[str, int | None]]:
    """(group, index) of every weight layer in forward order: conv blocks, hidden, output."""
    return (
        [("conv", i) for i in range(len(params["conv"]))]
        + [("hidden", i) for i in range(len(params["hidden"]))]
        + [("out", None)]
    )


def split_layers(params: dict) -> list[Tree]:
    return [params[grp] if i is None else params[grp][i] for grp, i in weight_layers(params)]


def join_layers(layers: Sequence[Tree], template: dict) -> dict:
    out: dict[str, Any] = {"conv": [], "hidden": []}
    for (grp, i), layer in zip(weight_layers(template), layers, strict=True):
        if i is None:
            out[grp] = layer
        else:
            out[grp].append(layer)
    return out


def layer_scales(params: dict) -> dict:
    """A pytree like params: ||W||_F for the weight W of every hidden layer (conv and dense),
    1 for every other leaf (biases, the norms' own parameters, the output layer). As
    landscape's ``scale`` this measures beta with each hidden layer's weight in units of its own
    norm: for a layer followed by a scale-invariant norm (BN before its nonlinearity) that is
    the beta of the loss as a function of the direction W / ||W||, unchanged when W is rescaled;
    an unnormalized layer is measured in the same relative coordinates, so both arms of a
    comparison use one metric."""
    one = jnp.float32(1.0)
    out = jax.tree.map(lambda _: one, params)
    for group in ("conv", "hidden"):
        out[group] = [
            {**o, "w": jnp.linalg.norm(p["w"].reshape(-1))}
            for o, p in zip(out[group], params[group], strict=True)
        ]
    return out


def _train_loss(loss_fn: Callable, norm_state: Any, x: Array, y: Array) -> Callable[[Tree], Array]:
    """L(params) in train mode on (x, y); the new running statistics are dropped."""
    return lambda p: loss_fn(p, norm_state, x, y, mode="train")[0]


# ---- registry adapters -------------------------------------------------------------------------


def ics_probe() -> ProbeFn:
    """{"ics_norm", "ics_cos", "ics_grad_norm"}: (L,) per weight layer (conv, hidden, output)."""

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        loss = _train_loss(loss_fn, norm_state, *batch)

        def grad_fn(layers: list[Tree]) -> list[Tree]:
            return split_layers(jax.grad(loss)(join_layers(layers, params)))

        r = ics(grad_fn, split_layers(params), hp["lr"], measure=lambda t: t["w"])
        return {"ics_norm": r["norm"], "ics_cos": r["cos"], "ics_grad_norm": r["grad_norm"]}

    return probe


def landscape_probe(
    lo: float = ETA_FACTORS[0], hi: float = ETA_FACTORS[1], num: int = ETA_FACTORS[2]
) -> ProbeFn:
    """Fig. 4 measures with etas = linspace(lo, hi, num) x hp["lr"] (see module doc)."""
    if not (0 < lo <= hi and num >= 1):
        raise ValueError(f"step-size grid needs 0 < lo <= hi and num >= 1, got {lo}, {hi}, {num}")
    factors = np.linspace(lo, hi, num, dtype=np.float32)

    def probe(spec, params, norm_state, batch, hp, loss_fn):
        vg = jax.value_and_grad(_train_loss(loss_fn, norm_state, *batch))
        loss0, g = vg(params)
        r = landscape(vg, params, g, hp["lr"] * jnp.asarray(factors), layer_scales(params))
        return {
            "loss_band": r["loss_band"],
            "grad_pred_band": r["grad_pred_band"],
            "beta_smooth": r["beta_smooth"],
            "beta_relative": r["beta_relative"],
            "landscape_loss": r["loss"],
            "landscape_grad_diff": r["grad_diff"],
            "landscape_grad_norm": r["grad_norm"],
            "loss_at": loss0,
        }

    return probe


def _with_weight(params: dict, group: str, i: int, w: Array) -> dict:
    layers = list(params[group])
    layers[i] = {**layers[i], "w": w}
    return {**params, group: layers}


def scale_invariance_probe(scales: Sequence[float] = SCALES) -> ProbeFn:
    """{"si_out_diff", "si_grad_ratio", "si_grad_err"}: (H, K) per hidden layer and scale."""
    if not scales or any(a <= 0 for a in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    grid = np.asarray(scales, np.float32)

    def probe(spec: ModelSpec, params, norm_state, batch, hp, loss_fn):
        x, y = batch
        hidden = [g for g in weight_layers(params) if g[0] != "out"]
        rows = []
        for layer, (group, i) in enumerate(hidden):

            def fn(w: Array, group: str = group, i: int = i, layer: int = layer):
                logits, _, aux = models.apply(
                    _with_weight(params, group, i, w),
                    norm_state,
                    x,
                    spec,
                    mode="train",
                    key=hp["key"],
                    norm_call=hp["norm_call"],
                    capture=True,
                )
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, aux["preacts"][layer]

            rows.append(scale_invariance(fn, params[group][i]["w"], jnp.asarray(grid)))
        return {
            f"si_{k}": jnp.stack([r[k] for r in rows])
            for k in ("out_diff", "grad_ratio", "grad_err")
        }

    return probe
