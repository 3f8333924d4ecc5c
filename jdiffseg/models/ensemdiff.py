"""EnsemDiff (Wolleb et al.): the guided-diffusion UNet on the image concatenated with x_t.

The image channels come first and the noisy mask last, as the authors' input tensor. In
'mask_only' the UNet sees only x_t (its first conv has fewer input channels); in
'image_generation' it denoises images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jdiffseg.models import modes
from jdiffseg.models.presets import UNET_FIELDS, resolve
from jdiffseg.models.unet import UNet, build_unet


class EnsemDiff(modes.ModeNet):
    """``(x_t, t, image) -> {'out': (B, H, W, C_out)}`` with ``concat([image, x_t])`` input."""

    unet: UNet

    def forward(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None, *, train: bool
    ) -> dict[str, jax.Array]:
        x = x_t if image is None else jnp.concatenate([image.astype(x_t.dtype), x_t], axis=-1)
        return {"out": self.unet(x, t, train=train)}


def build(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> EnsemDiff:
    """EnsemDiff from `config.model` (mode, dtype, remat and `presets.UNET_FIELDS`)."""
    mode = model_config.mode
    fields = resolve(model_config, "ensemdiff", UNET_FIELDS)
    in_ch = modes.x_channels(mode, image_channels, mask_channels)
    if modes.uses_image(mode):
        in_ch += image_channels
    unet = build_unet(
        fields,
        in_channels=in_ch,
        out_channels=modes.out_channels(mode, image_channels, mask_channels, fields["learn_sigma"]),
        dtype=jnp.dtype(model_config.dtype),
        remat=bool(model_config.remat),
    )
    return EnsemDiff(unet, mode=mode, image_channels=image_channels, mask_channels=mask_channels)
