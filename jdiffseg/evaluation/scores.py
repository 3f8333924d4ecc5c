"""Scores of one evaluated batch: fusion of the members, per-image metrics and uncertainty, and
the reference-repository protocols reported apart from the default metrics."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jdiffseg.scoring import fusion, metrics, raters

# Reference-repository protocols, each reported apart from the default metrics.
EXTRA_PROTOCOLS = {
    "threshold_sweep": (
        "Dice and IoU of the ensemble-mean probability binarised at each of thresholds "
        "(0.1, 0.3, 0.5, 0.7, 0.9), averaged over the thresholds (MedSegDiff's eval_seg); "
        "not comparable with the single-threshold scores"
    ),
}
SWEEP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
UNCERTAINTY_KEYS = ("variance", "entropy", "mutual_information")


def extra_protocols(config: ml_collections.ConfigDict) -> list[str]:
    """The names in the comma-separated `config.eval.extra_protocols`."""
    return [p.strip() for p in str(config.eval.extra_protocols).split(",") if p.strip()]


@functools.partial(jax.jit, static_argnames=("method", "num_bins", "sweep"))
def score_batch(
    members: jax.Array,
    labels: jax.Array,
    *,
    method: str,
    threshold: float,
    num_bins: int,
    sweep: bool = False,
) -> dict[str, Any]:
    """Fusion, per-image metrics and uncertainty of one batch of members (B, n, H, W, 1).

    Returns 'per_image' (dict of (B,) arrays), 'fused' (B, H, W, 1) of `method`, 'mean' and
    'entropy' maps (B, H, W, 1). Dice/IoU score the fused mask, calibration the member mean.
    """
    mean = fusion.ensemble_mean(members)
    per = metrics.per_image_metrics(mean, labels, threshold, num_bins)
    fused = {name: fusion.fuse(members, name, threshold=threshold).mask
             for name in fusion.FUSION_METHODS}
    for name, mask in fused.items():
        per[f"dice_{name}"] = metrics.dice(mask, labels)
        per[f"iou_{name}"] = metrics.iou(mask, labels)
    per["dice"], per["iou"] = per[f"dice_{method}"], per[f"iou_{method}"]
    B, n = members.shape[:2]
    flat_members = members.reshape(B * n, *members.shape[2:])
    flat_labels = jnp.repeat(labels, n, axis=0)
    per["member_dice"] = metrics.dice(flat_members, flat_labels, threshold).reshape(B, n).mean(1)
    per["member_iou"] = metrics.iou(flat_members, flat_labels, threshold).reshape(B, n).mean(1)
    per["member_binarity"] = raters.member_binarity(members)
    maps = fusion.uncertainty_maps(members)
    for name in UNCERTAINTY_KEYS:
        per[f"uncertainty_{name}"] = jnp.mean(maps[name], axis=(1, 2, 3))
    per["foreground_true"] = jnp.mean(labels > 0.5, axis=(1, 2, 3))
    per["foreground_pred"] = jnp.mean(fused[method], axis=(1, 2, 3))
    if sweep:
        per["dice_threshold_sweep"] = jnp.mean(
            jnp.stack([metrics.dice(mean, labels, th) for th in SWEEP_THRESHOLDS]), axis=0)
        per["iou_threshold_sweep"] = jnp.mean(
            jnp.stack([metrics.iou(mean, labels, th) for th in SWEEP_THRESHOLDS]), axis=0)
    return {"per_image": per, "fused": fused[method], "mean": mean, "entropy": maps["entropy"]}
