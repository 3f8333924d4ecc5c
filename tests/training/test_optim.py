"""Learning-rate schedule and EMA against their closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg.training import optim


def _train_config(**kw) -> ml_collections.ConfigDict:
    base = dict(lr=1.0, warmup_steps=10, steps=110, lr_schedule="cosine", weight_decay=0.0,
                grad_clip=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_warmup_then_cosine_matches_formula():
    fn = optim.learning_rate_schedule(_train_config())
    for step in (0, 5, 10, 60, 110):
        expected = step / 10 if step < 10 else 0.5 * (1 + np.cos(np.pi * (step - 10) / 100))
        np.testing.assert_allclose(float(fn(step)), expected, atol=1e-6)


def test_constant_schedule_after_warmup():
    fn = optim.learning_rate_schedule(_train_config(lr_schedule="constant", lr=0.3))
    np.testing.assert_allclose([float(fn(s)) for s in (5, 10, 100)], [0.15, 0.3, 0.3], rtol=1e-6)


def test_ema_decay_warmup_formula_and_cap():
    assert float(optim.ema_decay_at(jnp.int32(0), 0.999, warmup=True)) == np.float32(0.1)
    np.testing.assert_allclose(float(optim.ema_decay_at(jnp.int32(90), 0.999, True)), 91 / 100)
    np.testing.assert_allclose(float(optim.ema_decay_at(jnp.int32(10**6), 0.999, True)), 0.999)
    np.testing.assert_allclose(float(optim.ema_decay_at(jnp.int32(0), 0.999, False)), 0.999)


def test_ema_update_is_the_convex_combination():
    ema = {"w": jnp.ones(3)}
    params = {"w": jnp.array([3.0, 5.0, -1.0])}
    out = optim.ema_update(ema, params, 0.75)
    np.testing.assert_allclose(out["w"], 0.75 * 1.0 + 0.25 * np.array([3.0, 5.0, -1.0]))
    assert jax.tree.structure(out) == jax.tree.structure(ema)
