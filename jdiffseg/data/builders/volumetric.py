"""What the builders of volumetric datasets (nnU-Net/Decathlon, BraTS) share: the description
of a layout's cases, the config, the features of a slice, the splits by case, the CT statistics,
and turning one case into slice examples.

Every example is one 2D slice: the normalised channels and the `mask` of the chosen target,
both square model inputs; the mask is binary (target 'foreground', a class or a region) or,
with target 'classes', the label map of class indices 0..C in the order of the declared label
values (trained with `config.data.num_classes` = C). `labels_plane` holds the class indices on
the slice's own grid, so a case's true volume is exact whatever the resize; the geometry puts a
prediction back into the case's volume (case id, slice index, spacing, shape, affine, crop and
pad; the slice axis, size and normalisation are in the dataset's metadata, see `metadata`).
Examples are stored in generation order: a case's slices are contiguous and in slice order.

A case with several raters' label maps (`config.data.raters` = R >= 2) is read through their
consensus, the per-voxel label most raters give (ties to the larger value, `raters.majority`):
`mask`, `labels_plane`, the CT statistics and the empty-slice draw use it, and `raters`
(R, S, S, 1) holds each rater's target.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jdiffseg.data import geometry, intensity, raters, volumes
from jdiffseg.data.builders import common
from jdiffseg.data.images import DataError

MAX_CLASSES = 256  # class indices are stored as uint8
CLASSES = "classes"  # the target that keeps every declared label as its own class


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled case: its channel files (one 3D file each, or one 4D file) and label map;
    with several raters their label maps, `label` being rater 0's."""

    id: str
    channels: tuple[Path, ...]
    label: Path
    raters: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a dataset folder declares and holds."""

    kind: str  # for messages and metadata: "nnU-Net v2", "Decathlon", "BraTS"
    channels: tuple[str, ...]  # declared channel (modality) names, in order
    labels: dict[int, str]  # declared label values -> names; 0 is background
    regions: dict[str, tuple[int, ...]]  # named unions of label values (binary targets)
    train: tuple[Case, ...]
    test: tuple[Case, ...] = ()  # labelled test cases, where the layout has them


@dataclasses.dataclass(eq=False)
class VolumeConfig(common.SegConfig):
    """Options of the volumetric builders (all change the stored data)."""

    label: str = "custom"  # names the stored dataset: one label per distinct dataset folder
    test_fraction: float = 0.2  # cases carved for test when the layout has no labelled test set
    axis: int = 2  # the spatial axis (of the NIfTI voxel array) that slices are taken along
    target: str = "foreground"  # foreground | classes | a class name | a region name
    empty_slices: float = 1.0  # fraction of training slices without target kept (1 all, 0 none)
    crop_nonzero: bool = True  # crop each case in-plane to its non-zero region first
    raters: int = 0  # label maps per case (<case>_rater<k>); 0: one


def make_config(
    label: str = "custom",
    image_size: int = 128,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    axis: int = 2,
    target: str = "foreground",
    empty_slices: float = 1.0,
    crop_nonzero: bool = True,
    num_raters: int = 0,
) -> VolumeConfig:
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    if not 0.0 <= empty_slices <= 1.0:
        raise ValueError(f"empty_slices must be in [0, 1], got {empty_slices}")
    name = common.config_name(
        label,
        [
            ("{}px", image_size, None),
            ("axis{}", axis, 2),
            ("{}", slug(target), "foreground"),
            ("empty{}", empty_slices, 1.0),
            ("nocrop", "" if crop_nonzero else "x", ""),
            ("val{}", val_fraction, 0.1),
            ("test{}", test_fraction, 0.2),
            ("seed{}", seed, 0),
            ("raters{}", num_raters, 0),
        ],
    )
    return VolumeConfig(
        name=name,
        version=common.VERSION,
        release_notes=common.RELEASE_NOTES,
        image_size=image_size,
        val_fraction=val_fraction,
        seed=seed,
        label=label,
        test_fraction=test_fraction,
        axis=axis,
        target=target,
        empty_slices=empty_slices,
        crop_nonzero=crop_nonzero,
        raters=num_raters,
    )


def slug(name: str) -> str:
    """A class or region name as a config value: lower case, runs of other characters -> '_'."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def target_values(layout: Layout, target: str) -> tuple[int, ...]:
    """The label values that make up the target: the binary mask's foreground, or with target
    'classes' every foreground class of the label map."""
    foreground = tuple(sorted(v for v in layout.labels if v != 0))
    choices = {"foreground": foreground, CLASSES: foreground}
    choices |= {slug(n): (v,) for v, n in layout.labels.items() if v != 0}
    choices |= {slug(n): tuple(vs) for n, vs in layout.regions.items()}
    if slug(target) not in choices:
        raise DataError(
            f"{layout.kind}: target {target!r} is not 'foreground', 'classes', a class or a "
            f"region of this dataset; choose one of {sorted(choices)}"
        )
    return choices[slug(target)]


def is_label_map(layout: Layout, target: str) -> bool:
    """Whether the stored mask is a label map over several classes (target 'classes' of a
    dataset declaring two or more foreground labels) rather than a binary mask."""
    return slug(target) == CLASSES and len(layout.labels) > 2


def class_names(layout: Layout, target: str) -> list[str]:
    """The classes of the stored mask, background first (what `config.data.num_classes`
    counts): every declared label for a label map, else background and the target."""
    if is_label_map(layout, target):
        return [layout.labels[v] for v in sorted(layout.labels)]
    if slug(target) in ("foreground", CLASSES):
        return ["background", "foreground"]
    return ["background", target]


def features(size: int, num_raters: int = 0) -> tfds.features.FeaturesDict:
    def t(shape: tuple, dtype: type, doc: str) -> tfds.features.Tensor:
        return tfds.features.Tensor(
            shape=shape, dtype=dtype, doc=doc, encoding=tfds.features.Encoding.ZLIB
        )

    spec = {}
    if num_raters:
        spec["raters"] = t((num_raters, size, size, 1), np.uint8, "every rater's target")
    return tfds.features.FeaturesDict(
        {
            **spec,
            "image": t((size, size, None), np.float32, "normalised channels (see metadata)"),
            "mask": t((size, size, 1), np.uint8, "binary target, or class indices 0..C"),
            "labels_plane": t((None, None), np.uint8, "class indices on the slice's own grid"),
            "id": tfds.features.Text(doc="case/slice"),
            "case": tfds.features.Text(doc="case id"),
            "slice": t((), np.int32, "slice index along the slice axis"),
            "spacing": t((3,), np.float32, "voxel size in mm of the case's volume (x, y, z)"),
            "shape": t((3,), np.int32, "the case's volume shape"),
            "affine": t((4, 4), np.float64, "the case's voxel-to-world affine"),
            "crop": t((4,), np.int32, "in-plane crop box r0, r1, c0, c1 (end exclusive)"),
            "pad": t((4,), np.int32, "zero padding top, bottom, left, right before the resize"),
        }
    )


def dataset_info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=features(builder.builder_config.image_size, builder.builder_config.raters),
        supervised_keys=("image", "mask"),
        disable_shuffling=True,  # a case's slices stay together and in order
        metadata=tfds.core.MetadataDict(),
    )


def split_cases(layout: Layout, config: VolumeConfig) -> dict[str, list[Case]]:
    """Cases per split: test from the layout or carved, validation carved from train."""
    by_id = {c.id: c for c in layout.train}
    if len(by_id) != len(layout.train):
        raise DataError(f"{layout.kind}: two training cases share an id")
    keys = list(by_id)
    test = list(layout.test)
    if not test:
        keys, test_keys = common.carve(keys, config.test_fraction, config.seed)
        test = [by_id[k] for k in test_keys]
    train, val = common.carve(keys, config.val_fraction, config.seed + 1)
    return {"train": [by_id[k] for k in train], "validation": [by_id[k] for k in val], "test": test}


def read_case(
    case: Case, layout: Layout
) -> tuple[np.ndarray, np.ndarray, object, np.ndarray | None]:
    """(image (X, Y, Z, C) float32, labels (X, Y, Z) int64, reference NIfTI image, every
    rater's labels (R, X, Y, Z) or None); with raters, `labels` is their consensus."""
    image, ref = volumes.read_channels(case.channels, len(layout.channels))
    declared = list(layout.labels)
    if not case.raters:
        return image, volumes.read_labels(case.label, ref, case.channels[0], declared), ref, None
    stack = np.stack([volumes.read_labels(p, ref, case.channels[0], declared)
                      for p in case.raters])
    return image, raters.majority(stack), ref, stack


def channel_statistics(cases: Sequence[Case], layout: Layout) -> list[dict[str, float] | None]:
    """CT statistics of each CT channel over the training cases' foreground; None elsewhere."""
    schemes = [intensity.scheme(n) for n in layout.channels]
    ct = [c for c, s in enumerate(schemes) if s == intensity.CT]
    if not ct:
        return [None] * len(schemes)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct}
    for case in cases:
        image, labels, _, _ = read_case(case, layout)
        for c in ct:
            samples[c].append(intensity.foreground_sample(image[..., c], labels, f"{case.id}/{c}"))
    return [
        intensity.ct_statistics(samples[c], f"{layout.kind} channel {c}") if c in samples else None
        for c in range(len(schemes))
    ]


def metadata(layout: Layout, config: VolumeConfig, stats: list, splits: dict) -> dict:
    """What a reader needs besides the slices, saved as the dataset's metadata.json.

    `class_names` are the stored mask's classes (`config.data.num_classes` + 1 of them);
    `label_values` / `label_names` every declared label (class index = position);
    `normalisation` one entry per channel: its scheme and, for CT, the clip bounds, mean and
    std of the training foreground (`jdiffseg.data.intensity`), so new cases are normalised
    exactly as the training data; `axis`, `image_size` and `crop_nonzero` say how volumes
    become slices (`jdiffseg.data.cases.read_case_slices` applies them)."""
    values = sorted(layout.labels)
    return {
        "layout": layout.kind,
        "channel_names": list(layout.channels),
        "normalisation": [
            {"scheme": intensity.scheme(n), **(s or {})}
            for n, s in zip(layout.channels, stats, strict=True)
        ],
        "label_values": values,
        "label_names": [layout.labels[v] for v in values],
        "class_names": class_names(layout, config.target),
        "regions": {n: list(v) for n, v in layout.regions.items()},
        "target": config.target,
        "target_values": list(target_values(layout, config.target)),
        "axis": config.axis,
        "image_size": config.image_size,
        "crop_nonzero": config.crop_nonzero,
        "cases": {name: [c.id for c in cases] for name, cases in splits.items()},
    }


def target_of(labels: np.ndarray, layout: Layout, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, target) uint8 of a label map: the target is the class indices for a
    label map, else the binary mask of the target's values."""
    classes = np.searchsorted(sorted(layout.labels), labels).astype(np.uint8)
    if is_label_map(layout, target):
        return classes, classes
    return classes, np.isin(labels, target_values(layout, target)).astype(np.uint8)


def keep_empty(seed: int, case_id: str, index: int, fraction: float) -> bool:
    """Whether a training slice without target is kept: a fixed draw per (seed, case, slice)."""
    if fraction >= 1.0:
        return True
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode()), index])
    return bool(rng.random() < fraction)


def case_examples(
    case: Case, layout: Layout, config: VolumeConfig, stats: list, train: bool
) -> Iterator[tuple[str, dict]]:
    """The slice examples of one case (see the module docstring)."""
    raw, labels, ref, rater_labels = read_case(case, layout)
    image = intensity.normalise(raw, [intensity.scheme(n) for n in layout.channels], stats)
    classes, target = target_of(labels, layout, config.target)
    rater_targets = [] if rater_labels is None else [
        target_of(r, layout, config.target)[1] for r in rater_labels]
    axis, size = config.axis, config.image_size
    crop = geometry.case_box(raw, axis, config.crop_nonzero)
    fixed = {
        "case": case.id,
        "spacing": volumes.spacing(ref).astype(np.float32),
        "shape": np.asarray(image.shape[:3], np.int32),
        "affine": np.asarray(ref.affine, np.float64),
        "crop": np.asarray(crop, np.int32),
        "pad": np.asarray(geometry.square_pad(crop), np.int32),
    }
    for k in range(image.shape[axis]):
        class_plane = volumes.plane(classes, axis, k)
        mask = geometry.to_square(volumes.plane(target, axis, k), crop, size, nearest=True)
        if (
            train
            and not mask.any()
            and not keep_empty(config.seed, case.id, k, config.empty_slices)
        ):
            continue
        key = f"{case.id}/{k:04d}"
        extra = {}
        if rater_targets:
            extra["raters"] = np.stack([
                geometry.to_square(volumes.plane(t, axis, k), crop, size, nearest=True)
                for t in rater_targets])[..., None]
        yield (
            key,
            {
                **fixed,
                "id": key,
                "slice": np.int32(k),
                "mask": mask[..., None],
                "image": geometry.to_square(
                    volumes.plane(image, axis, k), crop, size, nearest=False
                ),
                "labels_plane": class_plane,
                **extra,
            },
        )


class VolumeBuilder(common.Builder, skip_registration=True):
    """A volumetric dataset sliced to 2D; subclasses say how to find the layout's cases."""

    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return dataset_info(self, self.DESCRIPTION)

    def find_layout(self, root: Path) -> Layout:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        layout = self.find_layout(common.manual_root(dl_manager, self.name))
        target_values(layout, c.target)  # an unknown target stops before any reading
        if len(layout.labels) > MAX_CLASSES:
            raise DataError(
                f"{layout.kind}: {len(layout.labels)} declared labels; the stored "
                f"class-index maps (uint8) hold at most {MAX_CLASSES}"
            )
        splits = split_cases(layout, c)
        stats = channel_statistics(splits["train"], layout)
        self.info.metadata.update(metadata(layout, c, stats, splits))
        return {
            name: self._generate_examples(cases, layout, stats, name == "train")
            for name, cases in common.non_empty(splits).items()
        }

    def _generate_examples(
        self, cases: list[Case], layout: Layout, stats: list, train: bool
    ) -> Iterator[tuple[str, dict]]:
        for case in cases:
            yield from case_examples(case, layout, self.builder_config, stats, train)
