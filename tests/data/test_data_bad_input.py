"""Bad input stops with an error that names the file (or the path expected)."""

import json
import logging

import numpy as np
import pytest
from data_fixtures import config, encode, write_folder, write_isic, write_monuseg

from jdiffseg.data import DataError, build_dataset, make_builder
from jdiffseg.data.images import binarise_mask, decode_image


def _build(tmp_path, name, manual, **data):
    return build_dataset(config(tmp_path, name, image_size=16, manual_dir=str(manual), **data))


def test_missing_manual_dir_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"isic2016: Manual directory {missing} does not exist"):
        _build(tmp_path, "isic2016", missing)
    assert not make_builder(config(tmp_path, "isic2016", image_size=16).data).is_prepared()


def test_missing_isic_mask_names_the_expected_path(tmp_path):
    manual = write_isic(tmp_path / "m", n_train=3, n_test=2)
    gt = manual / "ISBI2016_ISIC_Part1_Training_GroundTruth"
    (gt / "ISIC_0000001_Segmentation.png").unlink()
    with pytest.raises(DataError, match=f"expected {gt}/ISIC_0000001_Segmentation.png"):
        _build(tmp_path, "isic2016", manual)


def test_missing_isic_split_folder_names_it(tmp_path):
    manual = write_isic(tmp_path / "m", n_train=3, n_test=2)
    for f in (manual / "ISBI2016_ISIC_Part1_Test_Data").iterdir():
        f.unlink()
    (manual / "ISBI2016_ISIC_Part1_Test_Data").rmdir()
    with pytest.raises(DataError, match=f"{manual}/ISBI2016_ISIC_Part1_Test_Data/ISIC_0000000.jpg"):
        _build(tmp_path, "isic2016", manual)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image_names_the_file(tmp_path, damage):
    manual = write_folder(tmp_path / "m", n=4, fmt="JPEG")
    bad = manual / "images" / "case02.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an image" * 10)
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        _build(tmp_path, "folder", manual)
    assert not make_builder(config(tmp_path, "folder", image_size=16).data).is_prepared()


def test_mask_size_mismatch_names_both_files(tmp_path):
    manual = write_folder(tmp_path / "m", n=4)
    (manual / "masks" / "case01.png").write_bytes(encode(np.zeros((30, 40), np.uint8), "PNG"))
    with pytest.raises(DataError, match=r"mask .*case01.png is 40x30 \(WxH\) but its image "
                                        r".*case01.png is 40x40"):
        _build(tmp_path, "folder", manual)


def test_grey_mask_is_binarised_and_reported(tmp_path, caplog):
    manual = write_folder(tmp_path / "m", n=4)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 250
    mask[10, 10:30] = 128  # a few interpolated pixels
    (manual / "masks" / "case01.png").write_bytes(encode(mask, "PNG"))
    with caplog.at_level(logging.WARNING):
        sources = _build(tmp_path, "folder", manual).as_data_source()
    assert any("case01.png" in r.getMessage() and "binarised as value > 127.5" in r.getMessage()
               for r in caplog.records)
    ex = next(ex for s in sources.values() for ex in s if ex["id"] == b"case01")
    assert set(np.unique(ex["mask"])) == {0, 1}


def test_binarise_rules():
    m, note = binarise_mask(np.array([[0, 255], [255, 0]], np.uint8), "a.png")
    assert note is None and m.tolist() == [[0, 1], [1, 0]]
    m, note = binarise_mask(np.array([[0, 1], [2, 3]], np.uint8), "labels.png")
    assert m.tolist() == [[0, 1], [1, 1]] and "label values [0 1 2 3]" in note
    m, note = binarise_mask(np.stack([np.array([[0, 7]], np.uint8)] * 3, -1), "rgb.png")
    assert m.tolist() == [[0, 1]] and "foreground = 7" in note
    photo = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    with pytest.raises(DataError, match=r"photo.png does not look like a binary mask"):
        binarise_mask(photo, "photo.png")
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"colour\.png has differing colour channels"):
        binarise_mask(colour, "colour.png")


def test_image_formats_decode_to_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.zeros((3, 4, 4), np.uint8)
    for arr, fmt in ((grey, "PNG"), (rgba, "PNG"), (grey.astype(np.uint16) * 1000, "TIFF")):
        out = decode_image(encode(arr, fmt), f"x.{fmt.lower()}")
        assert out.shape == (3, 4, 3) and out.dtype == np.uint8


def test_empty_folder_names_it(tmp_path):
    manual = tmp_path / "m"
    (manual / "images").mkdir(parents=True)
    (manual / "masks").mkdir()
    (manual / "README.txt").write_text("nothing here")
    with pytest.raises(DataError, match=f"no images found in {manual / 'images'}"):
        _build(tmp_path, "folder", manual)


def test_missing_folder_mask_names_expected_path(tmp_path):
    manual = write_folder(tmp_path / "m", n=3)
    (manual / "masks" / "case02.png").unlink()
    with pytest.raises(DataError, match=f"no mask for .*case02.png: expected "
                                        f"{manual / 'masks' / 'case02'}.png"):
        _build(tmp_path, "folder", manual)


def test_split_file_naming_a_missing_file(tmp_path):
    manual = write_folder(tmp_path / "m", n=3)
    (manual / "splits.json").write_text(json.dumps({"train": ["case00", "case07"],
                                                    "test": ["case01"]}))
    with pytest.raises(DataError, match=f"split file {manual / 'splits.json'} names 1 image.*"
                                        "'case07'"):
        _build(tmp_path, "folder", manual)


def test_explicit_split_file_must_exist(tmp_path):
    manual = write_folder(tmp_path / "m", n=3)
    with pytest.raises(DataError, match=f"split file {tmp_path / 'nope.json'} does not exist"):
        _build(tmp_path, "folder", manual, split_file=str(tmp_path / "nope.json"))


def test_monuseg_tile_without_annotation(tmp_path):
    manual = write_monuseg(tmp_path / "m", n_train=2, n_test=1, tile=32)
    ann = manual / "MoNuSeg 2018 Training Data" / "Annotations"
    (ann / "TCGA-train-01.xml").unlink()
    with pytest.raises(DataError, match="no annotation for .*TCGA-train-01.tif: expected .*"
                                        f"or {ann}/TCGA-train-01.xml"):
        _build(tmp_path, "monuseg", manual, tile_size=32)


def test_monuseg_bad_xml(tmp_path):
    manual = write_monuseg(tmp_path / "m", n_train=2, n_test=1, tile=32)
    bad = manual / "MoNuSegTestData" / "TCGA-test-00.xml"
    bad.write_text("<Annotations><Region>")
    with pytest.raises(DataError, match=f"cannot parse annotation XML {bad}"):
        _build(tmp_path, "monuseg", manual, tile_size=32)
