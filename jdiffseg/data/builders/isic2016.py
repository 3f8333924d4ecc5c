"""ISIC 2016 challenge part 1: dermoscopy lesion segmentation (900 training, 379 test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

import tensorflow_datasets as tfds
from absl import logging

from jdiffseg.data import files
from jdiffseg.data.builders import common
from jdiffseg.data.images import DataError

PREFIX = "ISBI2016_ISIC_Part1"
FOLDERS = {  # split: (images, ground truth)
    "train": (f"{PREFIX}_Training_Data", f"{PREFIX}_Training_GroundTruth"),
    "test": (f"{PREFIX}_Test_Data", f"{PREFIX}_Test_GroundTruth"),
}
EXPECTED = {"train": 900, "test": 379}
DEFAULT_SIZE = 256

INSTRUCTIONS = f"""\
Download the four ISIC 2016 part 1 archives from https://challenge.isic-archive.com/data/#2016
and put them, or the folders they extract to, into manual_dir:
  manual_dir/{FOLDERS['train'][0]}(.zip)    ISIC_0000000.jpg ...
  manual_dir/{FOLDERS['train'][1]}(.zip)    ISIC_0000000_Segmentation.png ...
  manual_dir/{FOLDERS['test'][0]}(.zip)
  manual_dir/{FOLDERS['test'][1]}(.zip)
"""


def make_config(image_size: int = DEFAULT_SIZE, val_fraction: float = 0.1,
                seed: int = 0) -> common.SegConfig:
    name = common.config_name(f"{image_size}px", [("val{}", val_fraction, 0.1),
                                                  ("seed{}", seed, 0)])
    return common.SegConfig(name=name, version=common.VERSION,
                            release_notes=common.RELEASE_NOTES, image_size=image_size,
                            val_fraction=val_fraction, seed=seed)


def find_pairs(entries: dict[str, files.Entry], root: str, split: str) -> dict[str, tuple]:
    """{stem: (image entry, mask entry)} for one split of the original layout."""
    image_dir, mask_dir = FOLDERS[split]
    images = files.in_folder(entries.values(), image_dir, (".jpg", ".jpeg"))
    if not images:
        raise DataError(f"isic2016: no {split} images found; expected "
                        f"{root}/{image_dir}/ISIC_0000000.jpg ... or {root}/{image_dir}.zip\n"
                        f"{INSTRUCTIONS}")
    masks = {e.stem: e for e in files.in_folder(entries.values(), mask_dir, (".png",))}
    pairs = {}
    for img in images:
        mask = masks.get(f"{img.stem}_Segmentation")
        if mask is None:
            where = PurePosixPath(img.rel).parent.parent / mask_dir / f"{img.stem}_Segmentation.png"
            raise DataError(f"isic2016: mask for {img.name} not found; expected {root}/{where}")
        pairs[img.stem] = (img, mask)
    if len(pairs) != EXPECTED[split]:
        logging.warning("isic2016: found %d %s images (the challenge has %d)", len(pairs), split,
                        EXPECTED[split])
    return pairs


class Isic2016(common.Builder, skip_registration=True):
    """ISIC 2016 part 1 lesion segmentation; validation carved from training with a fixed seed."""

    name = "isic2016"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [make_config()]  # noqa: RUF012
    DESCRIPTION = "ISIC 2016 part 1 dermoscopic lesion segmentation, resized to a square."
    HOMEPAGE = "https://challenge.isic-archive.com/landing/2016/"
    CITATION = "Gutman et al., arXiv:1605.01397, 2016."

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        root = common.manual_root(dl_manager, self.name)
        entries = files.index(root)
        train = find_pairs(entries, str(root), "train")
        test = find_pairs(entries, str(root), "test").values()
        splits = common.carved_splits(train, test, c.val_fraction, c.seed)
        return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

    def _generate_examples(self, pairs: list[tuple]) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        for img, mask in pairs:
            image, m = common.load_pair(img, mask, size)
            yield img.stem, common.example(img.stem, image, m)
