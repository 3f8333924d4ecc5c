"""A run's directory: the one reader and writer of its `config.json`, its markers and the rules
that depend on them (which metric picks the best checkpoint, what a resume may change).

Layout: `WORKDIR/config.json` (the resolved config), `finished.json` (written when training
ends), `imported.json` (a run made by `jdiffseg import`: its source files and their SHA-256),
`metrics.jsonl` (`runlog`), `checkpoints/` (`checkpoint`), `train.lock` (`lock`, while a trainer
runs), `eval/` and `analysis/` (a population run: `eval/replica_<k>/` per replica).
Only process 0 writes; files are written to a temporary name and renamed, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from jdiffseg.config import parsing, schema
from jdiffseg.models import modes

CONFIG_FILE = "config.json"
FINISHED_FILE = "finished.json"
IMPORTED_FILE = "imported.json"
# Sections every run's config.json has.
REQUIRED_SECTIONS = ("data", "model", "diffusion", "train", "eval")
# Sections whose keys a newer version may add: missing keys take today's defaults.
# Keys that change how fast a run goes, not what it computes: free to change on resume.
RESUME_FREE_KEYS = {"data": ("prefetch",)}


def replica_name(k: int) -> str:
    """The subdirectory (of `eval/`, `analysis/`) holding replica k of a population run."""
    return f"replica_{k}"


def is_primary() -> bool:
    """Whether this process writes the run's files."""
    return jax.process_index() == 0


def atomic_write(path: str | os.PathLike[str], text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def config_path(workdir: str | os.PathLike[str]) -> str:
    """Where a run's resolved config lives."""
    return os.path.join(os.fspath(workdir), CONFIG_FILE)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as `workdir/config.json`."""
    if is_primary():
        atomic_write(config_path(workdir), parsing.to_json(config) + "\n")


def read_config(
    workdir: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The run's config.json, locked; keys it predates take today's defaults, then `overrides`
    (dotted keys) apply.

    Raises FileNotFoundError when the workdir or its config.json is missing, ValueError when the
    file is not a run's config, and KeyError for an override naming an unknown key.
    """
    workdir = os.fspath(workdir) if workdir else ""
    path = config_path(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; is {workdir} a workdir written by `jdiffseg train`?"
        )
    with open(path) as f:
        text = f.read()
    try:
        config = parsing.from_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"cannot parse {path}: {e}") from e
    missing = [s for s in REQUIRED_SECTIONS if s not in config]
    if missing:
        raise ValueError(f"{path} has no {missing[0]!r} section; it is not a run's config")
    with config.unlocked():
        _fill_defaults(config, schema.base_config())
    parsing.update(config, dict(overrides or {}))
    return config


def _fill_defaults(config: ml_collections.ConfigDict,
                   defaults: ml_collections.ConfigDict) -> None:
    """Adds the keys `config` predates with today's defaults (in place, at every depth): a new
    key's default keeps what runs did before it existed, so older runs load and resume."""
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(
                config[key], ml_collections.ConfigDict):
            _fill_defaults(config[key], value)


def write_finished(workdir: str, summary: dict[str, Any]) -> None:
    """Marks the run as complete (`finished.json`, with the final step and metrics)."""
    if is_primary():
        atomic_write(os.path.join(workdir, FINISHED_FILE), json.dumps(summary, indent=2) + "\n")


def is_finished(workdir: str | os.PathLike[str]) -> bool:
    """Whether `workdir` holds a completed run."""
    return os.path.exists(os.path.join(os.fspath(workdir), FINISHED_FILE))


def write_imported(workdir: str, record: dict[str, Any]) -> None:
    """Marks the run as imported from another code base (`imported.json`: source files and
    their hashes)."""
    if is_primary():
        atomic_write(os.path.join(workdir, IMPORTED_FILE), json.dumps(record, indent=2) + "\n")


def read_imported(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What `imported.json` records, or None for a run trained here."""
    path = os.path.join(os.fspath(workdir), IMPORTED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def best_metric_name(config: ml_collections.ConfigDict) -> str:
    """The validation metric that picks the best checkpoint: 'val_' + `train.best_metric` for
    the modes validated by segmenting (image-conditioned), 'val_loss' for mask-only and image
    generation runs, which are validated by their loss."""
    if modes.uses_image(config.model.mode):
        return f"val_{config.train.best_metric}"
    return "val_loss"


def check_resume_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run whose model, diffusion or data differ from `config`."""
    path = config_path(workdir)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved_config = parsing.from_json(f.read())
    with saved_config.unlocked():
        _fill_defaults(saved_config, schema.base_config())
    saved = json.loads(parsing.to_json(saved_config))
    current = json.loads(parsing.to_json(config))
    for section in ("model", "diffusion", "data"):
        a, b = saved.get(section, {}), current.get(section, {})
        free = RESUME_FREE_KEYS.get(section, ())
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in free)
        if diff:
            raise ValueError(
                f"workdir {workdir} holds a run with a different config.{section} "
                f"(keys {diff}); use a new --workdir or the same config to resume"
            )
