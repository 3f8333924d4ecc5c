"""`jdiffseg predict --workdir=RUN --input=PATH --output=DIR [--config.eval.KEY=VALUE ...]
[--keep_going]`: see `prediction.predict`."""

from __future__ import annotations

import sys

import jax
from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.data.images import DataError
from jdiffseg.prediction import predict

USAGE = """\
usage: jdiffseg predict --workdir=RUN --input=PATH --output=DIR [--keep_going]
                        [--config.SECTION.KEY=VALUE ...]

  --workdir: a trained (or imported) run's directory
  --input: an image file (PNG, JPEG, TIFF, ...) or a folder of them, searched recursively;
      for a run on volumes: a NIfTI file (3D, or 4D with the channels last) or a folder of
      them, nnU-Net's CASE_0000.nii.gz, CASE_0001.nii.gz, ... grouped per case
  --output: where the outputs go (outside the input folder); a rerun skips finished cases
  --keep_going: skip unreadable inputs, list them at the end and exit with status 1
  --config.SECTION.KEY=VALUE: overrides a key of the run's config.json, e.g.
      --config.eval.checkpoint=latest --config.eval.use_ema=False
      --config.eval.sampler=dpmpp_2m --config.eval.sampling_steps=10
      --config.eval.ensemble_size=10 --config.eval.fusion=staple
      --config.eval.ff_ensemble=flip --config.data.eval_batch_size=16

writes per case, at the input's size: NAME_mask.png (0/255, or the class index 0..C),
NAME_probs.npy (float32 foreground or per-class probabilities), NAME_uncertainty.npy (predictive
entropy in bits), NAME.json; and DIR/cases.csv (foreground pixels per class, uncertainty).
Volumes give NAME_mask.nii.gz (0/1 or 0..C), NAME_probs.nii.gz, NAME_uncertainty.nii.gz on the
input's grid with its affine and header, and the foreground in voxels and mm3 in cases.csv"""


def main(argv: list[str]) -> int:
    """Runs `jdiffseg predict`; returns 0, 1 (a case failed or was skipped) or 2 (bad flags)."""
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(USAGE)
        return 0
    fv = flags.FlagValues()
    if cli_flags.define_run_flags(fv, argv, "predict") is None:
        return 2
    flags.DEFINE_string("input", None, "an image or NIfTI file, or a folder of them",
                        flag_values=fv)
    flags.DEFINE_string("output", None, "the folder the outputs go to", flag_values=fv)
    flags.DEFINE_bool("keep_going", False, "skip unreadable inputs and report them at the end",
                      flag_values=fv)
    cli_flags.define_replica_flag(fv)
    flags.mark_flags_as_required(["workdir", "input", "output"], flag_values=fv)
    cli_flags.parse_flags(fv, "predict", argv)
    try:
        summary = predict.predict(fv.workdir, fv.input, fv.output,
                                  cli_flags.config_overrides(fv), keep_going=fv.keep_going,
                                  replica=fv.replica)
    except (FileNotFoundError, ValueError, KeyError, DataError) as err:
        print(f"jdiffseg predict: {err}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(f"{len(summary.written)} case(s) written, {len(summary.finished)} already "
              f"finished; wrote {summary.cases_csv}")
        for name, why in summary.skipped.items():
            print(f"skipped {name}: {why}", file=sys.stderr)
    if summary.skipped:
        print(f"jdiffseg predict: {len(summary.skipped)} case(s) skipped", file=sys.stderr)
        return 1
    return 0
