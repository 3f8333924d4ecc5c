"""nnU-Net-style UNet (the `Generic_UNet` design) and the feed-forward baseline built on it.

`GenericUNet` is the 2-D configuration MedSegDiff uses as its condition encoder: stages of
(conv3 → channel dropout → norm → LeakyReLU 0.01) × 2, max-pool 2, channels doubling from
`base_channels` and capped at `max_channels` (32/64/128/256/480 for the authors' 5 pools),
a two-conv bottleneck, a decoder of bilinear ×2 upsampling + skip concatenation + two convs,
and a bias-free 1×1 output conv. Dropout (rate `encoder_dropout`) sits only in the encoder
and bottleneck stages, as in the authors' copy (its default is 0.5); the decoder has none.

`NNUNet` is that network used on its own as the strong feed-forward segmenter of the study.
It only exists in 'feedforward' mode and returns mask logits.

BatchNorm keeps its running statistics in the 'batch_stats' collection (momentum 0.1 in the
PyTorch sense, eps 1e-5); train with `mutable=['batch_stats']`. One small difference to
PyTorch: Flax updates the running variance with the biased batch variance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models import modes, presets

# He-normal (fan-in, LeakyReLU slope 0.01), biases zero: the authors' `InitWeights_He(1e-2)`.
HE_INIT = nn.initializers.variance_scaling(2.0 / (1.0 + 0.01**2), "fan_in", "normal")

# Config fields of the nnU-Net design (`config.model`), shared by the baseline and MedSegDiff's
# condition encoder: the baseline is that encoder used on its own.
ENCODER_FIELDS = (
    "encoder_base_channels",
    "encoder_num_pool",
    "encoder_max_channels",
    "encoder_norm",
    "encoder_dropout",
)

# MedSegDiff's encoder: base 32, 5 poolings, at most 480 channels, BatchNorm, dropout 0.5.
AUTHORS_ENCODER: dict[str, Any] = dict(
    encoder_base_channels=32,
    encoder_num_pool=5,
    encoder_max_channels=480,
    encoder_norm="batch",
    encoder_dropout=0.5,
)

PRESETS: dict[str, dict[str, Any]] = {
    # MedSegDiff's condition encoder trained on its own: 15,727,232 parameters for RGB input
    # and one mask channel (its `hwm` module in the authors' default variant).
    "paper": dict(AUTHORS_ENCODER),
    # nnU-Net's own 2-D choice of normalisation (InstanceNorm) and dropout (none); same size.
    "nnunet2d": dict(AUTHORS_ENCODER, encoder_norm="instance", encoder_dropout=0.0),
    # CPU-sized: 8/16/32/32 channels, 3 poolings (32 px -> 4 px), same design.
    "tiny": dict(
        encoder_base_channels=8,
        encoder_num_pool=3,
        encoder_max_channels=32,
        encoder_norm="batch",
        encoder_dropout=0.5,
    ),
}


def stage_channels(base_channels: int, num_pool: int, max_channels: int) -> tuple[int, ...]:
    """Channels of the encoder stages and the bottleneck (num_pool + 1 entries)."""
    channels = [base_channels]
    for _ in range(num_pool):
        channels.append(min(channels[-1] * 2, max_channels))
    return tuple(channels)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """Bilinear upsampling by an integer factor (PyTorch `align_corners=False` semantics)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, h * factor, w * factor, c), "bilinear").astype(x.dtype)


class ConvDropoutNormAct(nn.Module):
    """conv3 (padding 1) → channel dropout → BatchNorm/InstanceNorm (float32) → LeakyReLU 0.01."""

    features: int
    dropout: float = 0.0
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=HE_INIT,
            name="conv",
        )(x)
        if self.dropout > 0:
            # PyTorch Dropout2d: whole channels are dropped, shared over space.
            x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        x = x.astype(jnp.float32)
        if self.norm == "batch":
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name="norm"
            )(x)
        elif self.norm == "instance":
            x = nn.InstanceNorm(epsilon=1e-5, name="norm")(x)
        else:
            raise ValueError(f"nnU-Net norm must be 'batch' or 'instance', got {self.norm!r}")
        return nn.leaky_relu(x, 0.01).astype(self.dtype)


class UNetShape(nn.Module):
    """The fields `GenericUNet` and the `NNUNet` baseline share: widths, depth, norm, dropout,
    dtype and rematerialisation."""

    base_channels: int = 32
    num_pool: int = 5
    max_channels: int = 480
    norm: str = "batch"
    encoder_dropout: float = 0.5
    dtype: Any = jnp.float32
    remat: bool = False

    def shape_fields(self) -> dict[str, Any]:
        """This module's `UNetShape` fields, to build a `GenericUNet` of the same shape."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(UNetShape)
                if f.name not in ("parent", "name")}


class GenericUNet(UNetShape):
    """The nnU-Net 2-D UNet; returns logits plus the features MedSegDiff taps.

    Output dict: 'logits' (B, H, W, out_channels), 'bottleneck' (B, H/2^P, W/2^P, C_P-1),
    'decoder' (the P decoder stage outputs, coarsest first).
    `gates`, if given, multiply the pooled encoder features of the first len(gates) stages
    (MedSegDiff v1's FF-Parser gating); each must broadcast against that stage's output.
    """

    out_channels: int = 1

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, gates: Sequence[jax.Array] = ()
    ) -> dict[str, Any]:
        divisor = 2**self.num_pool
        if x.shape[1] % divisor or x.shape[2] % divisor:
            raise ValueError(
                f"nnU-Net with {self.num_pool} poolings needs height and width divisible by "
                f"{divisor}, got input of shape {x.shape}"
            )
        if len(gates) > self.num_pool:
            raise ValueError(f"got {len(gates)} gates for {self.num_pool} encoder stages")
        block = ConvDropoutNormAct
        if self.remat:
            block = nn.remat(ConvDropoutNormAct, static_argnums=(2,))
        chans = stage_channels(self.base_channels, self.num_pool, self.max_channels)

        def conv(features: int, dropout: float, name: str, h: jax.Array) -> jax.Array:
            layer = block(features, dropout, self.norm, self.dtype, name=name)
            return layer(h, train)

        x = x.astype(self.dtype)
        skips = []
        for d in range(self.num_pool):
            x = conv(chans[d], self.encoder_dropout, f"enc{d}_conv0", x)
            x = conv(chans[d], self.encoder_dropout, f"enc{d}_conv1", x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if d < len(gates):
                x = x * gates[d].astype(x.dtype)
        x = conv(chans[-1], self.encoder_dropout, "bottleneck_conv0", x)
        x = conv(chans[-2], self.encoder_dropout, "bottleneck_conv1", x)
        bottleneck = x

        decoder = []
        for u in range(self.num_pool):
            skip_channels = chans[self.num_pool - 1 - u]
            out_channels = chans[self.num_pool - 2 - u] if u < self.num_pool - 1 else skip_channels
            x = jnp.concatenate([upsample_bilinear(x, 2), skips[-(u + 1)]], axis=-1)
            x = conv(skip_channels, 0.0, f"dec{u}_conv0", x)
            x = conv(out_channels, 0.0, f"dec{u}_conv1", x)
            decoder.append(x)
        logits = nn.Conv(self.out_channels, (1, 1), use_bias=False, dtype=self.dtype,
                         kernel_init=HE_INIT, name="seg_out")(x)
        return {"logits": logits, "bottleneck": bottleneck, "decoder": tuple(decoder)}


class NNUNet(UNetShape):
    """Feed-forward nnU-Net baseline with the common model interface; 'feedforward' mode only.

    The mask input `x_t` and timestep `t` are accepted for a uniform call signature and not
    used: the baseline segments the image alone. Returns {'out': logits (B, H, W, C_mask)}.
    """

    mask_channels: int = 1
    mode: str = "feedforward"

    def setup(self) -> None:
        modes.check_feedforward_only("the nnU-Net baseline", self.mode)
        self.unet = GenericUNet(out_channels=self.mask_channels, **self.shape_fields())

    def __call__(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        del t
        image = modes.check_segmenter_inputs("the nnU-Net baseline", x_t, image)
        return {"out": self.unet(image, train=train)["logits"].astype(jnp.float32)}


def generic_unet_kwargs(fields: dict[str, Any]) -> dict[str, Any]:
    """`GenericUNet` keyword arguments from resolved `ENCODER_FIELDS`."""
    return dict(
        base_channels=fields["encoder_base_channels"],
        num_pool=fields["encoder_num_pool"],
        max_channels=fields["encoder_max_channels"],
        norm=fields["encoder_norm"],
        encoder_dropout=fields["encoder_dropout"],
    )


def build(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> NNUNet:
    """The baseline from `config.model` (mode, dtype, remat and `ENCODER_FIELDS`, taken from
    the named preset where the config lacks them)."""
    del image_channels  # the first convolution adapts to the input at init
    fields = presets.resolve(model_config, "nnunet", ENCODER_FIELDS)
    return NNUNet(
        mask_channels=mask_channels,
        mode=model_config.mode,
        dtype=jnp.dtype(model_config.dtype),
        remat=bool(model_config.remat),
        **generic_unet_kwargs(fields),
    )
