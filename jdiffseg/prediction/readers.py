"""What `jdiffseg predict` reads: cases found under an input path, each read into the model
slices of the run and written back at the input's own size and geometry.

A reader knows one kind of input (2D image files, NIfTI volumes). `find_cases`
asks every reader for the cases under a file or folder; the prediction loop only sees `Case`s
and `Loaded` slices, so adding a kind of input means adding a reader to `READERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import ml_collections
import numpy as np

from jdiffseg.data import registry
from jdiffseg.data.images import DataError
from jdiffseg.data.pipeline import dataset_metadata


class PredictError(ValueError):
    """A case cannot be predicted (unreadable input with no --keep_going, channels that do not
    fit the run); names the case. Unlike `DataError`, --keep_going does not skip it."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One input case: its name (its path below the input folder, without suffix; also the
    stem of its outputs) and the file(s) it is read from."""

    name: str
    paths: tuple[Path, ...]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A case read for the model: `slices` (n, S, S, C) float32 model inputs and what its
    reader needs to write predictions back at the input's size and geometry."""

    slices: np.ndarray
    geometry: Any


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A case's predictions at the model's resolution, one row per slice: `labels` (n, S, S)
    int (binary: 0/1, multi-class: 0 … C), `probs` (n, S, S, K) class probabilities (K = 1:
    the foreground; K = C + 1: every class), `entropy` and `mutual_information` (n, S, S),
    in bits."""

    labels: np.ndarray
    probs: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray


class Reader(Protocol):
    """One kind of input (see the module docstring)."""

    kind: str

    def cases(self, path: Path) -> list[Case]:
        """The cases of this kind in `path` (a file or a folder, searched recursively)."""

    def check_run(self, config: ml_collections.ConfigDict) -> None:
        """Raises ValueError when the run was not trained on data of this kind."""

    def num_slices(self, case: Case, config: ml_collections.ConfigDict) -> int:
        """How many model slices `read` will give (cheap: no voxels are decoded)."""

    def read(self, case: Case, config: ml_collections.ConfigDict) -> Loaded:
        """The case prepared exactly as the run's dataset was; `DataError` naming the file
        when it is unreadable."""

    def outputs(self, case: Case, out_dir: Path) -> list[Path]:
        """The files `write` creates for `case` (all present: the case is complete)."""

    def write(self, case: Case, loaded: Loaded, prediction: Prediction, out_dir: Path,
              class_names: tuple[str, ...]) -> Mapping[str, Any]:
        """Writes the outputs (each to a temporary name, then renamed) and returns the case's
        row of cases.csv."""


def is_volumetric(config: ml_collections.ConfigDict) -> bool:
    """Whether the run was trained on a volumetric (NIfTI) dataset."""
    return config.data.name in registry.VOLUMETRIC


def run_channels(config: ml_collections.ConfigDict) -> int:
    """Channels of the run's model input: RGB for the 2D datasets; a volumetric dataset's
    channels (from its metadata, so the dataset must be prepared or preparable)."""
    if not is_volumetric(config):
        return 3
    return len(dataset_metadata(config)["channel_names"])


def find_cases(path: Path, readers: tuple[Reader, ...]) -> list[tuple[Reader, Case]]:
    """Every case under `path`, sorted by name, with its reader; raises `DataError` when
    there is none or two inputs give the same case name."""
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    found: dict[str, tuple[Reader, Case]] = {}
    for reader in readers:
        for case in reader.cases(path):
            if case.name in found:
                other = found[case.name][1].paths[0]
                raise DataError(f"two inputs for case {case.name!r}: {other} and {case.paths[0]}")
            found[case.name] = (reader, case)
    if not found:
        kinds = ", ".join(r.kind for r in readers)
        raise DataError(f"no input found in {path} (looked for {kinds})")
    return [found[name] for name in sorted(found)]
