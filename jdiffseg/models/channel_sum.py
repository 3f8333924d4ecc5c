"""Per-channel sums over every other axis, written so that XLA:CPU runs them at memory speed.

XLA:CPU lowers a reduction over the batch and spatial axes of an NHWC array (keeping the
channel axis) to a strided loop that is several times slower than reading the array; most of
a train step's bias and normalisation gradients are such sums. As a matrix-vector product with
a ones vector the same sum runs through the BLAS kernels instead. Other platforms keep the
plain reduction, which their compilers fuse with its producer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _as_matrix_vector(x: jax.Array) -> jax.Array:
    rows = x.reshape(-1, x.shape[-1])
    return jnp.dot(jnp.ones(rows.shape[0], rows.dtype), rows,
                   preferred_element_type=jnp.float32).astype(x.dtype)


def _as_reduction(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)), dtype=jnp.float32).astype(x.dtype)


def channel_sum(x: jax.Array) -> jax.Array:
    """``x.sum(axis=all but the last)`` (accumulated in float32), shape ``(x.shape[-1],)``."""
    if x.ndim == 1:
        return x
    return jax.lax.platform_dependent(x, cpu=_as_matrix_vector, default=_as_reduction)


@jax.custom_vjp
def add_channel_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, whose bias gradient is a `channel_sum`."""
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return y + bias.astype(y.dtype), bias


def _add_bias_bwd(bias: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return g, channel_sum(g).astype(bias.dtype)


add_channel_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
