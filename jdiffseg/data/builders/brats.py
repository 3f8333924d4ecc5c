"""BraTS 2020/2021 glioma segmentation: case folders of four MR modalities and a label map,
sliced to 2D. The binary target is the whole label map's foreground, one class, or one of the
challenge's evaluation regions (whole tumour, tumour core, enhancing tumour)."""

from __future__ import annotations

from pathlib import Path

from absl import logging

from jdiffseg.data.builders import volumetric
from jdiffseg.data.builders.volumetric import Case, Layout
from jdiffseg.data.images import DataError
from jdiffseg.data.volumes import NIFTI_SUFFIXES

MODALITIES = ("flair", "t1", "t1ce", "t2")
LABELS = {0: "background", 1: "necrotic tumour core", 2: "peritumoral edema", 4: "enhancing tumour"}
REGIONS = {"whole tumour": (1, 2, 4), "tumour core": (1, 4), "enhancing tumour": (4,)}

INSTRUCTIONS = f"""\
Put the BraTS 2020 or 2021 training data (the unpacked archive) into manual_dir; every case is a
folder named by its id holding
  <case>/<case>_flair.nii.gz, <case>_t1.nii.gz, <case>_t1ce.nii.gz, <case>_t2.nii.gz
  <case>/<case>_seg.nii.gz     labels {sorted(LABELS)} ({", ".join(LABELS.values())})
(.nii works too). Case folders may sit at any depth, e.g.
  manual_dir/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/...
  manual_dir/BraTS2021_00000/...
Cases without a _seg file (validation data) are skipped. Targets: foreground (default), a label
name, or a region: {", ".join(REGIONS)}.
"""


def _file(folder: Path, suffix: str) -> Path | None:
    found = [folder / f"{folder.name}_{suffix}{e}" for e in NIFTI_SUFFIXES]
    return next((p for p in found if p.is_file()), None)


def find_cases(root: Path) -> tuple[Case, ...]:
    """Every folder under `root` holding a `<folder>_flair` volume is a case."""
    folders = sorted(
        {
            p.parent
            for e in NIFTI_SUFFIXES
            for p in root.rglob(f"*_flair{e}")
            if p.name.startswith(p.parent.name + "_")
        }
    )
    cases, unlabelled = [], []
    for folder in folders:
        label = _file(folder, "seg")
        if label is None:
            unlabelled.append(folder.name)
            continue
        channels = []
        for m in MODALITIES:
            path = _file(folder, m)
            if path is None:
                raise DataError(
                    f"brats: case {folder.name} has no {m} volume: expected "
                    f"{folder / f'{folder.name}_{m}.nii.gz'}"
                )
            channels.append(path)
        cases.append(Case(folder.name, tuple(channels), label))
    if unlabelled:
        logging.warning(
            "brats: %d case(s) without a _seg file are skipped, e.g. %s",
            len(unlabelled),
            unlabelled[0],
        )
    if not cases:
        raise DataError(f"brats: no labelled case folders found in {root}\n{INSTRUCTIONS}")
    return tuple(cases)


class Brats(volumetric.VolumeBuilder, skip_registration=True):
    """BraTS 2020/2021 as 2D slices (four MR channels) with their volume geometry."""

    name = "brats"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    DESCRIPTION = "BraTS 2020/2021 brain tumour segmentation (FLAIR, T1, T1ce, T2), sliced to 2D."

    def find_layout(self, root: Path) -> Layout:
        return Layout("BraTS", MODALITIES, dict(LABELS), dict(REGIONS), find_cases(root))
