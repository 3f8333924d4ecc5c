"""Flag parsing for the config-driven subcommands; each calls into the module that does the work."""

from __future__ import annotations

from absl import flags

from jdiffseg.main import define_config_flag, parse_flags


def train_main(argv: list[str]) -> int:
    """`jdiffseg train --config=... --workdir=...`: trains, or resumes the run in workdir."""
    fv = flags.FlagValues()
    config = define_config_flag(fv, argv)
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and results", flag_values=fv
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    parse_flags(fv, "train", argv)

    from jdiffseg import train

    train.train_and_evaluate(config.value, fv.workdir)
    return 0


def sweep_main(argv: list[str]) -> int:
    """`jdiffseg sweep --config=configs/sweeps/NAME.py --launcher=local|slurm|print`."""
    fv = flags.FlagValues()
    flags.DEFINE_string("config", None, "sweep file defining sweep(add)", flag_values=fv)
    flags.DEFINE_enum(
        "launcher", "print", ["local", "slurm", "print"], "how to run", flag_values=fv
    )
    flags.DEFINE_string("sweep_dir", None, "parent of the runs' workdirs", flag_values=fv)
    flags.mark_flags_as_required(["config"], flag_values=fv)
    parse_flags(fv, "sweep", argv)

    from jdiffseg import sweep

    return sweep.launch(fv.config, launcher=fv.launcher, sweep_dir=fv.sweep_dir)
