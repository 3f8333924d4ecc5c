"""The evaluation's outputs: the metrics.json schema, per_image.csv and the figures, written
so that a reader never sees a half-written metrics.json."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jdiffseg.evaluation import figures, per_case
from jdiffseg.evaluation import multiclass as multiclass_eval
from jdiffseg.evaluation.scores import EXTRA_PROTOCOLS, SWEEP_THRESHOLDS, extra_protocols
from jdiffseg.scoring import fusion, metrics, multiclass, stats


def _summaries(
    per_image: Mapping[str, np.ndarray], resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    return stats.summarize_all(per_image, num_resamples=resamples, seed=seed)


SAMPLES_FILE = "samples.npz"


def write_samples(path: Path, ids: list[str], samples: Mapping[str, list[np.ndarray]]) -> None:
    """samples.npz: 'ids' (N,), 'members' (N, n, H, W, C) float16 and the reference 'mask'
    (N, H, W, C) and 'raters' (N, R, H, W, 1) as uint8, the images in the order of `ids`;
    written whole or not at all."""
    arrays: dict[str, np.ndarray] = {"ids": np.asarray(ids)}
    for name, parts in samples.items():
        stacked = np.concatenate(parts)
        arrays[name] = stacked.astype(np.float16 if name == "members" else np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def read_samples(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a samples.npz (`write_samples`), members as float32."""
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    out["members"] = out["members"].astype(np.float32)
    return out


def _write_csv(path: Path, ids: list[str], per_image: Mapping[str, np.ndarray]) -> None:
    columns = list(per_image)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", *columns])
        for i, name in enumerate(ids):
            writer.writerow([i, name, *(f"{float(per_image[c][i]):.6g}" for c in columns)])


def binary_dataset_metrics(
    acc_probs: metrics.MetricState, acc_fused: metrics.MetricState
) -> dict[str, Any]:
    """Pooled Dice/IoU of the fused masks and calibration of the member mean (binary runs)."""
    probs = {k: float(v) for k, v in metrics.compute(acc_probs).items()}
    fused = metrics.compute(acc_fused)
    return {
        "dice_pooled": float(fused["dice_pooled"]),
        "iou_pooled": float(fused["iou_pooled"]),
        **{k: probs[k] for k in ("ece_top_label", "ece_foreground", "brier", "nll")},
        "num_pixels": int(probs["num_pixels"]),
    }


def build_results(
    config: ml_collections.ConfigDict,
    workdir: Path,
    meta: Mapping[str, Any],
    prediction: dict[str, Any],
    per: dict[str, np.ndarray],
    dataset: dict[str, Any],
    class_names: Sequence[str],
    count: int,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The content of metrics.json; `dataset` holds the dataset-level metrics."""
    e = config.eval
    resamples, seed = int(e.bootstrap_resamples), int(config.seed)
    extra_keys = {"dice_threshold_sweep", "iou_threshold_sweep"}
    fusion_keys = {f"{m}_{f}" for m in ("dice", "iou") for f in fusion.FUSION_METHODS}
    main_per = {k: v for k, v in per.items() if k not in extra_keys | fusion_keys}
    definitions = {
        "dice_iou": f"of the fused mask ({e.fusion}), per image, empty/empty = 1",
        "calibration": "of the member-mean probability over all pixels; ECE with "
                       f"{e.num_bins} equal-width bins",
    }
    if len(class_names) > 2:
        definitions = {**multiclass_eval.DEFINITIONS,
                       "fusion": f"{e.fusion} (class probabilities; majority: plurality vote; "
                                 "staple: multi-class STAPLE)"}
    extra: dict[str, Any] = {}
    if "threshold_sweep" in extra_protocols(config):
        extra["threshold_sweep"] = {
            "description": EXTRA_PROTOCOLS["threshold_sweep"],
            "thresholds": list(SWEEP_THRESHOLDS),
            **_summaries({"dice": per["dice_threshold_sweep"],
                          "iou": per["iou_threshold_sweep"]}, resamples, seed),
        }
    return {
        "workdir": str(workdir),
        "checkpoint": {"which": e.checkpoint, "step": meta.get("step"),
                       "ema": bool(e.use_ema), "val_metrics": meta.get("metrics", {})},
        "run": {"arch": config.model.arch, "preset": config.model.preset,
                "mode": config.model.mode, "dataset": config.data.name,
                "variant": config.data.variant, "image_size": int(config.data.image_size),
                "split": e.split},
        "prediction": prediction,
        "fusion": e.fusion,
        "threshold": float(e.threshold),
        "num_bins": int(e.num_bins),
        "num_images": count,
        "class_names": list(class_names),
        "summary": _summaries(main_per, resamples, seed),
        "dataset": dataset,
        "fusion_methods": {
            name: _summaries({"dice": per[f"dice_{name}"], "iou": per[f"iou_{name}"]},
                             resamples, seed)
            for name in fusion.FUSION_METHODS
        },
        "extra_protocols": extra,
        "definitions": {
            **definitions,
            "interval": f"percentile bootstrap {stats.DEFAULT_CONFIDENCE:.0%} of the mean over "
                        f"images, {resamples} resamples",
        },
        "timing": {**seconds,
                   "images_per_second": count / max(seconds["predict_seconds"], 1e-9),
                   "devices": jax.device_count(), "platform": jax.devices()[0].platform},
    }


def write_outputs(
    out_dir: Path,
    results: dict[str, Any],
    ids: list[str],
    per: dict[str, np.ndarray],
    acc_probs: metrics.MetricState | multiclass.MultiClassState,
    cases: dict[str, list[np.ndarray]],
    config: ml_collections.ConfigDict,
    case_rows: list[dict[str, Any]] | None = None,
    samples: Mapping[str, list[np.ndarray]] | None = None,
) -> None:
    """Writes the files of `results` (with per_case.csv when `case_rows` are given: one row
    per case and structure of a volumetric dataset; samples.npz when `samples` are: batches of
    'members', 'mask' and any 'raters') and metrics.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = results["run"]
    title = f"{run['arch']} · {run['dataset']} · {run['mode']}"
    files = {
        "metrics": out_dir / "metrics.json",
        "per_image": out_dir / "per_image.csv",
        "reliability": out_dir / "reliability.png",
        "cases": out_dir / "cases.png",
    }
    _write_csv(files["per_image"], ids, per)
    if case_rows is not None:
        files["per_case"] = out_dir / "per_case.csv"
        per_case.write_csv(files["per_case"], case_rows)
    if samples is not None:
        files["samples"] = out_dir / SAMPLES_FILE
        write_samples(files["samples"], ids, samples)
    # multi-class accumulators hold top-label bins only (classwise ECE is in metrics.json)
    multi = isinstance(acc_probs, multiclass.MultiClassState)
    variants = ("top_label",) if multi else metrics.ECE_VARIANTS
    figures.reliability_diagram(acc_probs, files["reliability"], variants=variants, title=title)
    shown = {k: np.concatenate(v) for k, v in cases.items()}
    figures.case_grid(
        files["cases"], shown["image"], shown["label"], shown["members"], shown["fused"],
        shown["entropy"], ids=ids[: len(shown["image"])], uncertainty_name="entropy (bits)",
        max_cases=int(config.eval.num_cases),
    )
    results["files"] = {k: str(v) for k, v in files.items()}
    tmp = files["metrics"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False))
    os.replace(tmp, files["metrics"])
