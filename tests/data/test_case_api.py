"""The public path for new NIfTI cases: channel files -> model inputs and geometry -> per-slice
predictions back on the case's grid -> a NIfTI file with the input's affine and header."""

import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds
from volume_fixtures import SHAPE, SPACING, affine, case_volumes, write_nnunet

from jdiffseg.data import cases, geometry
from jdiffseg.data.builders import volumetric
from jdiffseg.data.builders.nnunet import Nnunet, image_groups
from jdiffseg.data.images import DataError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An nnU-Net dataset (a CT and an MR channel, label map target) at 9 px: the cropped
    6 x 9 body pads to 9 x 9, so no resize and every round trip is exact."""
    tmp = tmp_path_factory.mktemp("api")
    folder = write_nnunet(tmp / "m", n=3)
    builder = Nnunet(config=volumetric.make_config(image_size=9, target="classes"),
                     data_dir=str(tmp / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp / "m"), try_download_gcs=False))
    return folder, dict(builder.info.metadata), builder


def test_case_slices_match_the_built_dataset(built):
    folder, meta, builder = built
    groups = image_groups(folder / "imagesTr", len(meta["channel_names"]))
    assert sorted(groups) == ["toy_000", "toy_001", "toy_002"]
    assert [p.name for p in groups["toy_001"]] == ["toy_001_0000.nii.gz", "toy_001_0001.nii.gz"]
    case = meta["cases"]["train"][0]
    slices, geo = cases.read_case_slices(groups[case], meta)
    stored = sorted((ex for ex in builder.as_data_source("train") if ex["case"].decode() == case),
                    key=lambda ex: int(ex["slice"]))
    assert slices.shape == (SHAPE[2], 9, 9, 2) and len(stored) == SHAPE[2]
    np.testing.assert_allclose(slices, np.stack([ex["image"] for ex in stored]), atol=1e-6)
    assert geo.shape == SHAPE and geo.axis == 2 and geo.crop == (1, 7, 2, 11)
    assert geo.pad == (1, 2, 0, 0) and geo.size == 9
    np.testing.assert_allclose(geo.affine, affine())
    np.testing.assert_allclose(geo.spacing, SPACING, rtol=1e-6)


def test_predictions_restack_and_write_with_the_input_geometry(built, tmp_path):
    folder, meta, _ = built
    groups = image_groups(folder / "imagesTr", 2)
    _, geo = cases.read_case_slices(groups["toy_001"], meta)
    _, labels = case_volumes(1, 2)
    # the true label map, as square per-slice predictions (what a model would output)
    squares = np.stack([geometry.to_square(labels[:, :, k].astype(np.uint8), geo.crop, 9, True)
                        for k in range(SHAPE[2])])
    probs = np.eye(3, dtype=np.float32)[squares] * 0.8 + 0.2 / 3
    volume, prob_volume = cases.restack_prediction(squares, geo, probs)
    np.testing.assert_array_equal(volume, labels)
    assert prob_volume.shape == (*SHAPE, 3)
    np.testing.assert_allclose(prob_volume[0, 0, 0], [1.0, 0.0, 0.0])  # outside the crop
    np.testing.assert_allclose(prob_volume.argmax(-1), labels)
    out = cases.write_prediction(volume, geo, tmp_path / "pred" / "toy_001.nii.gz")
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, affine())
    np.testing.assert_allclose(saved.header.get_zooms(), SPACING, rtol=1e-6)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), labels)
    assert [p.name for p in out.parent.iterdir()] == ["toy_001.nii.gz"]  # no temporary left
    saved = nib.load(cases.write_prediction(prob_volume, geo, tmp_path / "probs.nii.gz"))
    assert saved.shape == (*SHAPE, 3)
    np.testing.assert_allclose(np.asarray(saved.dataobj), prob_volume)
    with pytest.raises(ValueError, match="labels have shape"):
        cases.restack_prediction(squares[1:], geo)


def test_image_groups_name_a_missing_channel(built, tmp_path):
    folder, _, _ = built
    single = tmp_path / "imagesTs"
    single.mkdir()
    (single / "toy_001_0000.nii.gz").write_bytes((folder / "imagesTr" / "toy_001_0000.nii.gz")
                                                 .read_bytes())
    with pytest.raises(DataError, match=f"missing channel 1 of case toy_001: expected "
                                        f"{single / 'toy_001_0001.nii.gz'}"):
        image_groups(single, 2)
