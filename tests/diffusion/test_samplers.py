"""DDPM / DDIM samplers with oracle models, respacing, trajectories and ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.diffusion import gaussian as g
from jdiffseg.diffusion import samplers as smp
from jdiffseg.diffusion.schedules import make_schedule, respace, space_timesteps

T = 50
SHAPE = (2, 4, 4, 1)


@pytest.fixture(scope="module")
def s():
    return make_schedule("linear", T)


@pytest.fixture(scope="module")
def x0():
    return jnp.asarray(np.sign(np.random.default_rng(0).normal(size=SHAPE)) * 0.8, jnp.float32)


def _eps_oracle(full, x0):
    """ε implied by x_t and x0 at *original* timestep t under the full schedule."""

    def model_fn(x_t, t):
        ab = g.extract(full.alphas_cumprod, t, x_t)
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)

    return model_fn


@pytest.mark.parametrize("timesteps", [None, "ddim10", "7"])
def test_ddim_eta0_with_the_true_eps_reconstructs_x0(s, x0, timesteps):
    eps = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE), jnp.float32)
    first = T - 1 if timesteps is None else space_timesteps(T, timesteps)[-1]
    x_T = g.q_sample(s, x0, jnp.full((SHAPE[0],), first), eps)
    sample, traj = smp.ddim_sample(
        lambda x, t: eps, s, SHAPE, jax.random.key(2),
        noise=x_T, timesteps=timesteps, return_trajectory=True,
    )  # fmt: skip
    np.testing.assert_allclose(sample, x0, atol=3e-4)  # float32 cancellation at ᾱ_T ≈ 5e-5
    # Each state stays on the line √ᾱ x0 + √(1 − ᾱ) ε, at the ᾱ of the next timestep visited.
    ab = np.asarray(s.alphas_cumprod, np.float64)[np.asarray(traj["t"])[1:]]
    ab = ab[:, None, None, None, None]
    expected = np.sqrt(ab) * np.asarray(x0) + np.sqrt(1 - ab) * np.asarray(eps)
    np.testing.assert_allclose(traj["x"][:-1], expected, atol=3e-4)
    np.testing.assert_allclose(
        traj["pred_x0"], np.broadcast_to(x0, traj["pred_x0"].shape), atol=3e-4
    )


def test_respaced_samplers_call_the_model_with_original_timesteps(s, x0):
    kept = [5, 20, 35, 49]  # index 0 stands for original t = 5
    r = respace(s, kept)
    oracle = _eps_oracle(s, x0)
    for sample_fn in (smp.ddim_sample, smp.ddpm_sample):
        sample, traj = sample_fn(oracle, r, SHAPE, jax.random.key(3), return_trajectory=True)
        np.testing.assert_array_equal(traj["t"], kept[::-1])
        np.testing.assert_allclose(sample, x0, atol=1e-4, err_msg=sample_fn.__name__)
        np.testing.assert_allclose(
            traj["pred_x0"], np.broadcast_to(x0, traj["pred_x0"].shape), atol=1e-3
        )


@pytest.mark.parametrize(
    ("variance", "timesteps"),
    [("fixed_small", None), ("fixed_large", "10"), ("learned_range", None)],
)
def test_ddpm_with_an_oracle_x0_model_ends_at_x0(s, x0, variance, timesteps):
    def model_fn(x_t, t):
        out = jnp.broadcast_to(x0, x_t.shape)
        if variance == "learned_range":
            out = jnp.concatenate([out, jnp.zeros_like(out)], axis=-1)
        return out

    sample = smp.ddpm_sample(
        model_fn,
        s,
        SHAPE,
        jax.random.key(4),
        prediction="x0",
        variance=variance,
        timesteps=timesteps,
    )
    np.testing.assert_allclose(sample, x0, atol=1e-5)


def test_ddpm_fixed_small_with_an_oracle_keeps_the_forward_marginals():
    """Sampling the exact posterior from x_T ~ N(0, I) reproduces q(x_t | x0) at every step."""
    s = make_schedule("linear", 25)
    n, point = 20_000, 0.5
    x0 = jnp.full((n, 1), point)
    _, traj = smp.ddpm_sample(
        lambda x, t: x0, s, (n, 1), jax.random.key(5),
        prediction="x0", variance="fixed_small", return_trajectory=True,
    )  # fmt: skip
    ab_prev = np.asarray(s.alphas_cumprod_prev, np.float64)
    for step in [2, 10, 20]:
        i = 24 - step  # the index processed at this step; x holds a sample at index i − 1
        xs = np.asarray(traj["x"][step, :, 0], np.float64)
        mean, var = np.sqrt(ab_prev[i]) * point, 1 - ab_prev[i]
        assert abs(xs.mean() - mean) < 5 * np.sqrt(var / n)
        assert abs(xs.var() - var) < 5 * np.sqrt(2 / n) * var


def test_ddim_eta1_equals_ddpm_with_the_posterior_variance(s):
    def model_fn(x_t, t):
        return 0.7 * x_t + 0.01 * t[:, None, None, None].astype(jnp.float32)

    key = jax.random.key(6)
    ddpm = smp.ddpm_sample(model_fn, s, SHAPE, key, variance="fixed_small")
    ddim = smp.ddim_sample(model_fn, s, SHAPE, key, eta=1.0)
    assert np.all(np.isfinite(ddpm))
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-3, atol=1e-3)
    assert not np.allclose(smp.ddim_sample(model_fn, s, SHAPE, key, eta=0.0), ddpm, atol=1e-2)


def test_clip_x0_bounds_the_prediction(s):
    sample = smp.ddpm_sample(
        lambda x, t: jnp.full_like(x, 3.0), s, SHAPE, jax.random.key(7),
        prediction="x0", clip_x0=True, clip_range=(0.0, 1.0),
    )  # fmt: skip
    np.testing.assert_allclose(sample, 1.0, atol=1e-5)


def test_ensemble_sample_gives_n_samples_per_image_in_one_jitted_call(s):
    batch, n = 3, 4
    images = (
        jnp.arange(batch, dtype=jnp.float32)[:, None, None, None] * jnp.ones((batch, 4, 4, 1)) / 2
    )

    def model_fn(x_t, t, cond):
        assert x_t.shape[0] == batch * n and cond.shape[0] == batch * n
        return cond  # an x0 oracle: each image's own mask

    @jax.jit
    def run(schedule, cond, key):
        return smp.ensemble_sample(
            model_fn, schedule, cond, n, key, sample_shape=(4, 4, 1),
            prediction="x0", variance="fixed_small", return_trajectory=True,
        )  # fmt: skip

    samples, traj = run(s, images, jax.random.key(8))
    assert samples.shape == (batch, n, 4, 4, 1)
    np.testing.assert_allclose(samples, np.broadcast_to(images[:, None], samples.shape), atol=1e-5)
    assert traj["x"].shape == (T, batch, n, 4, 4, 1)
    middle = np.asarray(traj["x"][T // 2])
    assert not np.allclose(middle[:, 0], middle[:, 1])  # members draw different noise

    ddim = smp.ensemble_sample(
        lambda x, t, c: jnp.zeros_like(x), s, images, 2, jax.random.key(9),
        sample_shape=(4, 4, 1), sampler="ddim", timesteps="ddim5",
    )  # fmt: skip
    assert ddim.shape == (batch, 2, 4, 4, 1)


def test_sampler_errors_are_clear(s):
    with pytest.raises(ValueError, match="noise has shape"):
        smp.ddpm_sample(lambda x, t: x, s, SHAPE, jax.random.key(0), noise=jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        smp.ensemble_sample(
            lambda x, t, c: x, s, jnp.zeros(SHAPE), 2, jax.random.key(0),
            sample_shape=(4, 4, 1), sampler="plms",
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"outside jax\.jit"):
        jax.jit(
            lambda q: smp.ddim_sample(
                lambda x, t: x, q, SHAPE, jax.random.key(0), timesteps="ddim5"
            )
        )(s)


def test_respacing_inside_jit_works_for_a_closed_over_schedule(s, x0):
    eps = jnp.asarray(np.random.default_rng(2).normal(size=SHAPE), jnp.float32)
    x_T = g.q_sample(s, x0, jnp.full((SHAPE[0],), 45), eps)  # "ddim10" starts at t = 45
    run = jax.jit(
        lambda key: smp.ddim_sample(lambda x, t: eps, s, SHAPE, key, noise=x_T, timesteps="ddim10")
    )
    np.testing.assert_allclose(run(jax.random.key(0)), x0, atol=3e-4)
