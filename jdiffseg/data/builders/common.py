"""Pieces every builder shares: feature spec, DatasetInfo, manual_dir access, split carving,
and loading one (image, mask) pair with the checks users' data needs."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jdiffseg.data.files import Entry
from jdiffseg.data.images import (
    DataError,
    decode_image,
    decode_label_map,
    decode_mask,
    report_note,
    resize_image,
    resize_labels,
    resize_mask,
)

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "First release."}
SPLITS = ("train", "validation", "test")
BINARY_CLASSES = ("background", "foreground")


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of all builders here: unregistered (no name clashes with TFDS's catalogue) and
    locating its own source file directly, which TFDS otherwise does through
    `importlib_resources`, a package that is absent when TensorFlow's extras are not installed.
    All builders here share one version."""

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    DESCRIPTION = ""
    HOMEPAGE: str | None = None
    CITATION: str | None = None
    INSTANCES = False  # whether examples carry an instance map

    def _info(self) -> tfds.core.DatasetInfo:
        return dataset_info(self, self.DESCRIPTION, self.builder_config.image_size,
                            instances=self.INSTANCES, homepage=self.HOMEPAGE,
                            citation=self.CITATION)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


def _tensor(shape: tuple[int, ...], dtype: Any, doc: str) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB,
                                doc=doc)


def features(size: int, instances: bool = False, label_map: bool = False, raters: int = 0
             ) -> tfds.features.FeaturesDict:
    """image uint8 (S,S,3), mask uint8 (S,S,1) in {0,1} (or a label map over {0 … C}), id;
    optionally an instance map, and with `raters` = R >= 2 every rater's mask (R,S,S,1), the
    `mask` then being their majority (`jdiffseg.data.raters`)."""
    mask_doc = "label map, 0 = background" if label_map else "binary mask, 1 = foreground"
    if raters:
        mask_doc += "; the raters' majority"
    spec = {
        "image": _tensor((size, size, 3), np.uint8, "RGB image"),
        "mask": _tensor((size, size, 1), np.uint8, mask_doc),
        "id": tfds.features.Text(doc="source file stem (and patch position)"),
    }
    if instances:
        spec["instances"] = _tensor((size, size), np.int32, "instance labels, 0 = background")
    if raters:
        spec["raters"] = _tensor((raters, size, size, 1), np.uint8, "every rater's mask")
    return tfds.features.FeaturesDict(spec)


def dataset_info(builder: tfds.core.DatasetBuilder, description: str, size: int, *,
                 instances: bool = False, homepage: str | None = None,
                 citation: str | None = None,
                 metadata: tfds.core.MetadataDict | None = None,
                 raters: int = 0) -> tfds.core.DatasetInfo:
    """DatasetInfo built directly (no package metadata files needed). `metadata` (saved as
    metadata.json beside the data) carries 'class_names' for label-map datasets."""
    label_map = metadata is not None and len(metadata.get("class_names", ())) > 2
    return tfds.core.DatasetInfo(
        builder=builder, description=description,
        features=features(size, instances, label_map, raters), supervised_keys=("image", "mask"),
        homepage=homepage, citation=citation, metadata=metadata)


def class_names(info: tfds.core.DatasetInfo) -> tuple[str, ...]:
    """The class names a prepared dataset declares (index = label value), background first;
    datasets without them are binary: ('background', 'foreground')."""
    stored = dict(info.metadata.items()) if info.metadata is not None else {}
    return tuple(stored.get("class_names") or BINARY_CLASSES)


@dataclasses.dataclass(eq=False)
class SegConfig(tfds.core.BuilderConfig):
    """Options shared by the real-data builders (all change the stored data)."""

    image_size: int = 256
    val_fraction: float = 0.1
    seed: int = 0


def config_name(base: str, parts: Sequence[tuple[str, Any, Any]]) -> str:
    """`base` plus `<fmt>` for each (fmt, value, default) whose value is not the default."""
    extra = [fmt.format(v) for fmt, v, default in parts if v != default]
    return "_".join([p for p in (base, *extra) if p])


def manual_root(dl_manager: tfds.download.DownloadManager, what: str) -> Path:
    """The manual_dir, or a `DataError` naming it and repeating the instructions."""
    try:
        return Path(str(dl_manager.manual_dir))
    except AssertionError as e:
        raise DataError(f"{what}: {e}") from e


def carve(keys: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Splits sorted `keys` into (rest, carved) with a fixed-seed permutation."""
    keys = sorted(keys)
    n = round(len(keys) * fraction)
    if fraction > 0 and len(keys) > 1:
        n = min(max(n, 1), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    carved = {keys[i] for i in order[:n]}
    return [k for k in keys if k not in carved], [k for k in keys if k in carved]


def carved_splits(train: dict[str, Any], test: Sequence, fraction: float, seed: int
                  ) -> dict[str, list]:
    """{'train', 'validation', 'test'} items, validation carved from `train` (keyed by stem)
    with `carve`, less the empty splits."""
    rest, val = carve(list(train), fraction, seed)
    splits = {"train": [train[k] for k in rest], "validation": [train[k] for k in val],
              "test": list(test)}
    return non_empty(splits)


def non_empty(splits: dict[str, Sequence]) -> dict[str, Sequence]:
    """Drops splits with no items: TFDS cannot write an empty split (e.g. val_fraction=0)."""
    return {name: items for name, items in splits.items() if len(items)}


def load_pair(image: Entry, mask: Entry, size: int, label_values: Sequence[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Decodes, checks and resizes one pair: uint8 (S,S,3) and uint8 (S,S,1) in {0,1}, or, with
    `label_values` (pixel value of each class), a label map resized by nearest neighbour."""
    img, masks = load_masks(image, [mask], size, label_values)
    return img, masks[0]


def load_masks(image: Entry, masks: Sequence[Entry], size: int,
               label_values: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`load_pair` for several masks of one image (e.g. its raters'): uint8 (S,S,3) and
    (R,S,S,1); a mask whose size differs from the image's stops, naming both files."""
    img = decode_image(image.read_bytes(), image.name)
    out = []
    for mask in masks:
        if label_values is None:
            m, note = decode_mask(mask.read_bytes(), mask.name)
            report_note(note, mask.name)
        else:
            m = decode_label_map(mask.read_bytes(), mask.name, label_values)
        if img.shape[:2] != m.shape:
            raise DataError(
                f"mask {mask.name} is {m.shape[1]}x{m.shape[0]} (WxH) but its image {image.name} "
                f"is {img.shape[1]}x{img.shape[0]}")
        resize = resize_mask if label_values is None else resize_labels
        out.append(resize(m, size)[..., None])
    return resize_image(img, size), np.stack(out)


def example(key: str, image: np.ndarray, mask: np.ndarray, **extra: np.ndarray) -> dict:
    return {"id": key, "image": image, "mask": mask, **extra}
