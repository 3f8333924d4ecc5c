"""Volume overlap and surface-distance metrics of one binary structure in one case, in NumPy.

Inputs are a predicted and a true binary volume of the same shape (any number of axes; 3 for
a CT or MR case) and the voxel spacing in millimetres along each axis.

Definitions:

* **Overlap**: ``TP``, ``FP``, ``FN`` counted over the voxels of the volume.
  **Dice** ``2 TP / (2 TP + FP + FN)``, **IoU** ``TP / (TP + FP + FN)``: 1.0 when prediction and
  truth are both empty (as the per-slice metrics define it), 0.0 when exactly one is.
  **Sensitivity** ``TP / (TP + FN)`` and **precision** ``TP / (TP + FP)``: NaN when their
  denominator is 0 (an empty truth, an empty prediction), so that averages over cases (NaN-aware)
  leave out the cases where they are undefined.
* **Surface** of a binary volume: its voxels that have at least one face neighbour (6-neighbour
  in 3D, 4 in 2D) outside the volume; the volume's edge counts as outside. This is the border
  ``A xor erode(A)`` that MedPy uses.
* **Surface distances** from A to B: for every surface voxel of A, the Euclidean distance in mm
  (voxel centres, scaled by the spacing) to the nearest surface voxel of B.
* **HD95**: the larger of the two directed 95th percentiles,
  ``max(P95(d(A→B)), P95(d(B→A)))``, percentiles with linear interpolation between the sorted
  distances (NumPy's default). Each directed set holds one distance per surface voxel, not
  weighted by surface area (DeepMind's surface-distance weights by surfel area and so gives
  slightly different numbers).
* **ASSD**: the mean of both directed sets pooled, ``(sum d(A→B) + sum d(B→A)) / (|S_A| + |S_B|)``
  with ``|S|`` the number of surface voxels (Heimann et al. 2009; MedPy 0.5 likewise).
* **Empty structures**: both empty → HD95 = ASSD = 0; exactly one empty → both are the volume's
  diagonal in mm, ``sqrt(sum(((n_i - 1) · s_i)^2))``, the largest distance the volume can hold,
  so that a missed or hallucinated structure scores as badly as any finite prediction can and
  averages stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

VOLUME_METRICS = ("dice", "iou", "sensitivity", "precision", "hd95", "assd")


def _check(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(
            f"surface metrics: prediction shape {pred.shape} != truth shape {truth.shape}"
        )
    sp = np.asarray(spacing, np.float64)
    if sp.shape != (pred.ndim,) or not np.all(sp > 0):
        raise ValueError(
            f"surface metrics: spacing {tuple(spacing)} must be {pred.ndim} "
            "positive numbers, one per axis"
        )
    return pred, truth, sp


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean volume (see the module docstring)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances in mm from each surface voxel of `a` to the surface of `b` (both non-empty)."""
    to_b = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return to_b[surface(a)]


def diagonal(shape: Sequence[int], spacing: np.ndarray) -> float:
    """The largest distance between two voxel centres of a volume, in mm."""
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * spacing) ** 2)))


def _ratio(num: int, den: int, empty: float) -> float:
    return float(num / den) if den else empty


def volume_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> dict[str, float]:
    """Dice, IoU, sensitivity, precision, HD95 and ASSD (mm) of one case and one structure."""
    pred, truth, sp = _check(pred, truth, spacing)
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    out = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "sensitivity": _ratio(tp, tp + fn, float("nan")),
        "precision": _ratio(tp, tp + fp, float("nan")),
    }
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return {**out, "hd95": 0.0, "assd": 0.0}
    if has_pred != has_truth:
        worst = diagonal(pred.shape, sp)
        return {**out, "hd95": worst, "assd": worst}
    ab, ba = directed_distances(pred, truth, sp), directed_distances(truth, pred, sp)
    out["hd95"] = float(max(np.percentile(ab, 95), np.percentile(ba, 95)))
    out["assd"] = float(np.concatenate([ab, ba]).mean())
    return out


def per_class(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], classes: dict[int, str]
) -> dict[str, dict[str, float]]:
    """`volume_metrics` of each foreground class {label value: name} of two label maps."""
    return {
        name: volume_metrics(np.asarray(pred) == value, np.asarray(truth) == value, spacing)
        for value, name in classes.items()
    }
