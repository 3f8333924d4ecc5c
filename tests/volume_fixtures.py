"""Small NIfTI datasets in the nnU-Net v2, Decathlon and BraTS layouts, with known shapes,
spacings and affines."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (8, 12, 6)
SPACING = (0.8, 0.7, 2.5)


def affine(spacing=SPACING, origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    """A voxel-to-world affine with a flipped first axis (as RAS-stored LPS data has)."""
    a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


def save(path: Path, data: np.ndarray, aff: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine() if aff is None else aff), path)
    return path


def case_volumes(seed: int, channels: int, values=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z, C) float32 with a zero border, labels (X, Y, Z) int16).

    The body (non-zero region) is rows 1..6, columns 2..10; the label map is a box of
    `values[0]` with a smaller box of `values[-1]` inside, present in slices 1..4 only."""
    rng = np.random.default_rng(seed)
    image = np.zeros((*SHAPE, channels), np.float32)
    image[1:7, 2:11] = rng.normal(100 + 40 * np.arange(channels), 15, (6, 9, SHAPE[2], channels))
    labels = np.zeros(SHAPE, np.int16)
    labels[2:6, 3 + seed % 2 : 9, 1:5] = values[0]
    labels[3:5, 5:7, 2:4] = values[-1]
    image[labels > 0] += 50
    return image, labels


def write_nnunet(root: Path, n: int = 5, channel_names=("CT", "T2"), labels_ts: int = 0) -> Path:
    """Dataset001_Toy with one file per channel; `labels_ts` extra cases in imagesTs/labelsTs."""
    folder = root / "Dataset001_Toy"
    for i in range(n + labels_ts):
        image, labels = case_volumes(i, len(channel_names))
        split = "Tr" if i < n else "Ts"
        case = f"toy_{i:03d}"
        for c in range(len(channel_names)):
            save(folder / f"images{split}" / f"{case}_{c:04d}.nii.gz", image[..., c])
        save(folder / f"labels{split}" / f"{case}.nii.gz", labels)
    spec = {
        "channel_names": {str(c): name for c, name in enumerate(channel_names)},
        "labels": {"background": 0, "organ": 1, "lesion": 2, "any": [1, 2]},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def write_decathlon(root: Path, n: int = 4) -> Path:
    """Task09_Toy: one 4D file (two modalities last) per case, listed in dataset.json."""
    folder = root / "Task09_Toy"
    training = []
    for i in range(n):
        image, labels = case_volumes(i, 2)
        save(folder / "imagesTr" / f"toy_{i}.nii.gz", image)
        save(folder / "labelsTr" / f"toy_{i}.nii.gz", labels)
        training.append(
            {"image": f"./imagesTr/toy_{i}.nii.gz", "label": f"./labelsTr/toy_{i}.nii.gz"}
        )
    (folder / "imagesTr" / "._toy_0.nii.gz").write_bytes(b"macOS resource fork")
    spec = {
        "name": "Toy",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": n,
        "training": training,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def write_brats(root: Path, n: int = 4) -> Path:
    """BraTS 2020-style case folders: four modalities and a label map over {0, 1, 2, 4}."""
    folder = root / "MICCAI_BraTS2020_TrainingData"
    for i in range(n):
        case = f"BraTS20_Training_{i + 1:03d}"
        image, labels = case_volumes(i, 4, values=(2, 4))
        labels[2:4, 8:9, 1:3] = 1  # some necrotic core at the edge of the oedema
        for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
            save(folder / case / f"{case}_{m}.nii.gz", image[..., c])
        save(folder / case / f"{case}_seg.nii.gz", labels.astype(np.uint8))
    return root
