"""Building blocks of the guided/improved-diffusion UNet, in NHWC Flax Linen.

Semantics follow the PyTorch code the three studied architectures share:

* parameters are float32; ``dtype`` is the compute dtype (float32 or bfloat16);
  group normalisation and the attention softmax always run in float32;
* convolutions pad explicitly (``k // 2`` on every side), as ``nn.Conv2d(padding=1)``; Flax's
  ``'SAME'`` pads an even-sized stride-2 input asymmetrically, which would shift features;
* default initialisation matches PyTorch's ``Conv2d``/``Linear`` defaults (uniform in
  ``±1/sqrt(fan_in)`` for weights and biases); "zero" layers start at exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models.channel_sum import add_channel_bias
from jdiffseg.models.group_norm import group_norm

Dtype = Any
Initializer = Callable[..., jax.Array]


def torch_kernel_init() -> Initializer:
    """PyTorch's default weight init (kaiming-uniform, a=sqrt(5)) = U(±1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init, U(±1/sqrt(fan_in)); it needs the layer's fan-in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` of (possibly fractional) timesteps.

    ``f_i = exp(-log(max_period) * i / half)`` for ``i < half = dim // 2``; an odd ``dim`` gets a
    trailing zero column. Returns float32 of shape ``(B, dim)``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class Conv2d(nn.Module):
    """Square convolution with explicit symmetric padding ``kernel_size // 2`` (as PyTorch)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        fan_in = k * k * cin
        zeros = nn.initializers.zeros
        kernel = self.param(
            "kernel", zeros if self.zero_init else torch_kernel_init(), (k, k, cin, self.features)
        )
        bias = self.param(
            "bias", zeros if self.zero_init else torch_bias_init(fan_in), (self.features,)
        )
        pad = k // 2
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return add_channel_bias(y, bias)


class Dense(nn.Module):
    """Linear layer (also the 1x1 ``Conv1d`` of the attention block) with PyTorch init."""

    features: int
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        zeros = nn.initializers.zeros
        kernel = self.param(
            "kernel", zeros if self.zero_init else torch_kernel_init(), (fan_in, self.features)
        )
        bias = self.param(
            "bias", zeros if self.zero_init else torch_bias_init(fan_in), (self.features,)
        )
        return add_channel_bias(jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)), bias)


class GroupNorm32(nn.Module):
    """GroupNorm (default 32 groups, eps 1e-5) computed in float32, cast back to ``dtype``."""

    num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(
                f"GroupNorm32 at {self.path}: {c} channels are not divisible by "
                f"{self.num_groups} groups"
            )
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        y = group_norm(x, scale, bias, self.num_groups)
        return y.astype(self.dtype)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 upsampling of an NHWC array."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 (floors odd sizes, as ``nn.AvgPool2d(2)``)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Downsample(nn.Module):
    """Halve the resolution: 3x3 conv stride 2 with padding 1 (``use_conv``) or 2x2 avg-pool.

    Output size is ``ceil(n / 2)`` with the conv and ``floor(n / 2)`` with the pool.
    """

    use_conv: bool = True
    out_channels: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cout = self.out_channels or x.shape[-1]
        if self.use_conv:
            return Conv2d(cout, 3, stride=2, dtype=self.dtype, name="op")(x)
        if cout != x.shape[-1]:
            raise ValueError(f"Downsample at {self.path}: pooling cannot change channels")
        return avg_pool2(x)


class Upsample(nn.Module):
    """Double the resolution: nearest x2, then an optional 3x3 conv."""

    use_conv: bool = True
    out_channels: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest(x)
        if self.use_conv:
            return Conv2d(self.out_channels or x.shape[-1], 3, dtype=self.dtype, name="conv")(x)
        return x


class ResidualStyle(nn.Module, kw_only=True):
    """How residual blocks are built, shared by `ResBlock` and the `UNet` that makes them:
    dropout, scale-shift conditioning, GroupNorm groups and the compute dtype (keyword-only,
    so that subclasses list their own fields first)."""

    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    num_groups: int = 32
    dtype: Dtype = jnp.float32

    def residual_style(self) -> dict[str, Any]:
        """This module's `ResidualStyle` fields, to build a `ResBlock` in the same style."""
        return {name: getattr(self, name)
                for name in ("dropout", "use_scale_shift_norm", "num_groups", "dtype")}


class ResBlock(ResidualStyle):
    """Timestep-conditioned residual block.

    ``GN → SiLU → [up/down] → conv3``, plus the embedding (added, or as scale-shift on the
    second norm), ``GN → SiLU → dropout → zero conv3``; the skip is identity, or a 1x1 conv
    when the channel count changes (resampled like the main branch when ``up``/``down``).
    Submodule names mirror the PyTorch ``in_layers``/``emb_layers``/``out_layers``/``skip``.
    """

    out_channels: int | None = None
    up: bool = False
    down: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        cin = x.shape[-1]
        cout = self.out_channels or cin
        x = x.astype(self.dtype)
        h = nn.silu(GroupNorm32(self.num_groups, self.dtype, name="in_norm")(x))
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = avg_pool2(h), avg_pool2(x)
        h = Conv2d(cout, 3, dtype=self.dtype, name="in_conv")(h)

        emb_width = 2 * cout if self.use_scale_shift_norm else cout
        e = Dense(emb_width, dtype=self.dtype, name="emb_proj")(nn.silu(emb.astype(self.dtype)))
        e = e[:, None, None, :]
        out_norm = GroupNorm32(self.num_groups, self.dtype, name="out_norm")
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = Conv2d(cout, 3, zero_init=True, dtype=self.dtype, name="out_conv")(h)

        skip = x if cout == cin else Conv2d(cout, 1, dtype=self.dtype, name="skip")(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy qkv layout of guided-diffusion.

    The ``3C`` qkv channels are split into heads first, then into q, k, v per head
    (``QKVAttentionLegacy``); q and k are each scaled by ``head_dim ** -0.25``; the softmax
    runs in float32; the output projection starts at zero.
    ``num_head_channels > 0`` overrides ``num_heads`` (``heads = C // num_head_channels``).
    """

    num_heads: int = 1
    num_head_channels: int = -1
    num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        heads = self.num_heads if self.num_head_channels == -1 else c // self.num_head_channels
        if c % heads or (self.num_head_channels != -1 and c % self.num_head_channels):
            raise ValueError(f"AttentionBlock at {self.path}: {c} channels, {heads} heads")
        ch = c // heads
        x = x.astype(self.dtype).reshape(b, hgt * wid, c)
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(
            GroupNorm32(self.num_groups, self.dtype, name="norm")(x)
        )
        qkv = qkv.reshape(b, hgt * wid, heads, 3, ch)
        scale = ch**-0.25
        q, k, v = qkv[..., 0, :] * scale, qkv[..., 1, :] * scale, qkv[..., 2, :]
        logits = jnp.einsum("bthc,bshc->bhts", q, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        a = jnp.einsum("bhts,bshc->bthc", weights, v).reshape(b, hgt * wid, c)
        h = Dense(c, zero_init=True, dtype=self.dtype, name="proj_out")(a)
        return (x + h).reshape(b, hgt, wid, c)


class TimeEmbed(nn.Module):
    """``Linear → SiLU → Linear`` on the sinusoidal embedding of width ``model_channels``."""

    model_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        width = 4 * self.model_channels
        emb = timestep_embedding(t, self.model_channels)
        emb = Dense(width, dtype=self.dtype, name="dense0")(emb)
        return Dense(width, dtype=self.dtype, name="dense1")(nn.silu(emb))
