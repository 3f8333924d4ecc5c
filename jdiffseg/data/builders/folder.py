"""A generic folder dataset (`images/`, `masks/` with matching stems), used for HER2 and for
users' own data, optionally with several raters' masks per image."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import tensorflow_datasets as tfds
from absl import logging

from jdiffseg.data import files, raters
from jdiffseg.data.builders import common
from jdiffseg.data.images import IMAGE_SUFFIXES, DataError

DEFAULT_SIZE = 256
SPLIT_FILE = "splits.json"
CLASSES_FILE = "classes.json"
MASK_SUFFIXES = ("", "_mask", "_Segmentation", "_segmentation", "_gt")

INSTRUCTIONS = f"""\
Put the data into manual_dir as
  manual_dir/images/<name>.<ext>   RGB images ({', '.join(IMAGE_SUFFIXES)})
  manual_dir/masks/<name>.<ext>    binary masks of the same size (0/1 or 0/255; the stem may
                                   end in {', '.join(s for s in MASK_SUFFIXES if s)})
Sub-folders are allowed; <name> is then the path below images/. Optionally add
  manual_dir/{SPLIT_FILE}   {{"train": [names], "validation": [names], "test": [names]}}
("validation" may be left out: it is then carved from train). Without a split file, test and
validation are carved at random (fixed seed) from all images. For multi-class label maps add
  manual_dir/{CLASSES_FILE}  {{"names": ["background", "liver", ...], "values": [0, 128, ...]}}
(the pixel value of each class in the masks, background first); a mask value it does not
declare stops the build. With several annotators (config.data.raters = R >= 2) each image has
  manual_dir/masks/<name>{raters.SUFFIX}<k>.<ext>   k = 0 … R-1, one mask per rater
instead of masks/<name>.<ext>; every image needs all R, each of its image's size.
"""


@dataclasses.dataclass(eq=False)
class FolderConfig(common.SegConfig):
    label: str = "custom"  # names the stored dataset: one label per distinct folder of data
    test_fraction: float = 0.2
    split_file: str = ""  # default: manual_dir/splits.json when it exists
    raters: int = 0  # masks per image, <name>_rater<k>; 0: one, <name>


def make_config(label: str = "custom", image_size: int = DEFAULT_SIZE, val_fraction: float = 0.1,
                test_fraction: float = 0.2, split_file: str = "", seed: int = 0,
                num_raters: int = 0) -> FolderConfig:
    name = common.config_name(label, [
        ("{}px", image_size, None), ("val{}", val_fraction, 0.1), ("test{}", test_fraction, 0.2),
        ("seed{}", seed, 0), ("raters{}", num_raters, 0)])
    return FolderConfig(name=name, version=common.VERSION, release_notes=common.RELEASE_NOTES,
                        label=label, image_size=image_size, val_fraction=val_fraction,
                        test_fraction=test_fraction, split_file=split_file, seed=seed,
                        raters=num_raters)


def _under(entries: dict[str, files.Entry], top: str) -> dict[str, files.Entry]:
    """{name below `top`/ without suffix: entry} for image files; duplicate names stop."""
    found: dict[str, files.Entry] = {}
    for e in sorted(entries.values(), key=lambda e: e.rel):
        parts = PurePosixPath(e.rel).parts
        if parts[0] != top or e.suffix not in IMAGE_SUFFIXES:
            continue
        key = str(PurePosixPath(*parts[1:]).with_suffix(""))
        if key in found:
            raise DataError(f"two files for {key!r}: {found[key].name} and {e.name}")
        found[key] = e
    return found


def find_pairs(root: Path, num_raters: int = 0
               ) -> dict[str, tuple[files.Entry, tuple[files.Entry, ...]]]:
    """{name: (image, its masks)}: one mask, or with `num_raters` = R >= 2 the R raters'."""
    entries = files.index(root)
    images = _under(entries, "images")
    if not images:
        raise DataError(f"no images found in {root / 'images'} (looked for "
                        f"{', '.join(IMAGE_SUFFIXES)})\n{INSTRUCTIONS}")
    masks = _under(entries, "masks")
    if not masks:
        raise DataError(f"no masks found in {root / 'masks'}\n{INSTRUCTIONS}")
    by_rater: dict[str, dict[int, files.Entry]] = {}
    for key, entry in masks.items():
        if (found := raters.split_stem(key)) is not None:
            by_rater.setdefault(found[0], {})[found[1]] = entry
    pairs = {}
    for key, img in images.items():
        if num_raters:
            pairs[key] = (img, raters.gather(
                img.name, by_rater.get(key, {}), num_raters,
                lambda k, key=key: f"{root / 'masks' / raters.rater_stem(key, k)}.png (any of "
                                   f"{', '.join(IMAGE_SUFFIXES)})",
                lambda e: e.name))
            continue
        mask = next((masks[key + s] for s in MASK_SUFFIXES if key + s in masks), None)
        if mask is None:
            hint = (f"; masks/ holds {len(by_rater[key])} rater masks "
                    f"{raters.rater_stem(key, 0)} … for it: set config.data.raters"
                    if key in by_rater else "")
            raise DataError(f"no mask for {img.name}: expected {root / 'masks' / key}.png "
                            f"(any of {', '.join(IMAGE_SUFFIXES)}){hint}")
        pairs[key] = (img, (mask,))
    return pairs


def read_split_file(path: Path, pairs: dict) -> dict[str, list[str]]:
    """{split: [names]} from a JSON split file; every name must exist in images/."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
    if not isinstance(spec, dict) or not {"train", "test"} <= spec.keys() \
            or not spec.keys() <= set(common.SPLITS):
        raise DataError(f"split file {path} must be a JSON object with keys 'train', 'test' and "
                        f"optionally 'validation'; found {found}")
    out = {}
    for split, names in spec.items():
        keys = [str(PurePosixPath(str(n)).with_suffix("")) if PurePosixPath(str(n)).suffix.lower()
                in IMAGE_SUFFIXES else str(n) for n in names]
        missing = [k for k in keys if k not in pairs]
        if missing:
            raise DataError(f"split file {path} names {len(missing)} image(s) not in "
                            f"{path.parent / 'images'}, e.g. {missing[0]!r} (expected "
                            f"{path.parent / 'images' / missing[0]}.<ext>)")
        out[split] = keys
    unused = set(pairs) - {k for v in out.values() for k in v}
    if unused:
        logging.warning("%d image(s) are in no split of %s and are skipped, e.g. %s", len(unused),
                        path, sorted(unused)[0])
    return out


def read_classes(path: Path) -> tuple[list[str], list[int]]:
    """(names, pixel values) from a classes.json; background first, at least two classes."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    names = spec.get("names") if isinstance(spec, dict) else None
    values = spec.get("values") if isinstance(spec, dict) else None
    ok = (isinstance(names, list) and isinstance(values, list) and len(names) == len(values) >= 2
          and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)
          and all(isinstance(v, int) and 0 <= v <= 65535 for v in values)
          and len(set(values)) == len(values) and len(values) <= 256)
    if not ok:
        raise DataError(
            f"{path} must be a JSON object {{\"names\": [...], \"values\": [...]}} with 2 to 256 "
            f"distinct non-empty names and as many distinct integer pixel values in [0, 65535] "
            f"(background first); found {spec!r}")
    return names, values


class Folder(common.Builder, skip_registration=True):
    """Images and binary masks (or label maps with a classes.json) from a folder; sizes
    normalised to a square image_size. With raters, `raters` holds every rater's mask and
    `mask` their majority (`jdiffseg.data.raters`)."""

    name = "folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    # No predefined configs: the split file is a setting that the config name does not encode.

    def _info(self) -> tfds.core.DatasetInfo:
        # class names are known only once manual_dir is read; they are filled in then
        return common.dataset_info(self, "Segmentation from a folder of images and masks.",
                                   self.builder_config.image_size,
                                   metadata=tfds.core.MetadataDict(),
                                   raters=self.builder_config.raters)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        root = common.manual_root(dl_manager, self.name)
        pairs = find_pairs(root, c.raters)
        self._label_values = None
        if (root / CLASSES_FILE).is_file():
            names, self._label_values = read_classes(root / CLASSES_FILE)
            self.info.metadata.update(class_names=names, pixel_values=self._label_values)
        split_file = Path(c.split_file).expanduser() if c.split_file else root / SPLIT_FILE
        if c.split_file and not split_file.is_file():
            raise DataError(f"split file {split_file} does not exist")
        if split_file.is_file():
            splits = read_split_file(split_file, pairs)
            if "validation" not in splits:
                splits["train"], splits["validation"] = common.carve(
                    splits["train"], c.val_fraction, c.seed)
        else:
            rest, test = common.carve(list(pairs), c.test_fraction, c.seed)
            train, val = common.carve(rest, c.val_fraction / max(1.0 - c.test_fraction, 1e-6),
                                      c.seed + 1)
            splits = {"train": train, "validation": val, "test": test}
        return {name: self._generate_examples([pairs[k] for k in keys], list(keys))
                for name, keys in common.non_empty(splits).items()}

    def _generate_examples(self, pairs: list[tuple], keys: list[str]) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        for key, (img, masks) in zip(keys, pairs, strict=True):
            image, m = common.load_masks(img, masks, size, self._label_values)
            if self.builder_config.raters:
                yield key, common.example(key, image, raters.majority(m), raters=m)
            else:
                yield key, common.example(key, image, m[0])


class Her2(Folder, skip_registration=True):
    """The study's HER2-stained breast-cancer tissue, read as a folder dataset."""

    name = "her2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The HER2 data of the study is in-house and not public. If you have it (or similar "
        "data), arrange it as a folder dataset:\n" + INSTRUCTIONS)
