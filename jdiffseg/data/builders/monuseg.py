"""MoNuSeg 2018 nuclei: H&E tiles (.tif) with Aperio XML nucleus outlines, cut into patches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jdiffseg.data import files, polygons
from jdiffseg.data.builders import common
from jdiffseg.data.images import TIFF_SUFFIXES, DataError, decode_image, resize_image

TRAIN_DIR = "MoNuSeg 2018 Training Data"
TEST_DIR = "MoNuSegTestData"
EXPECTED = {"train": 30, "test": 14}
DEFAULT_SIZE, DEFAULT_TILE = 256, 512

INSTRUCTIONS = f"""\
Download the MoNuSeg 2018 training and test data from https://monuseg.grand-challenge.org/Data/
and put the archives, or what they extract to, into manual_dir:
  manual_dir/{TRAIN_DIR}.zip  or  manual_dir/{TRAIN_DIR}/Tissue Images/*.tif
                                   manual_dir/{TRAIN_DIR}/Annotations/*.xml
  manual_dir/{TEST_DIR}.zip   or  manual_dir/{TEST_DIR}/*.tif and *.xml
A tile's split is "test" when a folder on its path has "test" in its name, else "train".
Each .tif needs the .xml of the same stem beside it or in a sibling Annotations/ folder.
"""


@dataclasses.dataclass(eq=False)
class MonusegConfig(common.SegConfig):
    """Tiles are resized to tile_size (1000 -> 512 px as SegDiff), then cut into image_size
    patches every `stride` pixels (0: stride = image_size); the last row/column of patches is
    aligned to the tile's edge so the whole tile is covered."""

    tile_size: int = DEFAULT_TILE
    stride: int = 0


def make_config(image_size: int = DEFAULT_SIZE, tile_size: int = DEFAULT_TILE, stride: int = 0,
                val_fraction: float = 0.1, seed: int = 0) -> MonusegConfig:
    if image_size > tile_size:
        raise ValueError(f"monuseg: image_size {image_size} exceeds tile_size {tile_size}")
    name = common.config_name(f"{image_size}px", [
        ("tile{}", tile_size, DEFAULT_TILE), ("stride{}", stride, 0),
        ("val{}", val_fraction, 0.1), ("seed{}", seed, 0)])
    return MonusegConfig(name=name, version=common.VERSION, release_notes=common.RELEASE_NOTES,
                         image_size=image_size, tile_size=tile_size, stride=stride,
                         val_fraction=val_fraction, seed=seed)


def patch_starts(length: int, size: int, stride: int) -> list[int]:
    """Patch offsets covering [0, length): every `stride`, plus one flush with the end."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def find_tiles(entries: dict[str, files.Entry], root: str) -> dict[str, list[tuple]]:
    """{'train'|'test': [(tif entry, xml entry)]}; a missing XML stops naming where it belongs."""
    xml_by_key = {}
    for e in entries.values():
        if e.suffix == ".xml":
            xml_by_key[(_split_of(e.rel), e.stem)] = e
    tiles: dict[str, list[tuple]] = {"train": [], "test": []}
    for e in sorted(entries.values(), key=lambda e: e.rel):
        if e.suffix not in TIFF_SUFFIXES:
            continue
        split = _split_of(e.rel)
        xml = xml_by_key.get((split, e.stem))
        if xml is None:
            parent, xml_name = PurePosixPath(e.rel).parent, e.stem + ".xml"
            raise DataError(
                f"monuseg: no annotation for {e.name}: expected {root}/{parent / xml_name} "
                f"or {root}/{parent.parent / 'Annotations' / xml_name}")
        tiles[split].append((e, xml))
    for split, folder in (("train", f"{TRAIN_DIR}/Tissue Images"), ("test", TEST_DIR)):
        if not tiles[split]:
            raise DataError(f"monuseg: no {split} tiles found; expected {root}/{folder}/*.tif "
                            f"(or the .zip of {folder.split('/')[0]}).\n{INSTRUCTIONS}")
        if len(tiles[split]) != EXPECTED[split]:
            logging.warning("monuseg: found %d %s tiles (the 2018 release has %d)",
                            len(tiles[split]), split, EXPECTED[split])
    return tiles


def _split_of(rel: str) -> str:
    return "test" if any("test" in p.lower() for p in PurePosixPath(rel).parts[:-1]) else "train"


class Monuseg(common.Builder, skip_registration=True):
    """MoNuSeg 2018 nuclei segmentation patches with binary masks and instance maps."""

    name = "monuseg"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [make_config()]  # noqa: RUF012
    INSTANCES = True
    DESCRIPTION = "MoNuSeg 2018 H&E nuclei (30 training, 14 test tiles of 1000 px), as patches."
    HOMEPAGE = "https://monuseg.grand-challenge.org/"
    CITATION = ("Kumar et al., IEEE TMI 36(7):1550-1560, 2017; "
                "Kumar et al., IEEE TMI 39(5):1380-1391, 2020.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        root = common.manual_root(dl_manager, self.name)
        tiles = find_tiles(files.index(root), str(root))
        by_stem = {t[0].stem: t for t in tiles["train"]}
        splits = common.carved_splits(by_stem, tiles["test"], c.val_fraction, c.seed)
        return {name: self._generate_examples(items) for name, items in splits.items()}

    def _generate_examples(self, tiles: list[tuple]) -> Iterator[tuple[str, dict]]:
        c = self.builder_config
        size, tile = c.image_size, c.tile_size
        stride = c.stride or size
        for tif, xml in tiles:
            image = decode_image(tif.read_bytes(), tif.name)
            polys = polygons.parse_aperio_xml(xml.read_bytes(), xml.name)
            if not polys:
                logging.warning("monuseg: %s has no polygons; its mask is empty", xml.name)
            h, w = image.shape[:2]
            polys = polygons.scale_polygons(polys, tile / w, tile / h)
            inst = polygons.rasterise(polys, (tile, tile))
            image = resize_image(image, tile)
            for y in patch_starts(tile, size, stride):
                for x in patch_starts(tile, size, stride):
                    key = f"{tif.stem}_y{y}_x{x}"
                    patch = inst[y:y + size, x:x + size]
                    yield key, common.example(
                        key, image[y:y + size, x:x + size],
                        (patch > 0).astype(np.uint8)[..., None], instances=patch)
