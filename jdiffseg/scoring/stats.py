"""Summary statistics of per-image metrics: mean, standard deviation, bootstrap intervals.

The interval is the percentile bootstrap of the mean over images: resample the images with
replacement ``num_resamples`` times, take each resample's mean, and report the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. Everything is NumPy and seeded,
so the same inputs and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
_MAX_CHUNK_ENTRIES = 4_000_000


def _as_values(values: np.ndarray | list[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"stats: no values for {name!r}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"stats: {int(bad.sum())} non-finite value(s) for {name!r} "
            f"(first at index {int(np.argmax(bad))})"
        )
    return arr


def bootstrap_ci(
    values: np.ndarray | list[float],
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    name: str = "values",
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (low, high)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"stats: confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"stats: num_resamples must be >= 1, got {num_resamples}")
    arr = _as_values(values, name)
    rng = np.random.default_rng(seed)
    n = arr.size
    chunk = max(1, _MAX_CHUNK_ENTRIES // n)
    means = np.empty(num_resamples, np.float64)
    for start in range(0, num_resamples, chunk):
        stop = min(start + chunk, num_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    values: np.ndarray | list[float], *, name: str = "values", **interval_options: Any
) -> dict[str, float]:
    """Mean, sample std (ddof=1; 0.0 for a single value), bootstrap interval and count.

    `interval_options` (num_resamples, confidence, seed) go to `bootstrap_ci`.
    """
    arr = _as_values(values, name)
    low, high = bootstrap_ci(arr, name=name, **interval_options)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {
        "mean": float(arr.mean()),
        "std": std,
        "ci_low": low,
        "ci_high": high,
        "n": int(arr.size),
    }


def summarize_all(
    per_image: Mapping[str, np.ndarray | list[float]], **interval_options: Any
) -> dict[str, dict[str, float]]:
    """:func:`summarize` for every metric of a ``{name: per-image values}`` mapping."""
    return {key: summarize(vals, name=key, **interval_options) for key, vals in per_image.items()}


def format_summary(summary: Mapping[str, float], digits: int = 3) -> str:
    """``'mean ± std [low, high]'`` for tables."""
    f = f".{digits}f"
    return (
        f"{summary['mean']:{f}} ± {summary['std']:{f}} "
        f"[{summary['ci_low']:{f}}, {summary['ci_high']:{f}}]"
    )
