"""`jdiffseg train --config=FILE[:ARG] --workdir=DIR`: trains, or resumes the run in DIR."""

from __future__ import annotations

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.training import train


def main(argv: list[str]) -> int:
    """`jdiffseg train --config=... --workdir=...`: trains, or resumes the run in workdir."""
    fv = flags.FlagValues()
    config = cli_flags.define_config_flag(fv, argv)
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and results", flag_values=fv
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    cli_flags.parse_flags(fv, "train", argv)
    train.train_and_evaluate(config.value, fv.workdir)
    return 0
