"""Models as pure functions: MLP, CNN and deep linear networks, norm chosen by name.

CONTRACT (the engine helper fills in the implementation; callers rely on these names):

    spec = ModelSpec(kind="mlp", widths=(784, 100, 100, 100, 10), activation="sigmoid",
                     norm="batch", placement="before")
    params, norm_state = init(key, spec, init_scale=1.0)      # init_scale may be traced
    logits, norm_state, aux = apply(params, norm_state, x, spec, mode="train", key=None,
                                    norm_call={}, capture=False)
    # aux: dict; with capture=True it holds "preacts": list of each hidden layer's
    # pre-activation (the input of the nonlinearity), for probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable: it is part of a sweep group's signature)."""

    kind: str = "mlp"  # "mlp" | "cnn" | "linear" (deep linear network, no activation)
    widths: tuple[int, ...] = (784, 100, 100, 100, 10)  # mlp/linear: input, hidden..., output
    channels: tuple[int, ...] = (32, 64)  # cnn: channels of each conv-norm-act-pool block
    dense: tuple[int, ...] = (128,)  # cnn: hidden dense widths after the conv blocks
    input_shape: tuple[int, ...] = (28, 28, 1)  # cnn: H, W, C
    num_classes: int = 10
    activation: str = "sigmoid"  # "sigmoid" | "tanh" | "relu" | "identity"
    norm: str = "batch"  # any name in bnexp.norms ("none" = identity)
    norm_options: tuple[tuple[str, Any], ...] = ()  # static factory options, e.g. (("groups", 8),)
    placement: str = "before"  # "before": g(BN(Wu)), bias dropped; "after": BN(g(Wu + b))
    dropout: float = 0.0
    init: str = "gaussian"  # "gaussian" (std=init_std, the paper's) | "glorot" | "he"
    init_std: float = 0.1
