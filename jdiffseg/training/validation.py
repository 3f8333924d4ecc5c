"""Validation during training: the loss at random t and the metrics of a small ensemble (or
the sigmoid) on the first validation batches, with the EMA (or raw) parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jdiffseg import diffusion
from jdiffseg.data import pipeline
from jdiffseg.diffusion import objectives, timesteps
from jdiffseg.models import modes
from jdiffseg.runtime import sharding
from jdiffseg.scoring import metrics, multiclass, predictors

# fold_in tag of the root key for validation (training uses 0 and 1).
VAL_STREAM = 2



def load_validation(config: Any, mesh: Mesh) -> list[dict[str, jax.Array]]:
    """The first batches of the validation split covering `config.eval.val_num_examples`
    examples (all when -1), as global arrays with the pipeline's 'valid' flags."""
    sharding.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
    loader = pipeline.make_loader(
        config, "validation", train=False, seed=config.seed,
        shard=(jax.process_index(), jax.process_count()),
    )
    wanted = int(config.eval.val_num_examples)
    per_process = -(-wanted // jax.process_count()) if wanted > 0 else None
    batches, seen = [], 0
    for batch in loader:
        batches.append(pipeline.to_global({k: batch[k] for k in ("image", "mask", "valid")}, mesh))
        seen += len(batch["image"])
        if per_process is not None and seen >= per_process:
            break
    return batches


def make_validator(
    config: Any, model: Any, mesh: Mesh
) -> Callable[[Any, list[dict[str, jax.Array]]], dict[str, float]]:
    """validate(state, batches) -> {'val_loss', and for mask modes 'val_dice', 'val_iou',
    'val_ece_top_label', ...}: the loss at random t with a fixed key, and metrics of a small
    DDIM ensemble (or the sigmoid) of the EMA (or raw) params."""
    obj = objectives.from_config(config)
    schedule = diffusion.from_config(config.diffusion)
    sampler = timesteps.from_config(config.diffusion)
    loss_fn = objectives.make_loss_fn(obj, model, schedule, sampler)
    rep = sharding.replicated(mesh)
    val_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), VAL_STREAM)
    use_ema = bool(config.eval.use_ema)
    num_bins = int(config.eval.num_bins)
    threshold = float(config.eval.threshold)
    predict = None
    if modes.uses_image(obj.mode):
        options = predictors.options_from_config(config, validation=True)
        predict = predictors.make_predictor(config, model, options, schedule=schedule, mesh=mesh)

    @jax.jit
    def batch_loss(state: Any, batch: dict[str, jax.Array], key: jax.Array):
        params = state.ema_params if use_ema else state.params
        _, aux = loss_fn(params, state.batch_stats, batch, key, state.timesteps, train=False)
        valid = batch["valid"].astype(jnp.float32)
        return jnp.sum(aux["per_example"] * valid), jnp.sum(valid)

    channels = predictors.mask_channels(config)
    scores = multiclass if channels > 1 else metrics
    update = jax.jit(scores.update, out_shardings=rep)

    def validate(
        state: Any, batches: list[dict[str, jax.Array]], seed: int | None = None
    ) -> dict[str, float]:
        """`seed` (default the config's) picks the keys: a population's replica passes its own."""
        root = val_key if seed is None else jax.random.fold_in(jax.random.PRNGKey(seed),
                                                                 VAL_STREAM)
        total, count = 0.0, 0.0
        acc = multiclass.init(channels, num_bins) if channels > 1 else metrics.init(num_bins)
        variables = {"params": state.ema_params if use_ema else state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        for i, batch in enumerate(batches):
            key = jax.random.fold_in(root, i)
            s, n = batch_loss(state, batch, key)
            total, count = total + s, count + n
            if predict is not None:
                probs = predict(variables, batch["image"], key)["mean"]
                if channels > 1:
                    acc = update(acc, probs, jnp.argmax(batch["mask"], -1), batch["valid"])
                else:
                    acc = update(acc, probs, batch["mask"], threshold, batch["valid"])
        out = {"val_loss": float(total / jnp.maximum(count, 1.0))}
        if predict is not None:
            computed = sharding.fetch(scores.compute(acc))
            out.update({f"val_{k}": float(v) for k, v in computed.items()
                        if np.ndim(v) == 0 and k not in ("num_images", "num_pixels")})
        return out

    return validate
