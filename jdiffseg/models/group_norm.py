"""Group normalisation over NHWC (or N…C) arrays, in float32, with a closed-form gradient.

Autodiff of the textbook form keeps every intermediate and differentiates two chained means;
XLA turns each of those reductions into its own pass. The closed-form backward needs only two
per-channel sums, Σdy and Σdy·(x − μ), then one elementwise pass. On two CPU cores this takes
the tiny EnsemDiff train step at 64 px from 345 to 307 ms (`benchmarks/RESULTS.md`).

Statistics are per sample and group over all positions and the group's channels. The mean is
corrected by a second pass (μ = m + mean(x − m)) and the output computed as (x − μ)·gain + bias,
so a mean far from zero costs no more than the input's own float32 resolution: at mean 1e4 and
sd 0.1 the error is about half an ulp of the input in normalised units.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jdiffseg.models.channel_sum import channel_sum

EPS = 1e-5

Residuals = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def _to_groups(per_channel: jax.Array, groups: int) -> jax.Array:
    """(b, c) per-channel sums -> (b, groups) per-group sums."""
    b, c = per_channel.shape
    return per_channel.reshape(b, groups, c // groups).sum(-1)


def _to_channels(per_group: jax.Array, channels: int) -> jax.Array:
    """(b, groups) -> (b, channels), each group's value repeated over its channels."""
    return jnp.repeat(per_group, channels // per_group.shape[-1], axis=-1)


def _flat(x: jax.Array) -> jax.Array:
    """(b, ..., c) in any float dtype -> float32 (b, positions, c)."""
    return x.astype(jnp.float32).reshape(x.shape[0], -1, x.shape[-1])


def _statistics(flat: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """Per-(sample, group) mean and 1/sqrt(var + EPS) of float32 (b, positions, c), two-pass."""
    c = flat.shape[-1]
    count = flat.shape[1] * (c // groups)
    rough = _to_groups(flat.sum(1), groups) / count
    mean = rough + _to_groups((flat - _to_channels(rough, c)[:, None]).sum(1), groups) / count
    centred = flat - _to_channels(mean, c)[:, None]
    var = _to_groups(jnp.square(centred).sum(1), groups) / count
    return mean, jax.lax.rsqrt(var + EPS)


def _forward(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int
             ) -> tuple[jax.Array, Residuals]:
    flat = _flat(x)
    c = flat.shape[-1]
    mean, inv_std = _statistics(flat, groups)
    gain = _to_channels(inv_std, c) * scale
    y = (flat - _to_channels(mean, c)[:, None]) * gain[:, None] + bias
    return y.reshape(x.shape), (x, scale, mean, inv_std)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int) -> jax.Array:
    """float32 ``(x - μ_g) / sqrt(σ²_g + 1e-5) * scale + bias`` over channel groups of the last
    axis, statistics per sample over every other axis (``torch.nn.GroupNorm`` semantics)."""
    return _forward(x, scale, bias, groups)[0]


def _backward(groups: int, residuals: Residuals, dy: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, scale, mean, inv_std = residuals
    flat, dyf = _flat(x), _flat(dy)
    c = flat.shape[-1]
    count = flat.shape[1] * (c // groups)
    mean_c, inv_c = _to_channels(mean, c), _to_channels(inv_std, c)
    centred = flat - mean_c[:, None]
    sum_dy = dyf.sum(1)                                   # (b, c)
    sum_dy_xhat = (dyf * centred).sum(1) * inv_c          # Σ dy · x̂ per channel
    # dx = inv_std · (dx̂ − mean_g(dx̂) − x̂ · mean_g(dx̂ · x̂)), with dx̂ = dy · scale.
    mean_dxhat = _to_channels(_to_groups(sum_dy * scale, groups) / count, c)
    mean_dxhat_xhat = _to_channels(_to_groups(sum_dy_xhat * scale, groups) / count, c)
    dx = (dyf * (inv_c * scale)[:, None]
          - centred * (inv_c * inv_c * mean_dxhat_xhat)[:, None]
          - (inv_c * mean_dxhat)[:, None])
    return (dx.reshape(x.shape).astype(x.dtype), channel_sum(sum_dy_xhat).astype(scale.dtype),
            channel_sum(sum_dy).astype(scale.dtype))


group_norm.defvjp(_forward, _backward)
