"""Parameter counting without allocating anything (`jax.eval_shape`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def tree_size(tree: Any) -> int:
    """Total number of elements of the arrays (or shape structs) in a pytree."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def abstract_variables(
    module: nn.Module, x_shape: Sequence[int], image_shape: Sequence[int] | None = None
) -> Any:
    """Shapes/dtypes of ``module.init`` for inputs ``x_t`` of ``x_shape`` (and ``image``)."""
    x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((x_shape[0],), jnp.int32)
    image = None if image_shape is None else jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    return jax.eval_shape(
        lambda key, x, t, image: module.init(key, x, t, image, train=False),
        jax.random.key(0),
        x,
        t,
        image,
    )


def count_params(
    module: nn.Module, x_shape: Sequence[int], image_shape: Sequence[int] | None = None
) -> int:
    """Number of trainable parameters (the 'params' collection) of ``module``."""
    return tree_size(abstract_variables(module, x_shape, image_shape)["params"])
