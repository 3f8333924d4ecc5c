"""Ancestral DDPM and DDIM samplers written as one `lax.scan` over the (respaced) chain, and
`ensemble_sample`, which runs any of them (or DPM-Solver++, `dpm_solver.py`) for n members.

`model_fn(x_t, t)` returns the raw model output (ε / x0 / v, plus variance channels for
'learned_range'); it is called with the *original* timesteps (`schedule.timestep_map`), so a
respaced schedule samples from a model trained on the full chain, as guided-diffusion's
`_WrappedModel` does. Everything is traceable: wrap a sampler in `jax.jit` closing over the
model parameters and the static options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jdiffseg.diffusion import dpm_solver, gaussian
from jdiffseg.diffusion.schedules import Schedule, respace, space_timesteps

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
StepFn = Callable[[Schedule, dict[str, jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]
SAMPLERS = ("ddpm", "ddim", *dpm_solver.SOLVERS)


def ddpm_sample(
    model_fn: ModelFn, s: Schedule, shape: Sequence[int], key: jax.Array, **options: Any
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Ancestral sampling x_{t-1} ~ N(mean, variance) from x_T ~ N(0, I) down to x_0.

    `options` are those of `sample_chain` (prediction, variance, clipping, timesteps, noise,
    return_trajectory).
    """

    def step(
        s: Schedule, out: dict[str, jax.Array], x: jax.Array, t: jax.Array, z: jax.Array
    ) -> jax.Array:
        nonzero = gaussian.broadcast_like((t != 0).astype(x.dtype), x)
        return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * z

    return sample_chain(step, model_fn, s, shape, key, stochastic=True, **options)


def ddim_sample(
    model_fn: ModelFn,
    s: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    eta: float = 0.0,
    **options: Any,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """DDIM (Song et al., eq. 12): η = 0 is deterministic, η = 1 matches DDPM's marginals.

    ε is re-derived from the (possibly clipped) x0 prediction; `variance` only tells how to
    split the model output. `options` as `sample_chain`.
    """

    def step(
        s: Schedule, out: dict[str, jax.Array], x: jax.Array, t: jax.Array, z: jax.Array
    ) -> jax.Array:
        ab = gaussian.extract(s.alphas_cumprod, t, x)
        ab_prev = gaussian.extract(s.alphas_cumprod_prev, t, x)
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
        return out["pred_x0"] * jnp.sqrt(ab_prev) + direction * out["pred_eps"] + sigma * z

    # A literal η = 0 is deterministic: skip drawing per-step noise.
    stochastic = not (isinstance(eta, int | float) and eta == 0)
    return sample_chain(step, model_fn, s, shape, key, stochastic=stochastic, **options)


def ensemble_sample(
    model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
    s: Schedule,
    cond: Any,
    n: int,
    key: jax.Array,
    *,
    sample_shape: Sequence[int],
    sampler: str = "ddpm",
    **sampler_kwargs: Any,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """n samples per conditioning example, shape (B, n, *sample_shape), in one chain.

    `cond` is a pytree of arrays with leading batch axis B (e.g. the images); each example is
    repeated n times along the batch, so `model_fn(x_t, t, cond)` runs on B·n examples per
    step. `sampler` is one of SAMPLERS ('dpmpp_2m' / 'dpmpp_3m': `dpm_solver_sample` of order
    2 / 3); other keyword arguments go to that sampler.
    Trajectory arrays, when asked for, come back as (steps, B, n, ...).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    leaves = jax.tree_util.tree_leaves(cond)
    if not leaves:
        raise ValueError("ensemble_sample needs at least one conditioning array")
    batch = leaves[0].shape[0]
    repeated = jax.tree_util.tree_map(lambda a: jnp.repeat(a, n, axis=0), cond)
    if sampler in dpm_solver.SOLVERS:
        sampler_kwargs = {"order": dpm_solver.SOLVERS[sampler], **sampler_kwargs}
    run = {"ddpm": ddpm_sample, "ddim": ddim_sample}.get(sampler, dpm_solver.dpm_solver_sample)
    result = run(
        lambda x, t: model_fn(x, t, repeated),
        s,
        (batch * n, *sample_shape),
        key,
        **sampler_kwargs,
    )

    def unfold(a: jax.Array, lead: int) -> jax.Array:
        return a.reshape(*a.shape[:lead], batch, n, *a.shape[lead + 1 :])

    if isinstance(result, tuple):
        sample, trajectory = result
        trajectory = {k: v if k == "t" else unfold(v, 1) for k, v in trajectory.items()}
        return unfold(sample, 0), trajectory
    return unfold(result, 0)


def sample_chain(
    step: StepFn,
    model_fn: ModelFn,
    s: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    stochastic: bool,
    prediction: str = "eps",
    variance: str = "fixed_large",
    clip_x0: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    return_trajectory: bool = False,
    timesteps: int | str | Sequence[int] | None = None,
    noise: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Scan `step` from index T-1 down to 0, calling the model with original timesteps.

    `timesteps`: a respacing spec for `space_timesteps` ("ddim25", "10,20", 50) applied to
    `s` first (needs a concrete `s`); or pass an already `respace`d schedule. `noise`: x_T
    (drawn from `key` if None). `stochastic=False` passes zeros as the step noise. With
    `return_trajectory`, also returns {'x': x_{t-1}, 'pred_x0', 't'} stacked over the
    steps, first step first.
    """
    pmv_kwargs = dict(prediction=prediction, variance=variance, clip_x0=clip_x0,
                      clip_range=clip_range)
    if timesteps is not None:
        s = respace(s, space_timesteps(s.num_timesteps, timesteps))
    shape = tuple(shape)
    init_key, steps_key = jax.random.split(key)
    x = gaussian.standard_normal(init_key, shape) if noise is None else noise
    if x.shape != shape:
        raise ValueError(f"noise has shape {x.shape} but the sample shape is {shape}")
    num_steps = s.num_timesteps
    indices = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
    step_keys = jax.random.split(steps_key, num_steps)

    def body(
        x: jax.Array, inputs: tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        i, step_key = inputs
        t = jnp.full((shape[0],), i, dtype=jnp.int32)
        model_out = model_fn(x, s.timestep_map[t]).astype(jnp.float32)
        out = gaussian.p_mean_variance(s, model_out, x, t, **pmv_kwargs)
        z = gaussian.standard_normal(step_key, shape) if stochastic else jnp.zeros(shape)
        x_prev = step(s, out, x, t, z)
        if not return_trajectory:
            return x_prev, None
        return x_prev, {"x": x_prev, "pred_x0": out["pred_x0"], "t": s.timestep_map[i]}

    x, trajectory = jax.lax.scan(body, x, (indices, step_keys))
    if return_trajectory:
        return x, trajectory
    return x
