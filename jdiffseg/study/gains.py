"""What adapted diffusion gains over its E2 run, paired by test image and by seed.

Seed k of the adapted run is compared with seed k of E2 (replica k of each population, or the
two single runs): its Dice (and IoU) gain is the mean over the test images of adapted minus E2
on the same image, with a percentile-bootstrap 95 % interval over images, and its ECE gain is the
difference of the two dataset-level ECEs. Over seeds the gains get their mean, sample standard
deviation and the number of seeds that improved, so the spread from training seeds is part of
the claim and not only the spread over images.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jdiffseg.config import population
from jdiffseg.runtime import run_dir
from jdiffseg.scoring import stats

PER_IMAGE = ("dice", "iou")
DATASET_LEVEL = ("ece_top_label", "ece_foreground")


def _eval_dirs(workdir: Path) -> list[Path]:
    """The evaluation directory of each seed of `workdir`, in replica order."""
    size = population.size(run_dir.read_config(workdir))
    base = workdir / "eval"
    return [base] if size == 1 else [base / run_dir.replica_name(k) for k in range(size)]


def _per_image(eval_dir: Path) -> dict[str, np.ndarray]:
    path = eval_dir / "per_image.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not evaluated; run `jdiffseg evaluate` first")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {"id": np.asarray([r["id"] for r in rows]),
            **{m: np.asarray([float(r[m]) for r in rows]) for m in PER_IMAGE}}


def seed_gain(e2_eval: Path, adapted_eval: Path) -> dict[str, Any]:
    """One seed's gains: per-image metrics paired by image id, dataset-level ECE differenced."""
    base, adapted = _per_image(e2_eval), _per_image(adapted_eval)
    if list(base["id"]) != list(adapted["id"]):
        raise ValueError(f"{e2_eval} and {adapted_eval} were evaluated on different images; "
                         "pairing needs the same test set in the same order")
    out: dict[str, Any] = {"num_images": len(base["id"])}
    for m in PER_IMAGE:
        diff = adapted[m] - base[m]
        out[m] = {**stats.summarize(diff, name=f"{m} gain"),
                  "images_improved": int(np.sum(diff > 0))}
    e2_metrics = json.loads((e2_eval / "metrics.json").read_text())["dataset"]
    adapted_metrics = json.loads((adapted_eval / "metrics.json").read_text())["dataset"]
    for m in DATASET_LEVEL:
        if m in e2_metrics and m in adapted_metrics:
            out[m] = float(adapted_metrics[m]) - float(e2_metrics[m])
    return out


def adaptation_gains(e2: Path, adapted: Path) -> dict[str, Any]:
    """Per-seed gains of the adapted run over E2 and, over seeds, mean, sd and seeds improved."""
    e2_dirs, adapted_dirs = _eval_dirs(e2), _eval_dirs(adapted)
    if len(e2_dirs) != len(adapted_dirs):
        raise ValueError(f"{e2} has {len(e2_dirs)} seed(s) but {adapted} has "
                         f"{len(adapted_dirs)}; the gains pair them seed by seed")
    per_seed = [seed_gain(a, b) for a, b in zip(e2_dirs, adapted_dirs, strict=True)]
    seeds = [c.seed for c in population.replica_configs(run_dir.read_config(e2))]
    over: dict[str, Any] = {}
    for m in (*PER_IMAGE, *DATASET_LEVEL):
        values = [g[m]["mean"] if m in PER_IMAGE else g[m] for g in per_seed if m in g]
        if not values:
            continue
        improved = sum(v > 0 for v in values) if m in PER_IMAGE else sum(v < 0 for v in values)
        over[m] = {"mean": float(np.mean(values)),
                   "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                   "seeds_improved": int(improved), "n": len(values)}
    return {"e2": str(e2), "adapted": str(adapted), "dataset": e2.parent.name,
            "run": e2.name, "seeds": seeds, "per_seed": per_seed, "over_seeds": over}


def _signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}"


def to_markdown(gains: Sequence[dict[str, Any]]) -> str:
    """One row per adapted run: Dice and ECE gains over seeds, and each seed's Dice gain with
    its interval over images."""
    lines = ["| dataset | run | seeds | Δ Dice (mean ± sd over seeds) | Δ Dice per seed "
             "[95 % CI over images] | Δ ECE top-label (mean ± sd) | seeds improved (Dice, ECE) |",
             "|---|---|---|---|---|---|---|"]
    for g in gains:
        over = g["over_seeds"]
        dice, ece = over["dice"], over.get("ece_top_label")
        per_seed = "; ".join(
            f"{_signed(s['dice']['mean'])} [{_signed(s['dice']['ci_low'])}, "
            f"{_signed(s['dice']['ci_high'])}]" for s in g["per_seed"])
        ece_text = f"{_signed(ece['mean'])} ± {ece['std']:.3f}" if ece else "–"
        ece_improved = str(ece["seeds_improved"]) if ece else "–"
        lines.append(
            f"| {g['dataset']} | {g['run']} | {len(g['seeds'])} | "
            f"{_signed(dice['mean'])} ± {dice['std']:.3f} | {per_seed} | {ece_text} | "
            f"{dice['seeds_improved']}, {ece_improved} of {dice['n']} |")
    return "\n".join(lines) + "\n"


def write_gains(gains: Sequence[dict[str, Any]], prefix: Path) -> dict[str, Any]:
    """Writes PREFIX.json (everything) and PREFIX.md (the table); returns the table's text and
    the paths."""
    markdown = to_markdown(gains)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    run_dir.atomic_write(json_path, json.dumps(list(gains), indent=2) + "\n")
    run_dir.atomic_write(md_path, markdown)
    return {"markdown": markdown, "files": [str(json_path), str(md_path)]}
