"""Trained runs loaded for the analysis: config, model, variables, schedule, and the images."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from jdiffseg.analysis.curves import Denoiser, denoiser_from_config
from jdiffseg.data.builders.common import BINARY_CLASSES
from jdiffseg.data.pipeline import class_names_of, make_loader
from jdiffseg.diffusion import schedules
from jdiffseg.diffusion.schedules import Schedule
from jdiffseg.models import build_model
from jdiffseg.runtime import run_dir, variables
from jdiffseg.scoring import predictors


@dataclasses.dataclass(frozen=True)
class AnalysedRun:
    """A trained run loaded for analysis."""

    workdir: str
    config: ml_collections.ConfigDict
    denoiser: Denoiser
    variables: Any
    schedule: Schedule
    step: int


def load_analysed_run(
    workdir: str,
    *,
    mode: str,
    image_shape: tuple[int, int, int],
    checkpoint: str = "best",
    use_ema: bool = True,
    config: ml_collections.ConfigDict | None = None,
    replica: int | None = None,
) -> AnalysedRun:
    """Config, model and (EMA) variables of the run in `workdir` (of its replica `replica`, a
    population run), checked to be in `mode` and to fit images of `image_shape` (H, W, C)."""
    config = run_dir.read_config(workdir) if config is None else config
    if config.model.mode != mode:
        raise ValueError(
            f"{run_dir.config_path(workdir)}: model.mode is {config.model.mode!r}; "
            f"the analysis needs a {mode!r} run there"
        )
    model = build_model(config.model, image_channels=image_shape[-1],
                        mask_channels=predictors.mask_channels(config))
    params, meta = variables.restore(
        workdir, config, model, image_shape, which=checkpoint, use_ema=use_ema, replica=replica
    )

    def apply(params: Any, x_t: jax.Array, t: jax.Array, image: jax.Array | None) -> dict:
        return model.apply(params, x_t, t, image, train=False)

    return AnalysedRun(
        workdir=workdir, config=config, denoiser=denoiser_from_config(config, apply),
        variables=params, schedule=schedules.from_config(config.diffusion),
        step=int(meta.get("step", -1)),
    )


def check_same_process(a: AnalysedRun, b: AnalysedRun) -> None:
    """The mask-only run must diffuse masks exactly as the analysed run does."""
    da, db = a.config.diffusion, b.config.diffusion
    if da.mask_encoding != db.mask_encoding:
        raise ValueError(
            f"{b.workdir}: mask_encoding {db.mask_encoding!r} differs from {a.workdir}'s "
            f"{da.mask_encoding!r}; the mask-only run must noise masks the same way"
        )
    betas_a, betas_b = np.asarray(a.schedule.betas), np.asarray(b.schedule.betas)
    if betas_a.shape != betas_b.shape or not np.allclose(betas_a, betas_b):
        raise ValueError(
            f"{b.workdir}: its noise schedule ({db.schedule}, T={db.num_timesteps}) differs "
            f"from {a.workdir}'s ({da.schedule}, T={da.num_timesteps}); the mask-only run "
            f"must use the same schedule"
        )


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The run's class names (background first): its dataset's for a multi-class run."""
    if int(config.data.get("num_classes", 1)) == 1:
        return BINARY_CLASSES
    return class_names_of(config)


def load_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The first `config.analysis.num_images` (image, mask) pairs of `config.analysis.split`.

    Every process reads the same images (they are split over devices later); padding rows of
    the evaluation loader (`valid == 0`) are dropped.
    """
    want = int(config.analysis.num_images)
    if want < 1:
        raise ValueError(f"config.analysis.num_images must be >= 1, got {want}")
    loader = make_loader(config, config.analysis.split, train=False, seed=config.seed,
                         shard=(0, 1))
    images, masks, have = [], [], 0
    for batch in loader:
        keep = np.asarray(batch["valid"]) > 0 if "valid" in batch else slice(None)
        images.append(np.asarray(batch["image"])[keep])
        masks.append(np.asarray(batch["mask"])[keep])
        have += len(images[-1])
        if have >= want:
            break
    if not have:
        raise ValueError(f"split {config.analysis.split!r} of {config.data.name!r} is empty")
    return np.concatenate(images)[:want], np.concatenate(masks)[:want]
