"""Real-data builders from small fixtures in the original layouts."""

import json

import numpy as np
import pytest
import tifffile
from data_fixtures import circle, config, write_folder, write_isic, write_monuseg

from jdiffseg.data import build_dataset, polygons
from jdiffseg.data.builders.monuseg import patch_starts


def _check(sources, counts, size, instances=False):
    assert {k: len(v) for k, v in sources.items()} == counts
    for split in counts:
        for ex in sources[split]:
            assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
            assert ex["mask"].shape == (size, size, 1) and ex["mask"].dtype == np.uint8
            assert set(np.unique(ex["mask"])) <= {0, 1}
            if instances:
                assert ex["instances"].shape == (size, size)
                np.testing.assert_array_equal(ex["instances"] > 0, ex["mask"][..., 0] == 1)


@pytest.mark.parametrize("zipped", [False, True])
def test_isic2016_from_folders_and_zips(tmp_path, zipped):
    manual = write_isic(tmp_path / "manual", n_train=5, n_test=3, zipped=zipped)
    cfg = config(tmp_path, "isic2016", image_size=24, manual_dir=str(manual))
    sources = build_dataset(cfg).as_data_source()
    _check(sources, {"train": 4, "validation": 1, "test": 3}, 24)
    ids = {split: {ex["id"].decode() for ex in sources[split]} for split in sources}
    assert ids["test"] == {"ISIC_0001000", "ISIC_0001001", "ISIC_0001002"}
    assert not ids["train"] & ids["validation"]
    # the resized mask still covers the disc: about pi * (0.25 * min side)^2 / area
    fractions = [ex["mask"].mean() for ex in sources["test"]]
    assert all(0.1 < f < 0.35 for f in fractions), fractions


def test_rasterised_polygon_matches_analytic_area():
    poly = circle(50.0, 40.0, 20.0, n=64)
    inst = polygons.rasterise([poly], (100, 100))
    area = polygons.polygon_area(poly)
    assert abs(int((inst == 1).sum()) - area) < 0.02 * area
    square = np.array([[2.5, 3.5], [7.5, 3.5], [7.5, 9.5], [2.5, 9.5]])  # 5 x 6 pixel centres
    inst = polygons.rasterise([square, circle(30, 30, 4)], (40, 40))
    assert (inst == 1).sum() == polygons.polygon_area(square) == 30
    assert inst[3, 2] == 0 and inst[4, 3] == 1 and inst[9, 7] == 1 and inst[10, 7] == 0
    assert set(np.unique(inst)) == {0, 1, 2}


def test_aperio_xml_parsing(tmp_path):
    from data_fixtures import aperio_xml
    polys = [circle(10, 10, 3, 8), np.array([[1.0, 1.0], [2.0, 2.0]])]  # 2 vertices: no area
    parsed = polygons.parse_aperio_xml(aperio_xml(polys), "x.xml")
    assert len(parsed) == 1
    np.testing.assert_allclose(parsed[0], polys[0], atol=1e-3)


def test_patch_starts_cover_the_tile():
    assert patch_starts(512, 256, 256) == [0, 256]
    assert patch_starts(500, 256, 256) == [0, 244]
    assert patch_starts(512, 256, 200) == [0, 200, 256]


def test_monuseg_patches_and_masks(tmp_path):
    manual = write_monuseg(tmp_path / "manual", n_train=3, n_test=2, tile=40)
    cfg = config(tmp_path, "monuseg", image_size=20, tile_size=40, manual_dir=str(manual))
    sources = build_dataset(cfg).as_data_source()
    _check(sources, {"train": 8, "validation": 4, "test": 8}, 20, instances=True)
    # reassemble one test tile from its four patches and compare with the polygons
    tile = np.zeros((40, 40), np.uint8)
    for ex in sources["test"]:
        key = ex["id"].decode()
        if key.startswith("TCGA-test-00"):
            y, x = (int(p[1:]) for p in key.split("_")[1:])
            tile[y:y + 20, x:x + 20] = ex["mask"][..., 0]
    xml = (manual / "MoNuSegTestData" / "TCGA-test-00.xml").read_bytes()
    polys = polygons.parse_aperio_xml(xml, "TCGA-test-00.xml")
    np.testing.assert_array_equal(tile, polygons.rasterise(polys, (40, 40)) > 0)
    image = tifffile.imread(manual / "MoNuSegTestData" / "TCGA-test-00.tif")
    test00 = [ex for ex in sources["test"] if ex["id"].decode() == "TCGA-test-00_y20_x0"]
    np.testing.assert_array_equal(test00[0]["image"], image[20:40, 0:20])


def test_monuseg_tiles_are_resized_with_their_polygons(tmp_path):
    manual = write_monuseg(tmp_path / "manual", n_train=2, n_test=1, tile=40)
    cfg = config(tmp_path, "monuseg", image_size=20, tile_size=20, val_fraction=0.0,
                 manual_dir=str(manual))
    sources = build_dataset(cfg).as_data_source()
    _check(sources, {"train": 2, "test": 1}, 20, instances=True)  # no empty split
    xml = (manual / "MoNuSegTestData" / "TCGA-test-00.xml").read_bytes()
    area = sum(polygons.polygon_area(p) for p in polygons.parse_aperio_xml(xml, "t.xml"))
    # a 2x downscale divides areas by 4 (small overlaps between nuclei aside)
    assert sources["test"][0]["mask"].sum() == pytest.approx(area / 4, rel=0.25)


def test_folder_without_split_file(tmp_path):
    manual = write_folder(tmp_path / "manual", n=10, fmt="JPEG")
    cfg = config(tmp_path, "folder", variant="mine", image_size=16, manual_dir=str(manual))
    builder = build_dataset(cfg)
    assert builder.builder_config.name == "mine_16px"
    sources = builder.as_data_source()
    _check(sources, {"train": 7, "validation": 1, "test": 2}, 16)
    ids = [ex["id"].decode() for s in sources.values() for ex in s]
    assert sorted(ids) == [f"case{i:02d}" for i in range(10)]


def test_folder_with_split_file_and_her2(tmp_path):
    manual = write_folder(tmp_path / "manual", n=6, fmt="TIFF")
    (manual / "splits.json").write_text(json.dumps(
        {"train": ["case00", "case01.tif", "case02"], "validation": ["case03"],
         "test": ["case04", "case05"]}))
    cfg = config(tmp_path, "her2", image_size=16, manual_dir=str(manual))
    sources = build_dataset(cfg).as_data_source()
    _check(sources, {"train": 3, "validation": 1, "test": 2}, 16)
    assert {ex["id"].decode() for ex in sources["test"]} == {"case04", "case05"}
