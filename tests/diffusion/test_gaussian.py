"""Forward process, posterior and parameterisations against Monte Carlo and Gaussian algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.diffusion import gaussian as g
from jdiffseg.diffusion.schedules import make_schedule

T = 100


@pytest.fixture(scope="module")
def s():
    return make_schedule("linear", T)


def _alpha_bars(s) -> np.ndarray:
    """ᾱ recomputed in float64 from the schedule's betas."""
    return np.cumprod(1.0 - np.asarray(s.betas, dtype=np.float64))


@pytest.mark.parametrize("t", [0, 10, 50, 99])
def test_q_sample_mean_and_variance_by_monte_carlo(s, t):
    n = 200_000
    x0 = jnp.array([-1.0, 0.3, 1.0])
    noise = jnp.asarray(np.random.default_rng(t).normal(size=(n, 3)), jnp.float32)
    x_t = g.q_sample(s, jnp.broadcast_to(x0, (n, 3)), jnp.full((n,), t), noise)
    ab = _alpha_bars(s)[t]
    mean, var = np.asarray(x_t.mean(0), np.float64), np.asarray(x_t.var(0), np.float64)
    std_err_mean = np.sqrt((1 - ab) / n)
    np.testing.assert_allclose(mean, np.sqrt(ab) * np.asarray(x0), atol=5 * std_err_mean)
    # Var of a sample variance of a Gaussian is 2σ⁴/(n−1).
    np.testing.assert_allclose(var, 1 - ab, atol=5 * np.sqrt(2 / n) * (1 - ab))


def test_q_mean_variance_matches_closed_form(s):
    x0 = jnp.linspace(-1, 1, 8).reshape(2, 2, 2, 1)
    t = jnp.array([3, 77])
    mean, var, log_var = g.q_mean_variance(s, x0, t)
    ab = _alpha_bars(s)[[3, 77]][:, None, None, None]
    np.testing.assert_allclose(mean, np.sqrt(ab) * np.asarray(x0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var, np.broadcast_to(1 - ab, x0.shape), rtol=1e-5)
    np.testing.assert_allclose(log_var, np.log(np.broadcast_to(1 - ab, x0.shape)), rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 40, 99])
def test_posterior_is_the_product_of_gaussians(s, t):
    """q(x_{t-1}|x_t,x0) ∝ N(x_{t-1}; √ᾱ_{t-1} x0, 1−ᾱ_{t-1}) · N(x_t; √α_t x_{t-1}, β_t)."""
    rng = np.random.default_rng(t)
    x0 = rng.uniform(-1, 1, size=(2, 4, 4, 1))
    x_t = rng.normal(size=(2, 4, 4, 1))
    ab = _alpha_bars(s)
    beta = float(np.asarray(s.betas, np.float64)[t])
    prior_mean, prior_var = np.sqrt(ab[t - 1]) * x0, 1 - ab[t - 1]
    # Likelihood in x_{t-1}: x_t = √α x_{t-1} + √β z  →  precision α/β, mean x_t/√α.
    alpha = 1 - beta
    precision = 1 / prior_var + alpha / beta
    expected_var = 1 / precision
    expected_mean = expected_var * (prior_mean / prior_var + np.sqrt(alpha) * x_t / beta)

    tt = jnp.full((2,), t)
    mean, var, log_var = g.q_posterior(
        s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), tt
    )
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, np.broadcast_to(expected_var, x0.shape), rtol=1e-4)
    np.testing.assert_allclose(log_var, np.log(np.broadcast_to(expected_var, x0.shape)), rtol=1e-4)


def test_posterior_at_t0_is_a_point_mass_at_x0_with_clipped_log_variance(s):
    x0 = jnp.array([[0.25], [-0.5]])
    x_t = jnp.array([[1.7], [0.1]])
    mean, var, log_var = g.q_posterior(s, x0, x_t, jnp.zeros((2,), jnp.int32))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_allclose(var, 0.0, atol=1e-12)
    np.testing.assert_allclose(log_var, np.log(float(s.posterior_variance[1])), rtol=1e-6)


def test_parameterisation_conversions_round_trip(s):
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(3, 4, 4, 2)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.array([0, 31, 99])
    x_t = g.q_sample(s, x0, t, eps)
    np.testing.assert_allclose(g.x0_from_eps(s, x_t, t, eps), x0, atol=2e-4)
    np.testing.assert_allclose(g.eps_from_x0(s, x_t, t, x0), eps, atol=2e-3)
    v = g.v_from_x0_eps(s, x0, eps, t)
    np.testing.assert_allclose(g.x0_from_v(s, x_t, t, v), x0, atol=1e-5)
    # v = √ᾱ ε − √(1−ᾱ) x0, checked independently.
    ab = _alpha_bars(s)[[0, 31, 99]][:, None, None, None]
    np.testing.assert_allclose(
        v, np.sqrt(ab) * np.asarray(eps) - np.sqrt(1 - ab) * np.asarray(x0), atol=1e-5
    )


def _noisy_pair(s, t_values, channels=1):
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(np.sign(rng.normal(size=(len(t_values), 4, 4, channels))), jnp.float32)
    eps = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.array(t_values, dtype=jnp.int32)
    return x0, eps, t, g.q_sample(s, x0, t, eps)


def test_p_mean_variance_gives_the_same_step_for_consistent_eps_x0_v_outputs(s):
    x0, eps, t, x_t = _noisy_pair(s, [1, 20, 90])
    outs = {
        "eps": eps,
        "x0": x0,
        "v": g.v_from_x0_eps(s, x0, eps, t),
    }
    expected_mean, _, _ = g.q_posterior(s, x0, x_t, t)
    for prediction, model_out in outs.items():
        out = g.p_mean_variance(s, model_out, x_t, t, prediction=prediction, variance="fixed_small")
        np.testing.assert_allclose(out["pred_x0"], x0, atol=2e-4, err_msg=prediction)
        np.testing.assert_allclose(out["mean"], expected_mean, atol=2e-4, err_msg=prediction)
        np.testing.assert_allclose(out["pred_eps"], eps, atol=2e-3, err_msg=prediction)


def test_fixed_variances_follow_guided_diffusion(s):
    _, eps, t, x_t = _noisy_pair(s, [0, 1, 55, 99])
    post = np.asarray(s.posterior_variance, np.float64)
    betas = np.asarray(s.betas, np.float64)
    small = g.p_mean_variance(s, eps, x_t, t, variance="fixed_small")
    large = g.p_mean_variance(s, eps, x_t, t, variance="fixed_large")
    idx = np.array([0, 1, 55, 99])
    expected_small = post[idx]
    expected_small_log = np.log(np.where(idx == 0, post[1], post[idx]))
    expected_large = np.where(idx == 0, post[1], betas[idx])
    np.testing.assert_allclose(small["variance"][:, 0, 0, 0], expected_small, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(small["log_variance"][:, 0, 0, 0], expected_small_log, rtol=1e-5)
    np.testing.assert_allclose(large["variance"][:, 0, 0, 0], expected_large, rtol=1e-5)
    np.testing.assert_allclose(large["log_variance"][:, 0, 0, 0], np.log(expected_large), rtol=1e-5)


def test_learned_range_interpolates_between_the_fixed_log_variances(s):
    x0, eps, t, x_t = _noisy_pair(s, [0, 3, 60], channels=2)
    idx = np.array([0, 3, 60])
    lo = np.asarray(s.posterior_log_variance_clipped, np.float64)[idx][:, None, None, None]
    hi = np.log(np.asarray(s.betas, np.float64))[idx][:, None, None, None]
    for v, expected in [(-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2), (0.5, 0.75 * hi + 0.25 * lo)]:
        model_out = jnp.concatenate([eps, jnp.full_like(eps, v)], axis=-1)
        out = g.p_mean_variance(s, model_out, x_t, t, variance="learned_range")
        np.testing.assert_allclose(
            out["log_variance"], np.broadcast_to(expected, x0.shape), rtol=1e-5
        )
        np.testing.assert_allclose(
            out["variance"], np.exp(np.broadcast_to(expected, x0.shape)), rtol=1e-4
        )
        np.testing.assert_allclose(out["pred_x0"], x0, atol=2e-4)


def test_clip_x0_clips_into_the_given_range(s):
    x_t = jnp.full((1, 2, 2, 1), 0.5)
    model_out = jnp.array([-3.0, -0.2, 0.4, 2.0]).reshape(1, 2, 2, 1)
    t = jnp.array([10])
    out = g.p_mean_variance(
        s, model_out, x_t, t, prediction="x0", clip_x0=True, clip_range=(0.0, 1.0)
    )
    np.testing.assert_allclose(out["pred_x0"].ravel(), [0.0, 0.0, 0.4, 1.0])
    default = g.p_mean_variance(s, model_out, x_t, t, prediction="x0", clip_x0=True)
    np.testing.assert_allclose(default["pred_x0"].ravel(), [-1.0, -0.2, 0.4, 1.0])
    unclipped = g.p_mean_variance(s, model_out, x_t, t, prediction="x0")
    np.testing.assert_allclose(unclipped["pred_x0"], model_out)


def test_bad_options_and_shapes_raise(s):
    x_t = jnp.zeros((1, 2, 2, 1))
    t = jnp.array([3])
    with pytest.raises(ValueError, match="needs a model output with 2 channels"):
        g.p_mean_variance(s, x_t, x_t, t, variance="learned_range")
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        g.p_mean_variance(s, x_t, x_t, t, variance="learned")
    with pytest.raises(ValueError, match="unknown prediction 'xprev'"):
        g.p_mean_variance(s, x_t, x_t, t, prediction="xprev")


def test_jit_and_vmap_over_timesteps(s):
    x0, eps, _, _ = _noisy_pair(s, [0])

    @jax.jit
    def posterior_mean(schedule, t):
        x_t = g.q_sample(schedule, x0, t, eps)
        return g.p_mean_variance(schedule, eps, x_t, t, variance="fixed_small")["mean"]

    ts = jnp.arange(0, T, 7)
    batched = jax.vmap(lambda t: posterior_mean(s, t))(ts)
    assert batched.shape == (len(ts), *x0.shape)
    np.testing.assert_allclose(batched[3], posterior_mean(s, ts[3]), rtol=1e-6)
