"""Training losses: the denoising MSE and the variational-bound (VB) term of guided-diffusion.

Conventions of the reference code (openai improved/guided-diffusion, used by EnsemDiff, SegDiff
and MedSegDiff) kept here:
- the VB term is in bits per dimension: KL(q(x_{t-1}|x_t,x0) ‖ p(x_{t-1}|x_t)) averaged over
  pixels for t > 0, and the discretised-Gaussian decoder NLL at t = 0 (which assumes data in
  [-1, 1] quantised to 256 levels, a rough fit for binary masks but the authors' choice);
- with a learned-range variance the VB term trains only the variance: the mean part of the
  model output is passed through `stop_gradient` (the 'frozen_out' trick);
- loss_type MSE adds the VB term unscaled; RESCALED_MSE (`rescale_vb=True`) multiplies it by
  T/1000. EnsemDiff and MedSegDiff train with learned sigma and plain MSE
  (`rescale_learned_sigmas False`, T=1000, where the two agree anyway); SegDiff has a fixed
  variance, so no VB term, and sums the squared error per image (`reduction='sum'`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdiffseg.diffusion import gaussian
from jdiffseg.diffusion.schedules import Schedule

REDUCTIONS = ("mean", "sum")


def normal_kl(
    mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array
) -> jax.Array:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
    """The tanh approximation of the standard normal CDF used by the reference code."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: jax.Array, means: jax.Array, log_scales: jax.Array
) -> jax.Array:
    """Elementwise log-probability (nats) of x ∈ [-1, 1] under a Gaussian binned to 256 levels.

    The bins at the edges (x < -0.999, x > 0.999) extend to ∓∞.
    """
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999,
        log_cdf_plus,
        jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over all axes but the first (per example)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_flat(x: jax.Array) -> jax.Array:
    """Sum over all axes but the first (per example)."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def vb_term(
    s: Schedule, model_out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array, *,
    prediction: str = "eps", variance: str = "fixed_large", clip_x0: bool = False,
) -> jax.Array:
    """Per-example VB term in bits/dim: decoder NLL where t == 0, else the posterior KL."""
    true_mean, _, true_log_var = gaussian.q_posterior(s, x0, x_t, t)
    out = gaussian.p_mean_variance(
        s, model_out, x_t, t, prediction=prediction, variance=variance, clip_x0=clip_x0
    )
    kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    )
    return jnp.where(t == 0, nll, kl) / math.log(2.0)


def training_losses(
    s: Schedule, model_out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
    noise: jax.Array, *, prediction: str = "eps", variance: str = "fixed_large",
    reduction: str = "mean", use_vb: bool = True, rescale_vb: bool = False,
) -> dict[str, jax.Array]:
    """Per-example losses {'loss', 'mse', 'vb'}, each of shape (B,).

    mse: squared error of the mean part of `model_out` against the target of `prediction`
    (ε, x0 or v), averaged (`reduction='mean'`) or summed (`'sum'`) over each image.
    vb: the VB term (stop-gradient on the mean) when `variance='learned_range'` and `use_vb`,
    times T/1000 when `rescale_vb`; zeros otherwise. loss = mse + vb.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; expected one of {REDUCTIONS}")
    model_out = model_out.astype(jnp.float32)
    mean_out, var_values = gaussian.split_model_output(model_out, x_t, variance)
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    elif prediction == "v":
        target = gaussian.v_from_x0_eps(s, x0, noise, t)
    else:
        raise ValueError(
            f"unknown prediction {prediction!r}; expected one of {gaussian.PREDICTIONS}"
        )
    squared = jnp.square(target - mean_out)
    mse = mean_flat(squared) if reduction == "mean" else sum_flat(squared)
    if var_values is not None and use_vb:
        frozen = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_values], axis=-1)
        vb = vb_term(s, frozen, x0, x_t, t, prediction=prediction, variance=variance)
        if rescale_vb:
            vb = vb * (s.num_timesteps / 1000.0)
    else:
        vb = jnp.zeros_like(mse)
    return {"loss": mse + vb, "mse": mse, "vb": vb}
