"""Gaussian diffusion algebra: q(x_t | x0), the posterior q(x_{t-1} | x_t, x0), conversions
between ε / x0 / v, and the model's reverse step p(x_{t-1} | x_t).

All functions are pure jnp and take the `Schedule` first; `t` is an int32 array of
(respaced) timestep indices, shape () or (B,), broadcast against NHWC arrays. String options
(`prediction`, `variance`) are static: close over them when jitting.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdiffseg.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """N(0, I) noise drawn flat and reshaped: the same law as an N-d draw, but XLA compiles
    the flat threefry draw about twice as fast on CPU."""
    return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape)


def broadcast_like(v: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example values of shape () or (B,) reshaped to broadcast against `x` (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def extract(values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """`values[t]` (a per-timestep table read at t of shape () or (B,)) broadcast against `x`."""
    return broadcast_like(values[t], x)


def q_mean_variance(
    s: Schedule, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and log-variance of q(x_t | x0) = N(√ᾱ_t x0, (1 − ᾱ_t) I)."""
    mean = extract(s.sqrt_alphas_cumprod, t, x0) * x0
    log_var = jnp.broadcast_to(extract(s.log_one_minus_alphas_cumprod, t, x0), x0.shape)
    return mean, jnp.exp(log_var), log_var


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε."""
    return (
        extract(s.sqrt_alphas_cumprod, t, x0) * x0
        + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior(
    s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    mean = (
        extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
    )
    var = jnp.broadcast_to(extract(s.posterior_variance, t, x_t), x_t.shape)
    log_var = jnp.broadcast_to(extract(s.posterior_log_variance_clipped, t, x_t), x_t.shape)
    return mean, var, log_var


def x0_from_eps(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = x_t / √ᾱ_t − √(1/ᾱ_t − 1) ε."""
    return (
        extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
    )


def eps_from_x0(s: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """ε = (x_t / √ᾱ_t − x0) / √(1/ᾱ_t − 1)."""
    return (extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
        s.sqrt_recipm1_alphas_cumprod, t, x_t
    )


def x0_from_v(s: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
    return (
        extract(s.sqrt_alphas_cumprod, t, x_t) * x_t
        - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * v
    )


def v_from_x0_eps(s: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The v target of Salimans & Ho: v = √ᾱ_t ε − √(1 − ᾱ_t) x0."""
    return (
        extract(s.sqrt_alphas_cumprod, t, x0) * eps
        - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0
    )


def split_model_output(
    model_out: jax.Array, x_t: jax.Array, variance: str
) -> tuple[jax.Array, jax.Array | None]:
    """(mean part, variance part or None); learned_range models output 2C channels (mean first)."""
    _check_option("variance", variance, VARIANCES)
    channels = x_t.shape[-1]
    expected = 2 * channels if variance == "learned_range" else channels
    if model_out.shape[-1] != expected:
        raise ValueError(
            f"variance={variance!r} needs a model output with {expected} channels for "
            f"x_t with {channels}, got shape {model_out.shape}"
        )
    if variance != "learned_range":
        return model_out, None
    return model_out[..., :channels], model_out[..., channels:]


def model_variance(
    s: Schedule,
    t: jax.Array,
    x_t: jax.Array,
    variance: str,
    var_values: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(variance, log-variance) of p(x_{t-1} | x_t).

    fixed_small: the posterior variance (0 at t=0, its log clipped to the value at t=1);
    fixed_large: β_t, but the posterior variance at t=1 for t=0 (guided-diffusion);
    learned_range: log-linear interpolation, `var_values` = −1 giving the clipped posterior
    log-variance and +1 giving log β_t (Nichol & Dhariwal).
    """
    _check_option("variance", variance, VARIANCES)
    if variance == "learned_range":
        if var_values is None:
            raise ValueError("variance='learned_range' needs the model's variance channels")
        min_log = extract(s.posterior_log_variance_clipped, t, x_t)
        max_log = extract(s.log_betas, t, x_t)
        frac = (var_values + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        return jnp.exp(log_var), log_var
    if variance == "fixed_large":
        var, log_var = s.fixed_large_variance, s.fixed_large_log_variance
    else:
        var, log_var = s.posterior_variance, s.posterior_log_variance_clipped
    return (
        jnp.broadcast_to(extract(var, t, x_t), x_t.shape),
        jnp.broadcast_to(extract(log_var, t, x_t), x_t.shape),
    )


def predict_x0(
    s: Schedule, mean_out: jax.Array, x_t: jax.Array, t: jax.Array, prediction: str
) -> jax.Array:
    """x0 implied by the mean part of a model output under `prediction` ('eps', 'x0', 'v')."""
    _check_option("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return x0_from_eps(s, x_t, t, mean_out)
    if prediction == "v":
        return x0_from_v(s, x_t, t, mean_out)
    return mean_out


def p_mean_variance(
    s: Schedule, model_out: jax.Array, x_t: jax.Array, t: jax.Array, *, prediction: str = "eps",
    variance: str = "fixed_large", clip_x0: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
) -> dict[str, jax.Array]:
    """The reverse step p(x_{t-1} | x_t) from a raw model output.

    Returns mean, variance, log_variance, pred_x0 (clipped to `clip_range` when `clip_x0`)
    and pred_eps (re-derived from pred_x0, as guided-diffusion's DDIM step does). The mean is
    the posterior mean given pred_x0.
    """
    mean_out, var_values = split_model_output(model_out, x_t, variance)
    var, log_var = model_variance(s, t, x_t, variance, var_values)
    pred_x0 = predict_x0(s, mean_out, x_t, t, prediction)
    if clip_x0:
        pred_x0 = jnp.clip(pred_x0, clip_range[0], clip_range[1])
    mean, _, _ = q_posterior(s, pred_x0, x_t, t)
    return {
        "mean": mean,
        "variance": var,
        "log_variance": log_var,
        "pred_x0": pred_x0,
        "pred_eps": eps_from_x0(s, x_t, t, pred_x0),
    }


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
