"""`jdiffseg sweep --config=SWEEP_FILE --launcher=local|slurm|print`: see `study.sweep`."""

from __future__ import annotations

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.study import sweep


def main(argv: list[str]) -> int:
    """`jdiffseg sweep --config=configs/sweeps/NAME.py --launcher=local|slurm|print`."""
    fv = flags.FlagValues()
    flags.DEFINE_string("config", None, "sweep file defining sweep(add)", flag_values=fv)
    flags.DEFINE_enum(
        "launcher", "print", ["local", "slurm", "print"], "how to run", flag_values=fv
    )
    flags.DEFINE_string("sweep_dir", None, "parent of the runs' workdirs", flag_values=fv)
    flags.DEFINE_integer("population_max", 1, "pack runs differing only in population keys "
                         "(seed, lr, ...) into population jobs of up to this many replicas; "
                         "1: no packing", lower_bound=1, flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)
    cli_flags.parse_flags(fv, "sweep", argv)
    return sweep.launch(fv.config, launcher=fv.launcher, sweep_dir=fv.sweep_dir,
                        population_max=fv.population_max)
