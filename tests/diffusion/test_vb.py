"""VB term and training losses against an independent NumPy/SciPy computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jdiffseg.diffusion import gaussian as g
from jdiffseg.diffusion import losses as L
from jdiffseg.diffusion.schedules import make_schedule

T = 100


@pytest.fixture(scope="module")
def s():
    return make_schedule("linear", T)


def _np_kl(mu1, var1, mu2, var2):
    return np.log(np.sqrt(var2) / np.sqrt(var1)) + (var1 + (mu1 - mu2) ** 2) / (2 * var2) - 0.5


def _np_cdf_approx(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _np_decoder_log_prob(x, mean, std, cdf=_np_cdf_approx):
    upper = cdf((x - mean + 1 / 255) / std)
    lower = cdf((x - mean - 1 / 255) / std)
    out = np.log(np.maximum(upper - lower, 1e-12))
    out = np.where(x < -0.999, np.log(np.maximum(upper, 1e-12)), out)
    return np.where(x > 0.999, np.log(np.maximum(1 - lower, 1e-12)), out)


def test_normal_kl_matches_closed_form_and_numerical_integration():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    var1, var2 = rng.uniform(0.1, 2.0, size=20), rng.uniform(0.1, 2.0, size=20)
    kl = L.normal_kl(mu1, np.log(var1), mu2, np.log(var2))
    np.testing.assert_allclose(kl, _np_kl(mu1, var1, mu2, var2), rtol=1e-5, atol=1e-6)
    p = stats.norm(0.3, 0.7)
    q = stats.norm(-0.2, 1.3)
    numeric, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -12, 12)
    analytic = L.normal_kl(0.3, 2 * np.log(0.7), -0.2, 2 * np.log(1.3))
    np.testing.assert_allclose(float(analytic), numeric, rtol=1e-5)


def test_discretized_log_likelihood_matches_numpy_and_the_exact_normal_cdf():
    x = np.array([-1.0, -0.5, 0.0, 0.2, 1.0, 1.0, -1.0, 0.0])
    means = np.array([-0.9, -0.4, 0.05, 0.2, 0.8, 1.3, -1.6, 0.5])
    log_scales = np.log(np.array([0.1, 0.05, 0.02, 0.3, 0.2, 0.1, 0.4, 0.01]))
    got = L.discretized_gaussian_log_likelihood(x, means, log_scales)
    std = np.exp(log_scales)
    np.testing.assert_allclose(got, _np_decoder_log_prob(x, means, std), rtol=1e-4, atol=1e-5)
    # The tanh CDF is an approximation; it stays close to the exact one (away from the 1e-12 floor).
    exact = _np_decoder_log_prob(x, means, std, cdf=stats.norm.cdf)
    np.testing.assert_allclose(got[:-1], exact[:-1], atol=0.02)


def _vb_reference(s, eps_out, var_values, x0, x_t, t):
    """VB term in bits computed from scratch in float64 (product-of-Gaussians posterior)."""
    betas = np.asarray(s.betas, np.float64)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    out = np.zeros(len(t))
    for b, tb in enumerate(t):
        xb0, xbt = x0[b].astype(np.float64), x_t[b].astype(np.float64)
        beta, alpha = betas[tb], 1 - betas[tb]

        def posterior(start, tb=tb, beta=beta, alpha=alpha, xbt=xbt):
            if tb == 0:
                return start, 0.0
            prior_var = 1 - ab_prev[tb]
            var = 1 / (1 / prior_var + alpha / beta)
            return var * (
                np.sqrt(ab_prev[tb]) * start / prior_var + np.sqrt(alpha) * xbt / beta
            ), var

        true_mean, true_var = posterior(xb0)
        pred_x0 = (xbt - np.sqrt(1 - ab[tb]) * eps_out[b]) / np.sqrt(ab[tb])
        model_mean, _ = posterior(pred_x0)
        post_var_t1 = betas[1] * (1 - ab_prev[1]) / (1 - ab[1])
        min_log = np.log(post_var_t1) if tb == 0 else np.log(true_var)
        frac = (var_values[b] + 1) / 2
        model_var = np.exp(frac * np.log(beta) + (1 - frac) * min_log)
        if tb == 0:
            nll = -_np_decoder_log_prob(xb0, model_mean, np.sqrt(model_var))
            out[b] = nll.mean() / math.log(2)
        else:
            out[b] = _np_kl(true_mean, true_var, model_mean, model_var).mean() / math.log(2)
    return out


def test_vb_term_matches_an_independent_computation(s):
    rng = np.random.default_rng(1)
    t = np.array([0, 1, 7, 60, 99])
    shape = (len(t), 4, 4, 1)
    x0 = np.where(rng.uniform(size=shape) > 0.5, 1.0, -1.0)
    x0[0, 0, 0, 0] = 0.0  # one interior value for the middle decoder bins
    noise = rng.normal(size=shape)
    x_t = np.asarray(
        g.q_sample(s, jnp.asarray(x0, jnp.float32), jnp.asarray(t), jnp.asarray(noise, jnp.float32))
    )
    eps_out = noise + 0.3 * rng.normal(size=shape)
    var_values = rng.uniform(-1, 1, size=shape)
    model_out = np.concatenate([eps_out, var_values], axis=-1).astype(np.float32)

    x0_32 = jnp.asarray(x0, jnp.float32)
    got = L.vb_term(s, model_out, x0_32, x_t, jnp.asarray(t), variance="learned_range")
    expected = _vb_reference(
        s, model_out[..., :1].astype(np.float64), model_out[..., 1:].astype(np.float64), x0, x_t, t
    )
    assert np.all(expected > 0)
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_vb_is_zero_for_the_true_posterior_mean_and_variance(s):
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(np.sign(rng.normal(size=(3, 4, 4, 1))), jnp.float32)
    noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.array([5, 30, 99])
    x_t = g.q_sample(s, x0, t, noise)
    model_out = jnp.concatenate([noise, -jnp.ones_like(noise)], axis=-1)
    vb = L.vb_term(s, model_out, x0, x_t, t, variance="learned_range")
    np.testing.assert_allclose(vb, 0.0, atol=1e-4)


def _loss_inputs(s, channels=1):
    rng = np.random.default_rng(4)
    x0 = jnp.asarray(np.sign(rng.normal(size=(3, 4, 4, channels))), jnp.float32)
    noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.array([0, 40, 99])
    x_t = g.q_sample(s, x0, t, noise)
    mean_out = noise + jnp.asarray(0.5 * rng.normal(size=x0.shape), jnp.float32)
    return x0, noise, t, x_t, mean_out


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_mse_targets_and_reductions(s, prediction):
    x0, noise, t, x_t, out = _loss_inputs(s, channels=2)
    target = {"eps": noise, "x0": x0, "v": g.v_from_x0_eps(s, x0, noise, t)}[prediction]
    err = np.asarray(out - target, np.float64) ** 2
    mean = L.training_losses(s, out, x0, x_t, t, noise, prediction=prediction)
    total = L.training_losses(s, out, x0, x_t, t, noise, prediction=prediction, reduction="sum")
    np.testing.assert_allclose(mean["mse"], err.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(total["mse"], err.sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(total["loss"], total["mse"])
    np.testing.assert_allclose(mean["vb"], 0.0)


def test_learned_range_adds_vb_with_stop_gradient_on_the_mean(s):
    x0, noise, t, x_t, mean_out = _loss_inputs(s)
    var_values = 0.3 * jnp.ones_like(mean_out)
    model_out = jnp.concatenate([mean_out, var_values], axis=-1)

    def total_loss(out, **kwargs):
        return L.training_losses(s, out, x0, x_t, t, noise, variance="learned_range", **kwargs)

    terms = total_loss(model_out)
    vb = L.vb_term(s, model_out, x0, x_t, t, variance="learned_range")
    np.testing.assert_allclose(terms["vb"], vb, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], terms["mse"] + vb, rtol=1e-6)
    assert np.all(np.asarray(vb) > 0)

    grad = jax.grad(lambda o: total_loss(o)["loss"].sum())(model_out)
    n = mean_out[0].size
    np.testing.assert_allclose(grad[..., :1], 2 * (mean_out - noise) / n, rtol=1e-4, atol=1e-7)
    vb_grad = jax.grad(lambda o: L.vb_term(s, o, x0, x_t, t, variance="learned_range").sum())(
        model_out
    )
    np.testing.assert_allclose(grad[..., 1:], vb_grad[..., 1:], rtol=1e-5, atol=1e-8)
    assert np.any(np.abs(np.asarray(vb_grad[..., :1])) > 1e-4)  # the VB would move the mean

    rescaled = total_loss(model_out, rescale_vb=True)
    np.testing.assert_allclose(rescaled["vb"], vb * T / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(total_loss(model_out, use_vb=False)["vb"], 0.0)


def test_training_losses_jit_and_errors(s):
    x0, noise, t, x_t, out = _loss_inputs(s)
    jitted = jax.jit(lambda o: L.training_losses(s, o, x0, x_t, t, noise)["loss"])
    np.testing.assert_allclose(
        jitted(out), L.training_losses(s, out, x0, x_t, t, noise)["loss"], rtol=1e-6
    )
    with pytest.raises(ValueError, match="unknown loss reduction 'median'"):
        L.training_losses(s, out, x0, x_t, t, noise, reduction="median")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        L.training_losses(s, out, x0, x_t, t, noise, prediction="score")
