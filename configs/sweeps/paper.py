r"""The study's grid: 3 architectures × 3 datasets × {E1 feed-forward, E2 diffusion}, plus E3
(mask-only) and E4 (image generation) per architecture and dataset, and the nnU-Net baseline.

    jdiffseg sweep --config=configs/sweeps/paper.py --launcher=print
    jdiffseg sweep --config=configs/sweeps/paper.py --launcher=slurm --sweep_dir=/scratch/paper

Each run trains at the authors' 256 px settings (preset=paper) in `<sweep_dir>/<name>`.
"""

from __future__ import annotations

from collections.abc import Callable

SWEEP_DIR = "runs/paper"
SLURM = {"gpus-per-node": 1, "ntasks-per-node": 1, "cpus-per-task": 8, "time": "48:00:00"}

ARCHS = ("ensemdiff", "segdiff", "medsegdiff")
DATASETS = ("isic2016", "monuseg", "her2")
MODES = {"diffusion": "e2", "feedforward": "e1", "mask_only": "e3", "image_generation": "e4"}


def sweep(add: Callable[..., None]) -> None:
    """One run per (architecture, dataset, mode); one nnU-Net baseline per dataset."""
    for dataset in DATASETS:
        for arch in ARCHS:
            for mode, tag in MODES.items():
                add(f"configs/{arch}.py:dataset={dataset},mode={mode},preset=paper",
                    name=f"{arch}_{dataset}_{tag}")
        add(f"configs/nnunet.py:dataset={dataset},preset=paper", name=f"nnunet_{dataset}_e1")
