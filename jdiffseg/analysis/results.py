"""Analysis results: the summary over images, and timesteps.json / timesteps.csv."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
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


def class_result(result: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The analysis result of one class of a multi-class run, shaped like a binary run's."""
    if name not in result.get("classes", {}):
        have = sorted(result.get("classes", {})) or "none (not a multi-class analysis)"
        raise KeyError(f"{result.get('path') or result.get('workdir')}: no class {name!r}; "
                       f"classes: {have}")
    rest = {k: v for k, v in result.items() if k != "classes"}
    return {**rest, **result["classes"][name], "class": name}


def adaptation_source(
    result: Mapping[str, Any], analysis_config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The result adapted diffusion derives from: a multi-class run's class average, or the
    class `analysis.adapt_class` names; marked with 'derived_from'."""
    chosen = str(analysis_config.get("adapt_class", ""))
    if "classes" not in result:
        if chosen:
            raise ValueError(f"config.analysis.adapt_class={chosen!r}: the analysed run has one "
                             "foreground class; leave it empty")
        return dict(result)
    if not chosen:
        return {**result, "derived_from": "the average over the foreground classes"}
    return {**class_result(result, chosen), "derived_from": f"class {chosen!r}"}


def expand_classes(
    results: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """Multi-class results expanded into one entry per class, labelled 'label/class'."""
    out, out_labels = [], []
    for result, label in zip(results, labels, strict=True):
        names = list(result.get("classes", {}))
        out += [class_result(result, n) for n in names] or [result]
        out_labels += [f"{label}/{n}" for n in names] or [label]
    return out, out_labels
