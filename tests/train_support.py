"""A tiny training config shared by the training tests (16 px, 50 timesteps, a few steps)."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from jdiffseg.config import schema

SIZE = 16


def tiny_config(data_dir: Path | str, mode: str = "diffusion", arch: str = "ensemdiff",
                steps: int = 4) -> ml_collections.ConfigDict:
    """The smallest config that exercises the whole loop (EnsemDiff-style, CPU seconds)."""
    c = schema.base_config()
    c.model.arch, c.model.mode, c.model.preset = arch, mode, "tiny"
    c.model.base_channels, c.model.channel_mult = 32, (1, 2)
    c.model.attention_resolutions = ()
    c.data.image_size, c.data.data_dir = SIZE, str(data_dir)
    c.data.batch_size = c.data.eval_batch_size = 4
    c.data.num_train_examples, c.data.num_val_examples = 16, 4
    c.data.augment.flip = c.data.augment.rot90 = False
    c.diffusion.num_timesteps = 50
    c.train.steps, c.train.warmup_steps = steps, 1
    c.train.log_every = 1
    c.train.eval_every = c.train.checkpoint_every = 2
    c.eval.val_num_examples, c.eval.val_ensemble_size, c.eval.val_sampling_steps = 4, 1, 2
    return c


def shrink_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """One level of 8 channels: for tests of the loop's bookkeeping, where compile time is all."""
    config.model.base_channels, config.model.channel_mult = 8, (1,)
    config.model.norm_groups = 8
    return config
