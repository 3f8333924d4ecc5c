"""Flax Linen models: EnsemDiff, SegDiff, MedSegDiff and the nnU-Net-style and SegFormer
baselines.

`build_model(config.model, image_channels=..., mask_channels=...)` picks the architecture
from ``config.model.arch``; every model is called as
``model.apply(variables, x_t, t, image, train=...)`` and returns ``{'out': ...}`` (MedSegDiff
also ``'cal'``). See `jdiffseg.models.modes` for the four modes.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn

from jdiffseg.models.ensemdiff import EnsemDiff
from jdiffseg.models.modes import MODES
from jdiffseg.models.params import count_params, tree_size
from jdiffseg.models.presets import apply_preset, get_preset
from jdiffseg.models.segdiff import SegDiff
from jdiffseg.models.unet import UNet

# arch name -> module with `build(model_config, *, image_channels, mask_channels)`; imported on
# use, so one architecture's module is loaded only when it is built.
ARCHS = {
    "ensemdiff": "jdiffseg.models.ensemdiff",
    "segdiff": "jdiffseg.models.segdiff",
    "medsegdiff": "jdiffseg.models.medsegdiff",
    "nnunet": "jdiffseg.models.nnunet",
    "segformer": "jdiffseg.models.segformer",
}


def build_model(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> nn.Module:
    """The model ``model_config.arch`` in ``model_config.mode`` for the given channel counts."""
    arch = model_config.arch
    if arch not in ARCHS:
        raise ValueError(f"unknown config.model.arch {arch!r}; expected one of {sorted(ARCHS)}")
    build = importlib.import_module(ARCHS[arch]).build
    return build(model_config, image_channels=image_channels, mask_channels=mask_channels)


__all__ = [
    "ARCHS",
    "MODES",
    "EnsemDiff",
    "SegDiff",
    "UNet",
    "apply_preset",
    "build_model",
    "count_params",
    "get_preset",
    "tree_size",
]
