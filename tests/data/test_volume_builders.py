"""The nnU-Net v2, Decathlon and BraTS builders on small NIfTI fixtures: slices, labels,
normalisation, geometry, and every bad input stopping with the file named."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from volume_fixtures import (
    SHAPE,
    SPACING,
    affine,
    case_volumes,
    save,
    write_brats,
    write_decathlon,
    write_nnunet,
)

from jdiffseg.data import geometry, intensity, volumes
from jdiffseg.data.builders import volumetric
from jdiffseg.data.builders.brats import Brats
from jdiffseg.data.builders.nnunet import Nnunet
from jdiffseg.data.images import DataError


def build(cls, manual, tmp, **options):
    builder = cls(
        config=volumetric.make_config(**options),
        data_dir=str(tmp / "tfds"),
        file_format="array_record",
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False)
    )
    return builder


def by_case(source):
    out = {}
    for ex in source:
        out.setdefault(ex["case"].decode(), {})[int(ex["slice"])] = ex
    return out


def test_nnunet_slices_labels_normalisation_and_geometry(tmp_path):
    write_nnunet(tmp_path / "m", n=5)
    b = build(
        Nnunet,
        tmp_path / "m",
        tmp_path,
        image_size=12,
        crop_nonzero=False,
        val_fraction=0.2,
        test_fraction=0.2,
        target="classes",
    )
    meta = b.info.metadata
    assert meta["layout"] == "nnU-Net v2" and meta["channel_names"] == ["CT", "T2"]
    # every declared label is a class of the stored label map
    assert meta["class_names"] == meta["label_names"] == ["background", "organ", "lesion"]
    assert meta["axis"] == 2 and meta["image_size"] == 12 and meta["crop_nonzero"] is False
    assert meta["regions"] == {"any": [1, 2]} and meta["target_values"] == [1, 2]
    cases = meta["cases"]
    assert sorted(c for v in cases.values() for c in v) == [f"toy_{i:03d}" for i in range(5)]
    assert [len(cases[s]) for s in ("train", "validation", "test")] == [3, 1, 1]
    # CT statistics from the training cases' foreground only
    fg = np.concatenate(
        [
            case_volumes(int(c[-3:]), 2)[0][..., 0][case_volumes(int(c[-3:]), 2)[1] > 0]
            for c in cases["train"]
        ]
    )
    ct = meta["normalisation"][0]
    assert ct["scheme"] == "ct" and meta["normalisation"][1] == {"scheme": "zscore_nonzero"}
    assert ct["mean"] == pytest.approx(fg.mean(), rel=1e-6)
    assert ct["upper"] == pytest.approx(np.percentile(fg, 99.5), rel=1e-6)
    for split in ("train", "validation", "test"):
        slices = by_case(b.as_data_source(split))
        assert sorted(slices) == sorted(cases[split])
        for case, exs in slices.items():
            assert sorted(exs) == list(range(SHAPE[2]))  # every slice kept by default
            image, labels = case_volumes(int(case[-3:]), 2)
            norm = intensity.normalise(
                image, ["ct", "zscore_nonzero"], [meta["normalisation"][0], None]
            )
            ex = exs[3]
            assert ex["id"].decode() == f"{case}/0003" and ex["image"].shape == (12, 12, 2)
            # 8 x 12 planes padded by 2 rows above and below to 12 x 12, no resize
            np.testing.assert_allclose(ex["image"][2:10], norm[:, :, 3], rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(ex["mask"][2:10, :, 0], labels[:, :, 3])
            assert not ex["mask"][:2].any() and not ex["mask"][10:].any()
            np.testing.assert_array_equal(ex["labels_plane"], labels[:, :, 3])
            np.testing.assert_allclose(ex["spacing"], SPACING, rtol=1e-6)
            np.testing.assert_allclose(ex["affine"], affine())
            assert ex["shape"].tolist() == list(SHAPE)
            assert ex["crop"].tolist() == [0, 8, 0, 12] and ex["pad"].tolist() == [2, 2, 0, 0]
            planes = {
                k: geometry.from_square(e["mask"][..., 0], (8, 12), tuple(e["crop"]), True)
                for k, e in exs.items()
            }
            np.testing.assert_array_equal(volumes.restack(planes, 2, SHAPE), labels)


def test_axis_crop_target_and_labelled_test_set(tmp_path):
    write_nnunet(tmp_path / "m", n=4, labels_ts=2)
    b = build(
        Nnunet, tmp_path / "m", tmp_path, image_size=16, axis=0, target="lesion", val_fraction=0.25
    )
    assert b.info.metadata["cases"]["test"] == ["toy_004", "toy_005"]
    assert b.info.metadata["target_values"] == [2]
    assert b.info.metadata["class_names"] == ["background", "lesion"]
    exs = by_case(b.as_data_source("test"))["toy_004"]
    assert sorted(exs) == list(range(SHAPE[0]))
    _, labels = case_volumes(4, 2)
    crop = (2, 11, 0, 6)  # the body's columns (axis 1) and all of axis 2
    assert tuple(exs[3]["crop"]) == crop and exs[3]["image"].shape == (16, 16, 2)
    planes = {
        k: geometry.from_square(e["mask"][..., 0], (12, 6), crop, True) for k, e in exs.items()
    }
    np.testing.assert_array_equal(volumes.restack(planes, 0, SHAPE), labels == 2)


@pytest.mark.parametrize("empty, expect", [(0.0, "none"), (1.0, "all")])
def test_empty_slices_are_dropped_from_training_only(tmp_path, empty, expect):
    write_brats(tmp_path / "m", n=3)
    b = build(
        Brats,
        tmp_path / "m",
        tmp_path,
        image_size=8,
        empty_slices=empty,
        val_fraction=0.34,
        test_fraction=0.0,
    )
    train = [ex for ex in b.as_data_source("train")]
    empty_train = [ex for ex in train if not ex["mask"].any()]
    assert len(empty_train) == (0 if expect == "none" else 2 * len(train) // SHAPE[2])
    val = list(b.as_data_source("validation"))
    assert len(val) == SHAPE[2] and sum(not ex["mask"].any() for ex in val) == 2


def test_brats_regions_classes_and_channels(tmp_path):
    write_brats(tmp_path / "m", n=3)
    regions = {"whole tumour": {1, 2, 4}, "tumour_core": {1, 4}, "Enhancing-Tumour": {4}}
    for target, values in regions.items():
        b = build(
            Brats,
            tmp_path / "m",
            tmp_path / target,
            image_size=9,
            test_fraction=0.0,
            val_fraction=0.0,
            target=target,
        )
        meta = b.info.metadata
        assert meta["channel_names"] == ["flair", "t1", "t1ce", "t2"]
        assert meta["label_values"] == [0, 1, 2, 4] and set(meta["target_values"]) == values
        assert meta["class_names"] == ["background", target]
        for ex in b.as_data_source("train"):
            assert ex["image"].shape == (9, 9, 4)
            lv = np.asarray(meta["label_values"])[ex["labels_plane"]]  # class index -> value
            want = geometry.to_square(np.isin(lv, list(values)), tuple(ex["crop"]), 9, True)
            np.testing.assert_array_equal(ex["mask"][..., 0], want)
    assert meta["normalisation"] == [{"scheme": "zscore_nonzero"}] * 4
    b = build(Brats, tmp_path / "m", tmp_path / "classes", image_size=9, test_fraction=0.0,
              val_fraction=0.0, target="classes")
    meta = b.info.metadata
    assert meta["class_names"] == [
        "background", "necrotic tumour core", "peritumoral edema", "enhancing tumour"]
    masks = np.stack([ex["mask"] for ex in b.as_data_source("train")])
    assert set(np.unique(masks)) == {0, 1, 2, 3}  # label 4 is class 3


def test_decathlon_four_d_images(tmp_path):
    write_decathlon(tmp_path / "m", n=4)
    b = build(Nnunet, tmp_path / "m", tmp_path, image_size=9, val_fraction=0.25, test_fraction=0.25)
    meta = b.info.metadata
    assert meta["layout"] == "Decathlon" and meta["channel_names"] == ["FLAIR", "T1w"]
    assert meta["label_names"] == ["background", "edema", "tumour"]
    assert meta["class_names"] == ["background", "foreground"]
    assert sorted(c for v in meta["cases"].values() for c in v) == [f"toy_{i}" for i in range(4)]
    ex = next(iter(b.as_data_source("train")))
    assert ex["image"].shape == (9, 9, 2) and ex["crop"].tolist() == [1, 7, 2, 11]
    region = ex["image"][1:7].any(-1)  # rows 1..6 of the 9 x 9 square hold the 6 x 9 body
    assert region.all() and not ex["image"][0].any()


def _broken(kind, tmp_path):
    """A dataset with one bad file; returns the text the error must contain."""
    folder = write_nnunet(tmp_path / "m", n=3)
    image, labels = case_volumes(1, 2)
    target = folder / "imagesTr" / "toy_001_0001.nii.gz"
    label = folder / "labelsTr" / "toy_001.nii.gz"
    if kind == "missing channel":
        target.unlink()
        return f"missing channel 1 of case toy_001: expected {target}"
    if kind == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        return f"cannot read the voxels of {target}"
    if kind == "shape":
        save(target, image[:, :10, :, 1])
        return f"{target} has shape (8, 10, 6)"
    if kind == "affine":
        save(label, labels, affine(origin=(0.0, 0.0, 0.0)))
        return f"{label} has a different affine"
    if kind == "non-integer":
        save(label, labels.astype(np.float32) + 0.25)
        return f"label map {label} has non-integer values"
    if kind == "undeclared":
        labels[0, 0, 0] = 7
        save(label, labels)
        return f"label map {label} has value(s) [7]"
    if kind == "orphan image":
        save(folder / "imagesTr" / "toy_009_0000.nii.gz", image[..., 0])
        return f"{folder / 'imagesTr' / 'toy_009_0000.nii.gz'} has no label map"
    spec = json.loads((folder / "dataset.json").read_text())
    if kind == "too many labels":
        spec["labels"] |= {f"l{v}": v for v in range(3, 300)}
        (folder / "dataset.json").write_text(json.dumps(spec))
        return (
            "nnU-Net v2: 300 declared labels; the stored class-index maps (uint8) hold at most 256"
        )
    spec["labels"]["bad"] = "two"
    (folder / "dataset.json").write_text(json.dumps(spec))
    return "label 'bad' has value 'two'"


@pytest.mark.parametrize(
    "kind",
    [
        "missing channel",
        "truncated",
        "shape",
        "affine",
        "non-integer",
        "undeclared",
        "orphan image",
        "dataset.json",
        "too many labels",
    ],
)
def test_bad_input_stops_naming_the_file_and_leaves_nothing_complete(tmp_path, kind):
    expected = _broken(kind, tmp_path)
    with pytest.raises(DataError, match=re.escape(expected)):
        build(Nnunet, tmp_path / "m", tmp_path, image_size=8)
    b = Nnunet(
        config=volumetric.make_config(image_size=8),
        data_dir=str(tmp_path / "tfds"),
        file_format="array_record",
    )
    assert not b.is_prepared()
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def test_brats_missing_modality_and_unknown_target(tmp_path):
    root = write_brats(tmp_path / "m", n=2)
    case = root / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002"
    (case / "BraTS20_Training_002_t1ce.nii.gz").unlink()
    with pytest.raises(
        DataError, match=f"no t1ce volume: expected {case}/BraTS20_Training_002_t1ce.nii.gz"
    ):
        build(Brats, root, tmp_path, image_size=8)
    write_brats(tmp_path / "m", n=2)
    expected = r"target 'liver' is not 'foreground', 'classes', .* 'whole_tumour'"
    with pytest.raises(DataError, match=expected):
        build(Brats, root, tmp_path, image_size=8, target="liver")
