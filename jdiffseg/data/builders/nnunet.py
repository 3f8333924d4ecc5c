"""nnU-Net v2 raw datasets and Medical Segmentation Decathlon tasks, sliced to 2D.

The folder's `dataset.json` says which layout it is: `channel_names` (nnU-Net v2: one file per
channel, `CASE_0000.nii.gz`, ...) or `modality` (the Decathlon: one 4D file per case with the
channels last).

With several annotators (`config.data.raters` = R >= 2) a case's label map `CASE.nii.gz` is
replaced by R files `CASE_rater0.nii.gz` … `CASE_rater<R-1>.nii.gz` beside it (in labelsTr/,
labelsTs/, or where the Decathlon's dataset.json points); every case needs all R, on its
image's grid (`jdiffseg.data.raters` says what the stored `mask` then is).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from absl import logging

from jdiffseg.data import raters
from jdiffseg.data.builders import volumetric
from jdiffseg.data.builders.volumetric import Case, Layout
from jdiffseg.data.images import DataError
from jdiffseg.data.volumes import NIFTI_SUFFIXES, strip_suffix

INSTRUCTIONS = """\
Point manual_dir at one dataset folder (or at a folder holding exactly one), in either layout:
  nnU-Net v2 raw:   DatasetXXX_Name/dataset.json  {"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "liver": 1},
                                                   "file_ending": ".nii.gz", ...}
                    DatasetXXX_Name/imagesTr/CASE_0000.nii.gz   (one file per channel)
                    DatasetXXX_Name/labelsTr/CASE.nii.gz
                    optionally imagesTs/ with labelsTs/ as the test split
                    several raters: labelsTr/CASE_rater0.nii.gz, CASE_rater1.nii.gz, ...
  Decathlon (MSD):  TaskXX_Name/dataset.json  {"modality": {"0": "FLAIR", ...},
                                               "labels": {"0": "background", ...},
                                               "training": [{"image": ..., "label": ...}]}
                    TaskXX_Name/imagesTr/CASE.nii.gz   (4D, channels last, when several)
                    TaskXX_Name/labelsTr/CASE.nii.gz
Cases are split into train/validation/test by case (fixed seed) unless a labelled test set exists.
With config.data.raters = R >= 2 every label map CASE.nii.gz is replaced by R files
CASE_rater0.nii.gz ... CASE_rater<R-1>.nii.gz beside where it would be.
"""


def dataset_folder(root: Path) -> Path:
    """`root` if it holds dataset.json, else its one sub-folder that does."""
    if (root / "dataset.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/dataset.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"nnunet: no dataset.json in {root} or its sub-folders\n{INSTRUCTIONS}")
    raise DataError(
        f"nnunet: {root} holds several datasets ({', '.join(p.name for p in found)});"
        " point manual_dir at one of them"
    )


def read_spec(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if (
        not isinstance(spec, dict)
        or "labels" not in spec
        or not ("channel_names" in spec or "modality" in spec)
    ):
        raise DataError(
            f"{path} is neither an nnU-Net v2 dataset.json (channel_names, labels) "
            "nor a Decathlon one (modality, labels)"
        )
    return spec


def _indexed(mapping: dict, path: Path, key: str) -> tuple[str, ...]:
    """The values of {"0": a, "1": b, ...} in index order; the indices must be 0..n-1."""
    try:
        order = sorted((int(k), str(v)) for k, v in mapping.items())
    except (AttributeError, ValueError) as e:
        raise DataError(
            f'{path}: \'{key}\' must map channel indices "0", "1", ... to names: {e}'
        ) from e
    if [i for i, _ in order] != list(range(len(order))) or not order:
        raise DataError(
            f"{path}: '{key}' must have the indices 0..n-1, found {[i for i, _ in order]}"
        )
    return tuple(name for _, name in order)


def _labels(
    pairs: list[tuple[str, object]], path: Path
) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """({value: name}, {region: values}) from (name, value or list of values) pairs."""
    labels, regions = {}, {}
    for name, value in pairs:
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            regions[name] = tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            if value in labels:
                raise DataError(f"{path}: label value {value} is declared twice")
            labels[value] = name
        else:
            raise DataError(
                f"{path}: label {name!r} has value {value!r}; expected a "
                "non-negative integer (or a list of them for a region)"
            )
    if 0 not in labels:
        raise DataError(f"{path}: the labels must declare 0 (background)")
    return labels, regions


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing {what}: expected {path}")
    return path


def _visible(folder: Path, ending: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{ending}") if not p.name.startswith("."))


def rater_labels(label: Path, ending: str, count: int, case: str) -> tuple[Path, ...]:
    """The files `<label's stem>_rater<k><ending>` of raters 0 … count-1 beside `label`
    (which itself need not exist); a missing or surplus rater stops, naming the file."""
    stem = label.name[: -len(ending)]
    found = {}
    for p in label.parent.glob(f"{glob.escape(stem)}{raters.SUFFIX}*{ending}"):
        parsed = raters.split_stem(p.name[: -len(ending)])
        if parsed is not None and parsed[0] == stem:
            found[parsed[1]] = p
    return raters.gather(
        f"case {case}", found, count,
        lambda k: str(label.parent / f"{raters.rater_stem(stem, k)}{ending}"), str)


def v2_cases(
    folder: Path, images: str, labels: str, channels: int, ending: str, num_raters: int = 0
) -> tuple[Case, ...]:
    """nnU-Net v2 cases: one label per case (or `num_raters` rater label files,
    `CASE_rater<k>`), `CASE_XXXX` image files for its channels."""
    ids = []
    for label in _visible(folder / labels, ending):
        case = label.name[: -len(ending)]
        parsed = raters.split_stem(case)
        if num_raters and parsed is not None:
            case = parsed[0]
        elif parsed is not None and not (folder / images / f"{case}_0000{ending}").is_file():
            raise DataError(f"{label} looks like rater {parsed[1]} of case {parsed[0]}: set "
                            f"config.data.raters to the number of raters per case")
        if case not in ids:
            ids.append(case)
    cases = []
    for case in ids:
        files = tuple(
            _require(folder / images / f"{case}_{c:04d}{ending}", f"channel {c} of case {case}")
            for c in range(channels)
        )
        label = folder / labels / f"{case}{ending}"
        if not num_raters:
            cases.append(Case(case, files, label))
            continue
        paths = rater_labels(label, ending, num_raters, case)
        cases.append(Case(case, files, paths[0], paths))
    known = {p for c in cases for p in c.channels}
    orphans = [p for p in _visible(folder / images, ending) if p not in known]
    if orphans:
        stem = orphans[0].name.rsplit("_", 1)[0]
        stem = raters.rater_stem(stem, 0) if num_raters else stem
        raise DataError(
            f"{orphans[0]} has no label map: expected {folder / labels / stem}{ending} "
            f"(or a channel index beyond the {channels} declared)"
        )
    return tuple(cases)


def image_groups(
    folder: Path, channels: int, ending: str = ".nii.gz"
) -> dict[str, tuple[Path, ...]]:
    """The cases of an nnU-Net image folder without labels (e.g. imagesTs/): {case id: its
    channel files `CASE_0000<ending>` .. in channel order}, for
    `jdiffseg.data.cases.read_case_slices`. A missing channel, a channel index beyond
    `channels` or a file not named `CASE_XXXX<ending>` raises `DataError` naming the file."""
    found: dict[str, dict[int, Path]] = {}
    for path in _visible(folder, ending):
        case, _, index = path.name[: -len(ending)].rpartition("_")
        if not case or len(index) != 4 or not index.isdigit():
            raise DataError(f"{path} is not named CASE_XXXX{ending} (XXXX the channel index)")
        if int(index) >= channels:
            raise DataError(f"{path}: channel {int(index)} but the dataset declares {channels}")
        found.setdefault(case, {})[int(index)] = path
    for case, files in found.items():
        missing = [c for c in range(channels) if c not in files]
        if missing:
            raise DataError(
                f"missing channel {missing[0]} of case {case}: expected "
                f"{folder / f'{case}_{missing[0]:04d}{ending}'}")
    if not found:
        raise DataError(f"no images *{ending} in {folder}")
    return {case: tuple(files[c] for c in range(channels)) for case, files in sorted(found.items())}


def nnunet_v2(folder: Path, spec: dict, num_raters: int = 0) -> Layout:
    path = folder / "dataset.json"
    ending = spec.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise DataError(
            f"{path}: file_ending {ending!r} is not NIfTI; only "
            f"{', '.join(NIFTI_SUFFIXES)} are read"
        )
    channels = _indexed(spec["channel_names"], path, "channel_names")
    labels, regions = _labels(list(spec["labels"].items()), path)
    train = v2_cases(folder, "imagesTr", "labelsTr", len(channels), ending, num_raters)
    if not train:
        raise DataError(f"nnunet: no label maps *{ending} in {folder / 'labelsTr'}\n{INSTRUCTIONS}")
    test = ()
    if (folder / "labelsTs").is_dir():
        test = v2_cases(folder, "imagesTs", "labelsTs", len(channels), ending, num_raters)
    elif (folder / "imagesTs").is_dir():
        logging.info(
            "nnunet: %s has no labelsTs/; its test images are not part of the dataset",
            folder / "imagesTs",
        )
    return Layout("nnU-Net v2", channels, labels, regions, train, test)


def decathlon(folder: Path, spec: dict, num_raters: int = 0) -> Layout:
    path = folder / "dataset.json"
    channels = _indexed(spec["modality"], path, "modality")
    try:
        pairs = [(str(name), int(value)) for value, name in spec["labels"].items()]
    except (AttributeError, ValueError) as e:
        raise DataError(
            f'{path}: \'labels\' must map label values "0", "1", ... to names: {e}'
        ) from e
    labels, _ = _labels(pairs, path)
    stems = [strip_suffix(p.name) for p in _visible(folder / "labelsTr", ".nii.gz")]
    if num_raters:  # one entry per case, not per rater file
        stems = list(dict.fromkeys((raters.split_stem(n) or (n,))[0] for n in stems))
    entries = spec.get("training") or [
        {"image": f"imagesTr/{n}.nii.gz", "label": f"labelsTr/{n}.nii.gz"} for n in stems
    ]
    if not entries:
        raise DataError(
            f"nnunet: {path} lists no training cases and {folder / 'labelsTr'} is "
            f"empty\n{INSTRUCTIONS}"
        )
    train = []
    for entry in entries:
        image = _require(folder / entry["image"], f"image listed in {path}")
        case = strip_suffix(image.name)
        if num_raters:
            label = folder / entry["label"]
            paths = rater_labels(label, label.name[len(strip_suffix(label.name)):],
                                 num_raters, case)
            train.append(Case(case, (image,), paths[0], paths))
            continue
        label = _require(folder / entry["label"], f"label map listed in {path}")
        train.append(Case(case, (image,), label))
    return Layout("Decathlon", channels, labels, {}, tuple(train))


class Nnunet(volumetric.VolumeBuilder, skip_registration=True):
    """nnU-Net v2 raw or Decathlon datasets as 2D slices with their volume geometry."""

    name = "nnunet"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    DESCRIPTION = "An nnU-Net v2 or Medical Segmentation Decathlon dataset, sliced to 2D."

    def find_layout(self, root: Path) -> Layout:
        folder = dataset_folder(root)
        spec = read_spec(folder / "dataset.json")
        count = self.builder_config.raters
        if "channel_names" in spec:
            return nnunet_v2(folder, spec, count)
        return decathlon(folder, spec, count)
