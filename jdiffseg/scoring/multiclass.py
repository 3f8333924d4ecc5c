"""Multi-class segmentation metrics, ensemble fusion and uncertainty, in ``jax.numpy``.

Inputs are class probabilities ``probs`` of shape ``(B, ..., K)`` (K = C + 1 classes, 0 the
background, summing to one over the last axis) and integer label maps ``labels`` of shape
``(B, ...)`` (or ``(B, ..., 1)``) with values in ``{0 … C}``. Ensemble members carry a member
axis after the batch: ``(B, n, ..., K)``.

Definitions (per image unless stated otherwise):

* **Prediction**: the arg-max class per pixel (a tie goes to the lower class index).
* **Dice** and **IoU** of class k from its one-vs-rest counts, as in :mod:`jdiffseg.metrics`.
  **A class absent from both prediction and truth scores 1.0** (the binary convention, so with
  one foreground class every number equals the binary metric's); the foreground mean averages
  classes 1 … C with equal weight, and dataset means average images.
* **Confusion matrix**: ``confusion[i, j]`` counts pixels of true class i predicted as j.
* **Top-label ECE**: confidence ``max_k p_k``, hit when the arg-max is the true class; equal-width
  bins on [0, 1] as in :mod:`jdiffseg.metrics`.
* **Classwise ECE** (Kull et al. 2019): per class k, bins of ``p_k`` against the frequency of
  class k; the summary averages the K classes' ECEs.
* **Brier** ``mean over pixels of sum_k (p_k - y_k)^2`` (the multi-class form: with K = 2 it is
  twice the binary one-class Brier of :mod:`jdiffseg.metrics`).
* **NLL** ``-mean log p_y`` in nats, ``p_y`` clipped below at ``eps``.

Fusion of members (``(B, n, ..., K)`` probabilities): ``'mean'`` averages the members' class
probabilities then takes the arg-max; ``'majority'`` takes each member's arg-max label and
keeps the class with most votes (plurality; a tie goes to the lower class); ``'staple'`` is the
multi-class STAPLE of Warfield, Zou and Wells (IEEE TMI 2004, section II-C): EM over the hidden
label map and one K x K confusion matrix per member, the prior fixed to the members' label
frequencies. Uncertainty maps: the entropy over classes of the member mean (bits, in
[0, log2 K]) and the mutual information ``H(mean) - mean H(member)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_NUM_BINS = 10
NLL_EPS = 1e-6
FUSION_METHODS = ("mean", "majority", "staple")
_PARAM_EPS = 1e-6


def _check(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 probs (B, ..., K) and int32 labels (B, ...) with matching pixel shapes."""
    probs = jnp.asarray(probs, jnp.float32)
    labels = jnp.asarray(labels)
    if labels.ndim == probs.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if probs.ndim < 3 or labels.shape != probs.shape[:-1]:
        raise ValueError(
            f"multiclass metrics: labels {tuple(labels.shape)} must be probs "
            f"{tuple(probs.shape)} without its class axis (probs need (B, ..., K))"
        )
    return probs, labels.astype(jnp.int32)


def predict(probs: jax.Array) -> jax.Array:
    """The arg-max label map (B, ...) int32 of class probabilities (B, ..., K)."""
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    """Label map (B, ...) -> float32 one-hot (B, ..., num_classes)."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def confusion_matrix(pred: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Per-image confusion matrices (B, K, K) int32; [b, i, j] = pixels of truth i predicted j."""
    batch = labels.shape[0]
    truth = one_hot(labels.reshape(batch, -1), num_classes)
    guess = one_hot(pred.reshape(batch, -1), num_classes)
    return jnp.einsum("bpi,bpj->bij", truth, guess).astype(jnp.int32)


def _class_counts(confusion: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One-vs-rest (TP, FP, FN) per class from confusion matrices (..., K, K), each (..., K)."""
    tp = jnp.diagonal(confusion, axis1=-2, axis2=-1)
    fp = jnp.sum(confusion, axis=-2) - tp
    fn = jnp.sum(confusion, axis=-1) - tp
    return tp, fp, fn


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, 1.0 where den == 0 (class absent from prediction and truth)."""
    return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 1.0)


def dice_from_confusion(confusion: jax.Array) -> jax.Array:
    """Per-class Dice (..., K) from confusion matrices (..., K, K); absent/absent = 1."""
    tp, fp, fn = (x.astype(jnp.float32) for x in _class_counts(confusion))
    return _ratio(2.0 * tp, 2.0 * tp + fp + fn)


def iou_from_confusion(confusion: jax.Array) -> jax.Array:
    """Per-class IoU (..., K) from confusion matrices (..., K, K); absent/absent = 1."""
    tp, fp, fn = (x.astype(jnp.float32) for x in _class_counts(confusion))
    return _ratio(tp, tp + fp + fn)


def foreground_mean(per_class: jax.Array) -> jax.Array:
    """Mean over classes 1 … C (the background, class 0, left out) of a (..., K) array."""
    return jnp.mean(per_class[..., 1:], axis=-1)


def _pixel_brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(probs - one_hot(labels, probs.shape[-1])), axis=-1)


def _pixel_nll(probs: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
    p_true = jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
    return -jnp.log(jnp.maximum(p_true, eps))


class BinStats(NamedTuple):
    """Per-bin sums; leading axes are whatever the caller batched over."""

    count: jax.Array  # int32 (..., num_bins)
    confidence: jax.Array  # float32 (..., num_bins): sum of confidences
    accuracy: jax.Array  # int32 (..., num_bins): sum of hits


def _bins(conf: jax.Array, hit: jax.Array, num_bins: int) -> BinStats:
    """Bin sums over the last axis of conf/hit (..., P): a masked reduction XLA fuses."""
    idx = jnp.clip(jnp.floor(conf * num_bins).astype(jnp.int32), 0, num_bins - 1)
    in_bin = idx[..., None] == jnp.arange(num_bins, dtype=jnp.int32)
    return BinStats(
        count=jnp.sum(in_bin, axis=-2, dtype=jnp.int32),
        confidence=jnp.sum(jnp.where(in_bin, conf[..., None], 0.0), axis=-2),
        accuracy=jnp.sum(in_bin & hit[..., None], axis=-2, dtype=jnp.int32),
    )


def ece_from_bins(stats: BinStats) -> jax.Array:
    """sum_k n_k / N |acc_k - conf_k| over the last (bin) axis; 0 for no pixels."""
    total = jnp.sum(stats.count, axis=-1).astype(jnp.float32)
    gap = jnp.abs(stats.accuracy.astype(jnp.float32) - stats.confidence)
    return jnp.where(total > 0, jnp.sum(gap, axis=-1) / jnp.maximum(total, 1.0), 0.0)


def top_label_bins(probs: jax.Array, labels: jax.Array, num_bins: int) -> BinStats:
    """Per-image top-label bin sums, each (B, num_bins)."""
    conf = jnp.max(probs, axis=-1).reshape(probs.shape[0], -1)
    hit = (predict(probs) == labels).reshape(probs.shape[0], -1)
    return _bins(conf, hit, num_bins)


def classwise_bins(probs: jax.Array, labels: jax.Array, num_bins: int) -> BinStats:
    """Per-image, per-class bin sums of p_k against 1[y = k], each (B, K, num_bins)."""
    batch, k = probs.shape[0], probs.shape[-1]
    conf = jnp.moveaxis(probs.reshape(batch, -1, k), -1, 1)  # (B, K, P)
    hit = jnp.moveaxis(one_hot(labels.reshape(batch, -1), k) > 0.5, -1, 1)
    return _bins(conf, hit, num_bins)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def per_image_metrics(
    probs: jax.Array, labels: jax.Array, num_bins: int = DEFAULT_NUM_BINS
) -> dict[str, jax.Array]:
    """Per-image metrics: dice and iou (B, K) per class, dice_mean and iou_mean (B,) over the
    foreground classes, ece_top_label, ece_classwise, brier and nll (B,)."""
    probs, labels = _check(probs, labels)
    conf = confusion_matrix(predict(probs), labels, probs.shape[-1])
    dice, iou = dice_from_confusion(conf), iou_from_confusion(conf)
    axes = tuple(range(1, labels.ndim))
    return {
        "dice": dice,
        "iou": iou,
        "dice_mean": foreground_mean(dice),
        "iou_mean": foreground_mean(iou),
        "ece_top_label": ece_from_bins(top_label_bins(probs, labels, num_bins)),
        "ece_classwise": jnp.mean(ece_from_bins(classwise_bins(probs, labels, num_bins)), -1),
        "brier": jnp.mean(_pixel_brier(probs, labels), axis=axes),
        "nll": jnp.mean(_pixel_nll(probs, labels, NLL_EPS), axis=axes),
    }


class MultiClassState(NamedTuple):
    """Mergeable sums over a data set; two states combine leaf by leaf with :func:`merge`."""

    confusion: jax.Array  # int32 (K, K), pooled over images
    dice_sum: jax.Array  # float32 (K,): sum of per-image per-class Dice
    iou_sum: jax.Array  # float32 (K,)
    num_images: jax.Array  # int32 ()
    num_pixels: jax.Array  # int32 ()
    brier_sum: jax.Array  # float32 ()
    nll_sum: jax.Array  # float32 ()
    top_label: BinStats  # (num_bins,) each
    classwise: BinStats  # (K, num_bins) each


def init(num_classes: int, num_bins: int = DEFAULT_NUM_BINS) -> MultiClassState:
    """An all-zero accumulator for K = num_classes classes (background included)."""
    if num_classes < 2 or num_bins < 1:
        raise ValueError(
            f"multiclass.init: need num_classes >= 2 (background included) and num_bins >= 1, "
            f"got {num_classes} and {num_bins}"
        )
    k = num_classes

    def bins(*lead: int) -> BinStats:
        shape = (*lead, num_bins)
        return BinStats(jnp.zeros(shape, jnp.int32), jnp.zeros(shape), jnp.zeros(shape, jnp.int32))

    zi, zf = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    return MultiClassState(
        confusion=jnp.zeros((k, k), jnp.int32),
        dice_sum=jnp.zeros(k),
        iou_sum=jnp.zeros(k),
        num_images=zi,
        num_pixels=zi,
        brier_sum=zf,
        nll_sum=zf,
        top_label=bins(),
        classwise=bins(k),
    )


@jax.jit
def update(
    state: MultiClassState, probs: jax.Array, labels: jax.Array, valid: jax.Array | None = None
) -> MultiClassState:
    """Adds a batch; ``valid`` (B,) drops padded images from every sum."""
    probs, labels = _check(probs, labels)
    k, batch = state.confusion.shape[0], probs.shape[0]
    if probs.shape[-1] != k:
        raise ValueError(f"multiclass.update: probs have {probs.shape[-1]} classes, state {k}")
    w = jnp.ones(batch, jnp.int32) if valid is None else jnp.asarray(valid).astype(jnp.int32)
    num_bins = state.top_label.count.shape[-1]
    conf = confusion_matrix(predict(probs), labels, k)
    axes = tuple(range(1, labels.ndim))

    def weighted(x: jax.Array) -> jax.Array:
        return jnp.sum(x * w.reshape((batch,) + (1,) * (x.ndim - 1)).astype(x.dtype), axis=0)

    batch_state = MultiClassState(
        confusion=weighted(conf),
        dice_sum=weighted(dice_from_confusion(conf)),
        iou_sum=weighted(iou_from_confusion(conf)),
        num_images=jnp.sum(w),
        num_pixels=jnp.sum(w) * int(np.prod(labels.shape[1:])),
        brier_sum=weighted(jnp.sum(_pixel_brier(probs, labels), axis=axes)),
        nll_sum=weighted(jnp.sum(_pixel_nll(probs, labels, NLL_EPS), axis=axes)),
        top_label=jax.tree.map(weighted, top_label_bins(probs, labels, num_bins)),
        classwise=jax.tree.map(weighted, classwise_bins(probs, labels, num_bins)),
    )
    return merge(state, batch_state)


def merge(a: MultiClassState, b: MultiClassState) -> MultiClassState:
    """Combines two accumulators (a leaf-wise sum)."""
    return jax.tree.map(jnp.add, a, b)


def compute(state: MultiClassState) -> dict[str, jax.Array]:
    """Final metrics: dice_per_class and iou_per_class (K,) (means over images), dice and iou
    (their foreground means), dice_pooled_per_class (K,) and dice_pooled (from the pooled
    confusion matrix), confusion (K, K), ece_top_label, ece_classwise (mean over classes),
    ece_classwise_per_class (K,), brier, nll, num_images, num_pixels."""
    n_img = jnp.maximum(state.num_images, 1).astype(jnp.float32)
    n_pix = jnp.maximum(state.num_pixels, 1).astype(jnp.float32)
    dice, iou = state.dice_sum / n_img, state.iou_sum / n_img
    pooled = dice_from_confusion(state.confusion)
    classwise = ece_from_bins(state.classwise)
    return {
        "dice": foreground_mean(dice),
        "iou": foreground_mean(iou),
        "dice_per_class": dice,
        "iou_per_class": iou,
        "dice_pooled": foreground_mean(pooled),
        "dice_pooled_per_class": pooled,
        "confusion": state.confusion,
        "ece_top_label": ece_from_bins(state.top_label),
        "ece_classwise": jnp.mean(classwise),
        "ece_classwise_per_class": classwise,
        "brier": state.brier_sum / n_pix,
        "nll": state.nll_sum / n_pix,
        "num_images": state.num_images,
        "num_pixels": state.num_pixels,
    }


# ----------------------------------------------------------------------------- fusion


def _check_members(members: jax.Array) -> jax.Array:
    if members.ndim < 4:
        raise ValueError(
            f"multiclass fusion: members must be (B, n, ..., K), got {tuple(members.shape)}"
        )
    return jnp.asarray(members, jnp.float32)


def ensemble_mean(members: jax.Array) -> jax.Array:
    """Mean member class probabilities (B, ..., K): the ensemble's predictive distribution."""
    return jnp.mean(_check_members(members), axis=1)


def vote_fraction(members: jax.Array) -> jax.Array:
    """Fraction of members whose arg-max is each class, (B, ..., K)."""
    members = _check_members(members)
    return jnp.mean(one_hot(predict(members), members.shape[-1]), axis=1)


def _staple_single(
    decisions: jax.Array, k: int, init_diagonal: float, max_iters: int, tol: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Multi-class STAPLE for one image; decisions (P, n) int32 labels.

    theta (n, K, K): theta[j, s', s] = P(member j says s' | truth s); the prior f(s) is the
    frequency of label s among all decisions, fixed (Warfield et al.'s global prior).
    """
    n = decisions.shape[1]
    said = one_hot(decisions, k)  # (P, n, K)
    prior = jnp.clip(jnp.mean(said, axis=(0, 1)), _PARAM_EPS, 1.0)
    off = (1.0 - init_diagonal) / (k - 1)
    theta0 = jnp.broadcast_to(
        jnp.where(jnp.eye(k, dtype=bool), init_diagonal, off), (n, k, k)
    ).astype(jnp.float32)

    def posterior(theta: jax.Array) -> jax.Array:
        # log W[i, s] = log f(s) + sum_j log theta[j, D_ij, s]
        log_theta = jnp.log(jnp.clip(theta, _PARAM_EPS, 1.0))
        log_w = jnp.log(prior) + jnp.einsum("pja,jas->ps", said, log_theta)
        return jax.nn.softmax(log_w, axis=-1)

    def m_step(w: jax.Array, theta: jax.Array) -> jax.Array:
        mass = jnp.sum(w, axis=0)  # (K,) posterior mass of each true class
        new = jnp.einsum("pja,ps->jas", said, w) / jnp.maximum(mass, 1e-30)
        return jnp.where(mass > 0, new, theta)  # keep a class's column where it has no mass

    def cond(carry: tuple) -> jax.Array:
        it, _, delta = carry
        return (it < max_iters) & (delta > tol)

    def body(carry: tuple) -> tuple:
        it, theta, _ = carry
        new = m_step(posterior(theta), theta)
        return it + 1, new, jnp.max(jnp.abs(new - theta))

    iters, theta, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), theta0, jnp.float32(jnp.inf)))
    return posterior(theta), theta, iters


class StapleResult(NamedTuple):
    """Multi-class STAPLE: posterior class probabilities, labels, member confusion matrices."""

    probs: jax.Array  # (B, ..., K)
    labels: jax.Array  # (B, ...) int32 arg-max of probs
    theta: jax.Array  # (B, n, K, K): P(member says s' | truth s)
    iterations: jax.Array  # (B,) int32


@functools.partial(jax.jit, static_argnames=("max_iters",))
def staple(
    members: jax.Array, *, init_diagonal: float = 0.99, max_iters: int = 100, tol: float = 1e-5
) -> StapleResult:
    """Multi-class STAPLE of the members' arg-max labels, per image (see the module doc)."""
    members = _check_members(members)
    batch, n, k = members.shape[0], members.shape[1], members.shape[-1]
    pixel_shape = members.shape[2:-1]
    decisions = jnp.moveaxis(predict(members).reshape(batch, n, -1), 1, 2)  # (B, P, n)
    run = functools.partial(
        _staple_single, k=k, init_diagonal=init_diagonal, max_iters=max_iters, tol=tol
    )
    w, theta, iters = jax.vmap(run)(decisions)
    probs = w.reshape((batch, *pixel_shape, k))
    return StapleResult(probs=probs, labels=predict(probs), theta=theta, iterations=iters)


class Fused(NamedTuple):
    """A fused label map and the method's soft consensus it was taken from."""

    probs: jax.Array  # (B, ..., K): member mean, vote fraction or STAPLE posterior
    labels: jax.Array  # (B, ...) int32


def fuse(members: jax.Array, method: str = "mean") -> Fused:
    """Fuses members (B, n, ..., K) with ``method`` in :data:`FUSION_METHODS`.

    For calibration use :func:`ensemble_mean`; ``Fused.probs`` is the method's own consensus.
    """
    if method == "mean":
        probs = ensemble_mean(members)
    elif method == "majority":
        probs = vote_fraction(members)
    elif method == "staple":
        probs = staple(members).probs
    else:
        raise ValueError(
            f"multiclass fusion: unknown method {method!r}; expected one of {FUSION_METHODS}"
        )
    return Fused(probs, predict(probs))


# ----------------------------------------------------------------------------- uncertainty


def entropy_bits(probs: jax.Array) -> jax.Array:
    """Entropy over the last (class) axis in bits, with 0 log 0 = 0: (B, ..., K) -> (B, ...)."""
    p = jnp.clip(probs, 0.0, 1.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.maximum(p, 1e-30)), 0.0), axis=-1)


def uncertainty_maps(members: jax.Array) -> dict[str, jax.Array]:
    """Per-pixel ``entropy`` of the member mean and ``mutual_information`` (its epistemic part,
    ``H(mean) - mean_j H(member j)``, >= 0), both in bits, each (B, ...)."""
    members = _check_members(members)
    total = entropy_bits(jnp.mean(members, axis=1))
    expected = jnp.mean(entropy_bits(members), axis=1)
    return {"entropy": total, "mutual_information": jnp.maximum(total - expected, 0.0)}
