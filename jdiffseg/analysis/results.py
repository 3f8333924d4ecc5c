"""Analysis results: the summary over images, and timesteps.json / timesteps.csv."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

RESULT_FILE = "timesteps.json"
ANALYSIS_DIR = "analysis"


def summarize_curves(per_image: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(mean over images, std over images) of each (K, N) curve, as lists of K floats."""
    mean = {k: np.mean(v, axis=1).tolist() for k, v in per_image.items()}
    std = {k: np.std(v, axis=1).tolist() for k, v in per_image.items()}
    return mean, std


def contribution_sem(per_image: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Standard error over images of the per-image Δ(t) = with image − without, per metric
    and reference ('mse_blank', 'dice_mask_only', ...): how far Δ is from noise."""
    out = {}
    for key, with_image in per_image.items():
        metric, _, variant = key.partition("_")
        if metric not in ("mse", "dice", "iou") or variant in ("image", ""):
            continue
        diff = with_image - per_image[f"{metric}_image"]
        n = diff.shape[1]
        out[key] = (np.std(diff, axis=1, ddof=1) / np.sqrt(n) if n > 1
                    else np.zeros(len(diff))).tolist()
    return out


def write_results(result: Mapping[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes timesteps.json and timesteps.csv (one row per t) to `out_dir`; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, RESULT_FILE)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    csv_path = os.path.join(out_dir, "timesteps.csv")
    names = list(result["curves"])
    T = result["num_timesteps"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "t_fraction", *names, *(f"{k}_std" for k in names)])
        for i, t in enumerate(result["timesteps"]):
            row = [t, t / (T - 1)]
            row += [result["curves"][k][i] for k in names]
            row += [result["std"][k][i] for k in names]
            writer.writerow(row)
    return json_path, csv_path


def load_results(path: str) -> dict[str, Any]:
    """A timesteps.json given as the file, its analysis directory or the run's workdir."""
    candidates = [path, os.path.join(path, RESULT_FILE),
                  os.path.join(path, ANALYSIS_DIR, RESULT_FILE)]
    for p in candidates:
        if os.path.isfile(p):
            with open(p) as f:
                result = json.load(f)
            if "curves" not in result or "timesteps" not in result:
                raise ValueError(f"{p}: not an analysis result (no 'curves'/'timesteps')")
            result.setdefault("path", p)
            return result
    raise FileNotFoundError(
        f"no {RESULT_FILE} at {path!r} (looked in {', '.join(candidates[1:])}); "
        f"run `jdiffseg analyze --workdir={path}` first"
    )
