"""The guided/improved-diffusion ``UNetModel`` as one configurable Flax backbone.

The network is described by a static layout (`unet_layout`): a list of input blocks, the
middle block and a list of output blocks, each a tuple of `Layer` specs. The module builds its
submodules from that layout and the weight importers derive the PyTorch key names from the
same layout, so the two cannot drift apart.

Besides ``__call__`` the module exposes its stages (`embed`, `encode`, `middle`, `decode`,
`head`) so that conditioning networks can inject features between them: SegDiff adds its
image features after the first convolution (``first_add``); MedSegDiff reads the skip features
and adds its encoder output before the middle block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdiffseg.models.blocks import (
    AttentionBlock,
    Conv2d,
    Downsample,
    GroupNorm32,
    ResBlock,
    ResidualStyle,
    TimeEmbed,
    Upsample,
)

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a UNet block.

    kind: 'conv' (the input 3x3 conv), 'res', 'attn', 'down' or 'up'.
    resample: for 'res' layers, '' or 'up'/'down' (``resblock_updown``).
    """

    kind: str
    in_channels: int
    out_channels: int
    heads: int = 1
    resample: str = ""


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static structure of a UNet: ``input_blocks``, ``middle_block``, ``output_blocks``."""

    input_blocks: tuple[tuple[Layer, ...], ...]
    middle_block: tuple[Layer, ...]
    output_blocks: tuple[tuple[Layer, ...], ...]


def unet_layout(
    *,
    in_channels: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    num_heads: int = 1,
    num_heads_upsample: int = -1,
    resblock_updown: bool = False,
) -> Layout:
    """The block structure of guided-diffusion's ``UNetModel``.

    ``attention_resolutions`` are downsampling factors (1 = full resolution), as the authors'
    ``attention_ds``; ``num_heads_upsample = -1`` means ``num_heads``.
    """
    heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
    attn = set(attention_resolutions)
    inputs: list[tuple[Layer, ...]] = [(Layer("conv", in_channels, model_channels),)]
    skip_chans = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            block = [Layer("res", ch, mult * model_channels)]
            ch = mult * model_channels
            if ds in attn:
                block.append(Layer("attn", ch, ch, heads=num_heads))
            inputs.append(tuple(block))
            skip_chans.append(ch)
        if level != len(channel_mult) - 1:
            down = (
                Layer("res", ch, ch, resample="down") if resblock_updown else Layer("down", ch, ch)
            )
            inputs.append((down,))
            skip_chans.append(ch)
            ds *= 2
    middle = (Layer("res", ch, ch), Layer("attn", ch, ch, heads=num_heads), Layer("res", ch, ch))
    outputs: list[tuple[Layer, ...]] = []
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            block = [Layer("res", ch + skip_chans.pop(), model_channels * mult)]
            ch = model_channels * mult
            if ds in attn:
                block.append(Layer("attn", ch, ch, heads=heads_up))
            if level and i == num_res_blocks:
                up = Layer("res", ch, ch, resample="up") if resblock_updown else Layer("up", ch, ch)
                block.append(up)
                ds //= 2
            outputs.append(tuple(block))
    return Layout(tuple(inputs), middle, tuple(outputs))


class UNet(ResidualStyle):
    """guided-diffusion ``UNetModel`` (NHWC): ``x (B,H,W,in) , t (B,) -> (B,H,W,out_channels)``.

    The output head (GN → SiLU → zero conv3) runs in float32 whatever ``dtype`` is, as the
    authors' fp16 models keep it in float32. ``remat`` rematerialises every res/attention
    block in the backward pass.
    """

    in_channels: int
    out_channels: int
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    resblock_updown: bool = False
    conv_resample: bool = True
    remat: bool = False

    def layout(self) -> Layout:
        """This network's `Layout`."""
        return unet_layout(
            in_channels=self.in_channels,
            model_channels=self.model_channels,
            channel_mult=self.channel_mult,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=self.attention_resolutions,
            num_heads=self.num_heads,
            num_heads_upsample=self.num_heads_upsample,
            resblock_updown=self.resblock_updown,
        )

    def _make(self, layer: Layer) -> nn.Module:
        res_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        attn_cls = nn.remat(AttentionBlock) if self.remat else AttentionBlock
        if layer.kind == "conv":
            return Conv2d(layer.out_channels, 3, dtype=self.dtype)
        if layer.kind == "res":
            return res_cls(out_channels=layer.out_channels, up=layer.resample == "up",
                           down=layer.resample == "down", **self.residual_style())
        if layer.kind == "attn":
            return attn_cls(
                num_heads=layer.heads,
                num_head_channels=self.num_head_channels,
                num_groups=self.num_groups,
                dtype=self.dtype,
            )
        if layer.kind == "down":
            return Downsample(self.conv_resample, layer.out_channels, dtype=self.dtype)
        return Upsample(self.conv_resample, layer.out_channels, dtype=self.dtype)

    def setup(self) -> None:
        lay = self.layout()
        self.time_embed = TimeEmbed(self.model_channels, dtype=self.dtype)
        self.input_blocks = [[self._make(ly) for ly in blk] for blk in lay.input_blocks]
        self.middle_block = [self._make(ly) for ly in lay.middle_block]
        self.output_blocks = [[self._make(ly) for ly in blk] for blk in lay.output_blocks]
        self.out_norm = GroupNorm32(self.num_groups, jnp.float32)
        self.out_conv = Conv2d(self.out_channels, 3, zero_init=True, dtype=jnp.float32)

    @staticmethod
    def _run(
        specs: Sequence[Layer], mods: Sequence[nn.Module], h: jax.Array, emb: jax.Array, train: bool
    ) -> jax.Array:
        for spec, mod in zip(specs, mods, strict=True):
            h = mod(h, emb, train) if spec.kind == "res" else mod(h)
        return h

    def embed(self, t: jax.Array) -> jax.Array:
        """Timestep embedding ``(B, 4 * model_channels)``."""
        return self.time_embed(t)

    def encode(self, x: jax.Array, emb: jax.Array, first_add: jax.Array | None = None,
               train: bool = False) -> list[jax.Array]:
        """Input blocks; returns every block's output (the skip features, last = deepest).

        ``first_add`` is added to the output of the first convolution (before it is stored as
        a skip feature), as SegDiff does with its image features.
        """
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"UNet {self.path}: input has {x.shape[-1]} channels, expected {self.in_channels}"
            )
        hs = []
        h = x.astype(self.dtype)
        for i, (specs, mods) in enumerate(
            zip(self.layout().input_blocks, self.input_blocks, strict=True)
        ):
            h = self._run(specs, mods, h, emb, train)
            if i == 0 and first_add is not None:
                h = h + first_add.astype(self.dtype)
            hs.append(h)
        return hs

    def middle(self, h: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        """The middle block (res, attention, res)."""
        return self._run(self.layout().middle_block, self.middle_block, h, emb, train)

    def decode(
        self, h: jax.Array, hs: Sequence[jax.Array], emb: jax.Array, train: bool = False
    ) -> jax.Array:
        """Output blocks, each fed the concatenation of ``h`` and the next skip feature."""
        skips = list(hs)
        for specs, mods in zip(self.layout().output_blocks, self.output_blocks, strict=True):
            h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
            h = self._run(specs, mods, h, emb, train)
        return h

    def head(self, h: jax.Array) -> jax.Array:
        """GN → SiLU → zero-initialised conv3, in float32."""
        return self.out_conv(nn.silu(self.out_norm(h.astype(jnp.float32))))

    def __call__(self, x: jax.Array, t: jax.Array, first_add: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        emb = self.embed(t)
        hs = self.encode(x, emb, first_add, train)
        h = self.middle(hs[-1], emb, train)
        return self.head(self.decode(h, hs, emb, train))


def build_unet(
    fields: dict[str, Any], *, in_channels: int, out_channels: int, dtype: Dtype, remat: bool
) -> UNet:
    """A `UNet` from resolved `config.model` fields (see `jdiffseg.models.presets`)."""
    return UNet(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=fields["base_channels"],
        channel_mult=tuple(fields["channel_mult"]),
        num_res_blocks=fields["num_res_blocks"],
        attention_resolutions=tuple(fields["attention_resolutions"]),
        num_heads=fields["num_heads"],
        num_head_channels=fields["num_head_channels"],
        num_heads_upsample=fields["num_heads_upsample"],
        dropout=fields["dropout"],
        use_scale_shift_norm=fields["use_scale_shift_norm"],
        resblock_updown=fields["resblock_updown"],
        conv_resample=fields["conv_resample"],
        num_groups=fields["norm_groups"],
        dtype=dtype,
        remat=remat,
    )
