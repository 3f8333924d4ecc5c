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


# The miniature study: small enough for about ten minutes on two CPU cores.
DEMO_OVERRIDES = {"data.num_val_examples": 32, "data.num_test_examples": 64}
DEMO_EVAL = {"eval.ensemble_size": 5, "eval.sampler": "ddim", "eval.sampling_steps": 20}
DEMO_ANALYSIS = {"analysis.num_images": 32, "analysis.t_stride": 10}


def demo_main(argv: list[str]) -> int:
    """`jdiffseg demo`: E2 and E3 of EnsemDiff on one synthetic flavour, evaluated and analysed."""
    fv = flags.FlagValues()
    flags.DEFINE_string(
        "out_dir", "runs/demo", "where the runs, table and figures go", flag_values=fv
    )
    flags.DEFINE_enum(
        "variant", "lesion", ["lesion", "nuclei", "tissue"], "synthetic flavour", flag_values=fv
    )
    flags.DEFINE_string("arch", "ensemdiff", "ensemdiff | segdiff | medsegdiff", flag_values=fv)
    parse_flags(fv, "demo", argv)

    from jdiffseg import study

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
    return [p for p in paths if p]
