"""Scores of the calibration study, from saved samples and training logs.

* `score_ensemble`: accuracy, calibration and ambiguity of one ensemble of members against the
  reference mask (and every rater, on multi-rater data).
* `score_sizes`: the same for the nested ensembles of the first k members, k in the sizes, so
  one draw of the largest ensemble answers how ensemble size moves the scores.
* `plateau`: where a validation curve stops improving.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jdiffseg.scoring import fusion, metrics, raters

# the rater scores reported (means over images, the ECEs pooled over pixels)
RATER_SCORES = ("ged", "hungarian_iou", "diversity", "ece_soft", "ece_band", "brier_soft",
                "nll_soft")


def score_ensemble(
    members: np.ndarray,
    mask: np.ndarray,
    rater_masks: np.ndarray | None = None,
    *,
    num_bins: int = metrics.DEFAULT_NUM_BINS,
    band_px: float = raters.DEFAULT_BAND_PX,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Scores of members (N, n, H, W, 1) in [0, 1] against masks (N, H, W, 1).

    Dice scores the mean of the members thresholded at `threshold` (mean-threshold fusion),
    per image and averaged; ECE (top-label, `num_bins` bins) pools all pixels, `ece_image` is
    the mean of per-image ECEs; Brier and NLL are pixel means; `accuracy` is the fraction of
    pixels the fused mask gets right and `confidence` the mean top-label confidence of the
    member mean (confidence below accuracy: under-confident); `binarity` the fraction of member
    values within 0.05 of 0 or 1. With `rater_masks` (N, R, H, W, 1) the `RATER_SCORES` too.
    """
    m = np.asarray(members, np.float32)
    y = np.asarray(mask, np.float32)
    probs = np.asarray(fusion.ensemble_mean(m))
    confidence = np.maximum(probs, 1.0 - probs)
    out = {
        "num_images": float(len(m)),
        "num_members": float(m.shape[1]),
        "dice": float(np.mean(metrics.dice(probs, y, threshold))),
        "ece": float(metrics.ece(probs, y, num_bins, "top_label")),
        "ece_image": float(np.mean(metrics.ece(probs, y, num_bins, "top_label",
                                               per_image=True))),
        "brier": float(np.mean(metrics.brier(probs, y))),
        "nll": float(np.mean(metrics.nll(probs, y))),
        "accuracy": float(np.mean((probs > threshold) == (y > 0.5))),
        "confidence": float(np.mean(confidence)),
        "binarity": float(np.mean(raters.member_binarity(m))),
    }
    if rater_masks is not None:
        scored = raters.rater_metrics(m, np.asarray(rater_masks, np.float32), num_bins=num_bins,
                                      band_px=band_px, threshold=threshold)
        out.update({f"rater_{k}": float(scored[k]) for k in RATER_SCORES})
    return out


def score_sizes(samples: Mapping[str, np.ndarray], sizes: Sequence[int],
                ids: Sequence[str] | None = None, **kwargs: Any) -> dict[int, dict[str, float]]:
    """`score_ensemble` of the first k members for every k in `sizes` not above the members
    drawn; `ids` restricts the images (in the given order) to those ids."""
    chosen = np.arange(len(samples["ids"]))
    if ids is not None:
        where = {str(i): n for n, i in enumerate(samples["ids"])}
        missing = [i for i in ids if i not in where]
        if missing:
            raise ValueError(f"samples have no images {missing}")
        chosen = np.asarray([where[i] for i in ids])
    drawn = samples["members"].shape[1]
    rater_masks = samples.get("raters")
    return {
        k: score_ensemble(samples["members"][chosen, :k], samples["mask"][chosen],
                          None if rater_masks is None else rater_masks[chosen], **kwargs)
        for k in sorted(set(sizes)) if k <= drawn
    }


def validation_curve(workdir: str | Path, replica: int | None, metric: str = "val_dice"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a validation metric from a run's metrics.jsonl (of one replica of a
    population with `replica`)."""
    key = metric if replica is None else f"{metric}_replica{replica}"
    steps, values = [], []
    path = Path(workdir) / "metrics.jsonl"
    with path.open() as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON line: {err}") from err
            if key in row:
                steps.append(int(row["step"]))
                values.append(float(row[key]))
    if not steps:
        raise ValueError(f"{path}: no {key!r} values (was validation run?)")
    return np.asarray(steps), np.asarray(values)


def plateau(steps: np.ndarray, values: np.ndarray, tol: float = 0.01) -> dict[str, Any]:
    """Where a validation curve (higher is better) stops improving.

    `plateau_step` is the first step whose value is within `tol` of the curve's best;
    `gain_last_quarter` is the best value minus the best one up to 3/4 of the last step, and
    `reached` says that this late gain is at most `tol` (the curve had levelled off before the
    end of training rather than still climbing).
    """
    steps, values = np.asarray(steps), np.asarray(values, np.float64)
    best = float(np.max(values))
    first = int(steps[np.argmax(values >= best - tol)])
    early = values[steps <= 0.75 * steps[-1]]
    gain = best - float(np.max(early)) if len(early) else math.nan
    return {"best": best, "best_step": int(steps[np.argmax(values)]), "plateau_step": first,
            "last_step": int(steps[-1]), "gain_last_quarter": gain,
            "reached": bool(len(early) and gain <= tol)}
