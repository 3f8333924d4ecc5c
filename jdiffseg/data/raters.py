"""Several annotators (raters) per image: the file naming rule, the checks of a case's rater
files, and the consensus that a multi-rater example's `mask` holds.

A multi-rater example stores every rater's mask as `raters` (R, H, W, 1) uint8, in rater order,
and as `mask` their per-pixel majority: the value most raters give, ties going to the larger
value (binary masks: foreground where at least half of the raters mark it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from jdiffseg.data.images import DataError

SUFFIX = "_rater"  # <name>_rater<k>: rater k's label file of <name>
_PATTERN = re.compile(rf"^(.*){SUFFIX}(\d+)$")
T = TypeVar("T")


def rater_stem(stem: str, k: int) -> str:
    """The stem of rater `k`'s label file of the image or case `stem`."""
    return f"{stem}{SUFFIX}{k}"


def split_stem(stem: str) -> tuple[str, int] | None:
    """(image or case stem, rater index) of a rater file's stem; None for other stems."""
    found = _PATTERN.match(stem)
    return (found.group(1), int(found.group(2))) if found else None


def gather(case: str, found: Mapping[int, T], count: int, expected: Callable[[int], str],
           name: Callable[[T], str]) -> tuple[T, ...]:
    """The files of raters 0 … count-1 of `case` from {rater index: file}; a missing rater or
    one beyond `count` stops, naming the file (every case must have the same raters)."""
    extra = sorted(k for k in found if k >= count)
    if extra:
        raise DataError(
            f"{name(found[extra[0]])} is rater {extra[0]} of {case} but "
            f"config.data.raters={count} (raters 0..{count - 1}); every case needs the same "
            f"number of raters")
    missing = [k for k in range(count) if k not in found]
    if missing:
        raise DataError(
            f"missing rater {missing[0]} of {case}: expected {expected(missing[0])} "
            f"(config.data.raters={count}: every case needs raters 0..{count - 1})")
    return tuple(found[k] for k in range(count))


def majority(stack: np.ndarray) -> np.ndarray:
    """Per-pixel value most of the raters (axis 0) give, ties to the larger value."""
    values = np.unique(stack)
    counts = np.stack([np.count_nonzero(stack == v, axis=0) for v in values])
    return values[len(values) - 1 - np.argmax(counts[::-1], axis=0)].astype(stack.dtype)

