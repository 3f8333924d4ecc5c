"""The four ways every architecture is run, and the channel bookkeeping they imply.

* ``diffusion``: noisy mask ``x_t`` + image + ``t`` → prediction (ε or x0, σ if learned);
* ``feedforward``: the same network as a plain segmenter; ``x_t`` is a constant (zero) mask
  and ``t`` fixed by the caller; the output is mask logits (no σ channels);
* ``mask_only``: noisy mask + ``t``; the image branch does not exist (``image`` must be None);
* ``image_generation``: the backbone denoising images; ``x_t`` is the noisy image.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("diffusion", "feedforward", "mask_only", "image_generation")


def check_mode(mode: str) -> None:
    """Raises for an unknown mode, naming the known ones."""
    if mode not in MODES:
        raise ValueError(f"unknown model mode {mode!r}; expected one of {MODES}")


def uses_image(mode: str) -> bool:
    """Whether the network has an image (conditioning) branch in this mode."""
    check_mode(mode)
    return mode in ("diffusion", "feedforward")


def x_channels(mode: str, image_channels: int, mask_channels: int) -> int:
    """Channels of the ``x_t`` input: the image's for image generation, else the mask's."""
    check_mode(mode)
    return image_channels if mode == "image_generation" else mask_channels


def out_channels(mode: str, image_channels: int, mask_channels: int, learn_sigma: bool) -> int:
    """Output channels: ``x_t``'s channels, doubled when σ is learned (not in feedforward)."""
    base = x_channels(mode, image_channels, mask_channels)
    return base * 2 if learn_sigma and mode != "feedforward" else base


def init_inputs(
    mode: str, image_shape: tuple[int, int, int, int], mask_channels: int = 1
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Zero (x_t, t, image) of the shapes a model in `mode` is called with, for `model.init`;
    `image_shape` is (B, H, W, C) of the images."""
    B, H, W, C = image_shape
    x_t = jnp.zeros((B, H, W, x_channels(mode, C, mask_channels)), jnp.float32)
    image = jnp.zeros((B, H, W, C), jnp.float32) if uses_image(mode) else None
    return x_t, jnp.zeros((B,), jnp.int32), image


def check_inputs(model: Any, x_t: jax.Array, image: jax.Array | None) -> None:
    """Validates a call of ``model`` (a module with ``mode``, ``image_channels`` and
    ``mask_channels`` fields); errors name the model, its mode and the shapes."""
    where, mode = type(model).__name__, model.mode
    image_channels, mask_channels = model.image_channels, model.mask_channels
    want = x_channels(mode, image_channels, mask_channels)
    if x_t.ndim != 4 or x_t.shape[-1] != want:
        raise ValueError(
            f"{where} (mode={mode!r}): x_t must be (B, H, W, {want}), got {tuple(x_t.shape)}"
        )
    if not uses_image(mode):
        if image is not None:
            raise ValueError(f"{where} (mode={mode!r}) has no image branch; pass image=None")
        return
    if image is None:
        raise ValueError(f"{where} (mode={mode!r}) needs image (B, H, W, {image_channels})")
    if image.shape != (*x_t.shape[:3], image_channels):
        raise ValueError(
            f"{where} (mode={mode!r}): image must be {(*x_t.shape[:3], image_channels)}, "
            f"got {tuple(image.shape)}"
        )


def check_feedforward_only(where: str, mode: str) -> None:
    """Raises unless `mode` is 'feedforward', for the baselines that only segment."""
    if mode != "feedforward":
        raise ValueError(f"{where} is a feed-forward segmenter and only supports "
                         f"mode='feedforward', got mode={mode!r}")


def check_segmenter_inputs(where: str, x_t: jax.Array, image: jax.Array | None) -> jax.Array:
    """The image of a feed-forward baseline's call, checked: present, NHWC, and of `x_t`'s
    batch and size (`x_t` itself is unused; it keeps the common call signature)."""
    if image is None:
        raise ValueError(f"{where} needs `image` (B, H, W, C)")
    if image.ndim != 4 or image.shape[:3] != x_t.shape[:3]:
        raise ValueError(f"{where}: image {image.shape} and x_t {x_t.shape} must be NHWC of the "
                         "same batch and size")
    return image


class ModeNet(nn.Module, kw_only=True):
    """Base of the networks whose call is ``(x_t, t, image) -> {'out': ...}``: the mode and
    channel fields (keyword-only, so subclasses list their submodules first) and a call that
    checks its inputs against them before `forward`."""

    mode: str = "diffusion"
    image_channels: int = 3
    mask_channels: int = 1

    def __call__(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None = None, *, train: bool = False
    ) -> dict[str, jax.Array]:
        check_inputs(self, x_t, image)
        return self.forward(x_t, t, image, train=train)

    def forward(
        self, x_t: jax.Array, t: jax.Array, image: jax.Array | None, *, train: bool
    ) -> dict[str, jax.Array]:
        """The network on checked inputs."""
        raise NotImplementedError
