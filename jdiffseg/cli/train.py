"""`jdiffseg train --config=FILE[:ARG] --workdir=DIR`: trains, or resumes the run in DIR."""

from __future__ import annotations

import sys

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.runtime import checkpoint, io_errors, lock
from jdiffseg.training import train


def main(argv: list[str]) -> int:
    """`jdiffseg train --config=... --workdir=...`: trains, or resumes the run in workdir.

    A locked workdir or a run whose checkpoints do not restore stops with one line; a file that
    cannot be written with one line and then the traceback once. Exit status 1 for each."""
    fv = flags.FlagValues()
    config = cli_flags.define_config_flag(fv, argv)
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and results", flag_values=fv
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    cli_flags.parse_flags(fv, "train", argv)
    try:
        train.train_and_evaluate(config.value, fv.workdir)
    except io_errors.RunIOError as e:
        io_errors.report(e)
        return 1
    except (lock.WorkdirLockedError, checkpoint.CheckpointRestoreError) as e:
        print(f"jdiffseg train: {e}", file=sys.stderr)
        return 1
    return 0
