"""`train_and_evaluate(config, workdir)`: trains any architecture in any mode, resumable.

    jdiffseg train --config=configs/default.py --workdir=runs/default

Sections follow the order of a run: mesh, input, model, update step, resume, loop. One jitted
step over a device mesh (batch split over 'data', state replicated or FSDP-sharded, state
buffers donated); a thread puts the next batches on the devices ahead of the step
(`config.data.prefetch`). Randomness is `fold_in(PRNGKey(seed), step)` and the data order is
the saved grain iterator state (of the last batch used, not of the read-ahead), so a run killed
at any moment and restarted ends with the same params as an uninterrupted one. SIGTERM or a
first Ctrl-C saves a checkpoint and exits; a non-finite loss stops the run naming the step and
leaves the last good checkpoint untouched. The run holds the workdir's lock throughout, so a
second trainer on the same workdir stops at once; a file that cannot be written stops it with
one line. With `train.population` = K > 1 the state
has a leading replica axis and the step is `make_population_step` (one vmapped update; a
diverging replica is frozen, the run stops only when all have diverged); see
`jdiffseg.config.population`.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdiffseg import diffusion
from jdiffseg.config import population
from jdiffseg.data import pipeline, prefetch
from jdiffseg.diffusion import objectives, timesteps
from jdiffseg.models import build_model, modes
from jdiffseg.models.pretrained import load_pretrained
from jdiffseg.runtime import (
    checkpoint,
    io_errors,
    lock,
    run_dir,
    runlog,
    sharding,
    stop_signals,
    variables,
)
from jdiffseg.scoring import predictors
from jdiffseg.training import optim, validation
from jdiffseg.training import population as train_population

# fold_in tags of the root key: one stream per purpose (validation's is validation.VAL_STREAM).
INIT_STREAM, TRAIN_STREAM = 0, 1


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/Inf; the run stops without saving."""


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position."""

    step: jax.Array  # int32 (): optimiser steps taken
    params: Any
    batch_stats: Any  # BatchNorm statistics ({} for models without BatchNorm)
    opt_state: Any
    ema_params: Any
    timesteps: timesteps.TimestepState
    nonfinite_step: jax.Array  # int32 (): first step with a NaN/Inf loss, -1 if none


# ------------------------------------------------------------------------------------ model


def init_train_state(
    config: Any, model: Any, tx: optax.GradientTransformation, image_shape: tuple[int, ...]
) -> Callable[[jax.Array], TrainState]:
    """A function key -> fresh TrainState (jit it with out_shardings to init in place)."""
    obj = objectives.from_config(config)
    sampler = timesteps.from_config(config.diffusion)

    def init(key: jax.Array) -> TrainState:
        params_key, dropout_key = jax.random.split(key)
        x_t, t, image = modes.init_inputs(obj.mode, image_shape, model.mask_channels)
        t = objectives.model_timesteps(obj, t)
        variables = model.init(
            {"params": params_key, "dropout": dropout_key}, x_t, t, image, train=False
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            ema_params=jax.tree.map(lambda p: p.astype(jnp.float32), params),
            timesteps=timesteps.init_state(sampler),
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    return init


def start_from_pretrained(config: Any, model: Any, state: TrainState, shardings: Any) -> TrainState:
    """The fresh ``state`` with the weights ``config.model.pretrained`` names loaded over its
    parameters, EMA and BatchNorm statistics (the optimiser state of a fresh run does not
    depend on them)."""
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    log = functools.partial(print, file=sys.stderr)
    loaded = load_pretrained(config.model, model, variables, log=log)
    params = jax.tree.map(
        lambda old, new: np.asarray(new, old.dtype), variables["params"], loaded["params"]
    )
    state = state.replace(
        params=params,
        batch_stats=loaded.get("batch_stats", {}),
        ema_params=jax.tree.map(lambda p: p.astype(np.float32), params),
    )
    return jax.device_put(state, shardings)


# ------------------------------------------------------------------------------ update step


StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def train_key_of(seed: int) -> jax.Array:
    """The root of the training step's randomness for a run seeded `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), TRAIN_STREAM)


def make_train_step(config: Any, model: Any, tx: optax.GradientTransformation) -> StepFn:
    """The (unjitted) update: gradients over `grad_accum` micro-batches, AdamW, EMA,
    importance-sampler history, NaN bookkeeping. Returns the new state and scalar metrics."""
    return update_step(
        config, model, objectives.from_config(config), timesteps.from_config(config.diffusion),
        tx, optim.learning_rate_schedule(config.train), float(config.train.ema_decay),
        train_key_of(config.seed),
    )


def update_step(
    config: Any,
    model: Any,
    obj: objectives.Objective,
    sampler: timesteps.TimestepSampler,
    tx: optax.GradientTransformation,
    lr_fn: optax.Schedule,
    ema_decay: float | jax.Array,
    train_key: jax.Array,
) -> StepFn:
    """`make_train_step` from its parts, any of which (loss weights, timestep law, learning
    rate, weight decay, EMA decay, key) may hold a population's traced per-replica values."""
    schedule = diffusion.from_config(config.diffusion)
    loss_fn = objectives.make_loss_fn(obj, model, schedule, sampler)
    accum = int(config.train.grad_accum)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(train_key, state.step)
        if accum == 1:
            (_, aux), grads = grad_fn(
                state.params, state.batch_stats, batch, key, state.timesteps
            )
            batch_stats, scalars = aux["batch_stats"], aux["metrics"]
            t, per_example = aux["t"], aux["per_example"]
        else:
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
                batch,
            )

            def body(carry, inputs):
                grads_sum, stats = carry
                i, mb = inputs
                (_, aux), g = grad_fn(
                    state.params, stats, mb, jax.random.fold_in(key, i), state.timesteps
                )
                grads_sum = jax.tree.map(jnp.add, grads_sum, g)
                outputs = (aux["metrics"], aux["t"], aux["per_example"])
                return (grads_sum, aux["batch_stats"]), outputs

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, batch_stats), (scalars, t, per_example) = jax.lax.scan(
                body, (zeros, state.batch_stats), (jnp.arange(accum), micro)
            )
            grads = jax.tree.map(lambda g: g / accum, grads)
            scalars = jax.tree.map(jnp.mean, scalars)
            t, per_example = t.reshape(-1), per_example.reshape(-1)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(scalars["loss"]) & jnp.isfinite(grad_norm)
        first_bad = jnp.where(
            (state.nonfinite_step < 0) & ~finite, state.step + 1, state.nonfinite_step
        )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=optim.ema_update(
                state.ema_params,
                params,
                optim.ema_decay_at(state.step, ema_decay, bool(config.train.ema_warmup)),
            ),
            timesteps=timesteps.update(sampler, state.timesteps, t, per_example),
            nonfinite_step=first_bad,
        )
        scalars = {**scalars, "grad_norm": grad_norm, "lr": lr_fn(state.step)}
        return new_state, scalars

    return step_fn


def make_population_step(config: Any, model: Any, replicas: list[Any]) -> StepFn:
    """The update of a population: `update_step` vmapped over the replica axis of the state
    (and of the batch with `population_data='per_replica'`), each replica with its own traced
    values (`population.hyperparameters`); a diverging replica is frozen, flagged 'frozen'."""
    h = train_population.hyperparameters(replicas, [train_key_of(c.seed) for c in replicas])

    def one(state: TrainState, batch: dict[str, jax.Array], hk: dict[str, jax.Array]):
        new, scalars = update_step(config, model, *train_population.replica_parts(config, hk))(
            state, batch)
        new = train_population.keep_diverged(state, new)
        return new, {**scalars, "frozen": (new.nonfinite_step >= 0).astype(jnp.float32)}

    shared = config.train.population_data == "shared"
    mapped = jax.vmap(one, in_axes=(0, None if shared else 0, 0))
    return lambda state, batch: mapped(state, batch, h)


def check_population(config: Any, mesh: Mesh) -> int:
    """K for `config`, refusing what a population cannot combine with."""
    k = population.size(config)
    population.replica_values(config)  # refuses keys that change shapes or the graph
    if k == 1:
        if mesh.shape[sharding.REPLICA_AXIS] > 1:
            raise ValueError(
                f"config.train.replica_devices={mesh.shape[sharding.REPLICA_AXIS]} splits the "
                f"replicas of a population over devices; config.train.population is 1"
            )
        if config.train.population_overrides:
            raise ValueError(
                "config.train.population_overrides is set but config.train.population=1; "
                "set the population size, or put the values in the config itself"
            )
        return k
    for key, bad in (("config.train.fsdp", bool(config.train.fsdp)),
                     ("config.model.pretrained", bool(config.model.pretrained))):
        if bad:
            raise ValueError(f"{key} cannot be combined with config.train.population={k}")
    rows = mesh.shape[sharding.REPLICA_AXIS]
    if rows > 1 and (k % rows or jax.process_count() > 1):
        raise ValueError(
            f"config.train.replica_devices={rows} needs one process and a population ({k}) "
            f"divisible by it"
        )
    split = rows if rows > 1 else mesh.shape[sharding.DATA_AXIS]
    if config.train.population_data == "per_replica" and (jax.process_count() > 1 or k % split):
        raise ValueError(
            f"config.train.population_data='per_replica' needs one process and a population "
            f"({k}) divisible by the number of devices its replicas split over ({split})"
        )
    return k


def jit_train_step(step_fn: Callable, state_shardings: Any, mesh: Mesh,
                   batch_spec: PartitionSpec | None = None) -> Callable:
    """`step_fn` jitted over `mesh` with the state donated; the batch placed by `batch_spec`
    (default: split over 'data')."""
    batch = sharding.batch_sharding(mesh) if batch_spec is None else NamedSharding(mesh,
                                                                                     batch_spec)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


# --------------------------------------------------------------------------------- helpers


def _lock_workdir(workdir: str, config: Any) -> lock.WorkdirLock | None:
    """The workdir's lock, taken by process 0 (None elsewhere); every process raises when it
    could not be taken (held by another trainer, or the lock file cannot be written), so a
    multi-host job stops as one."""
    held: lock.WorkdirLock | None = None
    refused: Exception | None = None
    if run_dir.is_primary():
        try:
            held = lock.acquire(workdir, stale_after=float(config.train.lock_timeout))
        except (lock.WorkdirLockedError, OSError) as e:
            refused = e
    if jax.process_count() > 1:
        taken = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
        if not taken and refused is None:
            refused = lock.WorkdirLockedError(f"process 0 could not lock {workdir}; see its log")
    if refused is not None:
        raise refused
    return held


def _preempted(stop: stop_signals.StopRequest, step: int) -> bool:
    if jax.process_count() > 1:
        return multihost_utils.reached_preemption_sync_point(step)
    return stop.signum is not None


# ------------------------------------------------------------------------------------ main


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run in `workdir`; returns the last validation metrics.

    Holds the workdir's lock for the whole run (lock.WorkdirLockedError, before anything is
    written, when another trainer holds it). A file that cannot be written (no space, no
    permission) stops the run with a one-line io_errors.RunIOError."""
    sharding.maybe_initialize_distributed(config.train)
    held = None
    try:
        os.makedirs(workdir, exist_ok=True)
        held = _lock_workdir(workdir, config)
        return _train(config, workdir, held)
    except OSError as e:
        failure = None
        if e.errno in io_errors.WRITE_ERRNOS:
            last = checkpoint.last_complete(workdir)
            failure = io_errors.io_failure(e, f"training {workdir} stopped", last)
        if failure is None:
            raise
        raise failure from e
    finally:
        if held is not None:
            held.release()


def _train(config: Any, workdir: str, held: lock.WorkdirLock | None) -> dict[str, float]:
    """The run itself, under the workdir's lock `held` (None on processes other than 0)."""
    # ---- mesh
    mesh = sharding.make_mesh(replica_devices=int(config.train.replica_devices))
    run_dir.check_resume_config(workdir, config)
    run_dir.write_config(workdir, config)
    total_steps = int(config.train.steps)
    population_size = check_population(config, mesh)
    accum = int(config.train.grad_accum)
    local_batch = sharding.check_batch_size(
        config.data.batch_size, mesh, "config.data.batch_size"
    )
    data_devices = mesh.shape[sharding.DATA_AXIS]
    if accum < 1 or config.data.batch_size % (accum * data_devices):
        raise ValueError(
            f"config.data.batch_size={config.data.batch_size} must be divisible by "
            f"config.train.grad_accum={accum} x {data_devices} devices"
        )

    replicas = population.replica_configs(config) if population_size > 1 else [config]

    # ---- input
    shard = (jax.process_index(), jax.process_count())
    if config.train.population_data == "per_replica" and population_size > 1:
        train_iter = train_population.ReplicaBatches([
            iter(pipeline.make_loader(c, "train", train=True, seed=c.seed, shard=shard))
            for c in replicas
        ])
    else:
        train_loader = pipeline.make_loader(
            config, "train", train=True, seed=config.seed, shard=shard
        )
        train_iter = iter(train_loader)
    val_batches = validation.load_validation(config, mesh)
    image_shape = (local_batch * jax.process_count(), *val_batches[0]["image"].shape[1:])

    # ---- model
    image_channels = image_shape[-1]
    model = build_model(config.model, image_channels=image_channels,
                        mask_channels=predictors.mask_channels(config))
    tx = optim.make_optimizer(config.train)
    init_fn = init_train_state(config, model, tx, image_shape)
    init_keys = jnp.stack([
        jax.random.fold_in(jax.random.PRNGKey(c.seed), INIT_STREAM) for c in replicas
    ])
    if population_size > 1:  # every leaf gains a leading replica axis
        init_fn = jax.vmap(init_fn)
        abstract = jax.eval_shape(init_fn, init_keys)
        state_sh = sharding.population_shardings(abstract, mesh)
        step_fn = make_population_step(config, model, replicas)
    else:
        init_keys = init_keys[0]
        abstract = jax.eval_shape(init_fn, init_keys)
        state_sh = sharding.state_shardings(abstract, mesh, fsdp=bool(config.train.fsdp))
        step_fn = make_train_step(config, model, tx)
    state = jax.jit(init_fn, out_shardings=state_sh)(init_keys)

    # ---- update step
    batch_spec = sharding.population_batch_spec(
        mesh, population_size > 1 and config.train.population_data == "per_replica")
    train_step = jit_train_step(step_fn, state_sh, mesh, batch_spec)
    validate = validation.make_validator(config, model, mesh)

    # ---- resume
    best_name = run_dir.best_metric_name(config)
    ckpt = checkpoint.Checkpointer(
        workdir, keep=int(config.train.keep_checkpoints), best_metric=best_name
    )
    if ckpt.latest_step() is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
        )
        try:
            state, _ = ckpt.restore("latest", target, data_iterator=train_iter)
        except checkpoint.CheckpointRestoreError as e:
            raise checkpoint.CheckpointRestoreError(
                f"{e} (did config.train change the optimiser, e.g. grad_clip?)"
            ) from e.__cause__
    elif config.model.pretrained:
        state = start_from_pretrained(config, model, state, state_sh)
    step = int(np.asarray(sharding.fetch(state.step)).reshape(-1)[0])
    writer = runlog.MetricWriter(workdir, resume_step=step,
                                 tensorboard=bool(config.train.tensorboard))
    if step:
        print(f"resuming {workdir} at step {step}", file=sys.stderr)

    # ---- loop
    images_per_step = config.data.batch_size * population_size
    progress = runlog.Progress(total_steps, step, images_per_step)
    log_every = max(int(config.train.log_every), 1)
    eval_every = int(config.train.eval_every)
    ckpt_every = int(config.train.checkpoint_every)
    last_val: dict[str, float] = {}
    pending: list[dict[str, jax.Array]] = []
    t_last = time.perf_counter()
    frozen: set[int] = set()

    def check_finite() -> None:
        bad_steps = np.asarray(sharding.fetch(state.nonfinite_step)).reshape(-1)
        if population_size > 1:
            for k in np.flatnonzero(bad_steps >= 0):
                if int(k) not in frozen:
                    frozen.add(int(k))
                    progress.write(
                        f"replica {k} (seed {replicas[k].seed}, lr {replicas[k].train.lr}): "
                        f"non-finite loss or gradient at step {bad_steps[k]}; frozen at its last "
                        f"good parameters, the other replicas go on"
                    )
            if len(frozen) < population_size:
                return
        bad = int(bad_steps.min() if population_size == 1 else bad_steps.max())
        if bad >= 0:
            ckpt.close()
            progress.close()
            last = ckpt.latest_step()
            where = f"step {last} in {ckpt.directory}" if last is not None else "none saved"
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad} (config.train.lr="
                f"{config.train.lr}); stopped without saving. Last good checkpoint: {where}"
            )

    # From here on only the prefetcher reads the loader; its state is that of the last batch used.
    train_iter = prefetch.DevicePrefetcher(
        train_iter,
        lambda b: pipeline.to_global({"image": b["image"], "mask": b["mask"]}, mesh,
                                     batch_spec),
        int(config.data.prefetch),
    )

    def save(metrics: dict[str, float] | None = None) -> None:
        if held is not None:
            held.check()  # another trainer took the workdir over: write nothing more
        ckpt.save(step, state, train_iter, metrics=metrics)

    try:
        with stop_signals.stop_requests(enabled=jax.process_count() == 1) as stop:
            while step < total_steps:
                if _preempted(stop, step):
                    check_finite()
                    save()
                    ckpt.close()
                    progress.write(f"{stop.name}: saved a checkpoint at step {step}; exiting")
                    sys.exit(stop.exit_code)
                state, scalars = train_step(state, next(train_iter))
                pending.append(scalars)
                step += 1
                progress.update(step)
                if step % log_every == 0 or step == total_steps:
                    logged = sharding.fetch(pending)  # the loop's one device-to-host sync
                    pending = []
                    check_finite()
                    now = time.perf_counter()
                    rate = log_every * images_per_step / max(now - t_last, 1e-9)
                    t_last = now
                    if population_size > 1:
                        means = train_population.log_values(logged)
                        live = [x for k, x in enumerate(means["loss"]) if k not in frozen]
                        progress.update(step, float(np.mean(live)))
                    else:
                        means = {k: float(np.mean([p[k] for p in logged])) for k in logged[0]}
                        progress.update(step, means["loss"])
                    writer.write(step, **means, images_per_sec=rate)
                val = {}
                if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
                    check_finite()
                    if population_size > 1:
                        val = train_population.combine_validation([
                            None if k in frozen else validate(
                                variables.select_replica(state, k), val_batches, seed=c.seed)
                            for k, c in enumerate(replicas)
                        ])
                    else:
                        val = validate(state, val_batches)
                    last_val = val
                    writer.write(step, **val)
                    progress.write(
                        f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in val.items())
                    )
                if (ckpt_every > 0 and step % ckpt_every == 0) or val or step == total_steps:
                    check_finite()
                    save(val or None)
            if not last_val and ckpt.latest_step() is not None:
                last_val = ckpt.metrics(ckpt.latest_step())
    finally:
        train_iter.close()
        progress.close()
    ckpt.close()
    run_dir.write_finished(workdir, {"step": step, **last_val})
    return last_val
