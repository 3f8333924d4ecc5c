"""Segmentation and calibration metrics for binary masks, in pure ``jax.numpy``.

Inputs are foreground probabilities ``probs`` and ground-truth ``labels`` of the same shape
``(B, ...)`` (usually ``(B, H, W, 1)``); every axis after the first is a pixel axis. Labels are
binarised at 0.5. All functions are batched and can be used inside ``jax.jit``.

Definitions (per image unless stated otherwise):

* **Binarisation**: a pixel is predicted foreground when ``prob > threshold`` (strict), so with
  the default 0.5 a tie goes to background.
* **Dice** ``2 TP / (2 TP + FP + FN)`` and **IoU** ``TP / (TP + FP + FN)``. When prediction and
  truth are both empty the denominator is 0 and the score is defined as 1.0; an empty truth with a
  non-empty prediction (or the reverse) scores 0.0.
* **Pooled** Dice/IoU use TP/FP/FN summed over all images of the data set (dataset-level),
  while **mean** Dice/IoU average the per-image scores.
* **ECE** over pixels with ``num_bins`` equal-width bins on [0, 1]; bin ``k`` holds confidences
  in ``[k/M, (k+1)/M)`` and the last bin also holds 1.0. ``ECE = sum_k n_k / N |acc_k - conf_k|``.
  ``'top_label'``: confidence ``max(p, 1-p)``, accuracy of the arg-max label (``p > 0.5``).
  ``'foreground'``: confidence ``p``, "accuracy" is the frequency of label 1 in the bin (the
  mean soft label in the bin when :func:`bin_stats` is given soft targets).
* **Brier** ``mean (p - y)^2`` (the one-class form; the two-class form is twice this).
* **NLL** ``-mean [y log p + (1-y) log(1-p)]`` in nats, with ``p`` clipped to ``[eps, 1-eps]``.

The accumulator (:func:`init`, :func:`update`, :func:`merge`, :func:`compute`) is a pytree of
sums, so batches combine by addition. Inside one ``jax.jit`` over a device mesh with the batch
sharded, :func:`update` already reduces over all devices and hosts. When each host feeds only its
own local data, combine the hosts' states with :func:`merge_across_processes`
(``process_allgather`` then a sum), or inside ``shard_map`` with ``jax.lax.psum(state, axis)``.
Counts are int32, so one state holds at most 2**31 - 1 pixels (about 32k images of 256 x 256).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

ECE_VARIANTS = ("top_label", "foreground")
DEFAULT_NUM_BINS = 10
NLL_EPS = 1e-6


def _check_pair(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Validate shapes and return float32 probabilities and {0, 1} float32 labels."""
    if probs.shape != labels.shape:
        raise ValueError(
            f"metrics: probs shape {tuple(probs.shape)} != labels shape {tuple(labels.shape)}"
        )
    if probs.ndim < 2:
        raise ValueError(
            f"metrics: expected batched inputs (B, ...) with at least 2 axes, got shape "
            f"{tuple(probs.shape)}"
        )
    probs = jnp.asarray(probs, jnp.float32)
    labels = (jnp.asarray(labels, jnp.float32) > 0.5).astype(jnp.float32)
    return probs, labels


def _check_variant(variant: str) -> None:
    if variant not in ECE_VARIANTS:
        raise ValueError(
            f"metrics: unknown ECE variant {variant!r}; expected one of {ECE_VARIANTS}"
        )


def _pixel_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def confusion_counts(
    probs: jax.Array, labels: jax.Array, threshold: float = 0.5
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-image (TP, FP, FN) int32 counts of the binarised prediction, each of shape (B,)."""
    probs, labels = _check_pair(probs, labels)
    pred = probs > threshold
    truth = labels > 0.5
    axes = _pixel_axes(probs)
    tp = jnp.sum(pred & truth, axis=axes, dtype=jnp.int32)
    fp = jnp.sum(pred & ~truth, axis=axes, dtype=jnp.int32)
    fn = jnp.sum(~pred & truth, axis=axes, dtype=jnp.int32)
    return tp, fp, fn


def _dice_from_counts(tp: jax.Array, fp: jax.Array, fn: jax.Array) -> jax.Array:
    num = 2.0 * tp.astype(jnp.float32)
    den = num + fp.astype(jnp.float32) + fn.astype(jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 1.0)


def _iou_from_counts(tp: jax.Array, fp: jax.Array, fn: jax.Array) -> jax.Array:
    num = tp.astype(jnp.float32)
    den = num + fp.astype(jnp.float32) + fn.astype(jnp.float32)
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 1.0)


def dice(probs: jax.Array, labels: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Per-image Dice of ``probs > threshold`` against ``labels``, shape (B,); empty/empty = 1."""
    return _dice_from_counts(*confusion_counts(probs, labels, threshold))


def iou(probs: jax.Array, labels: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Per-image IoU (Jaccard) of ``probs > threshold`` against ``labels``, shape (B,)."""
    return _iou_from_counts(*confusion_counts(probs, labels, threshold))


def brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-image Brier score ``mean (p - y)^2`` over pixels, shape (B,)."""
    probs, labels = _check_pair(probs, labels)
    return jnp.mean(jnp.square(probs - labels), axis=_pixel_axes(probs))


def pixel_nll(probs: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
    """Binary cross-entropy per pixel in nats (labels may be soft), p clipped to [eps, 1-eps]."""
    p = jnp.clip(probs, eps, 1.0 - eps)
    return -(labels * jnp.log(p) + (1.0 - labels) * jnp.log1p(-p))


def nll(probs: jax.Array, labels: jax.Array, eps: float = NLL_EPS) -> jax.Array:
    """Per-image mean binary negative log-likelihood in nats, shape (B,); p clipped to eps."""
    probs, labels = _check_pair(probs, labels)
    return jnp.mean(pixel_nll(probs, labels, eps), axis=_pixel_axes(probs))


class BinStats(NamedTuple):
    """Per-bin sums for one ECE variant; leading axes are whatever the caller batched over."""

    count: jax.Array  # int32 (..., num_bins): pixels in the bin
    confidence: jax.Array  # float32 (..., num_bins): sum of confidences
    accuracy: jax.Array  # (..., num_bins): int32 sum of correct (top-label) or label-1 pixels,
    # float32 sum of soft labels for soft targets


def _confidence_and_hit(
    probs: jax.Array, labels: jax.Array, variant: str
) -> tuple[jax.Array, jax.Array]:
    if variant == "top_label":
        conf = jnp.maximum(probs, 1.0 - probs)
        hit = (probs > 0.5) == (labels > 0.5)
    else:
        conf = probs
        hit = labels > 0.5
    return conf, hit


def bin_stats(
    conf: jax.Array, target: jax.Array, include: jax.Array, num_bins: int
) -> BinStats:
    """Per-row bin sums of (B, P) confidences and targets over the pixels where ``include``.

    ``target`` is bool (a hit, summed exactly as int32) or float in [0, 1] (a soft label, summed
    as float32); ``include`` (B, P) bool selects the pixels. Each sum has shape (B, num_bins).

    Written as a masked reduction over pixels rather than a scatter-add: under jit XLA fuses the
    one-hot into the reduction (nothing of size pixels x bins is stored), and its tree-shaped
    float32 reduction stays accurate where a sequential scatter-add of millions of confidences
    drifts (by ~1e-2 in ECE on 4M pixels).
    """
    idx = jnp.clip(jnp.floor(conf * num_bins).astype(jnp.int32), 0, num_bins - 1)
    in_bin = (idx[..., None] == jnp.arange(num_bins, dtype=jnp.int32)) & include[..., None]
    soft = target.dtype != jnp.bool_
    hits = jnp.where(in_bin, target[..., None], jnp.zeros((), target.dtype))
    return BinStats(
        count=jnp.sum(in_bin, axis=1, dtype=jnp.int32),
        confidence=jnp.sum(jnp.where(in_bin, conf[..., None], 0.0), axis=1),
        accuracy=jnp.sum(hits, axis=1, dtype=jnp.float32 if soft else jnp.int32),
    )


def _image_bin_stats(
    probs: jax.Array, labels: jax.Array, weight: jax.Array, num_bins: int, variant: str
) -> BinStats:
    """Per-image bin sums, each of shape (B, num_bins); ``weight`` (B,) in {0, 1}."""
    conf, hit = _confidence_and_hit(probs, labels, variant)
    batch = probs.shape[0]
    conf = conf.reshape(batch, -1)
    include = jnp.broadcast_to((weight > 0)[:, None], conf.shape)
    return bin_stats(conf, hit.reshape(batch, -1), include, num_bins)


def ece_from_bins(stats: BinStats) -> jax.Array:
    """``sum_k |acc_k - conf_k| / N`` over the last (bin) axis; 0 where no pixel was binned."""
    total = jnp.sum(stats.count, axis=-1).astype(jnp.float32)
    gap = jnp.abs(stats.accuracy.astype(jnp.float32) - stats.confidence)
    return jnp.where(total > 0, jnp.sum(gap, axis=-1) / jnp.maximum(total, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_bins", "variant", "per_image"))
def ece(
    probs: jax.Array,
    labels: jax.Array,
    num_bins: int = DEFAULT_NUM_BINS,
    variant: str = "top_label",
    *,
    per_image: bool = False,
) -> jax.Array:
    """Expected calibration error over all pixels (scalar), or per image (B,) if ``per_image``.

    ``num_bins``, ``variant`` and ``per_image`` are static (one compilation per combination).
    """
    _check_variant(variant)
    probs, labels = _check_pair(probs, labels)
    weight = jnp.ones(probs.shape[0], jnp.int32)
    stats = _image_bin_stats(probs, labels, weight, num_bins, variant)
    if not per_image:
        stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)
    return ece_from_bins(stats)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def per_image_metrics(
    probs: jax.Array,
    labels: jax.Array,
    threshold: float = 0.5,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, jax.Array]:
    """All per-image metrics as a dict of (B,) arrays (for per-image tables and statistics)."""
    tp, fp, fn = confusion_counts(probs, labels, threshold)
    return {
        "dice": _dice_from_counts(tp, fp, fn),
        "iou": _iou_from_counts(tp, fp, fn),
        "ece_top_label": ece(probs, labels, num_bins, "top_label", per_image=True),
        "ece_foreground": ece(probs, labels, num_bins, "foreground", per_image=True),
        "brier": brier(probs, labels),
        "nll": nll(probs, labels),
    }


class MetricState(NamedTuple):
    """Mergeable sums over a data set; combine two states by adding them leaf by leaf."""

    tp: jax.Array  # int32 (): true-positive pixels (pooled)
    fp: jax.Array  # int32 ()
    fn: jax.Array  # int32 ()
    dice_sum: jax.Array  # float32 (): sum of per-image Dice
    iou_sum: jax.Array  # float32 (): sum of per-image IoU
    num_images: jax.Array  # int32 ()
    num_pixels: jax.Array  # int32 ()
    brier_sum: jax.Array  # float32 (): sum over pixels of (p - y)^2
    nll_sum: jax.Array  # float32 (): sum over pixels of the binary NLL
    top_label: BinStats  # (num_bins,) each
    foreground: BinStats  # (num_bins,) each


def _empty_bins(num_bins: int) -> BinStats:
    return BinStats(
        count=jnp.zeros(num_bins, jnp.int32),
        confidence=jnp.zeros(num_bins, jnp.float32),
        accuracy=jnp.zeros(num_bins, jnp.int32),
    )


def init(num_bins: int = DEFAULT_NUM_BINS) -> MetricState:
    """An all-zero accumulator with ``num_bins`` calibration bins."""
    if num_bins < 1:
        raise ValueError(f"metrics.init: num_bins must be >= 1, got {num_bins}")
    zi = jnp.zeros((), jnp.int32)
    zf = jnp.zeros((), jnp.float32)
    return MetricState(
        tp=zi, fp=zi, fn=zi, dice_sum=zf, iou_sum=zf, num_images=zi, num_pixels=zi,
        brier_sum=zf, nll_sum=zf, top_label=_empty_bins(num_bins),
        foreground=_empty_bins(num_bins),
    )


@jax.jit
def update(
    state: MetricState,
    probs: jax.Array,
    labels: jax.Array,
    threshold: float = 0.5,
    valid: jax.Array | None = None,
) -> MetricState:
    """Add a batch to ``state``. ``valid`` (B,) bool drops padded images from every sum."""
    probs, labels = _check_pair(probs, labels)
    batch = probs.shape[0]
    num_bins = state.top_label.count.shape[-1]
    weight = jnp.ones(batch, jnp.int32) if valid is None else jnp.asarray(valid).astype(jnp.int32)
    if weight.shape != (batch,):
        raise ValueError(f"metrics.update: valid must have shape ({batch},), got {weight.shape}")
    wf = weight.astype(jnp.float32)
    pixels_per_image = int(np.prod(probs.shape[1:]))
    axes = _pixel_axes(probs)

    tp, fp, fn = confusion_counts(probs, labels, threshold)
    bins = {
        v: jax.tree.map(
            lambda x: jnp.sum(x, axis=0),
            _image_bin_stats(probs, labels, weight, num_bins, v),
        )
        for v in ECE_VARIANTS
    }
    batch_state = MetricState(
        tp=jnp.sum(tp * weight),
        fp=jnp.sum(fp * weight),
        fn=jnp.sum(fn * weight),
        dice_sum=jnp.sum(_dice_from_counts(tp, fp, fn) * wf),
        iou_sum=jnp.sum(_iou_from_counts(tp, fp, fn) * wf),
        num_images=jnp.sum(weight),
        num_pixels=jnp.sum(weight) * pixels_per_image,
        brier_sum=jnp.sum(jnp.sum(jnp.square(probs - labels), axis=axes) * wf),
        nll_sum=jnp.sum(jnp.sum(pixel_nll(probs, labels, NLL_EPS), axis=axes) * wf),
        top_label=bins["top_label"],
        foreground=bins["foreground"],
    )
    return merge(state, batch_state)


def merge(a: MetricState, b: MetricState) -> MetricState:
    """Combine two accumulators (associative and commutative: a leaf-wise sum)."""
    return jax.tree.map(jnp.add, a, b)


def merge_across_processes(state: MetricState) -> MetricState:
    """Sum the per-host accumulators of a multi-process job; every process gets the total.

    Use it when each host updated its state from its own local batches only (no global arrays).
    """
    gathered = multihost_utils.process_allgather(state, tiled=False)
    return jax.tree.map(lambda x: jnp.asarray(np.sum(x, axis=0)), gathered)


def compute(state: MetricState) -> dict[str, jax.Array]:
    """Final scalar metrics from an accumulator.

    Keys: dice, iou (means over images), dice_pooled, iou_pooled (from summed TP/FP/FN),
    ece_top_label, ece_foreground, brier, nll (means over pixels), num_images, num_pixels.
    """
    n_img = jnp.maximum(state.num_images, 1).astype(jnp.float32)
    n_pix = jnp.maximum(state.num_pixels, 1).astype(jnp.float32)
    return {
        "dice": state.dice_sum / n_img,
        "iou": state.iou_sum / n_img,
        "dice_pooled": _dice_from_counts(state.tp, state.fp, state.fn),
        "iou_pooled": _iou_from_counts(state.tp, state.fp, state.fn),
        "ece_top_label": ece_from_bins(state.top_label),
        "ece_foreground": ece_from_bins(state.foreground),
        "brier": state.brier_sum / n_pix,
        "nll": state.nll_sum / n_pix,
        "num_images": state.num_images,
        "num_pixels": state.num_pixels,
    }


def reliability_bins(state: MetricState, variant: str = "top_label") -> dict[str, np.ndarray]:
    """Per-bin data for a reliability diagram, as NumPy arrays.

    Keys: edges (M+1,), count (M,), confidence and accuracy (M,) means per bin (NaN where a bin is
    empty), fraction (M,) of all pixels in the bin, and ece (scalar).
    """
    _check_variant(variant)
    stats: BinStats = getattr(state, variant)
    count = np.asarray(stats.count, np.int64)
    safe = np.maximum(count, 1)
    empty = count == 0
    num_bins = count.shape[-1]
    return {
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
        "count": count,
        "confidence": np.where(empty, np.nan, np.asarray(stats.confidence, np.float64) / safe),
        "accuracy": np.where(empty, np.nan, np.asarray(stats.accuracy, np.float64) / safe),
        "fraction": count / max(int(count.sum()), 1),
        "ece": float(ece_from_bins(stats)),
    }
