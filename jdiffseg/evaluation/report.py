"""`jdiffseg report DIR...`: the study's results table from evaluated workdirs.

Each DIR is a workdir (it holds ``config.json``) or a directory searched recursively for
workdirs, such as a sweep directory. A workdir counts once ``jdiffseg evaluate`` has written
``eval/metrics.json``; the others are listed as not evaluated. Rows are
architecture × dataset × mode × training procedure (standard, or the timestep range, weights
or custom schedule an adapted run trains with); runs that share a row (seeds, for instance) are
averaged and the spread across runs is reported, while a single run shows its spread over test
images. A population run counts as its evaluated replicas (`eval/replica_<k>/`), each the run
with its seed and values, so a row over seeds shows mean ± sd over them.

Columns: Dice and IoU of the fused mask (mean ± std over images or runs), ECE over all test
pixels (top-label and foreground variants, lower is better), and the number of runs and images.
Multi-class runs report the foreground-mean Dice and IoU, the classwise ECE in place of the
foreground one, and Dice and IoU per class (``dice_<class>``, ``iou_<class>``; the Markdown
table lists the per-class Dice in one column).
The Markdown table goes to ``OUT.md`` (and stdout), the numbers in full to ``OUT.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jdiffseg.config import population
from jdiffseg.runtime import run_dir

METRICS_FILE = Path("eval") / "metrics.json"
MODE_LABELS = {
    "feedforward": "E1 feed-forward",
    "diffusion": "E2 diffusion",
    "mask_only": "E3 mask-only",
    "image_generation": "E4 image generation",
}
# (column name, where in metrics.json, whether the value is a per-image summary)
_COLUMNS = (
    ("dice", ("summary", "dice"), True),
    ("iou", ("summary", "iou"), True),
    ("ece_top_label", ("dataset", "ece_top_label"), False),
    ("ece_foreground", ("dataset", "ece_foreground"), False),
    ("brier", ("dataset", "brier"), False),
    ("nll", ("dataset", "nll"), False),
)
_MARKDOWN_COLUMNS = ("dice", "iou", "ece_top_label", "ece_foreground")
_HEADERS = {
    "dice": "Dice ↑",
    "iou": "IoU ↑",
    "ece_top_label": "ECE top-label ↓",
    "ece_foreground": "ECE foreground ↓",
}
_PER_CLASS = ("dice", "iou")
# Population keys a row does not name: the seed (rows average over seeds) and the timestep
# sampling values, which `training_procedure` already describes ("t in [a, b]", "weighted t"),
# so that an adapted population, each seed with its own fingerprint's weights, is one row.
_KEYS_NOT_IN_LABEL = ("seed", "diffusion.t_min", "diffusion.t_max", "diffusion.timestep_weights")


def _class_columns(names: Sequence[str]) -> list[tuple[str, tuple[str, str], bool]]:
    """The extra columns of a multi-class run with foreground classes `names`."""
    if not names:
        return []
    per_class = [(f"{m}_{n}", ("summary", f"{m}_{n}"), True) for n in names for m in _PER_CLASS]
    return [("ece_classwise", ("dataset", "ece_classwise"), False), *per_class]


def find_workdirs(paths: Iterable[str | Path]) -> list[Path]:
    """Workdirs (directories with ``config.json``) at or below each path, sorted, no repeats."""
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"report: {path} is not a directory")
        if (path / run_dir.CONFIG_FILE).is_file():
            found.add(path.resolve())
            continue
        found.update(p.parent.resolve() for p in path.rglob(run_dir.CONFIG_FILE) if p.is_file())
    return sorted(found)


def _dataset_label(data: dict[str, Any]) -> str:
    name = str(data.get("name", "?"))
    return f"{name}/{data['variant']}" if name == "synthetic" and "variant" in data else name


def training_procedure(config: dict[str, Any]) -> str:
    """How a diffusion-type run drew its timesteps, when not the standard uniform draw on the
    standard schedule: "t in [a, b]", "weighted t", "importance-sampled t", "custom schedule"."""
    diffusion = config.get("diffusion", {})
    if config["model"]["mode"] == "feedforward":
        return ""
    parts = []
    sampling = diffusion.get("timestep_sampling", "uniform")
    if sampling == "range":
        parts.append(f"t in [{diffusion.get('t_min')}, {diffusion.get('t_max')}]")
    elif sampling == "weights":
        parts.append("weighted t")
    elif sampling == "importance":
        parts.append("importance-sampled t")
    if diffusion.get("schedule") == "custom":
        parts.append("custom schedule")
    return ", ".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"report: cannot parse {path}: {e}") from e


def load_evaluated_runs(workdir: Path) -> list[dict[str, Any]]:
    """The evaluated runs of a workdir: itself, or each evaluated replica of a population
    (as the run with its seed and values; replicas differing in more than the seed and the
    timestep sampling get their values in the procedure label). Empty when nothing has been
    evaluated."""
    try:
        config = run_dir.read_config(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"report: {e}") from e
    if population.size(config) == 1:
        run = load_evaluated_run(workdir)
        return [run] if run is not None else []
    runs = []
    for k, values in enumerate(population.replica_values(config)):
        path = workdir / METRICS_FILE.parent / run_dir.replica_name(k) / METRICS_FILE.name
        if path.is_file():
            extra = ", ".join(f"{key.split('.')[-1]}={v}" for key, v in values.items()
                              if key not in _KEYS_NOT_IN_LABEL)
            runs.append(_run_entry(population.replica_config(config, k).to_dict(),
                                   _read_json(path), workdir, extra))
    return runs


def load_evaluated_run(workdir: Path) -> dict[str, Any] | None:
    """The row keys and metrics of one workdir, or None when it has not been evaluated."""
    metrics_path = workdir / METRICS_FILE
    if not metrics_path.is_file():
        return None
    try:
        config = run_dir.read_config(workdir).to_dict()
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"report: {e}") from e
    return _run_entry(config, _read_json(metrics_path), workdir)


def _run_entry(config: dict[str, Any], result: dict[str, Any], workdir: Path,
               extra: str = "") -> dict[str, Any]:
    model, data = config["model"], config["data"]
    procedure = ", ".join(p for p in (training_procedure(config), extra) if p)
    row = {"arch": model["arch"], "dataset": _dataset_label(data), "mode": model["mode"],
           "procedure": procedure}
    values: dict[str, float] = {}
    spreads: dict[str, float] = {}
    names = result.get("class_names", [])[1:] if len(result.get("class_names", [])) > 2 else []
    for column, (section, key), is_summary in (*_COLUMNS, *_class_columns(names)):
        entry = result.get(section, {}).get(key)
        if entry is None:
            continue
        if is_summary:
            values[column] = float(entry["mean"])
            spreads[column] = float(entry["std"])
        else:
            values[column] = float(entry)
    return {
        **row,
        "workdir": str(workdir),
        "num_images": int(result.get("num_images", 0)),
        "values": values,
        "image_std": spreads,
        "classes": names,
    }


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def build_table(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arch, dataset, mode, procedure): mean and std per column over runs.

    With one run the std is that run's std over images (where the metric is per image); with
    several it is the sample std of the runs' values.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["arch"], run["dataset"], run["mode"], run.get("procedure", ""))
        groups.setdefault(key, []).append(run)
    mode_order = list(MODE_LABELS)
    rows = []
    for (arch, dataset, mode, procedure), members in sorted(
        groups.items(),
        key=lambda kv: (kv[0][1], kv[0][0], mode_order.index(kv[0][2])
                        if kv[0][2] in mode_order else len(mode_order), kv[0][3]),
    ):
        row: dict[str, Any] = {
            "arch": arch, "dataset": dataset, "mode": mode, "procedure": procedure,
            "runs": len(members),
            "images": sum(m["num_images"] for m in members),
            "classes": members[0].get("classes", []),
        }
        for column, _, _ in (*_COLUMNS, *_class_columns(row["classes"])):
            xs = [m["values"][column] for m in members if column in m["values"]]
            if not xs:
                continue
            mean, std = _mean_std(xs)
            if len(members) == 1:
                std = members[0]["image_std"].get(column, math.nan)
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], column: str, digits: int) -> str:
    if f"{column}_mean" not in row:
        return "–"
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _class_cell(row: dict[str, Any], digits: int) -> str:
    """Per-class Dice means of a multi-class row ('organ 0.812 · core 0.530'), '–' otherwise."""
    parts = [f"{n} {row[f'dice_{n}_mean']:.{digits}f}" for n in row.get("classes", [])
             if f"dice_{n}_mean" in row]
    return " · ".join(parts) or "–"


def to_markdown(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """The results table as GitHub Markdown (a per-class Dice column when a row has classes)."""
    classes = any(row.get("classes") for row in rows)
    headers = ["architecture", "dataset", "mode", *(_HEADERS[c] for c in _MARKDOWN_COLUMNS),
               *(["Dice per class ↑"] if classes else []), "runs", "images"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        mode = MODE_LABELS.get(row["mode"], row["mode"])
        if row.get("procedure"):
            mode = f"{mode}, {row['procedure']}"
        cells = [row["arch"], row["dataset"], mode,
                 *(_cell(row, c, digits) for c in _MARKDOWN_COLUMNS),
                 *([_class_cell(row, digits)] if classes else []),
                 str(row["runs"]), str(row["images"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_fields(rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The CSV's columns, in order: the fixed ones, then the per-class ones of `rows`."""
    fields = ["arch", "dataset", "mode", "procedure", "runs", "images"]
    columns = [c for c, _, _ in _COLUMNS]
    for row in rows:
        columns += [c for c, _, _ in _class_columns(row.get("classes", [])) if c not in columns]
    for column in columns:
        fields += [f"{column}_mean", f"{column}_std"]
    return fields


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Every row with all numeric columns (empty where a run lacks a metric)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_fields(rows), restval="",
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def report(paths: Sequence[str | Path], output: str | Path | None = None,
           digits: int = 3) -> dict[str, Any]:
    """Builds the table for ``paths`` and writes ``OUTPUT.md`` and ``OUTPUT.csv``.

    ``output`` defaults to ``report`` inside the first path. Returns rows, the Markdown text,
    the files written and the workdirs that were skipped because they were not evaluated.
    """
    if not paths:
        raise ValueError("report: give at least one workdir or sweep directory")
    workdirs = find_workdirs(paths)
    if not workdirs:
        raise FileNotFoundError(
            f"report: no workdir (a directory with {run_dir.CONFIG_FILE}) in "
            f"{', '.join(map(str, paths))}"
        )
    runs, skipped = [], []
    for workdir in workdirs:
        found = load_evaluated_runs(workdir)
        if not found:
            skipped.append(str(workdir))
        runs.extend(found)
    if not runs:
        raise FileNotFoundError(
            f"report: none of the {len(workdirs)} workdir(s) has {METRICS_FILE}; run "
            f"`jdiffseg evaluate --workdir=DIR` first (e.g. {workdirs[0]})"
        )
    rows = build_table(runs)
    markdown = to_markdown(rows, digits)
    prefix = Path(output) if output else Path(paths[0]) / "report"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    md_path.write_text(markdown)
    write_csv(rows, csv_path)
    return {"rows": rows, "markdown": markdown, "files": [str(md_path), str(csv_path)],
            "skipped": skipped}
