"""Populations in training: what differs between replicas, as traced per-replica values.

The train state of a population carries a leading replica axis and the update is
`jax.vmap`ped over it (`train.make_population_step`); the values below are the vmapped
arguments, so one compiled step serves every replica. A replica whose loss or gradient turns
non-finite keeps its last good state from then on (`keep_diverged`) and is reported; the others
go on. With `population_data='per_replica'` each replica reads the data in its own seed's order
(`ReplicaBatches`); otherwise all see the base seed's batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdiffseg.diffusion import objectives, timesteps
from jdiffseg.training import optim

Parts = tuple[objectives.Objective, timesteps.TimestepSampler, optax.GradientTransformation,
              optax.Schedule, jax.Array, jax.Array]


def hyperparameters(configs: Sequence[ml_collections.ConfigDict],
                    train_keys: Sequence[jax.Array]) -> dict[str, np.ndarray]:
    """The per-replica values of `configs` (one replica config each) as (K, ...) arrays."""
    obj = [objectives.from_config(c) for c in configs]
    samplers = [timesteps.from_config(c.diffusion) for c in configs]
    cal = np.asarray([o.cal_loss_weight for o in obj], np.float32)
    if np.any(cal > 0) and not np.all(cal > 0):
        raise ValueError(
            "config.train.population_overrides: 'train.cal_loss_weight' is 0 for some replicas "
            "and positive for others, which changes the compiled graph; use all > 0 or all 0"
        )
    out = {
        "lr": np.asarray([float(c.train.lr) for c in configs], np.float32),
        "weight_decay": np.asarray([float(c.train.weight_decay) for c in configs], np.float32),
        "ema_decay": np.asarray([float(c.train.ema_decay) for c in configs], np.float32),
        "cal_loss_weight": cal,
        "train_key": np.stack([np.asarray(k) for k in train_keys]),
    }
    method = samplers[0].method
    if method == "range":
        out["t_min"] = np.asarray([s.t_min for s in samplers], np.int32)
        out["t_max"] = np.asarray([s.t_high for s in samplers], np.int32)
    if method == "weights":
        out["probabilities"] = np.asarray([s.probabilities for s in samplers], np.float32)
    return out


def replica_parts(config: ml_collections.ConfigDict, h: dict[str, jax.Array]) -> Parts:
    """(objective, timestep sampler, optimiser, learning-rate schedule, EMA decay, train key)
    of one replica inside the vmapped step, from its traced values `h`."""
    obj = objectives.from_config(config)
    if obj.cal_loss_weight > 0:
        obj = dataclasses.replace(obj, cal_loss_weight=h["cal_loss_weight"])
    sampler = timesteps.from_config(config.diffusion)
    if "t_min" in h:
        sampler = dataclasses.replace(sampler, t_min=h["t_min"], t_max=h["t_max"])
    if "probabilities" in h:
        sampler = dataclasses.replace(sampler, probabilities=h["probabilities"])
    tx = optim.make_optimizer(config.train, h["lr"], h["weight_decay"])
    lr_fn = optim.learning_rate_schedule(config.train, h["lr"])
    return obj, sampler, tx, lr_fn, h["ema_decay"], h["train_key"]


def keep_diverged(old: Any, new: Any) -> Any:
    """`new`, except that a replica whose step went non-finite (now or before) keeps `old`
    apart from its step count and the step it diverged at. Per replica (inside the vmap)."""
    frozen = new.nonfinite_step >= 0
    kept = jax.tree.map(lambda a, b: jnp.where(frozen, a, b), old, new)
    return kept.replace(step=new.step, nonfinite_step=new.nonfinite_step)


class ReplicaBatches:
    """K train iterators, one per replica seed, yielding their batches stacked on a leading
    replica axis; the position of all K is one state (JSON), as grain's checkpointing needs."""

    def __init__(self, iterators: Sequence[Any]) -> None:
        self._iterators = list(iterators)

    def __iter__(self) -> ReplicaBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self._iterators]
        return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}

    def get_state(self) -> bytes:
        states = [it.get_state() for it in self._iterators]
        texts = [s.decode() if isinstance(s, bytes) else json.dumps(s) for s in states]
        return json.dumps(texts).encode()

    def set_state(self, state: bytes | str) -> None:
        texts = json.loads(state.decode() if isinstance(state, bytes) else state)
        if len(texts) != len(self._iterators):
            raise ValueError(
                f"the checkpoint holds the data positions of {len(texts)} replicas, the config "
                f"has {len(self._iterators)}"
            )
        for it, text in zip(self._iterators, texts, strict=True):
            it.set_state(text.encode())


def log_values(logged: Sequence[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Per-replica means over the logged steps of (K,) metrics: {name: [K values]}."""
    return {k: np.mean([np.asarray(p[k], np.float64) for p in logged], axis=0).tolist()
            for k in logged[0]}


def combine_validation(per_replica: Sequence[dict[str, float] | None]) -> dict[str, Any]:
    """The mean over live replicas of each validation metric (what picks the best checkpoint)
    and each replica's value as `<name>_replica<k>` (frozen replicas: absent)."""
    live = [v for v in per_replica if v]
    out: dict[str, Any] = {}
    if not live:
        return out
    for name in live[0]:
        out[name] = float(np.mean([v[name] for v in live]))
        for k, v in enumerate(per_replica):
            if v:
                out[f"{name}_replica{k}"] = float(v[name])
    return out
