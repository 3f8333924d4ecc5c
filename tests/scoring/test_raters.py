"""Rater metrics against independent NumPy loops and hand-checked cases."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.scoring import metrics, raters

# ---- independent NumPy references (explicit loops) ---------------------------------------------


def np_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def np_mean_d(x, y, distinct):
    values = [1.0 - np_iou(a, b) for i, a in enumerate(x) for j, b in enumerate(y)
              if not (distinct and i == j)]
    return np.mean(values) if values else 0.0


def np_ged_and_diversity(samples, reference):
    ged, diversity = [], []
    for s, r in zip(samples > 0.5, reference > 0.5, strict=True):
        ged.append(2 * np_mean_d(s, r, False) - np_mean_d(s, s, True) - np_mean_d(r, r, True))
        diversity.append(np_mean_d(s, s, True))
    return np.array(ged), np.array(diversity)


def np_hungarian(samples, reference):
    """Best one-to-one matching of the replicated sets by trying every permutation."""
    out = []
    for s, r in zip(samples > 0.5, reference > 0.5, strict=True):
        size = math.lcm(len(s), len(r))
        left = [s[i % len(s)] for i in range(size)]
        right = [r[j % len(r)] for j in range(size)]
        best = max(sum(np_iou(left[i], right[perm[i]]) for i in range(size))
                   for perm in itertools.permutations(range(size)))
        out.append(best / size)
    return np.array(out)


def np_boundary(mask):
    """Pixels of a 2D mask with a 4-neighbour inside the image of the other label."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] != mask[y, x]:
                    out[y, x] = True
    return out


def np_band(mask, k):
    edge = [(y, x) for y, x in zip(*np.nonzero(np_boundary(mask)), strict=True)]
    band = np.zeros(mask.shape, bool)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            band[y, x] = any(math.hypot(y - by, x - bx) <= k for by, bx in edge)
    return band


def np_ece(p, q, include, num_bins):
    """Foreground ECE over the included pixels of p, q (any shape); NaN when none."""
    count, conf, acc = [0] * num_bins, [0.0] * num_bins, [0.0] * num_bins
    for pi, qi, keep in zip(p.ravel(), q.ravel(), include.ravel(), strict=True):
        if keep:
            k = min(math.floor(float(pi) * num_bins), num_bins - 1)
            count[k] += 1
            conf[k] += float(pi)
            acc[k] += float(qi)
    total = sum(count)
    gaps = [abs(a - c) for a, c in zip(acc, conf, strict=True)]
    return math.nan if total == 0 else sum(gaps) / total


def np_soft(ratings):
    """Per-image soft label: loop over raters, count the foreground votes."""
    q = np.zeros(ratings.shape[:1] + ratings.shape[2:])
    for b in range(ratings.shape[0]):
        for r in range(ratings.shape[1]):
            q[b] += ratings[b, r] > 0.5
    return q / ratings.shape[1]


def _random_sets(seed, b=3, n=3, r=2, size=8):
    rng = np.random.default_rng(seed)
    members = rng.uniform(size=(b, n, size, size, 1)).astype(np.float32)
    members[:, 0] = members[:, 0] ** 8  # one member mostly near 0, for binarity
    ratings = np.zeros((b, r, size, size, 1), np.float32)
    for i in range(b):
        for j in range(r):  # jittered squares: raters that disagree near the boundary
            y0, x0 = rng.integers(1, 3, size=2)
            y1, x1 = rng.integers(5, 8, size=2)
            ratings[i, j, y0:y1, x0:x1] = 1.0
    ratings[-1] = 0.0  # an image no rater marks: no boundary
    return members, ratings


# ---- against the loops --------------------------------------------------------------------------


def test_ged_and_diversity_match_loops_over_pairs():
    rng = np.random.default_rng(3)
    samples = rng.uniform(size=(3, 4, 6, 6, 1)).astype(np.float32)
    reference = (rng.uniform(size=(3, 2, 6, 6, 1)) < 0.3).astype(np.float32)
    samples[0, :2] = 0.0  # two empty members: d(empty, empty) = 0
    ged, diversity = np_ged_and_diversity(samples, reference)
    got = raters.generalized_energy_distance(jnp.asarray(samples), jnp.asarray(reference))
    np.testing.assert_allclose(got, ged, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raters.sample_diversity(samples), diversity, rtol=1e-5)


@pytest.mark.parametrize(("n", "r"), [(2, 3), (3, 2), (2, 2)])
def test_hungarian_iou_matches_brute_force(n, r):
    rng = np.random.default_rng(n * 10 + r)
    samples = (rng.uniform(size=(3, n, 4, 4)) < 0.4).astype(np.float32)
    reference = (rng.uniform(size=(3, r, 4, 4)) < 0.4).astype(np.float32)
    samples[0, 0] = reference[0, 0] = 0.0  # an empty pair: IoU 1
    got = raters.hungarian_iou(samples, reference)
    np.testing.assert_allclose(got, np_hungarian(samples, reference), rtol=1e-6)


def test_rater_metrics_match_loops():
    members, ratings = _random_sets(0)
    out = raters.rater_metrics(members, ratings, num_bins=5, band_px=1.5)
    probs = members.astype(np.float64).mean(axis=1)
    q = np_soft(ratings)
    everywhere = np.ones(q.shape[1:], bool)
    ged, diversity = np_ged_and_diversity(members, ratings)
    band = np.stack([np_band(img[..., 0] > 0.5, 1.5)[..., None] for img in q])
    expected = {
        "ged": ged,
        "diversity": diversity,
        "hungarian_iou": np_hungarian(members, ratings),
        "ece_soft": [np_ece(probs[b], q[b], everywhere, 5) for b in range(3)],
        "brier_soft": [np.mean([(pi - qi) ** 2 for pi, qi in zip(probs[b].ravel(),
                                                                 q[b].ravel(), strict=True)])
                       for b in range(3)],
        "nll_soft": [np.mean([-(qi * math.log(min(max(pi, 1e-6), 1 - 1e-6))
                                + (1 - qi) * math.log(1 - min(max(pi, 1e-6), 1 - 1e-6)))
                              for pi, qi in zip(probs[b].ravel(), q[b].ravel(), strict=True)])
                     for b in range(3)],
        "ece_band": [np_ece(probs[b], q[b], band[b], 5) for b in range(3)],
        "band_pixels": band.reshape(3, -1).sum(axis=1),
        "binarity": [np.mean([min(v, 1 - v) <= 0.05 for v in members[b].astype(np.float64).ravel()])
                     for b in range(3)],
    }
    for key, value in expected.items():
        np.testing.assert_allclose(out[f"{key}_per_image"], value, rtol=1e-4, atol=1e-6,
                                   err_msg=key)
        if key not in ("ece_soft", "ece_band", "band_pixels"):
            np.testing.assert_allclose(out[key], np.mean(value), rtol=1e-4, err_msg=key)
    assert np.isnan(out["ece_band_per_image"][-1]) and out["band_pixels_per_image"][-1] == 0
    np.testing.assert_allclose(out["ece_soft"], np_ece(probs, q, np.ones(q.shape, bool), 5),
                               rtol=1e-4)
    np.testing.assert_allclose(out["ece_band"], np_ece(probs, q, band, 5), rtol=1e-4)


def test_one_rater_gives_the_hard_label_metrics():
    members, ratings = _random_sets(1, r=1)
    out = raters.rater_metrics(members, ratings, num_bins=5)
    probs = jnp.mean(jnp.asarray(members), axis=1)
    hard = jnp.asarray(ratings[:, 0])
    pooled = metrics.ece(probs, hard, 5, "foreground")
    per = metrics.per_image_metrics(probs, hard, num_bins=5)
    np.testing.assert_allclose(out["ece_soft"], pooled, rtol=1e-5)
    np.testing.assert_allclose(out["ece_soft_per_image"], per["ece_foreground"], rtol=1e-5)
    np.testing.assert_allclose(out["brier_soft_per_image"], per["brier"], rtol=1e-5)
    np.testing.assert_allclose(out["nll_soft_per_image"], per["nll"], rtol=1e-5)


# ---- hand-checked cases -------------------------------------------------------------------------


def test_ged_and_diversity_by_hand():
    a = np.zeros((1, 1, 4, 4), np.float32)
    b = np.zeros((1, 1, 4, 4), np.float32)
    a[0, 0, :2] = 1.0
    b[0, 0, 2:] = 1.0
    np.testing.assert_allclose(raters.generalized_energy_distance(a, a), [0.0], atol=1e-7)
    np.testing.assert_allclose(raters.generalized_energy_distance(a, b), [2.0], atol=1e-7)
    same = np.repeat(a, 3, axis=1)
    np.testing.assert_allclose(raters.sample_diversity(same), [0.0], atol=1e-7)
    np.testing.assert_allclose(raters.sample_diversity(np.concatenate([a, b], 1)), [1.0])


def test_hungarian_iou_by_hand():
    rng = np.random.default_rng(5)
    masks = (rng.uniform(size=(1, 4, 4, 4)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(raters.hungarian_iou(masks, masks[:, [2, 0, 3, 1]]), [1.0])
    # S1 = Y1, S2 = Y2 (disjoint halves), Y3 = half of S1. Replicated to 6: each S three copies,
    # each Y two. Best: S1 -> Y1, Y1, Y3 (1 + 1 + 1/2), S2 -> Y2, Y2, Y3 (1 + 1 + 0): 4.5 / 6.
    s = np.array([[[[1, 1, 0, 0]], [[0, 0, 1, 1]]]], np.float32)  # (1, 2, 1, 4)
    y = np.array([[[[1, 1, 0, 0]], [[0, 0, 1, 1]], [[1, 0, 0, 0]]]], np.float32)
    np.testing.assert_allclose(raters.hungarian_iou(s, y), [0.75])


def test_soft_label_calibration_by_hand():
    # q = [[1, 1/2], [0, 0]] from two raters; p = [[0.9, 0.5], [0.2, 0.0]].
    ratings = np.array([[[[1, 1], [0, 0]], [[1, 0], [0, 0]]]], np.float32)  # (1, 2, 2, 2)
    p = np.array([[[0.9, 0.5], [0.2, 0.0]]], np.float32)
    q = raters.soft_label(ratings)
    np.testing.assert_allclose(q, [[[1.0, 0.5], [0.0, 0.0]]])
    np.testing.assert_allclose(raters.soft_brier(p, q), [(0.01 + 0.04) / 4], rtol=1e-5)
    nll = (-math.log(0.9) + math.log(2.0) - math.log(0.8) - math.log(1 - 1e-6)) / 4
    np.testing.assert_allclose(raters.soft_nll(p, q), [nll], rtol=1e-5)
    # 2 bins: [0, 0.5) holds p = 0.2, 0.0 with q = 0, 0 -> |0 - 0.2|; [0.5, 1] holds 0.9, 0.5
    # with q = 1, 0.5 -> |1.5 - 1.4|. ECE = (0.2 + 0.1) / 4.
    np.testing.assert_allclose(raters.soft_ece(p, q, 2), 0.075, rtol=1e-5)
    np.testing.assert_allclose(raters.soft_ece(p, q, 2, per_image=True), [0.075], rtol=1e-5)
    out = raters.rater_metrics(p[:, None], ratings, num_bins=2)  # one member: p itself
    np.testing.assert_allclose([out["brier_soft"], out["ece_soft"]], [0.0125, 0.075], rtol=1e-5)


def test_boundary_band_of_a_square():
    mask = np.zeros((1, 6, 6), np.float32)
    mask[0, 2:4, 2:4] = 1.0  # a 2 x 2 square
    inside = {(2, 2), (2, 3), (3, 2), (3, 3)}
    outside = {(1, 2), (1, 3), (4, 2), (4, 3), (2, 1), (3, 1), (2, 4), (3, 4)}
    edge = raters.boundary(mask)[0]
    assert set(zip(*np.nonzero(edge), strict=True)) == inside | outside
    np.testing.assert_array_equal(raters.boundary_band(mask, 0)[0], edge)
    far = {(0, 0), (0, 1), (1, 0), (0, 4), (0, 5), (1, 5),
           (4, 0), (5, 0), (5, 1), (4, 5), (5, 4), (5, 5)}  # more than 1 px from the boundary
    band = raters.boundary_band(mask, 1.0)[0]
    assert set(zip(*np.nonzero(~band), strict=True)) == far
    corners = {(0, 0), (0, 5), (5, 0), (5, 5)}  # sqrt(5) from (1, 2) and its mirror images
    assert set(zip(*np.nonzero(~raters.boundary_band(mask, 2.0)[0]), strict=True)) == corners
    assert raters.boundary_band(mask, math.sqrt(5))[0].all()


def test_boundary_band_edge_and_empty_images():
    masks = np.zeros((3, 4, 4, 1), np.float32)
    masks[1, :2] = 1.0  # top half: the image edge is no boundary, rows 1 and 2 are
    masks[2] = 1.0  # full: no boundary
    band = raters.boundary_band(masks, 0)
    assert not band[0].any() and not band[2].any()
    np.testing.assert_array_equal(band[1, :, :, 0].any(axis=1), [False, True, True, False])
    probs = np.full(masks.shape, 0.3, np.float32)
    per = raters.boundary_ece(probs, masks, 2, 0, per_image=True)
    assert np.isnan(per[0]) and np.isnan(per[2])
    np.testing.assert_allclose(per[1], 0.2, rtol=1e-5)  # one bin: |4 * 1 - 8 * 0.3| / 8
    assert np.isnan(raters.boundary_ece(probs[[0, 2]], masks[[0, 2]], 2, 0))


def test_member_binarity_by_hand():
    members = np.array([0.01, 0.5, 0.97, 1.0], np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(raters.member_binarity(members), [0.75])
    np.testing.assert_allclose(raters.member_binarity(members, 0.6), [1.0])


def test_invalid_input_errors():
    members = np.full((2, 3, 8, 8, 1), 0.5, np.float32)
    ratings = np.zeros((2, 2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"members \(2, 3, 8, 8, 1\) and raters \(2, 2, 6, 8, 1\)"):
        raters.rater_metrics(members, ratings[:, :, :6])
    with pytest.raises(ValueError, match=r"raters \(1, 2, 8, 8, 1\)"):
        raters.rater_metrics(members, ratings[:1])
    with pytest.raises(ValueError, match=r"R >= 1"):
        raters.rater_metrics(members, ratings[:, :0])
    with pytest.raises(ValueError, match=r"raters of shape \(2, 2, 8, 8, 1\) has values outside"):
        raters.rater_metrics(members, ratings + 2.0)
    with pytest.raises(ValueError, match=r"members of shape .* outside \[0, 1\]"):
        raters.rater_metrics(members * np.nan, ratings)
    with pytest.raises(ValueError, match=r"probs \(2, 8, 8, 1\) and soft \(2, 8, 8\)"):
        raters.soft_brier(members[:, 0], ratings[:, 0, ..., 0])
    with pytest.raises(ValueError, match="band_px"):
        raters.boundary_band(ratings[:, 0], -1.0)
