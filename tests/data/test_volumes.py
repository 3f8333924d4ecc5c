"""NIfTI reading and its checks, slicing and restacking, square geometry, normalisation."""

import numpy as np
import pytest
from volume_fixtures import SHAPE, SPACING, affine, case_volumes, save

from jdiffseg.data import geometry, intensity, volumes
from jdiffseg.data.images import DataError


@pytest.fixture
def case(tmp_path):
    image, labels = case_volumes(0, 2)
    paths = [save(tmp_path / f"c_{c:04d}.nii.gz", image[..., c]) for c in range(2)]
    return image, labels, paths, save(tmp_path / "c.nii.gz", labels)


def test_reads_channels_labels_and_spacing(case):
    image, labels, paths, label = case
    got, ref = volumes.read_channels(paths, 2)
    np.testing.assert_allclose(got, image)
    np.testing.assert_allclose(ref.affine, affine())
    np.testing.assert_allclose(volumes.spacing(ref), SPACING, rtol=1e-6)
    np.testing.assert_array_equal(volumes.read_labels(label, ref, paths[0], [0, 1, 2]), labels)


def test_four_d_file_is_split_into_channels(tmp_path):
    image, _ = case_volumes(1, 3)
    got, _ = volumes.read_channels([save(tmp_path / "x.nii.gz", image)], 3)
    np.testing.assert_allclose(got, image)
    with pytest.raises(DataError, match=r"x.nii.gz: 3 channel\(s\) but the dataset declares 2"):
        volumes.read_channels([tmp_path / "x.nii.gz"], 2)


def test_shape_and_affine_disagreement_name_both_files(case, tmp_path):
    image, _, paths, _ = case
    small = save(tmp_path / "small.nii.gz", image[:7, ..., 1])
    with pytest.raises(
        DataError,
        match=rf"{small} has shape \(7, 12, 6\) but {paths[0]} has "
        r"\(8, 12, 6\)",
    ):
        volumes.read_channels([paths[0], small], 2)
    moved = save(tmp_path / "moved.nii.gz", image[..., 1], affine(origin=(-10.0, 20.0, 6.0)))
    with pytest.raises(DataError, match=rf"{moved} has a different affine from {paths[0]}"):
        volumes.read_channels([paths[0], moved], 2)
    _, ref = volumes.read_channels(paths, 2)
    bad = save(
        tmp_path / "bad_label.nii.gz", np.zeros(SHAPE, np.int16), affine(spacing=(0.8, 0.7, 3.0))
    )
    with pytest.raises(DataError, match=f"{bad} has a different affine"):
        volumes.read_labels(bad, ref, paths[0], [0, 1])


def test_label_values_are_checked(case, tmp_path):
    _, labels, paths, _ = case
    _, ref = volumes.read_channels(paths, 2)
    frac = save(tmp_path / "frac.nii.gz", labels.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match=rf"label map {frac} has non-integer values, e.g. \[0.5\]"):
        volumes.read_labels(frac, ref, paths[0], [0, 1, 2])
    label = tmp_path / "c.nii.gz"
    with pytest.raises(
        DataError,
        match=rf"{label} has value\(s\) \[2\] that the dataset does "
        r"not declare \(declared: \[0, 1\]\)",
    ):
        volumes.read_labels(label, ref, paths[0], [0, 1])


def test_missing_and_truncated_files_are_named(case, tmp_path):
    _, _, paths, _ = case
    with pytest.raises(DataError, match=f"missing file {tmp_path / 'nope.nii.gz'}"):
        volumes.read_channels([paths[0], tmp_path / "nope.nii.gz"], 2)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read the voxels of {paths[1]}"):
        volumes.read_channels(paths, 2)
    paths[1].write_bytes(data[:20])
    with pytest.raises(DataError, match=f"cannot read NIfTI header of {paths[1]}"):
        volumes.read_channels(paths, 2)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_planes_restack_into_the_volume(case, axis):
    _, labels, _, _ = case
    planes = {k: volumes.plane(labels, axis, k) for k in range(SHAPE[axis])}
    assert planes[1].shape == tuple(s for a, s in enumerate(SHAPE) if a != axis)
    np.testing.assert_array_equal(volumes.plane(labels, axis, 1), np.take(labels, 1, axis))
    volume = volumes.restack(planes, axis, SHAPE)
    np.testing.assert_array_equal(volume, labels)
    partial = volumes.restack({2: planes[2]}, axis, SHAPE)
    assert partial.sum() == planes[2].sum()
    with pytest.raises(ValueError, match="slice 9 outside"):
        volumes.restack({9: planes[0]}, axis, (3, 3, 3))


def test_nonzero_box_and_square_round_trip():
    image, labels = case_volumes(0, 2)
    assert geometry.nonzero_box(image, 2) == (1, 7, 2, 11)
    assert geometry.nonzero_box(image, 0) == (2, 11, 0, 6)
    assert geometry.nonzero_box(np.zeros((3, 4, 5, 1)), 1) == (0, 3, 0, 5)
    crop = (1, 7, 2, 11)
    assert geometry.square_pad(crop) == (1, 2, 0, 0)  # 6 x 9 -> 9 x 9
    plane = labels[..., 2]
    for size in (9, 16, 23):  # nearest up then down is exact whenever size >= the square side
        sq = geometry.to_square(plane, crop, size, nearest=True)
        assert sq.shape == (size, size) and sq.dtype == plane.dtype
        np.testing.assert_array_equal(geometry.from_square(sq, plane.shape, crop, True), plane)
    img = geometry.to_square(image[..., 2, :], crop, 9, nearest=False)
    np.testing.assert_allclose(img[1:7], image[1:7, 2:11, 2, :])
    assert (img[0] == 0).all() and (img[7:] == 0).all()
    smooth = geometry.to_square(image[..., 2, :], crop, 18, nearest=False)
    assert smooth.shape == (18, 18, 2) and smooth.dtype == np.float32


def test_ct_normalisation_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    cases = [case_volumes(i, 1) for i in range(3)]
    samples = [
        intensity.foreground_sample(im[..., 0], lab, str(i)) for i, (im, lab) in enumerate(cases)
    ]
    stats = intensity.ct_statistics(samples, "ct")
    fg = np.concatenate([im[..., 0][lab > 0] for im, lab in cases]).astype(np.float64)
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    assert stats == pytest.approx({"lower": lo, "upper": hi, "mean": fg.mean(), "std": fg.std()})
    x = rng.normal(100, 60, (4, 4, 2, 1)).astype(np.float32)
    got = intensity.normalise(x, [intensity.CT], [stats])
    np.testing.assert_allclose(
        got[..., 0], (np.clip(x[..., 0], lo, hi) - fg.mean()) / fg.std(), rtol=1e-5
    )
    big = np.zeros(2 * intensity.SAMPLES_PER_CASE)
    assert (
        intensity.foreground_sample(big, np.ones_like(big), "a").size == intensity.SAMPLES_PER_CASE
    )
    with pytest.raises(ValueError, match="no foreground voxels"):
        intensity.ct_statistics([np.zeros(0)], "ct channel 0")


def test_mr_is_z_scored_over_the_non_zero_region():
    image, _ = case_volumes(2, 2)
    got = intensity.normalise(image, [intensity.ZSCORE, intensity.ZSCORE], [None, None])
    region = np.any(image != 0, axis=-1)
    for c in range(2):
        inside = got[..., c][region]
        assert inside.mean() == pytest.approx(0, abs=1e-5)
        assert inside.std() == pytest.approx(1, abs=1e-5)
        assert (got[..., c][~region] == 0).all()
    assert intensity.scheme("ct") == intensity.CT and intensity.scheme("T2") == intensity.ZSCORE
    assert (intensity.normalise(np.zeros((2, 2, 2, 1)), [intensity.ZSCORE], [None]) == 0).all()
