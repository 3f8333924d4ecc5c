"""Optimiser, learning-rate schedule and EMA of the parameters.

AdamW (as the three architectures' authors) after global-norm clipping; the learning rate
warms up linearly from 0 over `warmup_steps`, then stays constant or follows a cosine to 0 at
`steps`. Gradient accumulation is done in the train step (a `lax.scan` over micro-batches),
so one optimiser step is always one global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(train_config: Any, lr: jax.Array | None = None) -> optax.Schedule:
    """Linear warm-up to `lr`, then constant or cosine decay to 0 at `steps`.

    `lr` (default `train_config.lr`) may be a traced value: a population's per-replica rate.
    """
    name = train_config.lr_schedule
    if name not in LR_SCHEDULES:
        raise ValueError(f"config.train.lr_schedule={name!r} is not one of {LR_SCHEDULES}")
    lr = float(train_config.lr) if lr is None else lr
    warmup = max(int(train_config.warmup_steps), 0)
    total = int(train_config.steps)
    if name == "constant":
        main = optax.constant_schedule(lr)
    else:
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(
    train_config: Any, lr: jax.Array | None = None, weight_decay: jax.Array | None = None
) -> optax.GradientTransformation:
    """Clip by global norm (when `grad_clip` > 0), then AdamW with the schedule above.

    `lr` and `weight_decay` (default: the config's) may be traced per-replica values; the
    optimiser state has the same structure whatever they are.
    """
    adamw = optax.adamw(
        learning_rate_schedule(train_config, lr),
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=float(train_config.weight_decay) if weight_decay is None else weight_decay,
    )
    if train_config.grad_clip and train_config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(float(train_config.grad_clip)), adamw)
    return adamw


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay used after `step` optimiser steps.

    With `warmup`, `min(decay, (1 + step) / (10 + step))`: early averages forget the random
    initialisation quickly, so a short run's EMA is usable; long runs see `decay` throughout.
    """
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """`decay * ema + (1 - decay) * params`, leaf by leaf, in float32."""
    def one(e: jax.Array, p: jax.Array) -> jax.Array:
        return (decay * e + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype)

    return jax.tree.map(one, ema, params)
