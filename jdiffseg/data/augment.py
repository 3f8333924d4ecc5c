"""Training augmentation in NumPy: one geometry for image and mask, colour only on the image.

Geometric ops (random resized crop, flips, 90° rotations) transform the image and mask with the
same parameters; a binary mask is resampled bilinearly and re-thresholded, a multi-class label
map by nearest neighbour, so both keep exact labels and stay aligned. Colour jitter
(brightness, contrast, saturation, hue) touches the image only.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from PIL import Image

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                    np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """flip: random horizontal and vertical flips; rot90: random multiple of 90°; crop_scale:
    minimum area fraction of the random resized crop (1.0 = off); color_jitter: strength s of
    brightness/contrast/saturation factors in [1-s, 1+s] and a hue shift up to s/4 turn;
    label_map: the mask is a multi-class label map (nearest-neighbour resampling)."""

    flip: bool = True
    rot90: bool = True
    crop_scale: float = 1.0
    color_jitter: float = 0.0
    label_map: bool = False

    @classmethod
    def from_config(cls, augment: ml_collections.ConfigDict, *, label_map: bool = False
                    ) -> AugmentConfig:
        cfg = cls(bool(augment.flip), bool(augment.rot90), float(augment.crop_scale),
                  float(augment.color_jitter), label_map)
        if not 0.0 < cfg.crop_scale <= 1.0:
            raise ValueError(f"config.data.augment.crop_scale={cfg.crop_scale}: need 0 < it <= 1")
        if not 0.0 <= cfg.color_jitter < 1.0:
            raise ValueError(
                f"config.data.augment.color_jitter={cfg.color_jitter}: need 0 <= it < 1")
        return cfg


def random_resized_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                        min_scale: float, label_map: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Crops a random box (area fraction in [min_scale, 1], aspect in [3/4, 4/3]) and resizes it
    back to the input size, bilinearly for the image and a binary mask (thresholded at 0.5),
    by nearest neighbour for a label map. The image is uint8 RGB or float channels (volumetric
    data, resized channel by channel)."""
    h, w = mask.shape[:2]
    area = rng.uniform(min_scale, 1.0) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(np.sqrt(area * ratio), w), min(np.sqrt(area / ratio), h)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    box = (x0, y0, x0 + cw, y0 + ch)
    bilinear = Image.Resampling.BILINEAR
    if image.dtype == np.uint8:
        image = np.asarray(Image.fromarray(image).resize((w, h), bilinear, box=box))
    else:  # float channels (volumetric data): one 32-bit float PIL image per channel
        image = np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                                     .resize((w, h), bilinear, box=box))
                          for c in range(image.shape[-1])], axis=-1)
    if label_map:
        nearest = Image.Resampling.NEAREST
        return image, np.asarray(Image.fromarray(mask[..., 0]).resize((w, h), nearest, box=box)
                                 )[..., None]
    grey = Image.fromarray(mask[..., 0] * np.uint8(255)).resize((w, h), bilinear, box=box)
    return image, (np.asarray(grey) >= 128).astype(np.uint8)[..., None]


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """float32 (H, W, 3) in [0, 255] -> jittered, clipped to [0, 255].

    Brightness (scale by b), contrast (towards the mean grey by c), saturation (towards each
    pixel's grey by s) and hue (rotation of the YIQ chroma plane) are all affine in RGB, so they
    are folded into one 3x3 matrix and offset: one pass over the pixels.
    """
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    angle = 2 * np.pi * rng.uniform(-strength / 4, strength / 4)
    mean_grey = float(image.reshape(-1, 3).mean(0) @ _LUMA)
    cos, sin = np.cos(angle), np.sin(angle)
    hue = _YIQ2RGB @ np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], np.float32) @ _RGB2YIQ
    sat = s * np.eye(3, dtype=np.float32) + (1 - s) * np.outer(np.ones(3, np.float32), _LUMA)
    colour = hue @ sat
    matrix = colour * (c * b)
    offset = colour @ np.full(3, (1 - c) * b * mean_grey, np.float32)
    out = image @ matrix.T.astype(np.float32) + offset.astype(np.float32)
    return np.clip(out, 0.0, 255.0, out=out)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image (H,W,C) and mask (H,W,1) -> float32 image and uint8 mask: uint8 RGB images stay
    in [0, 255], the float channels of volumetric data keep their values."""
    if cfg.crop_scale < 1.0:
        image, mask = random_resized_crop(image, mask, rng, cfg.crop_scale, cfg.label_map)
    if cfg.flip:
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
    if cfg.rot90:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if cfg.color_jitter > 0 and (image.dtype != np.uint8 or image.shape[-1] != 3):
        raise ValueError("config.data.augment.color_jitter works on RGB images only; this "
                         f"dataset's images are {image.dtype} with {image.shape[-1]} channels")
    image = image.astype(np.float32)
    if cfg.color_jitter > 0:
        image = color_jitter(image, rng, cfg.color_jitter)
    return image, np.ascontiguousarray(mask)
