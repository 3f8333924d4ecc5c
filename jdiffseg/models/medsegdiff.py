"""MedSegDiff (Wu et al.): the guided-diffusion UNet plus an nnU-Net condition encoder.

The UNet sees ``concat([image, x_t])`` (image channels first, the noisy mask last, as the
authors' input tensor); the condition encoder (`GenericUNet`, see `jdiffseg.models.nnunet`)
sees the image and also yields ``'cal'``, the sigmoid of its 1x1 output conv, which the
training step fits to the mask with a 10x weighted MSE (the authors' ``loss_cal``); with
one-hot multi-class masks it is a softmax over the classes, fitted to the one-hot mask.

Two variants, chosen by ``config.model.medsegdiff_version``:

* ``'new'`` (the repository default, ``UNetModel_newpreview``): the encoder's decoder
  features at 1/2 and 1/4 resolution are upsampled bilinearly to full resolution,
  concatenated as ``[f_1/2, f_1/2, f_1/4]`` and added, with gradients stopped, to the output
  of the UNet's first convolution. Their width must equal the UNet's base channels
  (4 x encoder base: 32 + 32 + 64 = 128 for the authors' model).
* ``'v1'`` (``UNetModel_v1preview``, ``--version 1``): after each of the first
  ``encoder_num_pool - 1`` encoder poolings the encoder features are gated by the UNet's
  matching downsampled skip feature ``h``: ``x * conv_b(f) * mean_hw(f)`` with
  ``f = FFParser(conv_a(h))`` (1x1 convs, He-initialised); and the encoder bottleneck,
  projected by a 1x1 conv to the UNet's deepest width, is added to ``h`` before the middle
  block. The authors create that projection (480 -> 512 at 256 px) with fresh random weights
  inside ``forward`` on every call, so it is not in their state dict and their v1 output is
  not a function of its weights; here it is a real parameter, ``bottleneck_proj`` (246,272
  values for the authors' model), with PyTorch's default initialisation.

Without an image branch ('mask_only', 'image_generation') the encoder is not built and the
model returns only ``'out'``: the plain UNet on ``x_t``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models import modes, presets
from jdiffseg.models.blocks import Conv2d
from jdiffseg.models.ff_parser import FFParser
from jdiffseg.models.nnunet import (
    AUTHORS_ENCODER,
    ENCODER_FIELDS,
    HE_INIT,
    GenericUNet,
    generic_unet_kwargs,
    stage_channels,
    upsample_bilinear,
)
from jdiffseg.models.unet import UNet, build_unet

VERSIONS = ("new", "v1")
MEDSEGDIFF_FIELDS = ("medsegdiff_version", *ENCODER_FIELDS)

_PAPER_UNET = presets.GUIDED_DIFFUSION_256
_TINY: dict[str, Any] = {
    **_PAPER_UNET,
    **AUTHORS_ENCODER,
    "base_channels": 16,
    "channel_mult": (1, 1, 2, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (4,),
    "norm_groups": 4,
    "encoder_base_channels": 4,
    "encoder_num_pool": 3,
    "encoder_max_channels": 16,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The README's ISIC flags at 256 px (128 channels, 2 res blocks, 1 head, attention at
    # 1/16, learned sigma -> 2 output channels, no scale-shift norm), the repository's default
    # variant: 129,400,450 parameters for RGB + mask, as the authors' model.
    "paper": dict(_PAPER_UNET, **AUTHORS_ENCODER, medsegdiff_version="new"),
    # The same flags with --version 1: 130,527,814 parameters as the authors' model, plus
    # 246,272 for the bottleneck projection (130,774,086).
    "paper_v1": dict(_PAPER_UNET, **AUTHORS_ENCODER, medsegdiff_version="v1"),
    "tiny": dict(_TINY, medsegdiff_version="new"),
    "tiny_v1": dict(_TINY, medsegdiff_version="v1"),
}


class FFGate(nn.Module):
    """v1 gate from a UNet feature ``h``: ``conv_b(f) * mean_hw(f)``, ``f = FFParser(conv_a(h))``.

    Returns a (B, H, W, C) multiplier for the encoder features of width ``features``.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        f = nn.Conv(self.features, (1, 1), dtype=self.dtype, kernel_init=HE_INIT, name="conv_a")(h)
        f = FFParser(name="ffparser")(f)
        a = nn.Conv(1, (1, 1), dtype=self.dtype, kernel_init=HE_INIT, name="conv_b")(f)
        return a * jnp.mean(f, axis=(1, 2), keepdims=True).astype(a.dtype)


class MedSegDiff(nn.Module):
    """``(x_t, t, image) -> {'out': (B, H, W, C_out), 'cal': (B, H, W, C_mask)}``.

    ``encoder`` is None in the modes without an image branch (then only 'out' is returned).
    """

    unet: UNet
    encoder: GenericUNet | None
    mode: str = "diffusion"
    version: str = "new"
    image_channels: int = 3
    mask_channels: int = 1

    def _check(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"medsegdiff_version must be one of {VERSIONS}, got {self.version!r}")
        if (self.encoder is None) == modes.uses_image(self.mode):
            raise ValueError(
                f"MedSegDiff in mode {self.mode!r} must "
                f"{'' if modes.uses_image(self.mode) else 'not '}have a condition encoder"
            )
        if self.encoder is None:
            return
        pools, unet = self.encoder.num_pool, self.unet
        if self.version == "new" and pools < 3:
            raise ValueError(f"MedSegDiff 'new' needs encoder_num_pool >= 3, got {pools}")
        if self.version == "new" and unet.model_channels != 4 * self.encoder.base_channels:
            raise ValueError(
                "MedSegDiff 'new' adds encoder features of width 4 x encoder_base_channels "
                f"({4 * self.encoder.base_channels}) to the UNet's first feature map of width "
                f"base_channels ({unet.model_channels}); make them equal"
            )
        if self.version == "v1" and len(unet.channel_mult) - 1 != pools:
            raise ValueError(
                "MedSegDiff 'v1' adds the encoder bottleneck to the UNet's deepest features: "
                f"encoder_num_pool ({pools}) must equal len(channel_mult) - 1 "
                f"({len(unet.channel_mult) - 1})"
            )

    @nn.compact
    def __call__(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        self._check()
        modes.check_inputs(self, x_t, image)
        unet = self.unet
        if self.encoder is None:
            return {"out": unet(x_t, t, train=train)}
        x = jnp.concatenate([image.astype(x_t.dtype), x_t], axis=-1)
        emb = unet.embed(t)
        if self.version == "new":
            enc = self.encoder(image, train=train)
            half, quarter = enc["decoder"][-2], enc["decoder"][-3]
            anchor = jnp.concatenate(
                [upsample_bilinear(half, 2)] * 2 + [upsample_bilinear(quarter, 4)], axis=-1
            )
            hs = unet.encode(x, emb, jax.lax.stop_gradient(anchor), train)
            h = hs[-1]
        else:
            hs = unet.encode(x, emb, None, train)
            stride = unet.num_res_blocks + 1
            enc_chans = stage_channels(
                self.encoder.base_channels, self.encoder.num_pool, self.encoder.max_channels
            )
            gates = [
                FFGate(enc_chans[d], unet.dtype, name=f"gate_{d}")(hs[(d + 1) * stride])
                for d in range(self.encoder.num_pool - 1)
            ]
            enc = self.encoder(image, train=train, gates=gates)
            proj = Conv2d(hs[-1].shape[-1], 1, dtype=unet.dtype, name="bottleneck_proj")
            h = hs[-1] + proj(enc["bottleneck"])
        h = unet.middle(h, emb, train)
        out = unet.head(unet.decode(h, hs, emb, train))
        logits = enc["logits"].astype(jnp.float32)
        # one mask channel: the authors' sigmoid; one-hot classes: a softmax over them
        cal = jax.nn.sigmoid(logits) if self.mask_channels == 1 else jax.nn.softmax(logits)
        return {"out": out, "cal": cal}


def build(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> MedSegDiff:
    """MedSegDiff from `config.model` (mode, dtype, remat, `presets.UNET_FIELDS` and
    `MEDSEGDIFF_FIELDS`, taken from the named preset where the config lacks them)."""
    mode = model_config.mode
    fields = presets.resolve(model_config, "medsegdiff", presets.UNET_FIELDS + MEDSEGDIFF_FIELDS)
    dtype = jnp.dtype(model_config.dtype)
    remat = bool(model_config.remat)
    in_channels = modes.x_channels(mode, image_channels, mask_channels)
    encoder = None
    if modes.uses_image(mode):
        in_channels += image_channels
        encoder = GenericUNet(
            out_channels=mask_channels, dtype=dtype, remat=remat, **generic_unet_kwargs(fields)
        )
    unet = build_unet(
        fields,
        in_channels=in_channels,
        out_channels=modes.out_channels(mode, image_channels, mask_channels, fields["learn_sigma"]),
        dtype=dtype,
        remat=remat,
    )
    return MedSegDiff(
        unet, encoder, mode, fields["medsegdiff_version"], image_channels, mask_channels
    )
