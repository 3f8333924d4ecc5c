"""Writing a case's outputs so that an interrupted run never leaves one that looks finished:
every file goes to a temporary name and is renamed; the case's summary (`<name>.json`) is
written last and marks it complete. `cases.csv` gathers the summaries of every finished case.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

CASES_FILE = "cases.csv"
PART_SUFFIX = ".part"


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls `write` on a temporary file beside `path`, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PART_SUFFIX)
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_png(path: Path, array: np.ndarray) -> None:
    """A uint8 (H, W) image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


def write_npy(path: Path, array: np.ndarray) -> None:
    """An array as .npy (float32)."""
    write_atomic(path, lambda f: np.save(f, np.asarray(array, np.float32)))


def write_summary(path: Path, row: Mapping[str, Any]) -> None:
    """The case's row of cases.csv as JSON; written last, it marks the case complete."""
    text = json.dumps(dict(row), indent=1) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def resize_float(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float maps (H, W) or (H, W, K) to `size` (h, w), channel by channel;
    the weights sum to one, so class probabilities still sum to one."""
    h, w = size
    if array.shape[:2] == (h, w):
        return np.asarray(array, np.float32)
    planes = array[..., None] if array.ndim == 2 else array
    out = np.stack([
        np.asarray(Image.fromarray(np.asarray(planes[..., k], np.float32), mode="F")
                   .resize((w, h), Image.Resampling.BILINEAR))
        for k in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if array.ndim == 2 else out


def class_summary(labels: np.ndarray, class_names: Sequence[str], unit: float = 1.0,
                  unit_name: str = "pixels") -> dict[str, float]:
    """Foreground size per class of a label map: count (times `unit`, e.g. mm³ per voxel)."""
    return {f"{unit_name}_{name}": float(np.sum(labels == c)) * unit
            for c, name in enumerate(class_names) if c > 0}


def uncertainty_summary(entropy: np.ndarray, mutual_information: np.ndarray) -> dict[str, float]:
    """Mean and 95th percentile of the entropy map and the mean mutual information (bits)."""
    return {"entropy_mean": float(np.mean(entropy)),
            "entropy_p95": float(np.percentile(entropy, 95)),
            "mutual_information_mean": float(np.mean(mutual_information))}


def read_summary(path: Path) -> dict[str, Any]:
    """A finished case's summary."""
    return json.loads(path.read_text())


def write_cases_csv(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """`out_dir/cases.csv`: one row per finished case, the columns of all rows in order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    path = out_dir / CASES_FILE
    write_atomic(path, lambda f: f.write(buffer.getvalue().encode()))
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return value
