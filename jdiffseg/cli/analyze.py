"""`jdiffseg analyze`: the timestep analysis of a run, or a comparison of analysed runs.

    jdiffseg analyze --workdir=runs/ens [--mask_only_workdir=runs/ens_e3]
        [--image_generation_workdir=runs/ens_e4] [--emit_adapted_config]
    jdiffseg analyze --compare runs/lesion runs/nuclei runs/tissue [--out=fingerprints.png]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
from absl import flags

from jdiffseg.analysis import analyze, fingerprint
from jdiffseg.analysis import results as results_io
from jdiffseg.cli import flags as cli_flags
from jdiffseg.runtime import checkpoint, run_dir
from jdiffseg.scoring import stats


def _expand_compare(argv: Sequence[str]) -> list[str]:
    """Turns `--compare A B C` (space-separated directories) into `--compare=A,B,C`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--compare":
            dirs = []
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                dirs.append(argv[i])
                i += 1
            out.append("--compare=" + ",".join(dirs))
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str]) -> int:
    """`jdiffseg analyze`: the timestep analysis of a run, or a comparison of several.

    `--config.a.b=v` overrides apply to the run's own config (read from DIR/config.json),
    e.g. `--config.analysis.t_stride=10 --config.analysis.num_images=64`.
    """
    argv = _expand_compare(list(argv))
    fv = flags.FlagValues()
    config = cli_flags.define_run_flags(
        fv, argv, "analyze", "the run's config; override keys with --config.a.b=v",
        "trained diffusion-segmentation (E2) run")
    if config is None:
        return 2
    flags.DEFINE_string("mask_only_workdir", None, "trained mask-only (E3) run", flag_values=fv)
    flags.DEFINE_string("image_generation_workdir", None, "trained image-generation (E4) run",
                        flag_values=fv)
    flags.DEFINE_list("compare", None, "analysed workdirs whose fingerprints to overlay "
                      "(space- or comma-separated)", flag_values=fv)
    flags.DEFINE_list("labels", None, "legend labels for --compare (default: directory names)",
                      flag_values=fv)
    flags.DEFINE_string("out", "fingerprints.png", "figure written by --compare", flag_values=fv)
    flags.DEFINE_bool("emit_adapted_config", False, "write adapted-diffusion config overrides "
                      "derived from the fingerprint", flag_values=fv)
    cli_flags.define_replica_flag(fv)
    flags.DEFINE_bool("reuse", False, "reuse DIR/analysis/timesteps.json instead of recomputing",
                      flag_values=fv)
    cli_flags.parse_flags(fv, "analyze", argv)

    if fv.compare:
        return _compare(fv, config.value.analysis)
    if not fv.workdir:
        print("jdiffseg analyze: give --workdir=DIR (or --compare DIR_A DIR_B ...)",
              file=sys.stderr)
        return 2
    if fv.reuse:
        result = results_io.load_results(fv.workdir)
    else:
        try:
            result = analyze.analyze(fv.workdir, config=config.value,
                                     mask_only_workdir=fv.mask_only_workdir,
                                     image_generation_workdir=fv.image_generation_workdir,
                                     replica=fv.replica)
        except checkpoint.CheckpointRestoreError as e:
            print(f"jdiffseg analyze: {e}", file=sys.stderr)
            return 1
        except (FileNotFoundError, ValueError) as e:
            print(f"jdiffseg analyze: {e}", file=sys.stderr)
            return 2
    if "fingerprints" in result:  # a whole population
        for k, summary in enumerate(result["fingerprints"]):
            print(f"replica {k}: {fingerprint.format_summary(summary)}")
        print(f"over {result['num_replicas']} replicas (mean ± sd [95 % CI]): " + ", ".join(
            f"{k} {stats.format_summary(v)}" for k, v in result["summary"].items()))
        return 0
    print(fingerprint.format_summary(result["fingerprint"]))
    for name, entry in result.get("classes", {}).items():
        print(f"{name}: {fingerprint.format_summary(entry['fingerprint'])}")
    if fv.emit_adapted_config and jax.process_index() == 0:
        out_dir = os.path.join(fv.workdir, results_io.ANALYSIS_DIR)
        if fv.replica is not None:
            out_dir = os.path.join(out_dir, run_dir.replica_name(fv.replica))
        source = results_io.adaptation_source(result, config.value.analysis)
        paths, table = fingerprint.write_adapted(source, config.value, out_dir)
        for method, overrides in table["methods"].items():
            if "error" in overrides:
                print(f"adapted {method}: not derived: {overrides['error']}")
        print("wrote " + ", ".join(paths))
    return 0


def _compare(fv: flags.FlagValues, analysis_config: ml_collections.ConfigDict) -> int:
    """`--compare`: overlays the runs' fingerprints; writes the figure and a summary table."""
    try:
        table, figure, table_path = analyze.compare(
            fv.compare, fv.labels, fv.out, analysis_config
        )
    except ValueError as e:
        print(f"jdiffseg analyze: --compare: {e}", file=sys.stderr)
        return 2
    for label, summary in table.items():
        print(f"{label}: {fingerprint.format_summary(summary)}")
    print(f"wrote {figure}, {table_path}")
    return 0
