"""`jdiffseg import --checkpoint=FILE --config=FILE[:ARG] --workdir=RUN [--ema=FILE]`: see
`importing.authors`."""

from __future__ import annotations

import sys

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.importing import authors


def main(argv: list[str]) -> int:
    """Runs `jdiffseg import`; returns 0, 1 (the checkpoint does not fit, or torch is missing)
    or 2 (bad flags)."""
    fv = flags.FlagValues()
    config = cli_flags.define_config_flag(fv, argv)
    flags.DEFINE_string("checkpoint", None, "the authors' checkpoint: savedmodel*.pt (EnsemDiff, "
                        "MedSegDiff), SegDiff's .pt, an .npz of the same state dict, or for "
                        "SegFormer a transformers checkpoint directory", flag_values=fv)
    flags.DEFINE_string("ema", None, "optional: the EMA weights saved beside it "
                        "(emasavedmodel*.pt); evaluate uses them by default", flag_values=fv)
    flags.DEFINE_string("workdir", None, "the run directory to create (must not exist)",
                        flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "config", "workdir"], flag_values=fv)
    cli_flags.parse_flags(fv, "import", argv)
    try:
        record = authors.import_checkpoint(fv.checkpoint, config.value, fv.workdir,
                                           ema_path=fv.ema)
    except (ImportError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"jdiffseg import: {err}", file=sys.stderr)
        return 1
    files = ", ".join(f"{item} from {s['file']} (sha256 {s['sha256'][:12]}...)"
                      for item, s in record["sources"].items())
    print(f"imported {record['arch']} ({record['mode']}) into {fv.workdir}: {files}; "
          f"next: jdiffseg evaluate --workdir={fv.workdir}")
    return 0
