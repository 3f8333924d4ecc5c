"""Per-case volume metrics of a volumetric dataset: each case's slices reassembled into its
volume and scored per structure with `jdiffseg.scoring.surface` (Dice, IoU, sensitivity,
precision, HD95, ASSD in mm), then summarised over cases and written to per_case.csv.

`VolumeScores` is what the evaluate loop feeds: the fused predictions of each batch by record
index (binary masks or label maps). Binary targets are scored as one structure; label maps per
class and per declared region (BraTS: whole tumour, tumour core, enhancing tumour).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jdiffseg.data import pipeline, registry
from jdiffseg.data.cases import Assembler, CaseVolume
from jdiffseg.scoring import surface

# {structure name: (values in the prediction, class indices in the truth)}
Structures = Mapping[str, tuple[Sequence[int], Sequence[int]]]

DEFINITION = (
    "per case, on the case's voxel grid (slices mapped back through their crop, pad and resize); "
    "HD95 = max of the two directed 95th percentiles of distances (mm) between face-connected "
    "surface voxels; ASSD = mean of both directed distance sets pooled; both empty -> Dice 1, "
    "HD95 0; one empty -> Dice 0, HD95 = ASSD = the volume's diagonal in mm; sensitivity "
    "(precision) undefined for an empty truth (prediction) and left out of the mean"
)


def structures(metadata: Mapping[str, Any]) -> Structures:
    """What is scored per case, from a volumetric dataset's metadata.

    A binary target: prediction 1 against the truth classes of the target's label values. A
    label map (more than two `class_names`): every foreground class against itself, and every
    declared region (BraTS' whole tumour, tumour core, enhancing tumour; nnU-Net region labels)
    as the union of its classes in both."""
    values = list(metadata["label_values"])

    def classes(label_values: Sequence[int]) -> tuple[int, ...]:
        return tuple(values.index(v) for v in label_values)

    if len(metadata["class_names"]) <= 2:
        return {str(metadata["target"]): ((1,), classes(metadata["target_values"]))}
    out: dict[str, tuple[Sequence[int], Sequence[int]]] = {
        name: ((k,), (k,)) for k, name in enumerate(metadata["class_names"]) if k > 0}
    for name, region in metadata["regions"].items():
        out[name] = (classes(region), classes(region))
    return out


def case_rows(volume: CaseVolume, structures: Structures) -> list[dict[str, Any]]:
    """One row per structure: the case, its slice count and `surface.volume_metrics`."""
    rows = []
    for name, (pred_values, truth_values) in structures.items():
        pred = np.isin(volume.prediction, pred_values)
        truth = np.isin(volume.truth, truth_values)
        scores = surface.volume_metrics(pred, truth, volume.spacing)
        rows.append({"case": volume.case, "structure": name, "slices": volume.slices, **scores})
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{structure: {metric: {mean, median, n}}} over cases; NaN (undefined) values left out."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["structure"] for r in rows):
        mine = [r for r in rows if r["structure"] == name]
        out[name] = {}
        for metric in surface.VOLUME_METRICS:
            values = np.asarray([r[metric] for r in mine], np.float64)
            values = values[~np.isnan(values)]
            out[name][metric] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "median": float(np.median(values)) if values.size else math.nan,
                "n": int(values.size),
            }
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = ["case", "structure", "slices", *surface.VOLUME_METRICS]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [r["case"], r["structure"], r["slices"]]
                + [f"{float(r[m]):.6g}" for m in surface.VOLUME_METRICS]
            )


class VolumeScores:
    """Reassembles a volumetric split's fused slice masks into cases and scores each case."""

    def __init__(self, config: ml_collections.ConfigDict, split: str):
        self.metadata = pipeline.dataset_metadata(config)
        self.structures = structures(self.metadata)
        self._assembler = Assembler(pipeline.data_source(config, split), self.metadata["axis"])
        self.rows: list[dict[str, Any]] = []

    def add(self, indices: np.ndarray, fused: np.ndarray) -> None:
        """The fused predictions of the records `indices` (B,): binary masks (B, H, W, 1) in
        [0, 1] or label maps (B, H, W) of class indices."""
        fused = np.asarray(fused)
        planes = (fused[..., 0] > 0.5) if fused.ndim == 4 else fused
        for index, plane in zip(indices, planes.astype(np.uint8), strict=True):
            for volume in self._assembler.add(int(index), plane):
                self.rows += case_rows(volume, self.structures)

    def results(self) -> dict[str, Any]:
        """The `volumes` section of metrics.json (after the last `add`)."""
        for volume in self._assembler.finish():
            self.rows += case_rows(volume, self.structures)
        return {
            "num_cases": len({r["case"] for r in self.rows}),
            "target": self.metadata["target"],
            "target_values": list(self.metadata["target_values"]),
            "structures": list(self.structures),
            "summary": summarise(self.rows),
            "definition": DEFINITION,
        }


def volume_scores(config: ml_collections.ConfigDict, split: str) -> VolumeScores | None:
    """A `VolumeScores` for a volumetric dataset, None for a 2D one."""
    return VolumeScores(config, split) if config.data.name in registry.VOLUMETRIC else None
