"""`jdiffseg sweep --config=SWEEP_FILE --launcher=local|slurm|print`: see `study.sweep` and,
for the SLURM flags, `study.slurm`."""

from __future__ import annotations

import sys

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.study import slurm, sweep

# Flag name -> `#SBATCH` option, for the training array (None: not given).
_SBATCH_FLAGS = {
    "nodes": ("nodes", "nodes per run"),
    "ntasks_per_node": ("ntasks-per-node", "processes per node (one per GPU or one per node)"),
    "gpus_per_node": ("gpus-per-node", "GPUs per node"),
    "cpus_per_task": ("cpus-per-task", "CPU cores per process"),
    "time": ("time", "time limit per job, e.g. 24:00:00 (a run past it requeues and resumes)"),
    "partition": ("partition", "SLURM partition"),
    "account": ("account", "SLURM account charged"),
}


def main(argv: list[str]) -> int:
    """`jdiffseg sweep --config=configs/sweeps/NAME.py --launcher=local|slurm|print`."""
    fv = flags.FlagValues()
    flags.DEFINE_string("config", None, "sweep file defining sweep(add)", flag_values=fv)
    flags.DEFINE_enum(
        "launcher", "print", ["local", "slurm", "print"], "how to run", flag_values=fv
    )
    flags.DEFINE_string("sweep_dir", None, "parent of the runs' workdirs", flag_values=fv)
    for name, (option, text) in _SBATCH_FLAGS.items():
        flags.DEFINE_string(name, None, f"slurm: {text} (#SBATCH --{option}; default: the "
                            "sweep file's SLURM dict, else the built-in default)", flag_values=fv)
    flags.DEFINE_multi_string("sbatch", [], "slurm: an extra #SBATCH option, e.g. "
                              "--sbatch=--qos=high (repeatable)", flag_values=fv)
    flags.DEFINE_integer("signal_grace", slurm.DEFAULT_GRACE_S, "slurm: seconds before the "
                         "time limit at which training is told to save and stop", flag_values=fv)
    flags.DEFINE_integer("max_requeues", slurm.DEFAULT_MAX_REQUEUES, "slurm: how often a task "
                         "stopped unfinished may requeue itself", flag_values=fv)
    flags.DEFINE_integer("population_max", 1, "pack runs differing only in population keys "
                         "(seed, lr, ...) into population jobs of up to this many replicas; "
                         "1: no packing", lower_bound=1, flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)
    cli_flags.parse_flags(fv, "sweep", argv)
    settings = slurm.Settings(
        options={option: fv[name].value for name, (option, _) in _SBATCH_FLAGS.items()},
        extra=tuple(fv.sbatch),
        grace_s=fv.signal_grace,
        max_requeues=fv.max_requeues,
    )
    try:
        return sweep.launch(fv.config, launcher=fv.launcher, sweep_dir=fv.sweep_dir,
                            population_max=fv.population_max, slurm_settings=settings)
    except ValueError as e:
        print(f"jdiffseg sweep: {e}", file=sys.stderr)
        return 2
