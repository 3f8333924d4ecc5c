"""Populations: replica k of the vmapped step is the single run with its seed and values, and a
diverging replica is frozen while the others go on (on a fixed batch, no data loader)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from train_support import SIZE, shrink_model, tiny_config

from jdiffseg.config import population
from jdiffseg.models import build_model
from jdiffseg.training import optim, train

STEPS = 2


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    mask = (rng.uniform(size=(4, SIZE, SIZE, 1)) > 0.5).astype(np.float32)
    return {"image": image, "mask": mask}


def _model_and_init(config):
    model = build_model(config.model, image_channels=3, mask_channels=1)
    tx = optim.make_optimizer(config.train)
    return model, tx, train.init_train_state(config, model, tx, (4, SIZE, SIZE, 3))


def _init_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), train.INIT_STREAM)


def _run_single(config, batches):
    model, tx, init = _model_and_init(config)
    state = jax.jit(init)(_init_key(config.seed))
    step = jax.jit(train.make_train_step(config, model, tx))
    for b in batches:
        state, scalars = step(state, b)
    return state, scalars


def _run_population(config, batches):
    replicas = population.replica_configs(config)
    model, _, init = _model_and_init(config)
    keys = np.stack([np.asarray(_init_key(c.seed)) for c in replicas])
    state = jax.jit(jax.vmap(init))(keys)
    step = jax.jit(train.make_population_step(config, model, replicas))
    history = []
    for b in batches:
        state, scalars = step(state, b)
        history.append(jax.device_get(scalars))
    return state, history


def _close(a, b):
    """Equal within float32 rounding. Adam normalises each step to about the learning rate,
    so in zero-initialised layers, where gradients are near 0, rounding can flip a step's
    sign: the absolute tolerance is a tenth of one step at lr 1e-3."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_replica_k_equals_the_single_run_with_its_seed_and_values(tmp_path):
    config = shrink_model(tiny_config(tmp_path))
    config.diffusion.timestep_sampling = "range"
    config.train.population = 2
    config.train.population_overrides = (
        "seed=3,5;train.lr=1e-3,2e-4;train.ema_decay=0.9,0.99;train.weight_decay=0,0.1;"
        "diffusion.t_min=0,10;diffusion.t_max=-1,30"
    )
    batches = [_batch(i) for i in range(STEPS)]
    pop_state, history = _run_population(config, batches)
    assert [h["frozen"].tolist() for h in history] == [[0.0, 0.0]] * STEPS
    for k in (0, 1):
        single = population.replica_config(config, k)
        assert single.train.population == 1 and single.seed == (3, 5)[k]
        state, scalars = _run_single(single, batches)
        _close(jax.tree.map(lambda x, k=k: x[k], pop_state), state)
        assert history[-1]["loss"][k] == pytest.approx(float(scalars["loss"]), rel=1e-5)
        assert history[-1]["lr"][k] == pytest.approx(float(scalars["lr"]), rel=1e-6)
    # the replicas did differ: another seed, learning rate and timestep range
    assert not np.allclose(history[-1]["loss"][0], history[-1]["loss"][1])


@pytest.mark.slow
def test_a_diverging_replica_is_frozen_and_the_others_go_on(tmp_path):
    config = shrink_model(tiny_config(tmp_path))
    config.train.population = 2
    config.train.grad_clip = 0.0
    config.train.warmup_steps = 0
    config.train.lr_schedule = "constant"
    config.train.population_overrides = "seed=0,0;train.lr=1e-3,1e38"  # the second overflows
    batches = [_batch(i) for i in range(STEPS)]
    state, history = _run_population(config, batches)
    frozen = [h["frozen"].tolist() for h in history]
    assert frozen[0] == [0.0, 0.0] and frozen[-1] == [0.0, 1.0]
    bad = np.asarray(state.nonfinite_step)
    assert bad[0] == -1 and bad[1] >= 1
    # the frozen replica kept the parameters it had before its first non-finite step
    single = population.replica_config(config, 1)
    before, _ = _run_single(single, batches[: int(bad[1]) - 1])
    _close(jax.tree.map(lambda x: x[1], state.params), before.params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
    # the healthy replica is the single run with its values, all steps
    healthy, _ = _run_single(population.replica_config(config, 0), batches)
    _close(jax.tree.map(lambda x: x[0], state.params), healthy.params)
    assert int(np.asarray(state.step)[1]) == STEPS
