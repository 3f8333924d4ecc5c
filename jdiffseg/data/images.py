"""Decoding, binarising and resizing of images and masks read from users' files.

Every failure raises `DataError` naming the file, so a bad item in a dataset of thousands
can be found without a debugger.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import tifffile
from absl import logging
from PIL import Image, UnidentifiedImageError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", *TIFF_SUFFIXES)

# Grey levels (as fractions of the mask dtype's range) that count as clearly background or
# clearly foreground when a saved mask carries interpolation or compression grey levels.
_LOW, _HIGH = 0.1, 0.9
# A mask with more than this fraction of pixels between _LOW and _HIGH is not a mask.
_MAX_GREY_FRACTION = 0.05
# Integer label maps with at most this many distinct values are read as "foreground = nonzero".
_MAX_LABELS = 16


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def _decode(data: bytes, name: str) -> np.ndarray:
    """Decodes encoded image bytes (TIFF via tifffile, everything else via Pillow)."""
    try:
        if name.lower().endswith(TIFF_SUFFIXES):
            return np.asarray(tifffile.imread(io.BytesIO(data)))
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int64)
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError,
            tifffile.TiffFileError) as e:
        raise DataError(f"cannot decode image {name}: {e}") from e


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Scales an integer or float image to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return np.round(arr.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"image {name} contains NaN or infinite values")
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    raise DataError(f"image {name} has unsupported dtype {arr.dtype}")


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decodes an RGB image to uint8 (H, W, 3); grey is repeated, alpha dropped."""
    arr = _decode(data, name)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"image {name} has shape {arr.shape}; expected (H, W) or (H, W, 3|4)")
    if arr.shape[-1] in (1, 2):
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    return _to_uint8(np.ascontiguousarray(arr[..., :3]), name)


def binarise_mask(arr: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
    """Turns a decoded mask into uint8 {0, 1} (H, W).

    Returns the mask and a note describing any conversion beyond {0,1} or {0,255}, so builders
    can report how a non-binary mask was binarised. Raises `DataError` if the array is clearly
    not a mask (colour content, or many grey levels).
    """
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]
        if arr.shape[-1] > 1 and not (arr == arr[..., :1]).all():
            raise DataError(
                f"mask {name} has differing colour channels (shape {arr.shape}); "
                "expected a greyscale or binary mask")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"mask {name} has shape {arr.shape}; expected (H, W)")
    if arr.dtype == bool:
        return arr.astype(np.uint8), None
    values = np.unique(arr)
    if values.size == 1 or (values.size == 2 and values[0] == 0):
        top = values[-1]
        note = None if top in (0, 1, 255) else f"values {values.tolist()}; foreground = {top}"
        return (arr == top).astype(np.uint8) if top != 0 else np.zeros(arr.shape, np.uint8), note
    shown = values if values.size <= 8 else f"{values.size} distinct in [{values[0]}, {values[-1]}]"
    if np.issubdtype(arr.dtype, np.integer) and values[0] >= 0 and values.size <= _MAX_LABELS \
            and values[-1] < _MAX_LABELS:
        return (arr > 0).astype(np.uint8), f"label values {shown}; foreground = nonzero"
    if np.issubdtype(arr.dtype, np.floating):
        top = 1.0 if values[-1] <= 1.0 else 255.0
    else:
        top = 255.0 if values[-1] <= 255 else 65535.0
    scaled = arr.astype(np.float64) / top
    grey = float(np.mean((scaled > _LOW) & (scaled < _HIGH)))
    if grey > _MAX_GREY_FRACTION or values[0] < 0:
        raise DataError(
            f"mask {name} does not look like a binary mask: values {shown}, {grey:.1%} of pixels "
            f"between {_LOW:.0%} and {_HIGH:.0%} of the range")
    note = (f"values {shown} ({grey:.2%} grey pixels); binarised as value > "
            f"{top / 2:g}")
    return (scaled > 0.5).astype(np.uint8), note


def decode_mask(data: bytes, name: str) -> tuple[np.ndarray, str | None]:
    """Decodes and binarises a mask file; see `binarise_mask`."""
    return binarise_mask(_decode(data, name), name)


def decode_label_map(data: bytes, name: str, values: Sequence[int]) -> np.ndarray:
    """Decodes a label-map mask whose pixel `values[k]` means class k: uint8 (H, W) in
    {0 … len(values) - 1}. A value not in `values` raises naming the file and the values."""
    arr = _decode(data, name)
    if arr.ndim == 3:
        if arr.shape[-1] > 1 and not (arr == arr[..., :1]).all():
            raise DataError(f"label map {name} has differing colour channels (shape {arr.shape}); "
                            "expected one value per pixel")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"label map {name} has shape {arr.shape}; expected (H, W)")
    found = np.unique(arr)
    undeclared = [v.item() for v in found if v not in set(values)]
    if undeclared:
        raise DataError(f"label map {name} has value(s) {undeclared} that classes.json does not "
                        f"declare (declared: {list(values)})")
    lookup = np.zeros(int(found.max(initial=0)) + 1, np.uint8)
    for k, v in enumerate(values):
        if v < lookup.size:
            lookup[v] = k
    return lookup[arr.astype(np.int64)]


def report_note(note: str | None, name: str) -> None:
    """Logs how a non-standard mask was binarised."""
    if note:
        logging.warning("mask %s: %s", name, note)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes uint8 (H, W, 3) to (size, size): area averaging to shrink, bilinear to grow."""
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (h, w):
        return image
    shrink = h <= image.shape[0] and w <= image.shape[1]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes a uint8 label map by nearest neighbour, so every pixel keeps a declared label."""
    h, w = (size, size) if isinstance(size, int) else size
    if labels.shape[:2] == (h, w):
        return labels
    return np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes a {0,1} mask by area/bilinear interpolation then thresholds at 0.5 (stays binary)."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape[:2] == (h, w):
        return mask
    grey = resize_image(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1), (h, w))
    return (grey[..., 0] >= 128).astype(np.uint8)
