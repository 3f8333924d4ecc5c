"""SegDiff (Amit et al.): a UNet on x_t alone plus an RRDB encoder of the image.

The RRDB features (``base_channels`` wide, full resolution) are added to the output of the
UNet's first convolution, before it becomes the first skip feature, as the authors' forward
pass does. Without an image branch ('mask_only', 'image_generation') the RRDB is not built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jdiffseg.models import modes
from jdiffseg.models.presets import RRDB_FIELDS, UNET_FIELDS, resolve
from jdiffseg.models.rrdb import RRDBNet
from jdiffseg.models.unet import UNet, build_unet


class SegDiff(modes.ModeNet):
    """``(x_t, t, image) -> {'out': (B, H, W, C_out)}``; ``rrdb`` is None without an image."""

    unet: UNet
    rrdb: RRDBNet | None

    def forward(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None, *, train: bool
    ) -> dict[str, jax.Array]:
        features = None if image is None or self.rrdb is None else self.rrdb(image)
        return {"out": self.unet(x_t, t, first_add=features, train=train)}


def build(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> SegDiff:
    """SegDiff from `config.model` (mode, dtype, remat, `UNET_FIELDS`, `RRDB_FIELDS`)."""
    mode = model_config.mode
    fields = resolve(model_config, "segdiff", UNET_FIELDS + RRDB_FIELDS)
    dtype = jnp.dtype(model_config.dtype)
    remat = bool(model_config.remat)
    unet = build_unet(
        fields,
        in_channels=modes.x_channels(mode, image_channels, mask_channels),
        out_channels=modes.out_channels(mode, image_channels, mask_channels, fields["learn_sigma"]),
        dtype=dtype,
        remat=remat,
    )
    rrdb = None
    if modes.uses_image(mode):
        rrdb = RRDBNet(out_channels=fields["base_channels"], num_blocks=fields["rrdb_blocks"],
                       features=fields["rrdb_channels"], growth=fields["rrdb_growth"],
                       dtype=dtype, remat=remat)
    return SegDiff(unet, rrdb, mode=mode, image_channels=image_channels,
                   mask_channels=mask_channels)
