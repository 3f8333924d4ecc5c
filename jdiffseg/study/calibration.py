"""The calibration study: is diffusion segmentation better calibrated than the same network
trained feed-forward, with exact labels and with annotator variability?

For every flavour (the synthetic lesion, nuclei and tissue data with exact masks, and lesions
with several simulated annotators) it trains E1 (feed-forward) and E2 (diffusion) as
populations of `seeds` seeds and then
* samples E2 as the authors do (full-chain DDPM) and with DDIM at η = 0 and η = 1, drawing
  `max(ensemble_sizes)` members once per image and scoring the first 5, 10, ... of them
  (`calibration_scores`), against the majority mask and, on multi-rater data, against all
  raters (GED, Hungarian-matched IoU, soft-label and boundary-band ECE);
* reads where E1's and E2's validation Dice stop improving, trains E2 longer on
  `long_flavours`, and scores E1 and E2 each at its own best (plateau) checkpoint;
* on a small training set (`small_train` images) scores the last checkpoint beside the best
  one, where the feed-forward net can grow over-confident;
* computes E2's and E4's loss at every t < `early_t` on the validation images.

Every run lives in `OUT/<flavour>/<run>/` with the study's names (`ensemdiff_E2_diffusion`, ...),
and every stage is skipped when its outputs exist, so an interrupted plan goes on where it
stopped. `calibration_report` writes the tables and figures.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jdiffseg.analysis import curves
from jdiffseg.analysis import runs as analysis_runs
from jdiffseg.config import parsing, population
from jdiffseg.evaluation import evaluate
from jdiffseg.evaluation import results as results_io
from jdiffseg.runtime import run_dir
from jdiffseg.study import calibration_report, calibration_scores, study

ARCH = "ensemdiff"
EXACT_FLAVOURS = ("lesion", "nuclei", "tissue")
RATER_FLAVOUR = "lesion_raters"
# the run names of the main E1 and E2 of every flavour
MAIN_RUNS = {"E1": f"{ARCH}_E1_feedforward", "E2": f"{ARCH}_E2_diffusion"}
FLAVOURS = (*EXACT_FLAVOURS, RATER_FLAVOUR)
# the study's evaluation sizes; validation (and a checkpoint) every 100 steps, so that the
# plateau of the validation Dice and the best checkpoint are read at that resolution
BASE_OVERRIDES = {"data.num_val_examples": 32, "data.num_test_examples": 64,
                  "train.eval_every": 100, "train.checkpoint_every": 100}


@dataclasses.dataclass(frozen=True)
class CalibrationPlan:
    """What to run; the defaults are the CPU budget stated in `experiments/run_calibration.py`."""

    out_dir: str
    flavours: tuple[str, ...] = FLAVOURS
    seeds: int = 3
    raters: int = 4  # annotators of the multi-rater flavour
    rater_strength: float = 0.5
    preset: str = "tiny"
    e1_steps: int = 400
    e2_steps: int = 800
    # E2 trained longer, to find where its validation Dice stops improving
    long_flavours: tuple[str, ...] = ("lesion",)
    long_steps: int = 1200
    # E1 and E2 on a small training set: last beside best checkpoint
    small_flavours: tuple[str, ...] = ("lesion",)
    small_train: int = 32
    small_steps: int = 300  # E1 and E2 alike: 75 epochs of the small set
    # the loss at every t < early_t, E2 against E4
    early_flavours: tuple[str, ...] = ("lesion",)
    early_t: int = 100
    early_images: int = 32
    # sampling: members drawn once per image, scored as nested ensembles of these sizes
    ensemble_sizes: tuple[int, ...] = (5, 10, 25)
    ddim_steps: int = 20
    test_images: int = 12
    # the full chain (T steps per member) on the first `ddpm_images` test images
    ddpm_flavours: tuple[str, ...] = ("lesion", RATER_FLAVOUR)
    ddpm_images: int = 1
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.flavours) - set(FLAVOURS))
        if unknown:
            raise ValueError(f"unknown flavours {unknown}; choose from {FLAVOURS}")
        for name in ("long_flavours", "small_flavours", "early_flavours", "ddpm_flavours"):
            outside = sorted(set(getattr(self, name)) - set(self.flavours))
            if outside:
                raise ValueError(f"{name} {outside} are not among flavours {self.flavours}")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")
        if not self.ensemble_sizes or min(self.ensemble_sizes) < 1:
            raise ValueError(f"ensemble_sizes={self.ensemble_sizes} must be sizes >= 1")
        if self.raters < 2:
            raise ValueError(f"raters={self.raters}: the multi-rater flavour needs >= 2")
        for name in ("e1_steps", "e2_steps", "long_steps", "small_train", "small_steps",
                     "early_t", "early_images", "ddim_steps", "test_images", "ddpm_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of the plan: where it goes and its config."""

    flavour: str
    name: str
    experiment: str  # E1 | E2 | E4
    config: ml_collections.ConfigDict
    workdir: Path


def _flavour_overrides(plan: CalibrationPlan, flavour: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {**BASE_OVERRIDES, **plan.overrides}
    if flavour == RATER_FLAVOUR:
        overrides.update({"data.raters": plan.raters, "data.rater_strength": plan.rater_strength})
    return overrides


def variant_of(flavour: str) -> str:
    """The synthetic variant a flavour draws its images from."""
    return "lesion" if flavour == RATER_FLAVOUR else flavour


def _spec(plan: CalibrationPlan, flavour: str, experiment: str, name: str,
          extra: Mapping[str, Any]) -> RunSpec:
    base = study.Plan(out_dir=plan.out_dir, archs=(ARCH,), preset=plan.preset, seeds=plan.seeds,
                      overrides={**_flavour_overrides(plan, flavour), **extra})
    config = study.run_config(base, ARCH, variant_of(flavour), study.MODE_OF[experiment])
    # E4 too, which the study trains once: its early-t loss is compared seed by seed
    parsing.update(config, {"train.population": plan.seeds})
    return RunSpec(flavour, name, experiment, config, Path(plan.out_dir) / flavour / name)


def run_specs(plan: CalibrationPlan) -> list[RunSpec]:
    """Every training run of the plan, in the order they are trained: the main E1 and E2 of
    every flavour first, then E4, the small training sets and the long E2 runs."""
    main, extra, long = [], [], []
    for flavour in plan.flavours:
        main.append(_spec(plan, flavour, "E1", MAIN_RUNS["E1"], {"train.steps": plan.e1_steps}))
        main.append(_spec(plan, flavour, "E2", MAIN_RUNS["E2"], {"train.steps": plan.e2_steps}))
        if flavour in plan.early_flavours:
            extra.append(_spec(plan, flavour, "E4", f"{ARCH}_E4_image_generation",
                               {"train.steps": plan.e2_steps}))
        if flavour in plan.small_flavours:
            small = {"data.num_train_examples": plan.small_train}
            extra.append(_spec(plan, flavour, "E1", f"{ARCH}_E1_small{plan.small_train}",
                               {"train.steps": plan.small_steps, **small}))
            extra.append(_spec(plan, flavour, "E2", f"{ARCH}_E2_small{plan.small_train}",
                               {"train.steps": plan.small_steps, **small}))
        if flavour in plan.long_flavours:
            long.append(_spec(plan, flavour, "E2", f"{ARCH}_E2_steps{plan.long_steps}",
                              {"train.steps": plan.long_steps}))
    return main + extra + long


def train_all(plan: CalibrationPlan, log: Callable[[str], None] = print) -> list[RunSpec]:
    """Trains (or finds trained) every run of the plan."""
    specs = run_specs(plan)
    for spec in specs:
        log(f"{spec.flavour}:")
        study.train_run(spec.config, spec.workdir, log)
    return specs


def write_plan(plan: CalibrationPlan) -> None:
    """Records the plan beside its runs (`OUT/plan.json`)."""
    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in dataclasses.asdict(plan).items()}
    fields["overrides"] = {k: parsing.flag_text(v) for k, v in plan.overrides.items()}
    (out / "plan.json").write_text(json.dumps(fields, indent=2) + "\n")


# The samplers compared: DDIM on `ddim_steps` respaced steps, deterministic and stochastic, and
# the authors' full-chain DDPM (every one of the T steps).
SAMPLERS = ("ddim_eta0", "ddim_eta1", "ddpm_full")
CALIBRATION_DIR = "calibration"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: `eval_dir` (under its workdir) and its config overrides."""

    spec: RunSpec
    method: str  # feedforward | a SAMPLERS entry
    checkpoint: str  # best | latest
    overrides: Mapping[str, Any]

    @property
    def eval_dir(self) -> str:
        return f"{CALIBRATION_DIR}/{self.method}_{self.checkpoint}"


def sampler_overrides(plan: CalibrationPlan, sampler: str) -> dict[str, Any]:
    """The `eval.*` settings of a sampler of `SAMPLERS`."""
    if sampler == "ddpm_full":
        return {"eval.sampler": "ddpm", "eval.sampling_steps": 0}
    eta = {"ddim_eta0": 0.0, "ddim_eta1": 1.0}[sampler]
    return {"eval.sampler": "ddim", "eval.sampling_steps": plan.ddim_steps, "eval.eta": eta}


def _evaluation(plan: CalibrationPlan, spec: RunSpec, method: str, checkpoint: str = "best"
                ) -> Evaluation:
    images = plan.ddpm_images if method == "ddpm_full" else plan.test_images
    overrides: dict[str, Any] = {
        "eval.checkpoint": checkpoint, "eval.num_examples": images, "eval.save_members": True,
        # no padded rows: a batch of the full chain costs T network passes per row
        "data.eval_batch_size": min(images, int(spec.config.data.eval_batch_size)),
        **({"eval.reference": "all"} if spec.flavour == RATER_FLAVOUR else {}),
    }
    if method != "feedforward":
        overrides.update({"eval.ensemble_size": max(plan.ensemble_sizes),
                          **sampler_overrides(plan, method)})
    return Evaluation(spec, method, checkpoint, overrides)


def evaluations(plan: CalibrationPlan, specs: list[RunSpec]) -> list[Evaluation]:
    """Every evaluation of the plan, cheapest first (the full chain last)."""
    main, later, chain = [], [], []
    for spec in specs:
        small = "_small" in spec.name
        if spec.experiment == "E1":
            for checkpoint in ("best", "latest") if small else ("best",):
                (later if small else main).append(_evaluation(plan, spec, "feedforward",
                                                              checkpoint))
        elif spec.experiment == "E2" and small:
            later += [_evaluation(plan, spec, "ddim_eta1", c) for c in ("best", "latest")]
        elif spec.experiment == "E2" and spec.name.endswith(f"_steps{plan.long_steps}"):
            later.append(_evaluation(plan, spec, "ddim_eta1"))
        elif spec.experiment == "E2":
            main += [_evaluation(plan, spec, s) for s in ("ddim_eta0", "ddim_eta1")]
            if spec.flavour in plan.ddpm_flavours:
                chain.append(_evaluation(plan, spec, "ddpm_full"))
    return main + later + chain


def run_evaluation(evaluation: Evaluation, log: Callable[[str], None] = print) -> Path:
    """Runs an evaluation unless its outputs exist; returns its directory."""
    out = evaluation.spec.workdir / evaluation.eval_dir
    done = out / (evaluate.POPULATION_FILE if evaluation.spec.config.train.population > 1
                  else "metrics.json")
    if not done.is_file():
        log(f"  {evaluation.spec.flavour}/{evaluation.spec.name}: {evaluation.eval_dir}")
        evaluate.evaluate(evaluation.spec.workdir, dict(evaluation.overrides),
                          eval_dir=evaluation.eval_dir)
    return out


def sample_dirs(evaluation: Evaluation) -> list[Path]:
    """The directory of each replica's samples.npz, in replica order."""
    out = evaluation.spec.workdir / evaluation.eval_dir
    size = population.size(evaluation.spec.config)
    return [out] if size == 1 else [out / run_dir.replica_name(k) for k in range(size)]


def early_t_losses(plan: CalibrationPlan, flavour: str, log: Callable[[str], None] = print
                   ) -> Path:
    """E2's and E4's loss and ε-MSE at every t < `early_t` on the validation images, per
    replica, as `OUT/<flavour>/early_t.json`; skipped when that file exists."""
    path = Path(plan.out_dir) / flavour / "early_t.json"
    if path.is_file():
        return path
    specs = {s.experiment: s for s in run_specs(plan)
             if s.flavour == flavour and "_small" not in s.name and "_steps" not in s.name}
    e2, e4 = specs["E2"], specs["E4"]
    config = run_dir.read_config(e2.workdir)
    config.analysis.num_images = plan.early_images
    images, masks = analysis_runs.load_images(config)
    timesteps = np.arange(min(plan.early_t, int(config.diffusion.num_timesteps)))
    load = dict(checkpoint="best", use_ema=True, image_shape=images.shape[1:])
    seed = int(config.analysis.seed)
    log(f"  {flavour}: loss at t < {len(timesteps)}, E2 and E4 ({population.size(config)} "
        f"replicas each), {len(images)} images")

    def per_replica(spec: RunSpec, mode: str) -> list[dict[str, list[float]]]:
        run_config = run_dir.read_config(spec.workdir)
        rows = []
        for k in range(population.size(run_config)):
            run = analysis_runs.load_analysed_run(
                str(spec.workdir), mode=mode, replica=k,
                config=population.replica_config(run_config, k), **load)
            if mode == "diffusion":
                per = curves.compute_segmentation_curves(
                    run.denoiser, run.variables, run.schedule, images, masks, timesteps, seed=seed)
                names = {"loss": "loss_image", "target_mse": "target_mse_image"}
            else:
                per = curves.compute_generation_curves(
                    run.denoiser, run.variables, run.schedule, images, timesteps, seed=seed)
                names = {"loss": "loss", "target_mse": "target_mse"}
            rows.append({ours: np.mean(per[theirs], axis=1).tolist()
                         for ours, theirs in names.items()})
        return rows

    result = {"flavour": flavour, "timesteps": timesteps.tolist(), "images": len(images),
              "e2_replicas": per_replica(e2, "diffusion"),
              "e4_replicas": per_replica(e4, "image_generation")}
    run_dir.atomic_write(path, json.dumps(result) + "\n")
    return path


def run_calibration(plan: CalibrationPlan, log: Callable[[str], None] = print,
                    stages: tuple[str, ...] = ("train", "evaluate", "early_t", "report")
                    ) -> dict[str, Any]:
    """Runs the stages of the plan; returns what the report wrote."""
    write_plan(plan)
    specs = train_all(plan, log) if "train" in stages else run_specs(plan)
    if "evaluate" in stages:
        for evaluation in evaluations(plan, specs):
            run_evaluation(evaluation, log)
    if "early_t" in stages:
        for flavour in plan.early_flavours:
            early_t_losses(plan, flavour, log)
    if "report" not in stages:
        return {}
    collected = collect(plan, specs)
    run_dir.atomic_write(Path(plan.out_dir) / "calibration.json", json.dumps(collected) + "\n")
    return calibration_report.write_report(collected, Path(plan.out_dir))


def _ensemble_rows(plan: CalibrationPlan, evaluation: Evaluation,
                   ids: list[str] | None = None) -> list[dict[str, Any]]:
    sizes = (1,) if evaluation.method == "feedforward" else plan.ensemble_sizes
    rows = []
    for k, directory in enumerate(sample_dirs(evaluation)):
        samples = results_io.read_samples(directory / results_io.SAMPLES_FILE)
        scored = calibration_scores.score_sizes(samples, sizes, ids,
                                                band_px=float(evaluation.spec.config.eval.band_px))
        rows += [{"flavour": evaluation.spec.flavour, "run": evaluation.spec.name,
                  "experiment": evaluation.spec.experiment, "method": evaluation.method,
                  "checkpoint": evaluation.checkpoint, "replica": k, "size": size,
                  "images": "chain" if ids is not None else "test", **values}
                 for size, values in scored.items()]
    return rows


def collect(plan: CalibrationPlan, specs: list[RunSpec]) -> dict[str, Any]:
    """Everything the report shows, from the saved samples, logs and early-t losses: the
    'plan', the 'main_runs' names, 'ensembles' (a row per evaluation, replica and ensemble
    size), 'convergence' (validation
    curves and plateaus per run and replica) and 'early_t' (per flavour)."""
    chosen = evaluations(plan, specs)
    rows = [row for e in chosen if e.method != "ddpm_full" for row in _ensemble_rows(plan, e)]
    for chain in (e for e in chosen if e.method == "ddpm_full"):
        # the full chain ran on fewer images: DDIM and E1 are scored again on those images
        ids = [str(i) for i in results_io.read_samples(
            sample_dirs(chain)[0] / results_io.SAMPLES_FILE)["ids"]]
        rows += [row for e in chosen
                 if e.spec.flavour == chain.spec.flavour and e.checkpoint == "best"
                 and (e.spec is chain.spec or e.spec.name == MAIN_RUNS["E1"])
                 for row in _ensemble_rows(plan, e, ids)]
    convergence = []
    for spec in specs:
        if spec.experiment not in ("E1", "E2"):
            continue
        for k in range(population.size(spec.config)):
            replica = k if population.size(spec.config) > 1 else None
            steps, values = calibration_scores.validation_curve(spec.workdir, replica)
            convergence.append({"flavour": spec.flavour, "run": spec.name,
                                "experiment": spec.experiment, "replica": k,
                                "steps": steps.tolist(), "val_dice": values.tolist(),
                                **calibration_scores.plateau(steps, values)})
    early = {f: json.loads((Path(plan.out_dir) / f / "early_t.json").read_text())
             for f in plan.early_flavours if (Path(plan.out_dir) / f / "early_t.json").is_file()}
    return {"plan": json.loads((Path(plan.out_dir) / "plan.json").read_text()),
            "main_runs": MAIN_RUNS, "ensembles": rows, "convergence": convergence, "early_t": early}
