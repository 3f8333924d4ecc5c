"""Timestep sampling: bounds, weights, and the importance sampler against a NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdiffseg.diffusion import timesteps


def _config(method: str, T: int = 8, **kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(timestep_sampling=method, num_timesteps=T, t_min=0,
                                       t_max=-1, timestep_weights=None))
    c.update(kw)
    return c


def test_uniform_and_range_stay_in_bounds():
    s = timesteps.from_config(_config("uniform"))
    t, w = timesteps.sample(s, timesteps.init_state(s), jax.random.key(0), 4096)
    assert t.dtype == jnp.int32 and int(t.min()) == 0 and int(t.max()) == 7
    np.testing.assert_array_equal(w, 1.0)
    r = timesteps.from_config(_config("range", t_min=2, t_max=4))
    t, _ = timesteps.sample(r, timesteps.init_state(r), jax.random.key(1), 4096)
    assert set(np.unique(np.asarray(t))) == {2, 3, 4}


def test_weights_follow_the_given_distribution():
    w = (0, 1, 0, 3, 0, 0, 0, 0)
    s = timesteps.from_config(_config("weights", timestep_weights=w))
    t, lw = timesteps.sample(s, timesteps.init_state(s), jax.random.key(2), 20000)
    freq = np.bincount(np.asarray(t), minlength=8) / 20000
    np.testing.assert_allclose(freq, np.array(w) / 4, atol=0.02)
    np.testing.assert_array_equal(lw, 1.0)


@pytest.mark.parametrize("kw, match", [
    (dict(timestep_sampling="range", t_min=5, t_max=2), "t_min"),
    (dict(timestep_sampling="weights", timestep_weights=(1.0, 2.0)), "timestep_weights needs 8"),
    (dict(timestep_sampling="weights", timestep_weights=(0.0,) * 8), "not all zero"),
    (dict(timestep_sampling="nope"), "timestep_sampling"),
])
def test_bad_options_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        kw = dict(kw)
        timesteps.from_config(_config(kw.pop("timestep_sampling"), **kw))


def _reference_update(history, counts, t, losses, H=timesteps.HISTORY):
    """improved-diffusion's LossSecondMomentResampler.update_with_all_losses, in NumPy."""
    history, counts = history.copy(), counts.copy()
    for ti, li in zip(t, losses, strict=True):
        if counts[ti] == H:
            history[ti, :-1] = history[ti, 1:]
            history[ti, -1] = li
        else:
            history[ti, counts[ti]] = li
            counts[ti] += 1
    return history, counts


def _reference_weights(history, counts, H=timesteps.HISTORY, uniform=timesteps.UNIFORM_PROB):
    T = len(counts)
    if not (counts == H).all():
        return np.full(T, 1.0 / T)
    w = np.sqrt(np.mean(history**2, axis=-1))
    w = w / w.sum() * (1 - uniform) + uniform / T
    return w / w.sum()


def test_importance_sampler_matches_reference():
    T = 4
    s = timesteps.from_config(_config("importance", T=T))
    state = timesteps.init_state(s)
    ref_h, ref_c = np.zeros((T, timesteps.HISTORY)), np.zeros(T, int)
    rng = np.random.default_rng(0)
    for i in range(8):
        t = rng.integers(0, T, 12).astype(np.int32)
        losses = rng.uniform(0.1, 2.0, 12).astype(np.float32) * (1 + t)
        state = timesteps.update(s, state, jnp.asarray(t), jnp.asarray(losses))
        ref_h, ref_c = _reference_update(ref_h, ref_c, t, losses)
        np.testing.assert_allclose(state.history, ref_h, rtol=1e-6)
        np.testing.assert_array_equal(state.counts, ref_c)
        p = timesteps.importance_probabilities(state)
        np.testing.assert_allclose(p, _reference_weights(ref_h, ref_c), rtol=1e-5)
        if i == 0:
            np.testing.assert_allclose(p, 0.25)  # not warm yet: uniform
    assert (np.asarray(state.counts) == timesteps.HISTORY).all()
    p = np.asarray(timesteps.importance_probabilities(state))
    assert p[3] > p[0]  # larger losses at larger t draw more samples there
    t, w = timesteps.sample(s, state, jax.random.key(3), 50000)
    np.testing.assert_allclose(np.bincount(np.asarray(t), minlength=T) / 50000, p, atol=0.01)
    np.testing.assert_allclose(w, 1.0 / (T * p[np.asarray(t)]), rtol=1e-5)  # unbiased weights


def test_non_importance_update_is_identity():
    s = timesteps.from_config(_config("uniform"))
    state = timesteps.init_state(s)
    out = timesteps.update(s, state, jnp.array([1, 2]), jnp.array([1.0, 2.0]))
    assert out is state
