r"""The whole study: E1–E4 per architecture and dataset, the nnU-Net and SegFormer-B0 baselines,
evaluation, the timestep analysis, adapted-diffusion runs, the results table and the fingerprint
figure.

    # the three synthetic flavours with tiny models (CPU; a few hours on two cores)
    python experiments/run_study.py --out_dir=runs/study
    # one architecture, two flavours, only the runs the fingerprint needs
    python experiments/run_study.py --archs=ensemdiff --datasets=lesion,nuclei --experiments=E2,E3
    # the paper: real data at the authors' 256 px settings (GPU)
    python experiments/run_study.py --datasets=isic2016,monuseg,her2 --preset=paper \
        --override=data.manual_dir=/data/raw --out_dir=runs/paper

    # every table row over 3 seeds (populations), adaptation gains paired by seed
    python experiments/run_study.py --archs=ensemdiff --experiments=E1,E2,E3,adapted --seeds=3

Writes `OUT/results.md` and `.csv` (architecture × dataset × mode: Dice, IoU, ECE),
`OUT/adaptation_gains.md` and `.json` (adapted minus E2 per seed, and over seeds),
`OUT/fingerprints.png` (Δ(t) and Dice with/without the image per run) and every run's own
outputs under `OUT/<dataset>/<run>/`. Re-running skips whatever is already done.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from jdiffseg.config import parsing
from jdiffseg.runtime import cpu_defaults
from jdiffseg.study import study

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/study", "where runs, table and figures go")
flags.DEFINE_list("datasets", list(study.SYNTHETIC_VARIANTS), "synthetic flavours or real sets")
flags.DEFINE_list("archs", ["ensemdiff", "segdiff", "medsegdiff"], "architectures")
flags.DEFINE_list("experiments", list(study.EXPERIMENTS), "subset of E1,E2,E3,E4,baseline,adapted")
flags.DEFINE_list("baselines", list(study.BASELINES), "feed-forward baselines (nnunet, segformer)")
flags.DEFINE_enum("preset", "tiny", ["tiny", "paper"], "model size and training length")
flags.DEFINE_enum("adapt_method", "weights", ["range", "weights", "schedule"], "adapted runs")
flags.DEFINE_integer("seeds", 1, "seeds per table row: E1, E2, adapted and baselines train as "
                     "populations of this many seeds (E3, E4 once)")
flags.DEFINE_multi_string("override", [], "KEY=VALUE config override for every run")
flags.DEFINE_multi_string("eval_override", [], "KEY=VALUE override for evaluation")
flags.DEFINE_multi_string("analysis_override", [], "KEY=VALUE override for the analysis")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter off the console
    cpu_defaults.apply()
    try:
        overrides, eval_overrides, analysis_overrides = (
            parsing.literal_overrides(items)
            for items in (FLAGS.override, FLAGS.eval_override, FLAGS.analysis_override))
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    plan = study.Plan(
        out_dir=FLAGS.out_dir,
        datasets=tuple(FLAGS.datasets),
        archs=tuple(FLAGS.archs),
        experiments=tuple(FLAGS.experiments),
        baselines=tuple(FLAGS.baselines),
        preset=FLAGS.preset,
        adapt_method=FLAGS.adapt_method,
        overrides=overrides,
        eval_overrides=eval_overrides,
        analysis_overrides=analysis_overrides,
        seeds=FLAGS.seeds,
    )
    outputs = study.run_study(plan)
    print(outputs.get("report", {}).get("markdown", ""))
    print(outputs.get("adaptation_gains", {}).get("markdown", ""))
    print(f"wrote {FLAGS.out_dir}/study.json", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
