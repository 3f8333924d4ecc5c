"""`jdiffseg evaluate --workdir=DIR [--config.eval.KEY=VALUE ...]`: see `evaluation.evaluate`."""

from __future__ import annotations

import sys

import jax
from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.config import schema
from jdiffseg.evaluation import evaluate
from jdiffseg.scoring import stats


def _usage() -> str:
    """Help text: the flags and the `eval` keys most often overridden, with their defaults."""
    keys = "\n".join(f"  --config.eval.{k}={v if v != '' else repr(v)}"
                     for k, v in schema.base_config().eval.items() if not k.startswith("val_"))
    return (
        "usage: jdiffseg evaluate --workdir=DIR [--config.SECTION.KEY=VALUE ...]\n\n"
        "  --workdir: a trained run's directory (holds config.json and checkpoints/)\n"
        "  --config.SECTION.KEY=VALUE: overrides a key of the run's config.json\n\n"
        f"eval keys (defaults shown; a run's config.json may differ):\n{keys}\n\n"
        "  --replica=k: one replica of a population run (default: all, then mean ± sd)\n\n"
        f"writes DIR/{evaluate.EVAL_DIR}/: metrics.json, per_image.csv, reliability.png, cases.png"
        f"\n(a population: DIR/{evaluate.EVAL_DIR}/replica_k/ each, and "
        f"{evaluate.POPULATION_FILE})"
    )


def main(argv: list[str]) -> int:
    """`jdiffseg evaluate --workdir=DIR [--config.eval.KEY=VALUE ...]`; returns the exit status.

    The `--config.*` overrides are typed by the run's own config.json.
    """
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(_usage())
        return 0
    fv = flags.FlagValues()
    if cli_flags.define_run_flags(fv, argv, "evaluate") is None:
        return 2
    cli_flags.define_replica_flag(fv)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)
    cli_flags.parse_flags(fv, "evaluate", argv)
    try:
        results = evaluate.evaluate(fv.workdir, cli_flags.config_overrides(fv), fv.replica)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"jdiffseg evaluate: {err}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:
        return 0
    if "replicas" in results:  # a whole population
        for row in results["replicas"]:
            values = ", ".join(f"{k} {v:.4f}" for k, v in row["values"].items())
            print(f"replica {row['replica']} (seed {row['seed']}): {values}")
        over = ", ".join(f"{k} {stats.format_summary(v)}" for k, v in results["summary"].items())
        print(f"over {results['num_replicas']} replicas (mean ± sd [95 % CI]): {over}")
        return 0
    summary = results["summary"]
    line = ", ".join(
        f"{k} {stats.format_summary(summary[k])}" for k in ("dice", "iou") if k in summary)
    d = results["dataset"]
    other = "ece_foreground" if "ece_foreground" in d else "ece_classwise"
    print(f"{results['num_images']} images: {line}; ECE top-label {d['ece_top_label']:.4f}, "
          f"{other.removeprefix('ece_')} {d[other]:.4f}; wrote {results['files']['metrics']}")
    return 0
