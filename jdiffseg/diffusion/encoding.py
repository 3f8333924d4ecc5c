"""Mask encodings for diffusion: masks come out of the pipeline in {0, 1}; EnsemDiff and
MedSegDiff diffuse them as {0, 1}, SegDiff as {-1, 1}."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
