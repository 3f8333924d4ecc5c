"""Reassembling a volumetric split's slice predictions into case volumes."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from volume_fixtures import SHAPE, SPACING, affine, case_volumes, write_nnunet

from jdiffseg.data import geometry
from jdiffseg.data.builders import volumetric
from jdiffseg.data.builders.nnunet import Nnunet
from jdiffseg.data.cases import Assembler, plane_shape


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cases")
    write_nnunet(tmp / "m", n=3)
    builder = Nnunet(
        config=volumetric.make_config(image_size=6, axis=1, val_fraction=0.0, test_fraction=0.0),
        data_dir=str(tmp / "tfds"),
        file_format="array_record",
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp / "m"), try_download_gcs=False
        )
    )
    return builder


def test_cases_complete_in_storage_order_with_exact_truth(built):
    source = built.as_data_source("train")
    assert len(source) == 3 * SHAPE[1]
    asm = Assembler(source, axis=1)
    done = []
    for i in range(len(source)):
        done += asm.add(i, source[i]["mask"][..., 0])
        assert len(done) == (i + 1) // SHAPE[1]  # a case closes with its last slice
    assert asm.finish() == []
    assert [c.case for c in done] == ["toy_000", "toy_001", "toy_002"]
    for c in done:
        _, labels = case_volumes(int(c.case[-3:]), 2)
        np.testing.assert_array_equal(c.truth, labels)  # class indices 0, 1, 2 = the values
        np.testing.assert_allclose(c.spacing, SPACING, rtol=1e-6)
        np.testing.assert_allclose(c.affine, affine())
        assert c.slices == SHAPE[1] and c.prediction.shape == SHAPE
        # the prediction went through a 9 -> 6 -> 9 resize: the same as doing that directly
        crop = (1, 7, 0, 6)
        for k in range(SHAPE[1]):
            plane = (labels[:, k, :] > 0).astype(np.uint8)
            back = geometry.from_square(
                geometry.to_square(plane, crop, 6, True), plane_shape(SHAPE, 1), crop, True
            )
            np.testing.assert_array_equal(c.prediction[:, k, :], back)


def test_missing_slices_stay_open_until_finish(built):
    source = built.as_data_source("train")
    asm = Assembler(source, axis=1)
    assert asm.add(0, source[0]["mask"][..., 0]) == []
    (case,) = asm.finish()
    assert case.slices == 1 and case.prediction[:, 1:].sum() == 0
