"""2D image files (PNG, JPEG, TIFF, ...) as `jdiffseg predict` inputs.

A case is one file, prepared as the 2D datasets prepare theirs (`jdiffseg.data.images`: decoded
to RGB, grey repeated, alpha dropped; resized to the run's square `data.image_size`; scaled to
[-1, 1] as `jdiffseg.data.pipeline` does). Outputs, at the input's own height and width:

* `<name>_mask.png`: the fused mask, 0/255 for a binary run, the class index 0 … C for a
  multi-class one (resized by nearest neighbour);
* `<name>_probs.npy`: float32 probabilities (bilinear): (H, W) of the foreground, or (H, W, C+1)
  of every class, background first;
* `<name>_uncertainty.npy`: float32 (H, W) predictive entropy of the ensemble mean in bits;
* `<name>.json`: the case's row of cases.csv (written last: the case is complete).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jdiffseg.data.images import (
    IMAGE_SUFFIXES,
    DataError,
    decode_image,
    resize_image,
    resize_labels,
)
from jdiffseg.data.pipeline import normalise_image
from jdiffseg.prediction import outputs
from jdiffseg.prediction.readers import Case, Loaded, Prediction, is_volumetric

OUTPUT_SUFFIXES = ("_mask.png", "_probs.npy", "_uncertainty.npy", ".json")


class ImageReader:
    """Image files, one case each (see the module docstring)."""

    kind = f"images ({', '.join(IMAGE_SUFFIXES)})"

    def cases(self, path: Path) -> list[Case]:
        if path.is_file():
            return [Case(path.stem, (path,))] if _is_image(path) else []
        return [Case(str(p.relative_to(path).with_suffix("")), (p,))
                for p in sorted(path.rglob("*")) if p.is_file() and _is_image(p)]

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        if is_volumetric(config):  # every 2D dataset stores RGB images
            raise ValueError(
                f"the run was trained on volumes (config.data.name={config.data.name!r}); "
                "give it NIfTI files, not images")

    def num_slices(self, case: Case, config: ml_collections.ConfigDict) -> int:
        return 1

    def read(self, case: Case, config: ml_collections.ConfigDict) -> Loaded:
        (path,) = case.paths
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {path}: {e}") from e
        image = decode_image(data, str(path))
        size = int(config.data.image_size)
        slices = normalise_image(resize_image(image, size))[None]
        return Loaded(slices, image.shape[:2])

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        return [out_dir / f"{case.name}{suffix}" for suffix in OUTPUT_SUFFIXES]

    def write(self, case: Case, loaded: Loaded, prediction: Prediction, out_dir: Path,
              class_names: tuple[str, ...]) -> Mapping[str, Any]:
        mask_path, probs_path, uncertainty_path, summary_path = self.outputs(case, out_dir)
        size = tuple(loaded.geometry)
        labels = resize_labels(np.asarray(prediction.labels[0], np.uint8), size)
        probs = outputs.resize_float(prediction.probs[0], size)
        entropy = outputs.resize_float(prediction.entropy[0], size)
        information = outputs.resize_float(prediction.mutual_information[0], size)
        binary = len(class_names) == 2
        outputs.write_npy(probs_path, probs[..., 0] if binary else probs)
        outputs.write_npy(uncertainty_path, entropy)
        outputs.write_png(mask_path, labels * 255 if binary else labels)
        row = {"case": case.name, "input": str(case.paths[0]), "height": size[0],
               "width": size[1], **outputs.class_summary(labels, class_names),
               **outputs.uncertainty_summary(entropy, information)}
        outputs.write_summary(summary_path, row)
        return row


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
