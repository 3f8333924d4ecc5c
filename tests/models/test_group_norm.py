"""group_norm's forward and hand-written gradient against float64 NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.models.group_norm import group_norm


def np_group_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int) -> np.ndarray:
    """Two-pass float64 GroupNorm over every axis but the first and last."""
    b, c = x.shape[0], x.shape[-1]
    g = x.astype(np.float64).reshape(b, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias


def np_loss_gradients(x, scale, bias, groups, weight, h=1e-6):
    """Central differences of sum(weight * group_norm) in float64, one coordinate at a time."""
    def loss(x_, s_, b_):
        return float(np.sum(weight * np_group_norm(x_, s_, b_, groups)))

    grads = []
    for which, arr in enumerate((x, scale, bias)):
        g = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            args = [x.astype(np.float64), scale.astype(np.float64), bias.astype(np.float64)]
            plus, minus = args[which].copy(), args[which].copy()
            plus[idx] += h
            minus[idx] -= h
            g[idx] = (loss(*[plus if i == which else a for i, a in enumerate(args)])
                      - loss(*[minus if i == which else a for i, a in enumerate(args)])) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("shape,groups", [((2, 3, 4, 8), 4), ((3, 5, 6), 2), ((1, 2, 2, 4), 4)])
def test_forward_and_gradients_match_numpy(shape, groups):
    rng = np.random.default_rng(2)
    x = rng.normal(1.5, 2.0, shape).astype(np.float32)
    scale = rng.normal(1.0, 0.5, shape[-1:]).astype(np.float32)
    bias = rng.normal(0.0, 0.5, shape[-1:]).astype(np.float32)
    weight = rng.normal(size=shape)
    np.testing.assert_allclose(np.asarray(group_norm(x, scale, bias, groups)),
                               np_group_norm(x, scale, bias, groups), atol=2e-5)
    got = jax.grad(lambda *a: jnp.sum(weight * group_norm(*a, groups)), argnums=(0, 1, 2))(
        jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    want = np_loss_gradients(x, scale, bias, groups, weight)
    for name, g, w in zip(("x", "scale", "bias"), got, want, strict=True):
        assert g.dtype == jnp.float32 and g.shape == w.shape, name
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("seed", range(5))
def test_large_mean_keeps_float32_precision(seed):
    # Mean 1e4, spread 1e-1: E[x²] − E[x]² in float32 would lose every digit of the variance,
    # and folding the mean into the offset would round x·gain (~1e5) to steps of 1/128. The
    # input itself is known only to one float32 ulp at 1e4, i.e. ulp/sd in normalised units.
    mean, sd = 1e4, 0.1
    x = (mean + np.random.default_rng(seed).normal(0.0, sd, (2, 8, 8, 4))).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    got = np.asarray(group_norm(x, ones, zeros, 2))
    resolution = float(np.spacing(np.float32(mean))) / sd
    np.testing.assert_allclose(got, np_group_norm(x, ones, zeros, 2), atol=resolution)
    np.testing.assert_allclose(got.reshape(2, -1, 2, 2).std(axis=(1, 3)), 1.0, atol=1e-2)


def test_bfloat16_input_gives_float32_output_and_bfloat16_gradient():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.bfloat16)
    scale, bias = jnp.ones(8), jnp.zeros(8)
    y = group_norm(x, scale, bias, 4)
    assert y.dtype == jnp.float32
    dx = jax.grad(lambda x_: jnp.sum(group_norm(x_, scale, bias, 4) ** 2))(x)
    assert dx.dtype == jnp.bfloat16
    # d/dx Σ x̂² is ~0 for a normalised group (scale-invariant), up to bfloat16 rounding of x.
    assert float(jnp.abs(dx.astype(jnp.float32)).max()) < 0.05


def test_constant_group_normalises_to_bias_with_finite_gradient():
    x = jnp.full((1, 3, 3, 4), 7.0)
    scale, bias = jnp.full(4, 2.0), jnp.arange(4.0)
    np.testing.assert_allclose(np.asarray(group_norm(x, scale, bias, 2))[0, 0, 0], np.arange(4.0))
    grads = jax.grad(lambda *a: jnp.sum(group_norm(*a, 2) * jnp.arange(36.0).reshape(1, 3, 3, 4)),
                     argnums=(0, 1, 2))(x, scale, bias)
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
