"""NIfTI volumes (`.nii`, `.nii.gz`) as `jdiffseg predict` inputs, for runs trained on a
volumetric dataset (`nnunet`, `brats`).

A case is one of:

* nnU-Net channel files `CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ... in one folder, grouped by
  `jdiffseg.data.builders.nnunet.image_groups` (a folder is read this way when every NIfTI file
  in it is named so; a case missing a channel the folder's other cases have stops the run);
* any other NIfTI file: a 3D volume (one channel) or a 4D one with the channels last (the
  Decathlon's layout).

Its channels must be the run's (`metadata['channel_names']`, in that order); a case with a
different number stops the run naming it. Slices are prepared by
`jdiffseg.data.cases.read_case_slices` exactly as the run's dataset was (normalisation
statistics, slice axis, crop, size from the dataset's metadata: the run's dataset must be
prepared, or preparable from its `data.manual_dir`). Outputs, on the input's voxel grid with
its affine and header:

* `<name>_mask.nii.gz`: uint8 label map, 0/1 for a binary run, the class index 0 … C for a
  multi-class one (nearest neighbour);
* `<name>_probs.nii.gz`: float32 probabilities (bilinear in plane): (X, Y, Z) of the
  foreground, or one 4D file (X, Y, Z, C+1) of every class, background first;
* `<name>_uncertainty.nii.gz`: float32 (X, Y, Z) predictive entropy of the ensemble mean in bits;
* `<name>.json`: the case's row of cases.csv (written last: the case is complete), with the
  foreground per class in voxels and in mm³ (voxel count × the header's voxel volume).

Voxels outside the in-plane crop of a `crop_nonzero` dataset are background with certainty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jdiffseg.data import cases, volumes
from jdiffseg.data.builders.nnunet import image_groups
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import dataset_metadata
from jdiffseg.prediction import outputs
from jdiffseg.prediction.readers import Case, Loaded, PredictError, Prediction, is_volumetric

OUTPUT_SUFFIXES = ("_mask.nii.gz", "_probs.nii.gz", "_uncertainty.nii.gz", ".json")
_CHANNEL_FILE = re.compile(r".+_\d{4}$")  # nnU-Net's CASE_XXXX, XXXX the channel index


class VolumeReader:
    """NIfTI files, grouped into cases (see the module docstring)."""

    kind = f"NIfTI volumes ({', '.join(volumes.NIFTI_SUFFIXES)})"

    def cases(self, path: Path) -> list[Case]:
        if path.is_file():
            return [Case(volumes.strip_suffix(path.name), (path,))] if _is_nifti(path) else []
        folders = sorted({p.parent for p in path.rglob("*") if _is_nifti(p)})
        return [case for folder in folders for case in _folder_cases(path, folder)]

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        if not is_volumetric(config):
            raise ValueError(
                f"the run was trained on 2D images (config.data.name={config.data.name!r}); "
                "NIfTI inputs need a run trained on a volumetric dataset (nnunet, brats)")

    def num_slices(self, case: Case, config: ml_collections.ConfigDict) -> int:
        axis = int(dataset_metadata(config)["axis"])
        try:
            return int(volumes.load(case.paths[0]).shape[axis])
        except (DataError, IndexError):
            return 1  # unreadable: `read` names the file (one slot, never predicted)

    def read(self, case: Case, config: ml_collections.ConfigDict) -> Loaded:
        metadata = dataset_metadata(config)
        names = list(metadata["channel_names"])
        found = sum(_channels(p) for p in case.paths)
        if found != len(names):
            files = ", ".join(str(p) for p in case.paths)
            raise PredictError(
                f"case {case.name} ({files}) has {found} channel(s) but the run was trained "
                f"on {len(names)}: {', '.join(names)} (nnU-Net files CASE_0000 .. "
                f"CASE_{len(names) - 1:04d}, or one 4D file with the channels last)")
        slices, geo = cases.read_case_slices(case.paths, metadata)
        return Loaded(slices, geo)

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.name}{suffix}" for suffix in OUTPUT_SUFFIXES]

    def write(self, case: Case, loaded: Loaded, prediction: Prediction, out_dir: Path,
              class_names: tuple[str, ...]) -> Mapping[str, Any]:
        mask_path, probs_path, uncertainty_path, summary_path = self.outputs(case, out_dir)
        geo: cases.CaseGeometry = loaded.geometry
        probs = np.asarray(prediction.probs, np.float32)
        binary = probs.shape[-1] == 1
        if binary:  # restack_prediction wants every class: background certain outside the crop
            probs = np.concatenate([1.0 - probs, probs], axis=-1)
        # The uncertainty maps ride along as two extra channels: zero outside the crop.
        planes = np.concatenate([probs, prediction.entropy[..., None],
                                 prediction.mutual_information[..., None]], axis=-1)
        labels, maps = cases.restack_prediction(
            np.asarray(prediction.labels, np.uint8), geo, planes.astype(np.float32))
        probs_volume, entropy, information = maps[..., :-2], maps[..., -2], maps[..., -1]
        cases.write_prediction(probs_volume[..., 1] if binary else probs_volume, geo, probs_path)
        cases.write_prediction(entropy, geo, uncertainty_path)
        cases.write_prediction(labels, geo, mask_path)
        voxel_mm3 = float(np.prod(geo.spacing))
        row = {"case": case.name, "input": str(case.paths[0]), "shape": list(geo.shape),
               "spacing_mm": [round(float(s), 6) for s in geo.spacing],
               **outputs.class_summary(labels, class_names, unit_name="voxels"),
               **outputs.class_summary(labels, class_names, voxel_mm3, "mm3"),
               **outputs.uncertainty_summary(entropy, information)}
        outputs.write_summary(summary_path, row)
        return row


def _is_nifti(path: Path) -> bool:
    return (path.is_file() and path.name.endswith(volumes.NIFTI_SUFFIXES)
            and not path.name.startswith("."))


def _channels(path: Path) -> int:
    """Channels of one file from its header: a 4D file's last axis, else one."""
    image = volumes.load(path)
    return int(image.shape[3]) if len(image.shape) == 4 else 1


def _folder_cases(root: Path, folder: Path) -> list[Case]:
    """The cases of one folder (not its sub-folders), named by their path below `root`."""
    files = sorted(p for p in folder.iterdir() if _is_nifti(p))
    prefix = folder.relative_to(root)
    stems = {p: volumes.strip_suffix(p.name) for p in files}
    if not all(_CHANNEL_FILE.fullmatch(s) for s in stems.values()):
        return [Case(str(prefix / stems[p]), (p,)) for p in files]
    found = []
    for ending in volumes.NIFTI_SUFFIXES:
        indices = [int(stems[p][-4:]) for p in files if p.name.endswith(ending)]
        if indices:
            groups = image_groups(folder, max(indices) + 1, ending)
            found += [Case(str(prefix / case), paths) for case, paths in groups.items()]
    return found
