"""Intensity normalisation per channel, as nnU-Net does it.

* **CT** channels: clipped to the 0.5 and 99.5 percentiles of the foreground voxels (label > 0)
  of the training cases, then z-scored with the mean and standard deviation of those same
  (unclipped) foreground voxels. The four numbers are computed once, at build time, from the
  training split only, and stored in the dataset's metadata.
* **Every other modality** (MR, ...): z-scored per case over the case's non-zero region (voxels
  where any channel is non-zero, e.g. the brain of a skull-stripped MR); voxels outside it are
  set to 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np

CT = "ct"
ZSCORE = "zscore_nonzero"
# Foreground voxels drawn per case and CT channel for the statistics (nnU-Net draws 10,000).
SAMPLES_PER_CASE = 10_000
_EPS = 1e-8


def scheme(channel_name: str) -> str:
    """The normalisation of a channel from its declared name ('CT' in any case -> CT)."""
    return CT if channel_name.strip().lower() == CT else ZSCORE


def foreground_sample(channel: np.ndarray, labels: np.ndarray, key: str) -> np.ndarray:
    """Up to SAMPLES_PER_CASE foreground voxels of one channel, drawn with a seed from `key`."""
    values = channel[labels > 0]
    if values.size <= SAMPLES_PER_CASE:
        return values
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.choice(values, SAMPLES_PER_CASE, replace=False)


def ct_statistics(samples: Iterable[np.ndarray], what: str) -> dict[str, float]:
    """{lower, upper, mean, std} of the pooled foreground samples of one CT channel."""
    values = np.concatenate([np.ravel(s) for s in samples] or [np.zeros(0, np.float32)])
    if values.size == 0:
        raise ValueError(
            f"{what}: the training cases have no foreground voxels, so the CT "
            "normalisation statistics cannot be computed"
        )
    values = values.astype(np.float64)
    lower, upper = np.percentile(values, [0.5, 99.5])
    return {
        "lower": float(lower),
        "upper": float(upper),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }


def normalise(
    image: np.ndarray, schemes: Sequence[str], stats: Sequence[dict[str, float] | None]
) -> np.ndarray:
    """A (X, Y, Z, C) float32 image normalised channel by channel (see the module docstring);
    `stats[c]` holds channel c's CT statistics (None for other channels)."""
    out = np.empty_like(image, dtype=np.float32)
    region = np.any(image != 0, axis=-1)
    for c, name in enumerate(schemes):
        x = image[..., c].astype(np.float64)
        if name == CT:
            s = stats[c]
            out[..., c] = (np.clip(x, s["lower"], s["upper"]) - s["mean"]) / max(s["std"], _EPS)
        else:
            inside = x[region]
            z = (x - inside.mean()) / max(inside.std(), _EPS) if inside.size else x
            out[..., c] = np.where(region, z, 0.0)
    return out


def from_metadata(
    entries: Sequence[dict[str, float | str]],
) -> tuple[list[str], list[dict[str, float] | None]]:
    """(schemes, stats) for `normalise` from a volumetric dataset's metadata 'normalisation'
    entries ({scheme, and for CT lower, upper, mean, std}), one per channel."""
    schemes = [str(e["scheme"]) for e in entries]
    stats = [
        {k: float(e[k]) for k in ("lower", "upper", "mean", "std")} if s == CT else None
        for s, e in zip(schemes, entries, strict=True)
    ]
    return schemes, stats
