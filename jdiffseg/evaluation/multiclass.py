"""Scoring one batch of a multi-class ensemble for `jdiffseg evaluate`, and the dataset-level
part of its metrics.json (see `jdiffseg.scoring.multiclass` for the definitions).

Members are class probabilities (B, n, H, W, K), labels one-hot masks (B, H, W, K). Dice and
IoU score the fused label map (`eval.fusion`; all three methods are reported), calibration the
member mean. Per-image columns: dice and iou (foreground means), dice_<class> and iou_<class>
for each foreground class, dice_<method> and iou_<method> for each fusion method, member_dice,
ece_top_label, ece_classwise, brier, nll, uncertainty_entropy and
uncertainty_mutual_information (per-image means of the maps, bits).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg.scoring import multiclass as mc


@functools.partial(jax.jit, static_argnames=("method", "num_bins", "class_names"))
def score_batch(
    members: jax.Array,
    onehot: jax.Array,
    *,
    method: str,
    num_bins: int,
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """'per_image' (dict of (B,) arrays), 'fused' (B, H, W) labels of `method`, 'mean'
    (B, H, W, K) member mean and 'entropy' (B, H, W) map of one batch."""
    labels = jnp.argmax(onehot, axis=-1)
    k = members.shape[-1]
    mean = mc.ensemble_mean(members)
    calibration = mc.per_image_metrics(mean, labels, num_bins)
    per = {key: calibration[key] for key in ("ece_top_label", "ece_classwise", "brier", "nll")}
    fused = {name: mc.fuse(members, name).labels for name in mc.FUSION_METHODS}
    for name, fused_labels in fused.items():
        conf = mc.confusion_matrix(fused_labels, labels, k)
        dice, iou = mc.dice_from_confusion(conf), mc.iou_from_confusion(conf)
        per[f"dice_{name}"], per[f"iou_{name}"] = mc.foreground_mean(dice), mc.foreground_mean(iou)
        if name == method:
            for c in range(1, k):
                per[f"dice_{class_names[c]}"], per[f"iou_{class_names[c]}"] = dice[:, c], iou[:, c]
    per["dice"], per["iou"] = per[f"dice_{method}"], per[f"iou_{method}"]
    b, n = members.shape[:2]
    member_conf = mc.confusion_matrix(
        mc.predict(members).reshape(b * n, -1), jnp.repeat(labels, n, axis=0).reshape(b * n, -1), k
    )
    member_dice = mc.foreground_mean(mc.dice_from_confusion(member_conf))
    per["member_dice"] = member_dice.reshape(b, n).mean(1)
    maps = mc.uncertainty_maps(members)
    for name, values in maps.items():
        per[f"uncertainty_{name}"] = jnp.mean(values, axis=(1, 2))
    return {"per_image": per, "fused": fused[method], "mean": mean, "entropy": maps["entropy"]}


def dataset_metrics(
    acc_probs: mc.MultiClassState, acc_fused: mc.MultiClassState, class_names: Sequence[str]
) -> dict[str, Any]:
    """The 'dataset' section of metrics.json: pooled Dice/IoU of the fused labels (foreground
    mean and per class), calibration of the member mean, the confusion matrix."""
    probs, fused = mc.compute(acc_probs), mc.compute(acc_fused)
    pooled = np.asarray(fused["dice_pooled_per_class"])
    pooled_iou = np.asarray(mc.iou_from_confusion(fused["confusion"]))
    classwise = np.asarray(probs["ece_classwise_per_class"])
    return {
        "dice_pooled": float(fused["dice_pooled"]),
        "iou_pooled": float(np.mean(pooled_iou[1:])),
        **{key: float(probs[key]) for key in ("ece_top_label", "ece_classwise", "brier", "nll")},
        "num_pixels": int(probs["num_pixels"]),
        "per_class": {
            name: {
                "dice_pooled": float(pooled[c]),
                "iou_pooled": float(pooled_iou[c]),
                "ece_classwise": float(classwise[c]),
            }
            for c, name in enumerate(class_names)
        },
        "confusion": {
            "classes": list(class_names),
            "rows_truth_columns_prediction": np.asarray(fused["confusion"]).tolist(),
        },
    }


DEFINITIONS = {
    "dice_iou": "of the fused label map, per image and class (one vs rest), averaged over the "
    "foreground classes; a class absent from prediction and truth scores 1",
    "calibration": "of the member-mean class probabilities over all pixels: top-label ECE, "
    "classwise ECE (mean over classes), Brier summed over classes, NLL of the true class",
    "member_probabilities": "each member's x0 decoded, clipped to [0, 1] and renormalised over "
    "the classes",
}


def display_cases(shown: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Multi-class cases as grey levels label / C in the (…, 1) layout of the case grid."""
    scale = np.float32(1.0 / num_classes)
    return {
        "image": shown["image"],
        "label": np.argmax(shown["label"], axis=-1)[..., None] * scale,
        "members": np.argmax(shown["members"], axis=-1)[..., None] * scale,
        "fused": np.asarray(shown["fused"])[..., None] * scale,
        "entropy": np.asarray(shown["entropy"])[..., None],
    }
