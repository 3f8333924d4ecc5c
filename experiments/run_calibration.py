r"""The calibration study: diffusion (E2) against feed-forward (E1) with exact labels and with
annotator variability, over seeds (`jdiffseg/study/calibration.py`).

    python experiments/run_calibration.py --out_dir=runs/calibration     # the CPU budget below
    # the authors' scale on a GPU: the full chain on the whole test split, longer training
    python experiments/run_calibration.py --out_dir=runs/calibration_gpu --e2_steps=20000 \
        --long_steps=40000 --test_images=64 --ddpm_images=64

What it runs, per flavour (lesion, nuclei, tissue: exact masks; lesion_raters: 4 simulated
annotators, one drawn per training step), with tiny EnsemDiff at 32 px, every run a population
of `--seeds` seeds, validated (and checkpointed) every 100 steps:
* E1 (400 steps of batch 8) and E2 (800 steps), each scored at its best validation checkpoint;
* E2 sampled with DDIM-20 at η = 0 and η = 1, 25 members on the first 12 test images, scored
  as ensembles of the first 5, 10 and 25; the full DDPM chain (1000 steps per member), 25
  members on the first test image of `--ddpm_flavours`, beside DDIM and E1 on that image;
* E2 trained for `--long_steps` (1200) on `--long_flavours`, to see whether its validation Dice
  still climbs after 800 steps; E1 and E2 on `--small_train` (32) training images for
  `--small_steps` (300), best beside last checkpoint;
* E4 (800 steps), and E2's and E4's loss at every t < 100 (`--early_flavours`).
Flavour-list flags left at their defaults keep only the chosen `--flavours`.

Measured cost of the defaults from scratch on two x86-64 cores: 2 h 20 min wall (E1 5 min and
E2 11 min per flavour; E4 10 min, the small set 8 min, the 1200-step E2 16 min; DDIM sampling
1.7 min per E2 evaluation, the full chain 6 min per flavour; early-t 3 min).

Writes `OUT/calibration.md` (tables), `OUT/calibration.json` (every score per seed) and the
figures `calibration_size.png`, `sampler_chain.png`, `convergence.png`, `ambiguity.png` and
`early_t.png`. Re-running skips what is done, so an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from jdiffseg.config import parsing
from jdiffseg.runtime import cpu_defaults
from jdiffseg.study import calibration

FLAGS = flags.FLAGS
DEFAULTS = calibration.CalibrationPlan(out_dir="runs/calibration")
flags.DEFINE_string("out_dir", DEFAULTS.out_dir, "where runs, tables and figures go")
flags.DEFINE_list("flavours", list(DEFAULTS.flavours), "synthetic flavours")
flags.DEFINE_integer("seeds", DEFAULTS.seeds, "seeds per cell (E1 and E2 populations)")
flags.DEFINE_integer("raters", DEFAULTS.raters, "annotators of the multi-rater flavour")
flags.DEFINE_float("rater_strength", DEFAULTS.rater_strength, "annotator variability in [0, 1]")
flags.DEFINE_integer("e1_steps", DEFAULTS.e1_steps, "E1 training steps")
flags.DEFINE_integer("e2_steps", DEFAULTS.e2_steps, "E2 (and E4) training steps")
flags.DEFINE_list("long_flavours", list(DEFAULTS.long_flavours), "flavours with a long E2")
flags.DEFINE_integer("long_steps", DEFAULTS.long_steps, "steps of the long E2")
flags.DEFINE_list("small_flavours", list(DEFAULTS.small_flavours),
                  "flavours trained on a small training set too")
flags.DEFINE_integer("small_train", DEFAULTS.small_train, "images of the small training set")
flags.DEFINE_integer("small_steps", DEFAULTS.small_steps, "E1 and E2 steps on the small set")
flags.DEFINE_list("early_flavours", list(DEFAULTS.early_flavours),
                  "flavours whose E2 and E4 loss is computed at every t < early_t")
flags.DEFINE_integer("early_t", DEFAULTS.early_t, "the early-t range")
flags.DEFINE_integer("early_images", DEFAULTS.early_images, "validation images of the early-t loss")
flags.DEFINE_list("ensemble_sizes", [str(k) for k in DEFAULTS.ensemble_sizes],
                  "nested ensemble sizes scored (the largest is drawn)")
flags.DEFINE_integer("ddim_steps", DEFAULTS.ddim_steps, "DDIM's respaced steps")
flags.DEFINE_integer("test_images", DEFAULTS.test_images, "test images scored with DDIM")
flags.DEFINE_list("ddpm_flavours", list(DEFAULTS.ddpm_flavours),
                  "flavours sampled with the full DDPM chain")
flags.DEFINE_integer("ddpm_images", DEFAULTS.ddpm_images, "test images of the full chain")
flags.DEFINE_multi_string("override", [], "KEY=VALUE config override for every run")
flags.DEFINE_list("stages", ["train", "evaluate", "early_t", "report"], "stages to run")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    cpu_defaults.apply()
    def subset(name: str) -> tuple[str, ...]:
        """A flavour-list flag; left at its default, it keeps only the chosen --flavours."""
        chosen = getattr(FLAGS, name)
        if not FLAGS[name].present:
            chosen = [f for f in chosen if f in FLAGS.flavours]
        return tuple(chosen)

    try:
        plan = calibration.CalibrationPlan(
            out_dir=FLAGS.out_dir, flavours=tuple(FLAGS.flavours), seeds=FLAGS.seeds,
            raters=FLAGS.raters, rater_strength=FLAGS.rater_strength,
            e1_steps=FLAGS.e1_steps, e2_steps=FLAGS.e2_steps,
            long_flavours=subset("long_flavours"), long_steps=FLAGS.long_steps,
            small_flavours=subset("small_flavours"), small_train=FLAGS.small_train,
            small_steps=FLAGS.small_steps, early_flavours=subset("early_flavours"),
            early_t=FLAGS.early_t, early_images=FLAGS.early_images,
            ensemble_sizes=tuple(int(k) for k in FLAGS.ensemble_sizes),
            ddim_steps=FLAGS.ddim_steps, test_images=FLAGS.test_images,
            ddpm_flavours=subset("ddpm_flavours"), ddpm_images=FLAGS.ddpm_images,
            overrides=parsing.literal_overrides(FLAGS.override),
        )
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    outputs = calibration.run_calibration(plan, stages=tuple(FLAGS.stages))
    print(outputs.get("markdown", ""))
    print(f"wrote {FLAGS.out_dir}/calibration.md", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
