"""SegFormer (Xie et al. 2021): a Mix Transformer encoder and an all-MLP decoder, NHWC.

The layout follows HuggingFace transformers' ``SegformerForSemanticSegmentation`` so that its
checkpoints load one to one (`jdiffseg.models.importers.segformer`):

* four stages, each an overlapping patch embedding (conv k7/s4 then k3/s2, padding k//2, then
  LayerNorm), ``depth`` Transformer blocks and a final LayerNorm;
* a block is pre-norm efficient self-attention (keys and values from the tokens reduced by a
  conv with kernel = stride = the stage's ``sr`` ratio, then LayerNorm) and a Mix-FFN
  (dense → depth-wise 3×3 conv → exact GELU → dense), each residual branch behind stochastic
  depth, with the drop rate rising linearly from 0 to ``drop_path`` over all blocks;
* the decoder projects every stage to ``decoder_channels`` with a dense layer, upsamples
  bilinearly to the 1/4 resolution, concatenates them (deepest first), fuses them with a
  bias-free 1×1 conv, BatchNorm and ReLU, applies dropout and a 1×1 classifier.

LayerNorms use PyTorch's eps 1e-5 and BatchNorm keeps running statistics in 'batch_stats'
(momentum 0.1 in PyTorch's sense, eps 1e-5). Linear and conv weights start from N(0, 0.02)
with zero biases, as in transformers. `SegFormer.logits` gives the 1/4-resolution logits of
the reference; the model itself returns them upsampled bilinearly to the input resolution,
like the other feed-forward models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models import modes, presets

# Patch embedding kernels and strides of the four stages (the same in B0..B5).
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
LN_EPS = 1e-5
INIT = nn.initializers.normal(0.02)

# Config fields (`config.model`) of the architecture; the presets define all of them.
FIELDS = (
    "segformer_hidden_sizes",
    "segformer_depths",
    "segformer_num_heads",
    "segformer_sr_ratios",
    "segformer_mlp_ratio",
    "segformer_decoder_channels",
    "segformer_drop_path",
    "segformer_head_dropout",
)

# The widths, heads and reduction ratios of B0 and of B1..B5 (Xie et al. 2021, Table 6).
_B0 = dict(
    segformer_hidden_sizes=(32, 64, 160, 256),
    segformer_num_heads=(1, 2, 5, 8),
    segformer_sr_ratios=(8, 4, 2, 1),
    segformer_mlp_ratio=4,
    segformer_drop_path=0.1,
    segformer_head_dropout=0.1,
)
_WIDE = dict(_B0, segformer_hidden_sizes=(64, 128, 320, 512))

PRESETS: dict[str, dict[str, Any]] = {
    "b0": dict(_B0, segformer_depths=(2, 2, 2, 2), segformer_decoder_channels=256),
    "b1": dict(_WIDE, segformer_depths=(2, 2, 2, 2), segformer_decoder_channels=256),
    "b2": dict(_WIDE, segformer_depths=(3, 4, 6, 3), segformer_decoder_channels=768),
    "b3": dict(_WIDE, segformer_depths=(3, 4, 18, 3), segformer_decoder_channels=768),
    "b4": dict(_WIDE, segformer_depths=(3, 8, 27, 3), segformer_decoder_channels=768),
    "b5": dict(_WIDE, segformer_depths=(3, 6, 40, 3), segformer_decoder_channels=768),
    # CPU-sized: one block per stage, 8..32 channels; reductions fit 16 px inputs.
    "tiny": dict(
        _B0,
        segformer_hidden_sizes=(8, 16, 32, 32),
        segformer_num_heads=(1, 1, 2, 2),
        segformer_sr_ratios=(4, 2, 1, 1),
        segformer_depths=(1, 1, 1, 1),
        segformer_decoder_channels=32,
    ),
}


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resizing of NHWC ``x`` to (height, width) (PyTorch ``align_corners=False``)."""
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, height, width, c), "bilinear").astype(x.dtype)


def drop_path_rates(depths: Sequence[int], drop_path: float) -> list[float]:
    """Stochastic depth rate of every block, rising linearly from 0 to ``drop_path``."""
    total = sum(depths)
    return [drop_path * i / max(total - 1, 1) for i in range(total)]


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=INIT, name=name)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from the tokens reduced ``sr`` times."""

    num_heads: int
    sr_ratio: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"hidden size {c} is not a multiple of {self.num_heads} heads")
        head_dim = c // self.num_heads
        kv = x
        if self.sr_ratio > 1:
            if h < self.sr_ratio or w < self.sr_ratio:
                raise ValueError(
                    f"a {h}x{w} stage is smaller than its sequence reduction ratio "
                    f"{self.sr_ratio}; use a larger input"
                )
            kv = nn.Conv(
                c,
                (self.sr_ratio, self.sr_ratio),
                strides=self.sr_ratio,
                padding="VALID",
                dtype=self.dtype,
                kernel_init=INIT,
                name="sr",
            )(x)
            kv = _layer_norm(self.dtype, "layer_norm")(kv)

        def heads(y: jax.Array) -> jax.Array:
            return y.reshape(b, -1, self.num_heads, head_dim)

        q = heads(_dense(c, self.dtype, "query")(x))
        k = heads(_dense(c, self.dtype, "key")(kv))
        v = heads(_dense(c, self.dtype, "value")(kv))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, h, w, c)
        return _dense(c, self.dtype, "dense")(out)


class MixFFN(nn.Module):
    """dense → depth-wise 3×3 conv → GELU (exact) → dense."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _dense(self.hidden, self.dtype, "dense1")(x)
        y = nn.Conv(
            self.hidden,
            (3, 3),
            padding=((1, 1), (1, 1)),
            feature_group_count=self.hidden,
            dtype=self.dtype,
            kernel_init=INIT,
            name="dwconv",
        )(y)
        y = nn.gelu(y, approximate=False)
        return _dense(x.shape[-1], self.dtype, "dense2")(y)


class MixBlock(nn.Module):
    """Pre-norm attention and Mix-FFN, each a residual branch behind stochastic depth."""

    num_heads: int
    sr_ratio: int
    mlp_ratio: int
    drop_path: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        # Dropping a whole sample's branch: dropout with the mask broadcast over (H, W, C).
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)
        y = _layer_norm(self.dtype, "layer_norm_1")(x)
        y = EfficientSelfAttention(self.num_heads, self.sr_ratio, self.dtype, name="attention")(y)
        x = x + drop(y)
        y = _layer_norm(self.dtype, "layer_norm_2")(x)
        y = MixFFN(x.shape[-1] * self.mlp_ratio, self.dtype, name="mlp")(y)
        return x + drop(y)


class MixTransformer(nn.Module):
    """The hierarchical encoder; returns the four stage outputs (1/4 .. 1/32 resolution)."""

    hidden_sizes: Sequence[int]
    depths: Sequence[int]
    num_heads: Sequence[int]
    sr_ratios: Sequence[int]
    mlp_ratio: int = 4
    drop_path: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
        rates = iter(drop_path_rates(self.depths, self.drop_path))
        features = []
        for i, width in enumerate(self.hidden_sizes):
            pad = PATCH_SIZES[i] // 2
            x = nn.Conv(
                width,
                (PATCH_SIZES[i], PATCH_SIZES[i]),
                strides=STRIDES[i],
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                kernel_init=INIT,
                name=f"patch_embeddings_{i}_proj",
            )(x)
            x = _layer_norm(self.dtype, f"patch_embeddings_{i}_layer_norm")(x)
            for j in range(self.depths[i]):
                x = MixBlock(
                    self.num_heads[i],
                    self.sr_ratios[i],
                    self.mlp_ratio,
                    next(rates),
                    self.dtype,
                    name=f"block_{i}_{j}",
                )(x, train)
            x = _layer_norm(self.dtype, f"layer_norm_{i}")(x)
            features.append(x)
        return tuple(features)


class AllMLPDecoder(nn.Module):
    """Projects, upsamples to 1/4 and fuses the stage outputs; returns 1/4-resolution logits."""

    channels: int
    num_classes: int
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool) -> jax.Array:
        height, width = features[0].shape[1:3]
        projected = [
            resize_bilinear(_dense(self.channels, self.dtype, f"linear_c_{i}")(f), height, width)
            for i, f in enumerate(features)
        ]
        x = nn.Conv(
            self.channels,
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=INIT,
            name="linear_fuse",
        )(jnp.concatenate(projected[::-1], axis=-1))
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            name="batch_norm",
        )(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        return nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, kernel_init=INIT, name="classifier"
        )(x)


class SegFormer(nn.Module):
    """SegFormer with the common model interface; 'feedforward' mode only.

    `x_t` and `t` are accepted for the uniform call signature and not used. Returns
    ``{'out': logits (B, H, W, mask_channels)}`` at the input resolution.
    """

    mask_channels: int = 1
    mode: str = "feedforward"
    hidden_sizes: Sequence[int] = (32, 64, 160, 256)
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 5, 8)
    sr_ratios: Sequence[int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    decoder_channels: int = 256
    drop_path: float = 0.1
    head_dropout: float = 0.1
    dtype: Any = jnp.float32

    def setup(self) -> None:
        modes.check_feedforward_only("SegFormer", self.mode)
        stages = {len(self.hidden_sizes), len(self.depths), len(self.num_heads)}
        if stages | {len(self.sr_ratios)} != {len(PATCH_SIZES)}:
            raise ValueError(
                f"SegFormer has {len(PATCH_SIZES)} stages: hidden_sizes, depths, num_heads and "
                f"sr_ratios need {len(PATCH_SIZES)} entries each, got {self.hidden_sizes}, "
                f"{self.depths}, {self.num_heads}, {self.sr_ratios}"
            )
        self.encoder = MixTransformer(
            self.hidden_sizes,
            self.depths,
            self.num_heads,
            self.sr_ratios,
            self.mlp_ratio,
            self.drop_path,
            self.dtype,
        )
        self.decode_head = AllMLPDecoder(
            self.decoder_channels, self.mask_channels, self.head_dropout, self.dtype
        )

    def logits(self, image: jax.Array, train: bool = False) -> jax.Array:
        """The decoder's logits at 1/4 of the input resolution (transformers' ``logits``)."""
        return self.decode_head(self.encoder(image.astype(self.dtype), train), train)

    def __call__(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        del t
        image = modes.check_segmenter_inputs("SegFormer", x_t, image)
        logits = self.logits(image, train)
        out = resize_bilinear(logits.astype(jnp.float32), *image.shape[1:3])
        return {"out": out}


def segformer_kwargs(fields: dict[str, Any]) -> dict[str, Any]:
    """`SegFormer` keyword arguments from resolved `FIELDS`."""
    return {
        name.removeprefix("segformer_"): tuple(v) if isinstance(v, (list, tuple)) else v
        for name, v in fields.items()
    }


def build(model_config: Any, *, image_channels: int, mask_channels: int = 1) -> SegFormer:
    """SegFormer from `config.model` (mode, dtype and `FIELDS`, taken from the named preset
    where the config lacks them)."""
    del image_channels  # the first patch embedding adapts to the input at init
    fields = presets.resolve(model_config, "segformer", FIELDS)
    return SegFormer(
        mask_channels=mask_channels,
        mode=model_config.mode,
        dtype=jnp.dtype(model_config.dtype),
        **segformer_kwargs(fields),
    )
