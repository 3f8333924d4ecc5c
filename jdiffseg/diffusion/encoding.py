"""Mask encodings for diffusion: masks come out of the pipeline in {0, 1}; EnsemDiff and
MedSegDiff diffuse them as {0, 1}, SegDiff as {-1, 1}. Multi-class masks are one-hot channels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ENCODINGS = ("zero_one", "plus_minus_one")


def encode_mask(mask01: jax.Array, encoding: str) -> jax.Array:
    """A {0, 1} mask in the diffusion encoding ('zero_one' unchanged, 'plus_minus_one' 2m − 1)."""
    _check(encoding)
    mask01 = jnp.asarray(mask01, jnp.float32)
    return mask01 if encoding == "zero_one" else 2.0 * mask01 - 1.0


def decode_mask(x: jax.Array, encoding: str, *, clip: bool = False) -> jax.Array:
    """Map an encoded (soft) mask back to the [0, 1] scale; linear, so it commutes with means.

    `clip=True` clips the result into [0, 1] (e.g. to read a sample as a probability).
    """
    _check(encoding)
    x = jnp.asarray(x, jnp.float32)
    decoded = x if encoding == "zero_one" else (x + 1.0) / 2.0
    return jnp.clip(decoded, 0.0, 1.0) if clip else decoded


def threshold_for(encoding: str) -> float:
    """The decision threshold in the encoded scale: 0.5 for 'zero_one', 0 for 'plus_minus_one'."""
    _check(encoding)
    return 0.5 if encoding == "zero_one" else 0.0


def value_range(encoding: str) -> tuple[float, float]:
    """(low, high) of an encoded mask, e.g. the range to clip predicted x0 into."""
    _check(encoding)
    return (0.0, 1.0) if encoding == "zero_one" else (-1.0, 1.0)


def binarize(x: jax.Array, encoding: str) -> jax.Array:
    """Hard {0, 1} float mask from an encoded (soft) mask: x > threshold_for(encoding)."""
    return (jnp.asarray(x) > threshold_for(encoding)).astype(jnp.float32)


def _check(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {ENCODINGS}")


# Multi-class masks (C >= 2 foreground classes) diffuse as C + 1 one-hot channels, background
# first, each channel in the architecture's encoding; a single foreground class keeps the one
# {0, 1} channel above. A member's x0 becomes class probabilities by decoding to the [0, 1]
# scale, clipping into [0, 1] and dividing by the channel sum (uniform where every channel
# clips to 0); its label map is the arg-max over channels, which the encoding does not change.


def mask_channels(num_classes: int) -> int:
    """Channels a mask diffuses in: 1 for one foreground class, else C + 1 (one-hot)."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: need at least one foreground class")
    return 1 if num_classes == 1 else num_classes + 1


def one_hot_mask(labels: jax.Array, num_classes: int) -> jax.Array:
    """Label map (..., 1) or (...) in {0 … C} -> float32 one-hot (..., C + 1), {0, 1}."""
    labels = jnp.asarray(labels)
    if labels.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    return jax.nn.one_hot(labels.astype(jnp.int32), num_classes + 1, dtype=jnp.float32)


def check_one_hot(mask: np.ndarray, where: str) -> None:
    """Raises unless every pixel of a (..., C + 1) mask in {0, 1} has channels summing to one;
    the message names `where`, the first bad pixel and what its channels hold."""
    mask = np.asarray(mask)
    bad = ~np.isin(mask, (0, 1)).all(-1) | (mask.sum(-1) != 1)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}: a one-hot mask needs channels in {{0, 1}} summing to one at every pixel; "
            f"{int(bad.sum())} pixel(s) do not, first at index {first} with channels "
            f"{mask[first].tolist()}"
        )


def class_probabilities(x: jax.Array, encoding: str) -> jax.Array:
    """Encoded (..., C + 1) channels -> class probabilities: decode, clip to [0, 1], renormalise
    (uniform where every channel clipped to 0)."""
    p = decode_mask(x, encoding, clip=True)
    total = jnp.sum(p, axis=-1, keepdims=True)
    uniform = jnp.full_like(p, 1.0 / p.shape[-1])
    return jnp.where(total > 0, p / jnp.maximum(total, 1e-12), uniform)


def decode_labels(x: jax.Array) -> jax.Array:
    """Encoded (..., C + 1) channels -> int32 label map (...): the arg-max channel."""
    return jnp.argmax(x, axis=-1).astype(jnp.int32)
