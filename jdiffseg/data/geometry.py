"""From a volume's slice to a square model input and back: crop, pad, resize.

A slice of in-plane shape (h, w) is cropped to a box `crop = (r0, r1, c0, c1)` (the case's
non-zero region, or the whole slice), padded with zeros to a square of side
`max(r1 - r0, c1 - c0)` (`pad = (top, bottom, left, right)`), and resized to `size`. These
numbers are stored with every slice, so `from_square` can put a prediction back in place.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


def full_box(shape: tuple[int, ...], axis: int) -> Box:
    """The whole plane of a volume of spatial `shape` sliced along `axis`."""
    h, w = (shape[a] for a in range(3) if a != axis)
    return (0, h, 0, w)


def nonzero_box(image: np.ndarray, axis: int) -> Box:
    """In-plane bounding box (r0, r1, c0, c1), end exclusive, of the voxels of a (X, Y, Z, C)
    image where any channel is non-zero, over all slices along `axis`; the whole plane when the
    image is all zero."""
    nonzero = np.any(image != 0, axis=-1)
    if not nonzero.any():
        return full_box(image.shape, axis)
    box = []
    for a in (a for a in range(3) if a != axis):
        hit = np.flatnonzero(np.any(nonzero, axis=tuple(b for b in range(3) if b != a)))
        box += [int(hit[0]), int(hit[-1]) + 1]
    return tuple(box)


def case_box(image: np.ndarray, axis: int, crop_nonzero: bool) -> Box:
    """The crop box of a case's (X, Y, Z, C) raw image: its non-zero region or the whole plane."""
    return nonzero_box(image, axis) if crop_nonzero else full_box(image.shape, axis)


def square_pad(crop: Box) -> Box:
    """(top, bottom, left, right) zero padding that makes the cropped plane square."""
    h, w = crop[1] - crop[0], crop[3] - crop[2]
    side = max(h, w)
    return (
        (side - h) // 2,
        side - h - (side - h) // 2,
        (side - w) // 2,
        side - w - (side - w) // 2,
    )


def resize(plane: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resizes a (h, w) or (h, w, C) array channel by channel: bilinear (float32) or nearest
    (any dtype, values kept exactly; for label maps)."""
    if plane.shape[:2] == shape:
        return plane.copy()
    if plane.ndim == 3:
        return np.stack(
            [resize(plane[..., c], shape, nearest) for c in range(plane.shape[-1])], axis=-1
        )
    if nearest:  # index arithmetic, as PIL's NEAREST does it, for any dtype
        rows = np.minimum(
            (np.arange(shape[0]) + 0.5) * plane.shape[0] / shape[0], plane.shape[0] - 1
        ).astype(int)
        cols = np.minimum(
            (np.arange(shape[1]) + 0.5) * plane.shape[1] / shape[1], plane.shape[1] - 1
        ).astype(int)
        return plane[np.ix_(rows, cols)]
    out = Image.fromarray(plane.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(out, np.float32)


def to_square(plane: np.ndarray, crop: Box, size: int, nearest: bool) -> np.ndarray:
    """A (h, w[, C]) slice cropped to `crop`, padded square with zeros, resized to `size`."""
    r0, r1, c0, c1 = crop
    top, bottom, left, right = square_pad(crop)
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (plane.ndim - 2)
    squared = np.pad(plane[r0:r1, c0:c1], widths)
    return resize(squared, (size, size), nearest)


def from_square(
    square: np.ndarray, plane_shape: tuple[int, int], crop: Box, nearest: bool
) -> np.ndarray:
    """Inverse of `to_square`: a (size, size[, K]) prediction back on the slice's (h, w[, K])
    grid, zero outside the crop box."""
    r0, r1, c0, c1 = crop
    top, bottom, left, right = square_pad(crop)
    side = r1 - r0 + top + bottom
    full = resize(square, (side, side), nearest)
    out = np.zeros(tuple(plane_shape) + square.shape[2:], square.dtype)
    out[r0:r1, c0:c1] = full[top : side - bottom, left : side - right]
    return out
