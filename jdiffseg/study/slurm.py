"""A sweep on a SLURM cluster: job arrays that survive time limits and preemption.

`write(runs, sweep_dir, ...)` writes into `<sweep_dir>`:

* `train.sbatch`: array task i trains run i under `srun`. SLURM signals the batch shell
  `grace_s` seconds before the time limit (`--signal=B:TERM@grace_s`); the shell passes SIGTERM
  on to the training processes, which save a checkpoint and exit (`PREEMPTED_EXIT`). A
  run left unfinished by that signal, by preemption or by a preempted exit requeues its own
  task (`scontrol requeue`), which resumes from the checkpoint; a run that fails otherwise
  stops there. A task whose run is already finished does nothing.
* `evaluate.sbatch` and `analyze.sbatch`: arrays with the same task ids, each task starting
  when its own run has trained (`--dependency=aftercorr:`); evaluation for every run that
  segments, the timestep analysis for diffusion-segmentation runs. They skip work already
  done and requeue themselves like training.
* `report.sbatch`: `jdiffseg report <sweep_dir>` once every evaluation and analysis ended.
* `submit.sh`: submits the four with their dependencies (run again to resume a sweep).

Every path in them is absolute, so they work from any directory. `#SBATCH` options come from
`DEFAULT_OPTIONS`, then the sweep file's `SLURM` dict, then the command line's settings.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from jdiffseg.analysis import results as analysis_results
from jdiffseg.config import parsing
from jdiffseg.evaluation import report
from jdiffseg.runtime import run_dir
from jdiffseg.runtime.stop_signals import PREEMPTED_EXIT

DEFAULT_OPTIONS: dict[str, Any] = {
    "nodes": 1, "ntasks-per-node": 1, "gpus-per-node": 1, "time": "24:00:00"
}
# How long before the time limit training is told to save and stop (s); requeues allowed.
DEFAULT_GRACE_S = 300
DEFAULT_MAX_REQUEUES = 20
# Options of the training array that the one-process, one-node jobs after it do not inherit.
_TRAIN_ONLY = ("nodes", "ntasks-per-node", "ntasks")
# Options of the report job (no accelerator) taken from the settings.
_REPORT_KEYS = ("partition", "account", "qos")
SCRIPTS = ("train", "evaluate", "analyze", "report")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The command line's part of the jobs: `#SBATCH` options (None = not given), extra
    `#SBATCH` lines ("--qos=high", "exclusive"), the grace period and the requeue limit."""

    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra: Sequence[str] = ()
    grace_s: int = DEFAULT_GRACE_S
    max_requeues: int = DEFAULT_MAX_REQUEUES


def parse_extra(lines: Sequence[str]) -> dict[str, str | None]:
    """`#SBATCH` options from "--key=value", "key=value", "--flag" or "#SBATCH --key=value"."""
    out: dict[str, str | None] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip().lstrip("-")
        key, sep, value = text.partition("=")
        if not key or " " in key:
            raise ValueError(f"extra #SBATCH option {line!r} is not of the form --key[=value]")
        out[key] = value if sep else None
    return out


def options(sweep_options: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The training array's options: defaults < the sweep file's SLURM < the settings."""
    given = {k: v for k, v in settings.options.items() if v is not None}
    return {**DEFAULT_OPTIONS, **sweep_options, **given, **parse_extra(settings.extra)}


def _absolute_config(config: str) -> str:
    path, sep, arg = config.partition(":")
    return os.path.abspath(path) + sep + arg


def run_mode(run: Any) -> str:
    """The `model.mode` a sweep run trains in (its config file loaded with its overrides)."""
    path, _, arg = run.config.partition(":")
    try:
        config = parsing.load_config_file(path, arg or None)
        parsing.update(config, dict(run.overrides))
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ValueError(f"sweep run {run.name}: cannot load --config={run.config}: {e}") from e
    return str(config.model.mode)


def _header(job: str, opts: Mapping[str, Any], log_dir: str, array: str | None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name=jdiffseg-{job}"]
    if array is not None:
        lines.append(f"#SBATCH --array={array}")
    lines += [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in opts.items()]
    name = f"{job}_%A_%a.out" if array is not None else f"{job}_%j.out"
    lines.append(f"#SBATCH --output={os.path.join(log_dir, name)}")
    return lines


def array_script(
    job: str,
    commands: Mapping[int, Sequence[str]],
    done_files: Mapping[int, str],
    opts: Mapping[str, Any],
    log_dir: str,
    *,
    grace_s: int,
    max_requeues: int,
) -> str:
    """A job array: task i runs `commands[i]` under srun unless `done_files[i]` exists; stopped
    unfinished by a signal (or exiting PREEMPTED_EXIT), it requeues itself."""
    opts = {**opts, "signal": f"B:TERM@{int(grace_s)}", "requeue": None, "open-mode": "append"}
    lines = _header(job, opts, log_dir, ",".join(str(i) for i in sorted(commands)))
    lines += ["set -uo pipefail", 'case "$SLURM_ARRAY_TASK_ID" in']
    for i in sorted(commands):
        cmd = " ".join(shlex.quote(a) for a in commands[i])
        lines.append(f"  {i}) done_file={shlex.quote(done_files[i])}; cmd=({cmd}) ;;")
    lines += [
        '  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;',
        "esac",
        'if [ -e "$done_file" ]; then echo "$done_file exists; nothing to do"; exit 0; fi',
        "# SLURM signals this shell (only) ahead of the time limit, and everything on preemption:",
        "# pass SIGTERM on to the step, whose processes save and exit, then wait for them.",
        "stopped=0",
        "trap 'stopped=1; echo \"SIGTERM: stopping the step\"; kill -TERM \"$pid\"' TERM",
        'srun "${cmd[@]}" &',
        "pid=$!",
        'while :; do wait "$pid"; status=$?; kill -0 "$pid" 2>/dev/null || break; done',
        'if [ -e "$done_file" ]; then exit 0; fi',
        f'if [ "$stopped" = 1 ] || [ "$status" = {PREEMPTED_EXIT} ]; then',
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {int(max_requeues)} ]; then',
        '    echo "stopped unfinished (status $status); requeueing task $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        f"    exit {PREEMPTED_EXIT}",
        "  fi",
        f'  echo "stopped unfinished after {int(max_requeues)} requeues; giving up" >&2',
        "fi",
        'echo "failed with status $status" >&2',
        'exit $(( status == 0 ? 1 : status ))',
    ]
    return "\n".join(lines) + "\n"


def _submit_script(sweep_dir: str, present: Sequence[str]) -> str:
    """Submits the scripts in `present` with their dependencies; prints the job ids."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# Submits the sweep: training, then per run evaluation and analysis, then the report.",
        "set -euo pipefail",
        f"dir={q(sweep_dir)}",
        'submit() { local id; id=$(sbatch --parsable "$@"); echo "${id%%;*}"; }',
        'train=$(submit "$dir/train.sbatch")',
        'after="$train"',
    ]
    per_run = [job for job in ("evaluate", "analyze") if job in present]
    for job in per_run:
        lines.append(f'{job}=$(submit --kill-on-invalid-dep=yes '
                     f'--dependency=aftercorr:"$train" "$dir/{job}.sbatch")')
    if per_run:
        lines.append("after=" + ":".join(f'"${job}"' for job in per_run))
    lines += [
        'report=$(submit --dependency=afterany:"$after" "$dir/report.sbatch")',
        'echo "train $train" ' + " ".join(f'"{job} ${job}"' for job in per_run)
        + ' "report $report"',
    ]
    return "\n".join(lines) + "\n"


def _stage_argv(command: str, run: Any) -> list[str]:
    return ["python", "-m", "jdiffseg.cli.main", command, f"--workdir={run.workdir}"]


def write(
    runs: Sequence[Any],
    sweep_dir: str,
    sweep_options: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, str]:
    """Writes the sweep's scripts (module docstring) into `sweep_dir`; returns their paths."""
    settings = settings or Settings()
    if settings.grace_s < 0 or settings.max_requeues < 0:
        raise ValueError("the signal grace period and the requeue limit must be >= 0")
    sweep_dir = os.path.abspath(sweep_dir)
    log_dir = os.path.join(sweep_dir, "slurm")
    train_opts = options(sweep_options or {}, settings)
    runs = [dataclasses.replace(r, config=_absolute_config(r.config),
                                workdir=os.path.abspath(r.workdir)) for r in runs]
    modes = {i: run_mode(r) for i, r in enumerate(runs)}
    stage = {k: v for k, v in train_opts.items() if k not in _TRAIN_ONLY}
    stage = {"nodes": 1, "ntasks-per-node": 1, **stage}
    jobs = {
        "train": ({i: [*r.argv("python"), "--config.train.distributed=True"]
                   for i, r in enumerate(runs)},
                  {i: os.path.join(r.workdir, run_dir.FINISHED_FILE) for i, r in enumerate(runs)},
                  train_opts),
        "evaluate": ({i: _stage_argv("evaluate", r) for i, r in enumerate(runs)
                      if modes[i] != "image_generation"},
                     {i: os.path.join(r.workdir, report.METRICS_FILE) for i, r in enumerate(runs)},
                     stage),
        "analyze": ({i: _stage_argv("analyze", r) for i, r in enumerate(runs)
                     if modes[i] == "diffusion"},
                    {i: os.path.join(r.workdir, analysis_results.ANALYSIS_DIR,
                                     analysis_results.RESULT_FILE) for i, r in enumerate(runs)},
                    stage),
    }
    texts = {
        job: array_script(job, commands, done, opts, log_dir, grace_s=settings.grace_s,
                          max_requeues=settings.max_requeues)
        for job, (commands, done, opts) in jobs.items() if commands
    }
    report_opts = {"nodes": 1, "ntasks": 1, "time": "01:00:00",
                   **{k: v for k, v in train_opts.items() if k in _REPORT_KEYS}}
    report_cmd = shlex.join(["python", "-m", "jdiffseg.cli.main", "report", sweep_dir])
    texts["report"] = "\n".join(
        [*_header("report", report_opts, log_dir, None), "set -euo pipefail", report_cmd]
    ) + "\n"
    os.makedirs(log_dir, exist_ok=True)
    paths = {}
    for job in SCRIPTS:
        if job in texts:
            paths[job] = os.path.join(sweep_dir, f"{job}.sbatch")
            run_dir.atomic_write(paths[job], texts[job])
    paths["submit"] = os.path.join(sweep_dir, "submit.sh")
    run_dir.atomic_write(paths["submit"], _submit_script(sweep_dir, list(texts)))
    os.chmod(paths["submit"], 0o755)
    return paths


def launch(
    runs: Sequence[Any],
    sweep_dir: str,
    sweep_options: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> int:
    """Writes the scripts and submits them when `sbatch` exists; returns an exit status."""
    paths = write(runs, sweep_dir, sweep_options, settings)
    print(f"wrote {', '.join(paths.values())} ({len(runs)} runs)")
    if shutil.which("sbatch") is None:
        print(f"sbatch not found; submit on the cluster with: bash {paths['submit']}")
        return 0
    return subprocess.call(["bash", paths["submit"]])
