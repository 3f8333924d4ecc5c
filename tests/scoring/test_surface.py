"""Volume and surface metrics against closed forms, hand-checked cases and MedPy."""

import math

import numpy as np
import pytest
from scipy import ndimage

from jdiffseg.scoring.surface import diagonal, per_class, surface, volume_metrics


def _ball(shape, centre_mm, radius_mm, spacing):
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)) <= radius_mm**2


def test_single_voxels_give_their_distance_in_mm():
    a, b = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    a[1, 1, 1], b[4, 3, 1] = True, True
    spacing = (0.5, 2.0, 3.0)
    m = volume_metrics(a, b, spacing)
    d = math.hypot(3 * 0.5, 2 * 2.0)
    assert m["hd95"] == pytest.approx(d) and m["assd"] == pytest.approx(d)
    assert m["dice"] == m["iou"] == m["sensitivity"] == m["precision"] == 0.0


def test_overlap_counts():
    truth = np.zeros((4, 4, 4), bool)
    truth[:2] = True  # 32 voxels
    pred = np.zeros_like(truth)
    pred[1:3] = True  # 32 voxels, 16 shared
    m = volume_metrics(pred, truth, (1, 1, 1))
    assert m["dice"] == pytest.approx(0.5) and m["iou"] == pytest.approx(16 / 48)
    assert m["sensitivity"] == pytest.approx(0.5) and m["precision"] == pytest.approx(0.5)
    # shifted by one 2-mm voxel along axis 0: every surface voxel is 0 or 2 mm from the other
    m = volume_metrics(pred, truth, (2, 1, 1))
    assert m["hd95"] == pytest.approx(2.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 1.5)])
def test_concentric_spheres_are_their_radius_difference_apart(spacing):
    shape = tuple(int(40 / s) for s in spacing)
    centre = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    inner, outer = _ball(shape, centre, 8.0, spacing), _ball(shape, centre, 13.0, spacing)
    m = volume_metrics(inner, outer, spacing)
    # every point of one sphere is 5 mm from the other; voxelisation moves each surface by at
    # most about half a voxel
    tol = max(spacing)
    assert m["hd95"] == pytest.approx(5.0, abs=tol) and m["assd"] == pytest.approx(5.0, abs=tol)
    assert m["dice"] == pytest.approx(2 * 8**3 / (8**3 + 13**3), rel=0.05)
    assert m["sensitivity"] == pytest.approx((8 / 13) ** 3, rel=0.05) and m["precision"] == 1.0


def test_shifted_discs_hausdorff_is_the_shift():
    # two discs of radius r offset by d: the farthest point of one from the other is d away
    # (the point opposite the shift), and the ASSD is the mean over the circle of
    # |sqrt(r^2 + d^2 + 2 r d cos θ) - r|, integrated here numerically
    r, d, s = 12.0, 4.0, (0.5, 0.5)
    shape = (100, 120)
    a = _ball(shape, (25.0, 28.0), r, s)
    b = _ball(shape, (25.0, 28.0 + d), r, s)
    theta = np.linspace(0, 2 * np.pi, 100_000, endpoint=False)
    dist = np.abs(np.sqrt(r**2 + d**2 + 2 * r * d * np.cos(theta)) - r)
    m = volume_metrics(a, b, s)
    assert m["hd95"] == pytest.approx(np.percentile(dist, 95), abs=0.5)
    assert m["assd"] == pytest.approx(dist.mean(), abs=0.25)


def test_empty_structures():
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:3, 1:3] = True
    spacing = (1.0, 2.0, 3.0)
    both = volume_metrics(empty, empty, spacing)
    assert both["dice"] == both["iou"] == 1.0 and both["hd95"] == both["assd"] == 0.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    worst = math.sqrt(3**2 + 8**2 + 15**2)
    assert diagonal(empty.shape, np.array(spacing)) == pytest.approx(worst)
    for pred, truth in ((empty, full), (full, empty)):
        m = volume_metrics(pred, truth, spacing)
        assert m["dice"] == 0.0 and m["hd95"] == m["assd"] == pytest.approx(worst)
    assert math.isnan(volume_metrics(empty, full, spacing)["precision"])
    assert math.isnan(volume_metrics(full, empty, spacing)["sensitivity"])


def test_surface_is_the_face_connected_border():
    m = np.zeros((5, 5, 5), bool)
    m[1:4, 1:4, 1:4] = True
    assert surface(m).sum() == 26  # the 3x3x3 cube less its centre
    assert surface(np.ones((3, 3), bool)).sum() == 8  # the volume's edge counts as outside


def test_per_class_reads_label_values():
    truth = np.zeros((6, 6, 6), np.int64)
    truth[:3], truth[3:] = 1, 4
    pred = truth.copy()
    pred[5] = 0
    out = per_class(pred, truth, (1, 1, 1), {1: "core", 4: "enhancing"})
    assert out["core"]["dice"] == 1.0
    assert out["enhancing"]["dice"] == pytest.approx(2 * 72 / (72 + 108))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="prediction shape"):
        volume_metrics(np.zeros((2, 3)), np.zeros((3, 2)), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(np.zeros((2, 3)), np.zeros((2, 3)), (1, 0))


def test_agrees_with_medpy():
    medpy = pytest.importorskip("medpy.metric.binary", reason="MedPy is not installed")
    rng = np.random.default_rng(0)
    spacing = (0.7, 1.1, 2.5)
    for _ in range(3):
        truth = _ball((20, 18, 10), rng.uniform(5, 12, 3), rng.uniform(4, 7), spacing)
        pred = _perturbed(truth, rng)
        m = volume_metrics(pred, truth, spacing)
        assert m["hd95"] == pytest.approx(medpy.hd95(pred, truth, voxelspacing=spacing))
        assert m["assd"] == pytest.approx(medpy.assd(pred, truth, voxelspacing=spacing))
        assert m["dice"] == pytest.approx(medpy.dc(pred, truth))
        assert m["sensitivity"] == pytest.approx(medpy.sensitivity(pred, truth))
        assert m["precision"] == pytest.approx(medpy.precision(pred, truth))


def _perturbed(mask, rng):
    """`mask` dilated, then a random 10 % of its voxels removed."""
    out = ndimage.binary_dilation(mask)
    return out ^ (rng.random(mask.shape) < 0.1) & out
