"""A tiny diffusion run (random parameters, as training lays them out) and image folders for
the `jdiffseg predict` and `jdiffseg import` tests."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image
from train_support import tiny_config

NUM_TEST = 6


def predict_config(data_dir: Path, mode: str = "diffusion", arch: str = "ensemdiff"
                   ) -> ml_collections.ConfigDict:
    """The training tests' tiny config with a small test split and a cheap evaluation."""
    c = tiny_config(data_dir, mode=mode, arch=arch)
    c.data.num_test_examples = NUM_TEST
    c.eval.ensemble_size, c.eval.sampling_steps = 3, 3
    c.eval.bootstrap_resamples = 50
    return c


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Random RGB PNGs of the given (height, width), named case_0.png, case_1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"case_{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
