"""A workdir as training leaves it, with random parameters: for evaluation and benchmark tests
that need a run but not a trained one (no compilation: shapes from `eval_shape`)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg.models import build_model
from jdiffseg.runtime import checkpoint, run_dir
from jdiffseg.scoring import predictors


def random_variables(model, mode: str, size: int, image_channels: int = 3,
                     mask_channels: int = 1) -> dict:
    """Random variables of the model's shapes for `size` px images (norm scales and BatchNorm
    running variances near 1, everything else near 0)."""
    key = jax.random.key(1)
    image = jnp.zeros((1, size, size, image_channels)) if mode != "mask_only" else None
    shapes = jax.eval_shape(
        lambda: model.init(
            {"params": key, "dropout": key},
            jnp.zeros((1, size, size, mask_channels)),
            jnp.zeros((1,), jnp.int32),
            image,
        )
    )
    rng = np.random.default_rng(2)

    def one(path, leaf):
        noise = rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)
        near_one = jax.tree_util.keystr(path).endswith(("['scale']", "['var']"))
        return noise + 1.0 if near_one else noise

    return jax.tree_util.tree_map_with_path(one, shapes)


def write_run(
    workdir: Path, config: ml_collections.ConfigDict, *, ema_scale: float = 1.0, step: int = 3,
    image_channels: int = 3,
) -> dict:
    """config.json and a checkpoint (params, EMA params = `ema_scale` × params) in `workdir`,
    for `image_channels`-channel inputs (3: the 2D datasets' RGB)."""
    workdir.mkdir(parents=True)
    run_dir.write_config(str(workdir), config)
    masks = predictors.mask_channels(config)
    model = build_model(config.model, image_channels=image_channels, mask_channels=masks)
    variables = random_variables(model, config.model.mode, int(config.data.image_size),
                                 image_channels, masks)
    params = variables["params"]
    state = {
        "params": params,
        "ema_params": jax.tree.map(lambda p: ema_scale * p, params),
        "batch_stats": variables.get("batch_stats", {}),
    }
    ckpt = checkpoint.Checkpointer(str(workdir), best_metric="val_dice", async_save=False)
    ckpt.save(step, state, metrics={"val_dice": 0.5})
    ckpt.close()
    return state
