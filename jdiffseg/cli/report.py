"""`jdiffseg report DIR... [--output=PREFIX]`: the results table; see `evaluation.report`."""

from __future__ import annotations

import sys

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.evaluation import report


def main(argv: list[str]) -> int:
    """`jdiffseg report DIR... [--output=PREFIX] [--digits=3]`; returns the exit status."""
    fv = flags.FlagValues()
    flags.DEFINE_string("output", None, "path prefix of the .md and .csv written "
                        "(default: DIR/report for the first DIR)", flag_values=fv)
    flags.DEFINE_integer("digits", 3, "decimals shown in the Markdown table", flag_values=fv)
    usage = f"usage: jdiffseg report DIR... [flags]\n\n{fv.get_help()}"
    paths = cli_flags.parse_positional(fv, "report", argv, usage)
    try:
        result = report.report(paths, fv.output, fv.digits)
    except (FileNotFoundError, ValueError) as e:
        print(f"jdiffseg {e}", file=sys.stderr)
        return 1
    for workdir in result["skipped"]:
        print(f"jdiffseg report: not evaluated, skipped: {workdir}", file=sys.stderr)
    print(result["markdown"], end="")
    print(f"wrote {' and '.join(result['files'])}", file=sys.stderr)
    return 0
