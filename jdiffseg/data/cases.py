"""Cases of a volumetric dataset and their 2D slices, both ways.

* `Assembler`: the slices of a prepared split (predictions and truth) back into case volumes,
  for per-case evaluation.
* `read_case_slices`, `restack_prediction`, `write_prediction`: the public path for new NIfTI
  cases (e.g. a prediction command): channel files -> normalised model inputs and the case's
  geometry -> per-slice predictions back onto the case's grid -> a NIfTI file with the input's
  affine and header.

Assembler details:

Predictions arrive as square (size, size) planes keyed by record index; each record's stored
geometry (case, slice, shape, crop, pad) maps its plane back onto the case's voxel grid
(`geometry.from_square`, nearest neighbour), and the record's `labels_plane` gives the truth on
that grid exactly. Volumetric builders store a case's slices together, so a case is complete,
and its memory released, as soon as its last slice arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jdiffseg.data import geometry, intensity, volumes


@dataclasses.dataclass
class CaseVolume:
    """One case reassembled: prediction and truth (class indices) on the case's voxel grid."""

    case: str
    prediction: np.ndarray  # (X, Y, Z), the dtype of the predicted planes
    truth: np.ndarray  # (X, Y, Z) uint8 class indices
    spacing: np.ndarray  # mm per voxel along X, Y, Z
    affine: np.ndarray  # (4, 4) voxel-to-world
    slices: int  # how many slices had a prediction (the others are 0)


def plane_shape(shape: Sequence[int], axis: int) -> tuple[int, int]:
    """In-plane shape of a volume of spatial `shape` sliced along `axis`."""
    h, w = (int(shape[a]) for a in range(3) if a != axis)
    return h, w


@dataclasses.dataclass
class _Pending:
    record: dict[str, Any]
    prediction: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    truth: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


class Assembler:
    """Collects square predictions of a split's records into case volumes.

    `source` is the split's random-access data source (records with the volumetric features),
    `axis` the slice axis the dataset was built with (its metadata's `axis`)."""

    def __init__(self, source: Any, axis: int):
        self._source = source
        self._axis = axis
        self._pending: dict[str, _Pending] = {}

    def add(self, index: int, square: np.ndarray) -> list[CaseVolume]:
        """Adds the prediction of record `index`; returns the cases this completed."""
        record = self._source[int(index)]
        case = _text(record["case"])
        pending = self._pending.setdefault(case, _Pending(record))
        k = int(record["slice"])
        shape = plane_shape(record["shape"], self._axis)
        crop = tuple(int(v) for v in record["crop"])
        pending.prediction[k] = geometry.from_square(np.asarray(square), shape, crop, True)
        pending.truth[k] = np.asarray(record["labels_plane"])
        if len(pending.prediction) == int(record["shape"][self._axis]):
            return [self._assemble(case)]
        return []

    def finish(self) -> list[CaseVolume]:
        """The cases still open (some slices never predicted, e.g. a subsampled split)."""
        return [self._assemble(case) for case in list(self._pending)]

    def _assemble(self, case: str) -> CaseVolume:
        p = self._pending.pop(case)
        shape = tuple(int(v) for v in p.record["shape"])
        return CaseVolume(
            case=case,
            prediction=volumes.restack(p.prediction, self._axis, shape),
            truth=volumes.restack(p.truth, self._axis, shape),
            spacing=np.asarray(p.record["spacing"], np.float64),
            affine=np.asarray(p.record["affine"], np.float64),
            slices=len(p.prediction),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- The public API for new cases: from channel files to model inputs, and back. ----


@dataclasses.dataclass(frozen=True)
class CaseGeometry:
    """Where a case's slices came from: what `restack_prediction` and `write_prediction` need
    to put per-slice predictions back onto the case's voxel grid."""

    shape: tuple[int, int, int]  # the case's spatial shape (X, Y, Z)
    affine: np.ndarray  # (4, 4) voxel-to-world of the first channel file
    header: Any  # that file's NIfTI header (copied into written predictions)
    spacing: np.ndarray  # mm per voxel along X, Y, Z
    axis: int  # the slice axis
    crop: geometry.Box  # in-plane crop (r0, r1, c0, c1), end exclusive
    pad: geometry.Box  # zero padding (top, bottom, left, right) that made the crop square
    size: int  # side of the square model input


def read_case_slices(
    paths: Sequence[Path], metadata: Mapping[str, Any]
) -> tuple[np.ndarray, CaseGeometry]:
    """One case's channel files -> its model inputs and geometry, exactly as the dataset with
    `metadata` (a prepared volumetric dataset's `builder.info.metadata`) was built.

    `paths`: one 3D file per channel in the dataset's channel order (nnU-Net's
    `CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ... as grouped by
    `jdiffseg.data.builders.nnunet.image_groups`; BraTS' four modalities) or one 4D file with the
    channels last (the Decathlon). Their shapes and affines must agree; a missing, truncated
    or mismatched file raises `DataError` naming it.

    Returns the normalised slices (N, S, S, C) float32 in slice order along `metadata['axis']`
    (N = the case's extent along that axis; CT channels with the training statistics stored in
    `metadata['normalisation']`, other channels z-scored over the case's non-zero region),
    cropped, padded square and resized to `metadata['image_size']` as the training slices were,
    and the `CaseGeometry` to put predictions back."""
    paths = [Path(p) for p in paths]
    raw, ref = volumes.read_channels(paths, len(metadata["channel_names"]))
    schemes, stats = intensity.from_metadata(metadata["normalisation"])
    image = intensity.normalise(raw, schemes, stats)
    axis, size = int(metadata["axis"]), int(metadata["image_size"])
    crop = geometry.case_box(raw, axis, bool(metadata["crop_nonzero"]))
    slices = np.stack([
        geometry.to_square(volumes.plane(image, axis, k), crop, size, nearest=False)
        for k in range(image.shape[axis])
    ])
    shape = tuple(int(s) for s in raw.shape[:3])
    return slices, CaseGeometry(
        shape=shape, affine=np.asarray(ref.affine, np.float64), header=ref.header,
        spacing=volumes.spacing(ref), axis=axis, crop=crop, pad=geometry.square_pad(crop),
        size=size)


def restack_prediction(
    labels: np.ndarray, geo: CaseGeometry, probabilities: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-slice predictions, in the slice order of `read_case_slices`, back on the case's grid.

    `labels` (N, S, S) integer class indices (binary: 0/1) are mapped back by nearest neighbour;
    `probabilities` (N, S, S, K) per-class probabilities, if given, bilinearly. Voxels outside
    the crop box are background: label 0, probability 1 for class 0 and 0 for the others.
    Returns (label volume (X, Y, Z) of `labels`' dtype, probability volume (X, Y, Z, K) float32
    or None)."""
    n = geo.shape[geo.axis]
    if labels.shape != (n, geo.size, geo.size):
        raise ValueError(
            f"restack_prediction: labels have shape {labels.shape}, expected "
            f"{(n, geo.size, geo.size)} (one square slice per index along axis {geo.axis})")
    plane = plane_shape(geo.shape, geo.axis)
    label_volume = volumes.restack(
        {k: geometry.from_square(labels[k], plane, geo.crop, True) for k in range(n)},
        geo.axis, geo.shape)
    if probabilities is None:
        return label_volume, None
    if probabilities.shape[:3] != labels.shape:
        raise ValueError(
            f"restack_prediction: probabilities have shape {probabilities.shape}, expected "
            f"{labels.shape} followed by the class axis")
    background = np.ones(plane, bool)
    r0, r1, c0, c1 = geo.crop
    background[r0:r1, c0:c1] = False
    planes = {}
    for k in range(n):
        p = geometry.from_square(probabilities[k].astype(np.float32), plane, geo.crop, False)
        p[background, 0] = 1.0
        planes[k] = p
    return label_volume, volumes.restack(planes, geo.axis, geo.shape)


def write_prediction(volume: np.ndarray, geo: CaseGeometry, out: Path) -> Path:
    """Writes a restacked volume (X, Y, Z) labels or (X, Y, Z, K) probabilities as NIfTI at
    `out` (`.nii.gz` or `.nii`) with the input case's affine and header, atomically."""
    if tuple(volume.shape[:3]) != geo.shape:
        raise ValueError(
            f"write_prediction: volume shape {volume.shape[:3]} is not the case's {geo.shape}")
    return volumes.save(volume, geo.affine, geo.header, Path(out))
