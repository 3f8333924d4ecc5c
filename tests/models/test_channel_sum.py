"""channel_sum and add_channel_bias against NumPy, on both of channel_sum's lowerings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.models import channel_sum as cs


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (7, 4), (3,)])
@pytest.mark.parametrize("lowering", ["channel_sum", "_as_matrix_vector", "_as_reduction"])
def test_sums_every_axis_but_the_last(shape, lowering):
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, shape).astype(np.float32)
    got = np.asarray(jax.jit(getattr(cs, lowering))(x))
    want = x.astype(np.float64).reshape(-1, shape[-1]).sum(0)
    assert got.shape == (shape[-1],)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_is_accumulated_in_float32():
    # 4096 ones: a bfloat16 accumulator stalls at 256, float32 counts them all.
    x = jnp.ones((4, 32, 32, 2), jnp.bfloat16)
    got = cs.channel_sum(x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), [4096.0, 4096.0])


def test_add_channel_bias_value_and_gradients():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    weight = rng.normal(size=y.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cs.add_channel_bias(y, bias)), y + bias, rtol=1e-6)
    dy, dbias = jax.grad(lambda a, b: jnp.sum(weight * cs.add_channel_bias(a, b)),
                         argnums=(0, 1))(jnp.asarray(y), jnp.asarray(bias))
    np.testing.assert_allclose(np.asarray(dy), weight, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dbias), weight.astype(np.float64).sum((0, 1, 2)),
                               rtol=1e-5, atol=1e-5)
