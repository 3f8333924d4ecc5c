"""Medical volumes in NIfTI: reading a case's channels and label map with the checks users' data
needs, taking 2D slices along an axis, and putting slices back into a volume saved with the
source's affine and header.

Every failure raises `DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from jdiffseg.data.images import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Affines of a case's files may differ by rounding in the header's float32 fields.
AFFINE_ATOL = 1e-3


def strip_suffix(name: str) -> str:
    """`name` without its NIfTI suffix (`.nii.gz` or `.nii`)."""
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def load(path: Path) -> nib.spatialimages.SpatialImage:
    """The NIfTI image at `path` (header only; the voxels are read by `voxels`)."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        return nib.load(path)
    except (OSError, EOFError, zlib.error, ValueError, ImageFileError) as e:
        raise DataError(f"cannot read NIfTI header of {path}: {e}") from e


def voxels(image: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """The voxel array (scaled by the header's slope and intercept) as float32."""
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"cannot read the voxels of {path} (truncated or corrupt?): {e}") from e
    if not np.isfinite(data).all():
        raise DataError(f"{path} contains NaN or infinite voxels")
    return data


def spacing(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Voxel size in mm along the first three axes."""
    return np.asarray(image.header.get_zooms()[:3], np.float64)


def _same_grid(
    image: nib.spatialimages.SpatialImage,
    path: Path,
    ref: nib.spatialimages.SpatialImage,
    ref_path: Path,
) -> None:
    if image.shape[:3] != ref.shape[:3]:
        raise DataError(
            f"{path} has shape {image.shape[:3]} but {ref_path} has "
            f"{ref.shape[:3]}: a case's channels and label must share one grid"
        )
    if not np.allclose(image.affine, ref.affine, atol=AFFINE_ATOL):
        raise DataError(
            f"{path} has a different affine from {ref_path} (largest difference "
            f"{np.abs(image.affine - ref.affine).max():.4g}): a case's channels and "
            f"label must share one grid\n{image.affine}\nvs\n{ref.affine}"
        )


def read_channels(
    paths: Sequence[Path], num_channels: int
) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """A case's image as float32 (X, Y, Z, C) and the first file's image (the reference grid).

    `paths` holds one 3D file per channel (nnU-Net, BraTS) or one 4D file with the channels
    along its last axis (the Decathlon's layout)."""
    ref = load(paths[0])
    arrays = []
    for path in paths:
        image = ref if path == paths[0] else load(path)
        if image.ndim not in (3, 4):
            raise DataError(
                f"{path} has {image.ndim} dimensions {image.shape}; expected a 3D "
                "volume (or 4D with channels last)"
            )
        _same_grid(image, path, ref, paths[0])
        data = voxels(image, path)
        arrays.append(data[..., None] if data.ndim == 3 else data)
    stacked = np.concatenate(arrays, axis=-1)
    if stacked.shape[-1] != num_channels:
        raise DataError(
            f"{', '.join(map(str, paths))}: {stacked.shape[-1]} channel(s) but the "
            f"dataset declares {num_channels}"
        )
    return stacked, ref


def read_labels(
    path: Path, ref: nib.spatialimages.SpatialImage, ref_path: Path, declared: Sequence[int]
) -> np.ndarray:
    """A label map as int64 (X, Y, Z), on the grid of `ref`, holding only `declared` values."""
    image = load(path)
    if image.ndim != 3 and not (image.ndim == 4 and image.shape[3] == 1):
        raise DataError(f"label map {path} has shape {image.shape}; expected a 3D volume")
    _same_grid(image, path, ref, ref_path)
    data = voxels(image, path).reshape(image.shape[:3])
    rounded = np.round(data)
    if not np.array_equal(data, rounded):
        bad = np.unique(data[data != rounded])[:5]
        raise DataError(f"label map {path} has non-integer values, e.g. {bad.tolist()}")
    labels = rounded.astype(np.int64)
    undeclared = sorted(set(np.unique(labels).tolist()) - set(declared))
    if undeclared:
        raise DataError(
            f"label map {path} has value(s) {undeclared} that the dataset does not "
            f"declare (declared: {sorted(declared)})"
        )
    return labels


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` along spatial `axis` (0, 1 or 2): the other axes keep their order."""
    return np.take(volume, index, axis=axis)


def restack(
    planes: Mapping[int, np.ndarray], axis: int, shape: Sequence[int], fill: float = 0
) -> np.ndarray:
    """A volume of spatial `shape` from {slice index: plane}; missing slices are `fill`."""
    shape = tuple(int(s) for s in shape)
    if not planes:
        raise ValueError("restack: no slices given")
    first = np.asarray(next(iter(planes.values())))
    volume = np.full(shape + first.shape[2:], fill, first.dtype)
    view = np.moveaxis(volume, axis, 0)
    for index, p in planes.items():
        if not 0 <= index < shape[axis]:
            raise ValueError(f"restack: slice {index} outside 0..{shape[axis] - 1} of axis {axis}")
        if p.shape != view.shape[1:]:
            raise ValueError(
                f"restack: slice {index} has shape {p.shape}, expected {view.shape[1:]}"
            )
        view[index] = p
    return volume


def save(
    volume: np.ndarray, affine: np.ndarray, header: nib.spatialimages.SpatialHeader, out: Path
) -> Path:
    """Writes `volume` (X, Y, Z[, K]) as NIfTI at `out` with the given affine and a copy of the
    source's `header` (orientation codes, voxel sizes, units, description).

    The data type follows `volume` (a label map stays integer); the header's scaling is dropped
    so the stored values are exactly `volume`'s. Written under a temporary name and renamed, so
    `out` is either absent or complete."""
    header = nib.Nifti1Header.from_header(header)  # a copy, NIfTI-1 whatever the source
    header.set_data_dtype(volume.dtype)
    image = nib.Nifti1Image(volume, affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((e for e in NIFTI_SUFFIXES if out.name.endswith(e)), ".nii.gz")
    temp = out.with_name(f".{out.name}.partial{suffix}")
    nib.save(image, temp)
    temp.replace(out)
    return out
