"""Sweeps: a Python file defining `sweep(add)` expands into runs, each with its own workdir.

    def sweep(add):
        for lr in (1e-4, 3e-4):
            add("configs/ensemdiff.py:dataset=isic2016", **{"train.lr": lr})

`add(config, name=None, **overrides)`: `config` is a `--config` value (FILE[:ARG]); overrides
are config keys, dotted (`**{"train.lr": 1e-4}`) or with `__` for the dot (`train__lr=1e-4`).
The run's workdir is `<sweep_dir>/<name>`; the name defaults to the config arguments and the
overrides. A sweep file may set `SWEEP_DIR` (default `runs/<file stem>`) and `SLURM` (a dict
of `#SBATCH` options, e.g. {"gpus-per-node": 4, "time": "24:00:00"}).

With `--population_max=K` (> 1), runs that differ only in population keys (seed, learning
rate, weight decay, EMA decay, timestep range or weights, loss weights) are packed into
population jobs of up to K replicas trained in one compiled step (`pack`); `print` shows the
packing.

Launchers: `print` lists the command lines; `local` runs them one after another, skipping runs
whose workdir has `finished.json`; `slurm` writes job arrays that train, evaluate and analyse
each run and then report, requeueing runs stopped by the time limit or preemption, and submits
them when `sbatch` exists (`jdiffseg.study.slurm`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import Any

from jdiffseg.config import parsing, population
from jdiffseg.runtime import run_dir
from jdiffseg.study import slurm

LAUNCHERS = ("local", "slurm", "print")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep."""

    name: str
    config: str
    overrides: tuple[tuple[str, Any], ...]
    workdir: str
    replicas: tuple[str, ...] = ()  # a population job: the names of the runs it trains

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line that trains this run."""
        cmd = [python, "-m", "jdiffseg.cli.main", "train", f"--config={self.config}"]
        cmd.append(f"--workdir={self.workdir}")
        cmd += parsing.override_flags(dict(self.overrides))
        return cmd


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def _default_name(config: str, overrides: tuple[tuple[str, Any], ...]) -> str:
    path, _, arg = config.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [stem] + ([arg.replace(",", "_")] if arg else [])
    parts += [f"{k.split('.')[-1]}={parsing.flag_text(v)}" for k, v in overrides]
    return _slug("_".join(parts))


def load_sweep_module(sweep_file: str) -> Any:
    """Imports a sweep file; it must define `sweep(add)`."""
    if not os.path.exists(sweep_file):
        raise FileNotFoundError(f"sweep file {sweep_file} does not exist")
    spec = importlib.util.spec_from_file_location("jdiffseg_sweep_file", sweep_file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import sweep file {sweep_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "sweep", None)):
        raise ValueError(f"sweep file {sweep_file} must define a function sweep(add)")
    return module


def expand(sweep_file: str, sweep_dir: str | None = None) -> list[Run]:
    """The runs of a sweep file, each with a workdir under `sweep_dir`."""
    module = load_sweep_module(sweep_file)
    stem = os.path.splitext(os.path.basename(sweep_file))[0]
    sweep_dir = sweep_dir or getattr(module, "SWEEP_DIR", None) or os.path.join("runs", stem)
    runs: list[Run] = []

    def add(config: str, name: str | None = None, **overrides: Any) -> None:
        items = tuple((k.replace("__", "."), v) for k, v in overrides.items())
        run_name = _slug(name) if name else _default_name(config, items)
        runs.append(Run(run_name, config, items, os.path.join(sweep_dir, run_name)))

    module.sweep(add)
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sweep {sweep_file}: runs share the names {duplicates}; pass name=")
    return runs


def pack(runs: list[Run], population_max: int) -> list[Run]:
    """Runs that differ only in population keys (`config.population.POPULATION_KEYS`: seed,
    learning rate, ...) packed into population jobs of up to `population_max` replicas, each
    trained in one compiled step; the others are returned as they are. A job's workdir is
    `<sweep_dir>/<its runs' shared name>_pop<i>`, and `report` finds its replicas there."""
    if population_max < 1:
        raise ValueError(f"--population_max={population_max} must be >= 1")
    if population_max == 1:
        return list(runs)
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Run]] = {}
    for run in runs:
        fixed = tuple(sorted((k, repr(v)) for k, v in run.overrides
                             if k not in population.POPULATION_KEYS))
        packable = not any(k.startswith("train.population") for k, _ in run.overrides)
        groups.setdefault((run.config, fixed) if packable else (run.name, ()), []).append(run)
    out: list[Run] = []
    for members in groups.values():
        for i in range(0, len(members), population_max):
            chunk = members[i:i + population_max]
            out.append(chunk[0] if len(chunk) == 1 else _population_job(chunk, i // population_max))
    return out


def _population_job(runs: list[Run], index: int) -> Run:
    """One run training `runs` as the replicas of a population."""
    first = runs[0]
    fixed = tuple((k, v) for k, v in first.overrides if k not in population.POPULATION_KEYS)
    varied = sorted({k for r in runs for k, _ in r.overrides if k in population.POPULATION_KEYS})
    path, _, arg = first.config.partition(":")
    base = parsing.load_config_file(path, arg or None)
    parsing.update(base, dict(fixed))
    values = {}
    for key in varied:
        node = base
        for part in key.split("."):
            node = node[part]
        values[key] = [dict(r.overrides).get(key, node) for r in runs]
    overrides = (*fixed, ("train.population", len(runs)),
                 ("train.population_overrides", population.format_overrides(values)))
    name = f"{_default_name(first.config, fixed)}_pop{index}"
    sweep_dir = os.path.dirname(first.workdir)
    return Run(name, first.config, overrides, os.path.join(sweep_dir, name),
               tuple(r.name for r in runs))


def launch(
    sweep_file: str,
    *,
    launcher: str = "print",
    sweep_dir: str | None = None,
    population_max: int = 1,
    slurm_settings: slurm.Settings | None = None,
) -> int:
    """Expands `sweep_file`, packs it into population jobs of up to `population_max` replicas
    (1: no packing) and runs it with `launcher`; returns an exit status."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is not one of {LAUNCHERS}")
    runs = expand(sweep_file, sweep_dir)
    if not runs:
        print(f"sweep {sweep_file} defines no runs", file=sys.stderr)
        return 1
    sweep_dir = os.path.dirname(runs[0].workdir)
    runs = pack(runs, population_max)
    if launcher == "print":
        for run in runs:
            if run.replicas:
                print(f"# population of {len(run.replicas)}: {', '.join(run.replicas)}")
            print(shlex.join(run.argv("python")))
        return 0
    if launcher == "slurm":
        module = load_sweep_module(sweep_file)
        return slurm.launch(runs, sweep_dir, dict(getattr(module, "SLURM", {})), slurm_settings)
    failed = []
    for i, run in enumerate(runs):
        if run_dir.is_finished(run.workdir):
            print(f"[{i + 1}/{len(runs)}] {run.name}: finished, skipped")
            continue
        print(f"[{i + 1}/{len(runs)}] {run.name}: {shlex.join(run.argv())}", flush=True)
        if subprocess.call(run.argv()) != 0:
            failed.append(run.name)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
