"""Which timesteps a training batch sees, and how each example's loss is weighted.

Methods (`config.diffusion.timestep_sampling`):

* ``uniform``: t ~ U{0, ..., T-1}, weight 1 (DDPM).
* ``range``: t ~ U{t_min, ..., t_max}, weight 1 (train only a part of the chain).
* ``weights``: t drawn with probability proportional to `timestep_weights` (T values), weight 1;
  in expectation this is the uniform objective with the loss at t weighted by w_t.
* ``importance``: improved-diffusion's `LossSecondMomentResampler`: keep the last
  `HISTORY` losses of every t; until every t has a full history sample uniformly, then with
  p_t ∝ sqrt(E[loss_t²]) mixed with `UNIFORM_PROB` of the uniform law, weighting each example
  by 1 / (T p_t) so the objective stays unbiased.

The loss history is part of the train state (`TimestepState`), so a resumed run samples exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("uniform", "range", "importance", "weights")
HISTORY = 10
UNIFORM_PROB = 0.001


class TimestepState(NamedTuple):
    """Loss history for importance sampling (carried, unused, by the other methods)."""

    history: jax.Array  # float32 (T, HISTORY): the latest losses per t, oldest first
    counts: jax.Array  # int32 (T,): how many of the HISTORY slots are filled


@dataclasses.dataclass(frozen=True)
class TimestepSampler:
    """Static description of the sampling law (hashable, safe to close over in jit)."""

    method: str
    num_timesteps: int
    t_min: int = 0
    t_max: int = -1
    probabilities: tuple[float, ...] | None = None

    @property
    def t_high(self) -> int | jax.Array:
        """Largest timestep drawn by 'range' (inclusive). A traced `t_max` (a population's
        per-replica value) is taken as resolved already."""
        if not isinstance(self.t_max, int):
            return self.t_max
        return self.num_timesteps - 1 if self.t_max < 0 else self.t_max


def from_config(diffusion_config: Any) -> TimestepSampler:
    """Validates `config.diffusion`'s timestep options into a `TimestepSampler`."""
    method = diffusion_config.timestep_sampling
    T = int(diffusion_config.num_timesteps)
    if method not in METHODS:
        raise ValueError(
            f"config.diffusion.timestep_sampling={method!r} is not one of {METHODS}"
        )
    sampler = TimestepSampler(method, T, int(diffusion_config.t_min), int(diffusion_config.t_max))
    if method == "range" and not 0 <= sampler.t_min <= sampler.t_high <= T - 1:
        raise ValueError(
            f"config.diffusion.t_min={sampler.t_min}, t_max={diffusion_config.t_max} must satisfy "
            f"0 <= t_min <= t_max <= T-1 = {T - 1} (t_max=-1 means T-1)"
        )
    if method == "weights":
        w = diffusion_config.timestep_weights
        if w is None or len(w) != T:
            raise ValueError(
                f"config.diffusion.timestep_weights needs {T} values (one per timestep) for "
                f"timestep_sampling='weights', got {None if w is None else len(w)}"
            )
        w = np.asarray(w, np.float64)
        if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(
                "config.diffusion.timestep_weights must be finite, >= 0 and not all zero"
            )
        sampler = dataclasses.replace(sampler, probabilities=tuple(float(x) for x in w / w.sum()))
    return sampler


def init_state(sampler: TimestepSampler) -> TimestepState:
    """An empty loss history."""
    T = sampler.num_timesteps
    return TimestepState(jnp.zeros((T, HISTORY), jnp.float32), jnp.zeros((T,), jnp.int32))


def importance_probabilities(state: TimestepState) -> jax.Array:
    """p_t of the importance sampler: uniform until warm, then ∝ sqrt(E[loss²]) + uniform mix."""
    T = state.counts.shape[0]
    warm = jnp.all(state.counts == HISTORY)
    w = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=-1))
    w = w / jnp.maximum(jnp.sum(w), 1e-30)
    w = w * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / T
    w = w / jnp.sum(w)
    return jnp.where(warm, w, jnp.full((T,), 1.0 / T, jnp.float32))


def sample(
    sampler: TimestepSampler, state: TimestepState, key: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """(t int32 (B,), loss weights float32 (B,))."""
    ones = jnp.ones((batch_size,), jnp.float32)
    T = sampler.num_timesteps
    if sampler.method == "uniform":
        return jax.random.randint(key, (batch_size,), 0, T, jnp.int32), ones
    if sampler.method == "range":
        t = jax.random.randint(key, (batch_size,), sampler.t_min, sampler.t_high + 1, jnp.int32)
        return t, ones
    if sampler.method == "weights":
        p = jnp.asarray(sampler.probabilities, jnp.float32)
        return jax.random.choice(key, T, (batch_size,), p=p).astype(jnp.int32), ones
    p = importance_probabilities(state)
    t = jax.random.choice(key, T, (batch_size,), p=p).astype(jnp.int32)
    return t, (1.0 / (T * p[t])).astype(jnp.float32)


def update(
    sampler: TimestepSampler, state: TimestepState, t: jax.Array, losses: jax.Array
) -> TimestepState:
    """Records per-example losses at their timesteps, in batch order (importance only).

    As improved-diffusion: a full history drops its oldest value and appends the new one;
    otherwise the value fills the next free slot.
    """
    if sampler.method != "importance":
        return state

    def one(s: TimestepState, tl: tuple[jax.Array, jax.Array]) -> tuple[TimestepState, None]:
        ti, li = tl
        row, n = s.history[ti], s.counts[ti]
        full = n == HISTORY
        shifted = jnp.concatenate([row[1:], li[None]])
        filled = row.at[jnp.minimum(n, HISTORY - 1)].set(li)
        new_row = jnp.where(full, shifted, filled)
        return TimestepState(
            s.history.at[ti].set(new_row), s.counts.at[ti].set(jnp.minimum(n + 1, HISTORY))
        ), None

    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    state, _ = jax.lax.scan(one, state, (t.astype(jnp.int32), losses))
    return state
