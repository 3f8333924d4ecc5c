"""The RRDB image encoder of SegDiff (the ESRGAN trunk): no normalisation, LeakyReLU 0.2.

``conv_first → n × RRDB → trunk_conv`` (plus a long skip) ``→ HRconv → LeakyReLU →
conv_last`` maps the RGB image to ``out_channels`` features at full resolution. Each RRDB is
three residual dense blocks (five densely connected 3x3 convs, residual scale 0.2), itself
scaled by 0.2 around its own skip. Names mirror the PyTorch modules.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models.blocks import Conv2d

Dtype = Any
NEGATIVE_SLOPE = 0.2
RESIDUAL_SCALE = 0.2


def _lrelu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, NEGATIVE_SLOPE)


class DenseWidths(nn.Module):
    """The fields of the dense blocks: their width, the growth per conv and the dtype."""

    features: int = 64
    growth: int = 32
    dtype: Dtype = jnp.float32


class ResidualDenseBlock(DenseWidths):
    """Five 3x3 convs, each seeing the block input and all earlier outputs."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats = [x]
        for i in range(1, 5):
            y = Conv2d(self.growth, 3, dtype=self.dtype, name=f"conv{i}")(
                jnp.concatenate(feats, axis=-1)
            )
            feats.append(_lrelu(y))
        y = Conv2d(self.features, 3, dtype=self.dtype, name="conv5")(
            jnp.concatenate(feats, axis=-1)
        )
        return y * RESIDUAL_SCALE + x


class RRDB(DenseWidths):
    """Residual-in-residual dense block: three dense blocks and a scaled skip."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = x
        for i in range(1, 4):
            out = ResidualDenseBlock(self.features, self.growth, self.dtype, name=f"RDB{i}")(out)
        return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """SegDiff's image encoder: image ``(B,H,W,C)`` → features ``(B,H,W,out_channels)``."""

    out_channels: int
    num_blocks: int = 3
    features: int = 64
    growth: int = 32
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        rrdb_cls = nn.remat(RRDB) if self.remat else RRDB

        def conv(features: int, name: str) -> Conv2d:
            return Conv2d(features, 3, dtype=self.dtype, name=name)

        fea = conv(self.features, "conv_first")(image.astype(self.dtype))
        trunk = fea
        for i in range(self.num_blocks):
            trunk = rrdb_cls(self.features, self.growth, self.dtype, name=f"RRDB_trunk_{i}")(trunk)
        fea = fea + conv(self.features, "trunk_conv")(trunk)
        return conv(self.out_channels, "conv_last")(_lrelu(conv(self.features, "HRconv")(fea)))
