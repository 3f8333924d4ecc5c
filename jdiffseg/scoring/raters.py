"""Ambiguity and calibration metrics of a sampled ensemble against several annotators (raters).

Layouts: ``members`` are the sampled ensemble members, foreground probabilities or masks in
[0, 1] of shape ``(B, n, H, W[, 1])`` as in :mod:`jdiffseg.scoring.fusion`; ``raters`` are the
annotators' masks in the same layout ``(B, R, H, W[, 1])``, image ``b`` of both belonging
together (any number of pixel axes after the set axis works). Per-pixel maps without a set
axis (``probs``, ``soft``) are ``(B, H, W[, 1])``. Members and raters are binarised with
``x > threshold`` (strict, default 0.5) wherever a mask is needed, as in
:mod:`jdiffseg.scoring.metrics`.

Definitions (per image unless stated otherwise):

* **Distance** between two masks ``d = 1 - IoU``, with ``IoU = 1`` (so ``d = 0``) for two empty
  masks.
* **Sample diversity** ``E d(S, S')`` over the ``n (n - 1)`` ordered pairs of distinct members
  ``i != j`` (0 for a set of one): the unbiased estimate of the expected distance between two
  independent samples. Including the pairs ``i = j`` (whose distance is 0), as some public code
  does, scales it by ``(n - 1) / n``.
* **GED** the squared generalised energy distance (Kohl et al. 2018)
  ``D^2 = 2 E d(S, Y) - E d(S, S') - E d(Y, Y')``; the cross term averages all ``n R`` pairs,
  the within-set terms use the distinct-pair convention of the diversity above. It is 0 when
  the two sets are equal single masks and can dip below 0 for small sets of one law (an
  unbiased estimate of a non-negative quantity).
* **Hungarian-matched IoU** (Kohl et al. 2018; CAR, CIMD on LIDC): both sets are replicated to
  ``L = lcm(n, R)`` elements (member ``i`` to ``L / n`` copies, rater ``j`` to ``L / R``), the
  one-to-one assignment minimising the summed ``1 - IoU`` is solved exactly, and the score is
  the mean IoU of the ``L`` matched pairs (empty/empty IoU = 1). 1 when the two sets agree up
  to order.
* **Soft label** ``q`` per pixel: the fraction of raters marking it foreground.
* **Soft-label calibration** of foreground probabilities ``p`` against ``q``:
  ECE as metrics' ``'foreground'`` variant (``num_bins`` equal-width bins over ``p``, the last
  one closed, ``sum_k n_k / N |mean q_k - mean p_k|``); Brier ``mean (p - q)^2``; NLL
  ``-mean [q log p + (1 - q) log(1 - p)]`` in nats, ``p`` clipped to ``[NLL_EPS, 1 - NLL_EPS]``
  (its minimum over ``p`` is the entropy of ``q``, reached at ``p = q``, not 0). With one rater
  they are the hard-label metrics of :mod:`jdiffseg.scoring.metrics`.
* **Boundary** of a mask: the pixels with a 4-neighbour (a face neighbour on any pixel axis)
  of the other label, on both sides of the contour: foreground pixels next to background and
  background pixels next to foreground. Neighbours lie inside the image; the image edge is no
  boundary. An empty or full mask has none.
* **Boundary band** of width ``k``: the pixels whose Euclidean distance (pixel units) to the
  nearest boundary pixel is at most ``k`` (``k = 0``: the boundary itself). For a soft label
  the boundary is that of its majority mask ``q > 0.5`` (strictly more than half the raters).
* **Boundary-band ECE**: the soft-label ECE over the pixels of the band only. An image without
  boundary contributes no pixels; an ECE over no pixels is NaN, meaning "undefined: no
  reference boundary", so NaN-aware means over images leave such images out.
* **Per-image ECE**: the ECE within each image, beside the pooled ECE over all pixels of the
  batch (pooled: bins summed over images before taking the gaps).
* **Member binarity**: the fraction of member values ``v`` with ``min(v, 1 - v) <= tol``
  (default 0.05), i.e. within ``tol`` of 0 or 1; overall it is the mean over images (every
  image has the same number of member pixels).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, optimize

from jdiffseg.scoring import fusion, metrics

DEFAULT_BAND_PX = 2.0
DEFAULT_BINARY_TOL = 0.05


def _check_sets(members: jax.Array, raters: jax.Array) -> None:
    """Shapes of two sets: (B, n, *pixels) and (B, R, *pixels) with n, R >= 1."""
    m, r = tuple(members.shape), tuple(raters.shape)
    if len(m) < 3 or len(r) != len(m) or r[0] != m[0] or r[2:] != m[2:]:
        raise ValueError(
            f"raters: members {m} and raters {r} must be (B, n, H, W[, 1]) and "
            "(B, R, H, W[, 1]) with the same B and pixel shape H x W"
        )
    if m[1] < 1 or r[1] < 1:
        raise ValueError(f"raters: members {m} and raters {r} need n >= 1 and R >= 1")


def _check_map(probs: jax.Array, other: jax.Array, name: str) -> None:
    """A per-pixel map matching ``probs`` (B, *pixels)."""
    if probs.ndim < 2 or tuple(probs.shape) != tuple(other.shape):
        raise ValueError(
            f"raters: probs {tuple(probs.shape)} and {name} {tuple(other.shape)} must both be "
            "(B, H, W[, 1])"
        )


def _check_unit(x: np.ndarray, name: str) -> None:
    if not np.all((x >= 0.0) & (x <= 1.0)):  # NaN fails too
        raise ValueError(f"raters: {name} of shape {x.shape} has values outside [0, 1]")


def pairwise_iou(a: jax.Array, b: jax.Array, threshold: float = 0.5) -> jax.Array:
    """IoU of every pair of masks of two sets per image, (B, n, m); empty/empty = 1.

    ``a`` (B, n, ...) and ``b`` (B, m, ...) are binarised at ``threshold``.
    """
    _check_sets(a, b)
    x = (a > threshold).reshape(*a.shape[:2], -1).astype(jnp.float32)
    y = (b > threshold).reshape(*b.shape[:2], -1).astype(jnp.float32)
    inter = jnp.einsum("bip,bjp->bij", x, y)
    union = x.sum(-1)[:, :, None] + y.sum(-1)[:, None, :] - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def _mean_distance(iou: jax.Array, distinct: bool) -> jax.Array:
    """Mean of ``1 - IoU`` over all pairs, or over the pairs i != j of a set with itself."""
    d = 1.0 - iou
    if not distinct:
        return d.mean(axis=(1, 2))
    n = iou.shape[1]
    return d.sum(axis=(1, 2)) / max(n * (n - 1), 1)  # the diagonal is 0


def sample_diversity(samples: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Mean ``1 - IoU`` over distinct pairs of members per image, (B,); 0 for one member."""
    return _mean_distance(pairwise_iou(samples, samples, threshold), distinct=True)


def generalized_energy_distance(
    samples: jax.Array, reference: jax.Array, threshold: float = 0.5
) -> jax.Array:
    """Per-image squared generalised energy distance D²_GED (Kohl et al. 2018), (B,).

    ``samples`` (B, n, ...) and ``reference`` (B, m, ...) are binarised at ``threshold``;
    d = 1 − IoU; the within-set terms average distinct pairs (see the module docstring).
    """
    cross = _mean_distance(pairwise_iou(samples, reference, threshold), distinct=False)
    return 2.0 * cross - sample_diversity(samples, threshold) - sample_diversity(
        reference, threshold
    )


def hungarian_iou(samples: jax.Array, raters: jax.Array, threshold: float = 0.5) -> np.ndarray:
    """Mean IoU of the optimal one-to-one matching of the sets replicated to lcm(n, R), (B,).

    Solved exactly per image with SciPy's ``linear_sum_assignment`` on cost ``1 - IoU``.
    """
    iou = np.asarray(pairwise_iou(samples, raters, threshold), np.float64)
    n, r = iou.shape[1:]
    size = math.lcm(n, r)
    rows, cols = np.arange(size) % n, np.arange(size) % r
    scores = []
    for image in iou:
        replicated = image[np.ix_(rows, cols)]
        i, j = optimize.linear_sum_assignment(1.0 - replicated)
        scores.append(replicated[i, j].mean())
    return np.asarray(scores)


def soft_label(raters: jax.Array) -> jax.Array:
    """Fraction of raters marking each pixel foreground (``> 0.5``), (B, R, ...) -> (B, ...)."""
    if raters.ndim < 3 or raters.shape[1] < 1:
        raise ValueError(
            f"raters: raters {tuple(raters.shape)} must be (B, R, H, W[, 1]) with R >= 1"
        )
    return jnp.mean((jnp.asarray(raters) > 0.5).astype(jnp.float32), axis=1)


def soft_brier(probs: jax.Array, soft: jax.Array) -> jax.Array:
    """Per-image ``mean (p - q)^2`` over pixels against the soft label, (B,)."""
    _check_map(probs, soft, "soft")
    diff = jnp.asarray(probs, jnp.float32) - jnp.asarray(soft, jnp.float32)
    return jnp.mean(jnp.square(diff).reshape(probs.shape[0], -1), axis=1)


def soft_nll(probs: jax.Array, soft: jax.Array, eps: float = metrics.NLL_EPS) -> jax.Array:
    """Per-image mean cross-entropy (nats) of ``p`` against the soft label, (B,)."""
    _check_map(probs, soft, "soft")
    nll = metrics.pixel_nll(jnp.asarray(probs, jnp.float32), jnp.asarray(soft, jnp.float32), eps)
    return jnp.mean(nll.reshape(probs.shape[0], -1), axis=1)


@functools.partial(jax.jit, static_argnames=("num_bins", "per_image"))
def soft_ece(
    probs: jax.Array,
    soft: jax.Array,
    num_bins: int = metrics.DEFAULT_NUM_BINS,
    *,
    include: jax.Array | None = None,
    per_image: bool = False,
) -> jax.Array:
    """Foreground ECE of ``probs`` against soft labels in [0, 1] (hard masks work too).

    Over the pixels where ``include`` (bool, same shape; all if None): pooled over the batch
    (scalar), or per image (B,) if ``per_image``. NaN where no pixel is included.
    """
    _check_map(probs, soft, "soft")
    if include is not None:
        _check_map(probs, include, "include")
    batch = probs.shape[0]
    conf = jnp.asarray(probs, jnp.float32).reshape(batch, -1)
    target = jnp.asarray(soft, jnp.float32).reshape(batch, -1)
    everywhere = jnp.ones(probs.shape, bool)
    mask = (everywhere if include is None else jnp.asarray(include, bool)).reshape(batch, -1)
    stats = metrics.bin_stats(conf, target, mask, num_bins)
    if not per_image:
        stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)
    return jnp.where(jnp.sum(stats.count, axis=-1) > 0, metrics.ece_from_bins(stats), jnp.nan)


def boundary(masks: np.ndarray) -> np.ndarray:
    """Boundary pixels of each mask ``> 0.5`` of a batch (B, ...), both sides of the contour."""
    m = np.asarray(masks) > 0.5
    out = np.zeros(m.shape, bool)
    for axis in range(1, m.ndim):
        differs = np.diff(m, axis=axis)  # neighbours k and k + 1 along the axis disagree
        lead = [slice(None)] * m.ndim
        lead[axis] = slice(1, None)
        trail = [slice(None)] * m.ndim
        trail[axis] = slice(None, -1)
        out[tuple(lead)] |= differs
        out[tuple(trail)] |= differs
    return out


def boundary_band(reference: np.ndarray, band_px: float = DEFAULT_BAND_PX) -> np.ndarray:
    """Pixels within ``band_px`` (Euclidean) of the boundary of each ``reference > 0.5``, (B, ...).

    ``reference`` is a hard mask or a soft label (then the majority mask's boundary).
    """
    if band_px < 0:
        raise ValueError(f"raters: band_px must be >= 0, got {band_px}")
    edges = boundary(reference)
    band = np.zeros(edges.shape, bool)
    for b, edge in enumerate(edges):
        if edge.any():
            band[b] = ndimage.distance_transform_edt(~edge) <= band_px
    return band


def boundary_ece(
    probs: jax.Array,
    reference: jax.Array,
    num_bins: int = metrics.DEFAULT_NUM_BINS,
    band_px: float = DEFAULT_BAND_PX,
    *,
    per_image: bool = False,
) -> jax.Array:
    """Foreground ECE against ``reference`` (hard mask or soft label) within its boundary band.

    Pooled (scalar) or per image (B,); NaN where the band is empty (no reference boundary).
    """
    band = boundary_band(np.asarray(reference), band_px)
    return soft_ece(probs, reference, num_bins, include=jnp.asarray(band), per_image=per_image)


def member_binarity(members: jax.Array, tol: float = DEFAULT_BINARY_TOL) -> jax.Array:
    """Per-image fraction of member values within ``tol`` of 0 or 1, (B,), members (B, n, ...)."""
    m = jnp.asarray(members, jnp.float32)
    if m.ndim < 3:
        raise ValueError(f"raters: members {m.shape} must be (B, n, H, W[, 1])")
    near = jnp.minimum(m, 1.0 - m) <= tol
    return jnp.mean(near.reshape(m.shape[0], -1), axis=1)


def rater_metrics(
    members: jax.Array,
    raters: jax.Array,
    *,
    num_bins: int = metrics.DEFAULT_NUM_BINS,
    band_px: float = DEFAULT_BAND_PX,
    threshold: float = 0.5,
    binary_tol: float = DEFAULT_BINARY_TOL,
) -> dict[str, float | np.ndarray]:
    """All rater metrics of a batch: members (B, n, ...) in [0, 1] against raters (B, R, ...).

    The prediction is the ensemble mean of the members (:func:`fusion.ensemble_mean`); the
    calibration target is the raters' soft label. Keys ending in ``_per_image`` are (B,) arrays:
    ged, diversity, hungarian_iou, ece_soft, brier_soft, nll_soft, ece_band (NaN where the
    majority mask has no boundary), band_pixels (int) and binarity. The same names but
    band_pixels without the suffix are floats over the batch: ece_soft and ece_band pooled over
    its pixels (ece_band NaN when no image has a boundary), the others the mean over images
    (for Brier, NLL and binarity equal to the pooled value, every image having the same number
    of pixels). ``bins`` holds the batch's summed bin statistics ('soft', 'band'): add them
    over batches and take :func:`pooled_ece` for a data-set ECE.
    """
    m = np.asarray(members, np.float32)
    r = np.asarray(raters, np.float32)
    _check_sets(m, r)
    _check_unit(m, "members")
    _check_unit(r, "raters")
    probs = fusion.ensemble_mean(jnp.asarray(m))
    soft = soft_label(jnp.asarray(r))
    band = boundary_band(np.asarray(soft), band_px)
    band_j = jnp.asarray(band)
    per_image = {
        "ged": generalized_energy_distance(m, r, threshold),
        "diversity": sample_diversity(m, threshold),
        "hungarian_iou": hungarian_iou(m, r, threshold),
        "ece_soft": soft_ece(probs, soft, num_bins, per_image=True),
        "brier_soft": soft_brier(probs, soft),
        "nll_soft": soft_nll(probs, soft),
        "ece_band": soft_ece(probs, soft, num_bins, include=band_j, per_image=True),
        "band_pixels": band.reshape(band.shape[0], -1).sum(axis=1),
        "binarity": member_binarity(m, binary_tol),
    }
    out: dict[str, float | np.ndarray] = {
        f"{k}_per_image": np.asarray(v) for k, v in per_image.items()
    }
    means = ("ged", "diversity", "hungarian_iou", "brier_soft", "nll_soft", "binarity")
    out.update({k: float(np.mean(per_image[k])) for k in means})
    batch = probs.shape[0]
    flat = (jnp.asarray(probs, jnp.float32).reshape(batch, -1), soft.reshape(batch, -1))
    bins = {"soft": metrics.bin_stats(*flat, jnp.ones(flat[0].shape, bool), num_bins),
            "band": metrics.bin_stats(*flat, band_j.reshape(batch, -1), num_bins)}
    out["bins"] = {k: jax.tree.map(lambda x: np.asarray(jnp.sum(x, axis=0)), v)
                   for k, v in bins.items()}
    out["ece_soft"], out["ece_band"] = (pooled_ece(out["bins"][k]) for k in ("soft", "band"))
    return out


def pooled_ece(bins: metrics.BinStats) -> float:
    """The ECE of bin sums pooled over images (and batches, by adding them); NaN over no
    pixels."""
    if float(np.sum(bins.count)) == 0:
        return math.nan
    return float(metrics.ece_from_bins(jax.tree.map(jnp.asarray, bins)))
