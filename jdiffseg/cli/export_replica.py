"""`jdiffseg export-replica --workdir=DIR --replica=k --out=DIR_K`: see `runtime.export`."""

from __future__ import annotations

import sys

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.runtime import export


def main(argv: list[str]) -> int:
    """Writes replica k of a population run as an ordinary run directory."""
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "a population run's directory", flag_values=fv)
    cli_flags.define_replica_flag(fv)
    flags.DEFINE_string("out", None, "the new run directory (must not exist)", flag_values=fv)
    flags.mark_flags_as_required(["workdir", "replica", "out"], flag_values=fv)
    cli_flags.parse_flags(fv, "export-replica", argv)
    try:
        path = export.export_replica(fv.workdir, fv.replica, fv.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"jdiffseg export-replica: {e}", file=sys.stderr)
        return 1
    print(f"wrote replica {fv.replica} of {fv.workdir} to {path}")
    return 0
