"""`jdiffseg demo`: the study in miniature on the embedded synthetic data."""

from __future__ import annotations

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.study import study

# The miniature study: small enough for about ten minutes on two CPU cores.

DEMO_OVERRIDES = {"data.num_val_examples": 32, "data.num_test_examples": 64}
DEMO_EVAL = {"eval.ensemble_size": 5, "eval.sampler": "ddim", "eval.sampling_steps": 20}
DEMO_ANALYSIS = {"analysis.num_images": 32, "analysis.t_stride": 10}


def main(argv: list[str]) -> int:
    """`jdiffseg demo`: E2 and E3 of EnsemDiff on one synthetic flavour, evaluated and analysed."""
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "out_dir", "runs/demo", "where the runs, table and figures go", flag_values=fv
    )
    flags.DEFINE_enum(
        "variant", "lesion", ["lesion", "nuclei", "tissue", "organs"],
        "synthetic flavour (organs: three foreground classes)", flag_values=fv
    )
    flags.DEFINE_string("arch", "ensemdiff", "ensemdiff | segdiff | medsegdiff", flag_values=fv)
    cli_flags.parse_flags(fv, "demo", argv)
    plan = study.Plan(
        out_dir=fv.out_dir,
        datasets=(fv.variant,),
        archs=(fv.arch,),
        experiments=("E2", "E3"),
        overrides=DEMO_OVERRIDES,
        eval_overrides=DEMO_EVAL,
        analysis_overrides=DEMO_ANALYSIS,
    )
    outputs = study.run_study(plan)
    print(f"results in {fv.out_dir}: " + ", ".join(str(p) for p in _figures(outputs)))
    return 0


def _figures(outputs: dict) -> list[str]:
    paths = [outputs.get("fingerprints")]
    paths += [f"{d}/recovery.png" for d in outputs.get("analysis_dirs", [])]
    paths += outputs.get("class_figures", [])
    return [p for p in paths if p]
