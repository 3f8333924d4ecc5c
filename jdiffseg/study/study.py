"""The study end to end: E1–E4 per architecture and dataset, evaluation, the timestep analysis,
adapted-diffusion runs, the results table and the fingerprint figure.

Every stage leaves its outputs in its own workdir under `Plan.out_dir` and is skipped when they
are already there, so an interrupted study picks up where it stopped. `jdiffseg demo` and
`experiments/run_study.py` are thin front ends over `run_study`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jdiffseg.analysis import analyze, fingerprint, plots
from jdiffseg.analysis import results as analysis_results
from jdiffseg.config import parsing, population, recipes, schema
from jdiffseg.data import procedural
from jdiffseg.evaluation import evaluate, report
from jdiffseg.runtime import run_dir
from jdiffseg.study import gains
from jdiffseg.training import train

EXPERIMENTS = ("E1", "E2", "E3", "E4", "baseline", "adapted")
MODE_OF = {"E1": "feedforward", "E2": "diffusion", "E3": "mask_only", "E4": "image_generation"}
SYNTHETIC_VARIANTS = ("lesion", "nuclei", "tissue")
# The feed-forward baselines of the "baseline" experiment and their model presets: None takes
# the plan's preset; SegFormer is always B0, trained at the plan's scale.
BASELINES = {"nnunet": None, "segformer": "b0"}
# flavours with several foreground classes: their runs get data.num_classes set to match
MULTICLASS_VARIANTS = procedural.MULTICLASS_VARIANTS


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run. `datasets` names synthetic flavours or real datasets (isic2016, ...)."""

    out_dir: str
    datasets: tuple[str, ...] = SYNTHETIC_VARIANTS
    archs: tuple[str, ...] = ("ensemdiff", "segdiff", "medsegdiff")
    experiments: tuple[str, ...] = EXPERIMENTS
    baselines: tuple[str, ...] = tuple(BASELINES)
    preset: str = "tiny"
    adapt_method: str = "weights"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    analysis_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # > 1: every run with a row in the table (E1, E2, adapted, baselines) is a population of
    # this many seeds (config.seed, config.seed + 1, ...); E3 and E4, the analysis's
    # references, are trained once
    seeds: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.experiments) - set(EXPERIMENTS))
        if unknown:
            raise ValueError(f"unknown experiments {unknown}; choose from {EXPERIMENTS}")
        if set(self.baselines) - set(BASELINES):
            raise ValueError(
                f"unknown baselines {sorted(set(self.baselines) - set(BASELINES))}; "
                f"choose from {list(BASELINES)}"
            )
        if "adapted" in self.experiments and not {"E2", "E3"} <= set(self.experiments):
            raise ValueError("the adapted runs need E2 and E3 (their fingerprint) in the plan")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")
        if self.seeds > 1 and "adapted" in self.experiments and self.adapt_method == "schedule":
            raise ValueError(
                "adapt_method='schedule' gives each seed its own noise schedule, which a "
                "population cannot vary; use 'weights' or 'range', or seeds=1"
            )


def dataset_arg(dataset: str) -> str:
    """The config-file argument selecting `dataset` (a synthetic flavour or a real dataset)."""
    if dataset in SYNTHETIC_VARIANTS + MULTICLASS_VARIANTS:
        return f"dataset=synthetic,variant={dataset}"
    return f"dataset={dataset}"


def run_config(plan: Plan, arch: str, dataset: str, mode: str) -> ml_collections.ConfigDict:
    """The config of one run: the architecture's recipe, the plan's preset (a baseline's own
    model preset at the plan's scale) and overrides."""
    mode_arg = "" if arch in recipes.FEEDFORWARD_ONLY else f",mode={mode}"
    model_preset = BASELINES.get(arch)
    preset = f"{model_preset},scale={plan.preset}" if model_preset else plan.preset
    arg = f"{dataset_arg(dataset)},preset={preset}{mode_arg}"
    config = recipes.get_config(arch, arg)
    if dataset in MULTICLASS_VARIANTS:
        config.data.num_classes = len(procedural.CLASS_NAMES[dataset]) - 1
    config.lock()
    parsing.update(config, plan.overrides)
    if plan.seeds > 1 and mode in ("feedforward", "diffusion"):
        config.train.population = plan.seeds
    return config


def _done(path: Path) -> bool:
    return path.is_file()


def train_run(config: ml_collections.ConfigDict, workdir: Path, log: Callable[[str], None]) -> None:
    """Trains `config` into `workdir` unless a finished run is there (an unfinished one resumes)."""
    if run_dir.is_finished(str(workdir)):
        log(f"  {workdir.name}: trained")
        return
    log(f"  {workdir.name}: training {config.train.steps} steps")
    start = time.perf_counter()
    train.train_and_evaluate(config, str(workdir))
    log(f"  {workdir.name}: trained in {time.perf_counter() - start:.0f} s")


def _evaluate(plan: Plan, workdir: Path, log: Callable[[str], None]) -> None:

    if _done(workdir / "eval" / "metrics.json"):
        return
    log(f"  {workdir.name}: evaluating")
    evaluate.evaluate(workdir, dict(plan.eval_overrides))


def _analyze(
    plan: Plan, e2: Path, e3: Path | None, e4: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:

    config = run_dir.read_config(e2)
    parsing.update(config, plan.analysis_overrides)
    if not _done(_analysis_dirs(e2, config)[-1] / "adapted_config.json"):
        log(f"  {e2.name}: timestep analysis")
        analyze.analyze(
            str(e2),
            config=config,
            mask_only_workdir=str(e3) if e3 else None,
            image_generation_workdir=str(e4) if e4 else None,
            log=log,
        )
        for k, out_dir in enumerate(_analysis_dirs(e2, config)):
            result = analysis_results.load_results(str(out_dir))
            source = analysis_results.adaptation_source(result, config.analysis)
            fingerprint.write_adapted(source, population.replica_config(config, k), str(out_dir))
    # the figure shows the base seed's fingerprint
    return analysis_results.load_results(str(_analysis_dirs(e2, config)[0]))


def _analysis_dirs(e2: Path, config: ml_collections.ConfigDict) -> list[Path]:
    """Where the analysis of E2 (each replica of a population, in order) is written."""
    base = e2 / analysis_results.ANALYSIS_DIR
    size = population.size(config)
    return [base] if size == 1 else [base / run_dir.replica_name(k) for k in range(size)]


def _adapted_overrides(plan: Plan, e2: Path) -> dict[str, Any]:
    """The adapted run's overrides from E2's analysis; for a population, replica k adapts to
    replica k's own fingerprint (same seed), the per-seed values going to
    `train.population_overrides`."""
    config = run_dir.read_config(e2)
    per_replica = []
    for out_dir in _analysis_dirs(e2, config):
        table_path = out_dir / "adapted_config.json"
        overrides = json.loads(table_path.read_text())["methods"].get(plan.adapt_method, {})
        if "error" in overrides or not overrides:
            raise ValueError(
                f"{table_path}: no adapted overrides for method {plan.adapt_method!r}: "
                f"{overrides.get('error', 'missing')}"
            )
        per_replica.append(overrides)
    if len(per_replica) == 1:
        return per_replica[0]
    varied = {k: [o[k] for o in per_replica] for k, v in per_replica[0].items()
              if any(o[k] != v for o in per_replica)}
    varied["seed"] = [c.seed for c in population.replica_configs(config)]
    # the base config holds seed 0's values, so that it is valid on its own
    return {**per_replica[0], "train.population_overrides": population.format_overrides(varied)}


def run_study(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the plan; returns the results table rows and the paths of the figures written."""

    out = Path(plan.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(plan.experiments)
    fingerprints: dict[str, dict[str, Any]] = {}
    adaptations: list[dict[str, Any]] = []
    for dataset in plan.datasets:
        for arch in plan.archs:
            log(f"{arch} on {dataset}")
            dirs: dict[str, Path] = {}
            for exp in ("E2", "E3", "E4", "E1"):
                if exp not in wanted:
                    continue
                dirs[exp] = out / dataset / f"{arch}_{exp}_{MODE_OF[exp]}"
                train_run(run_config(plan, arch, dataset, MODE_OF[exp]), dirs[exp], log)
                if exp in ("E1", "E2"):
                    _evaluate(plan, dirs[exp], log)
            if "E2" in dirs:
                result = _analyze(plan, dirs["E2"], dirs.get("E3"), dirs.get("E4"), log)
                fingerprints[f"{arch}/{dataset}"] = result
                log("  " + fingerprint.format_summary(result["fingerprint"]).replace("\n", "\n  "))
            if "adapted" in wanted:
                config = run_config(plan, arch, dataset, "diffusion")
                parsing.update(config, _adapted_overrides(plan, dirs["E2"]))
                adapted = out / dataset / f"{arch}_E2_adapted_{plan.adapt_method}"
                train_run(config, adapted, log)
                _evaluate(plan, adapted, log)
                adaptations.append(gains.adaptation_gains(dirs["E2"], adapted))
        for arch in plan.baselines if "baseline" in wanted else ():
            log(f"{arch} baseline on {dataset}")
            baseline = out / dataset / f"{arch}_E1_feedforward"
            train_run(run_config(plan, arch, dataset, "feedforward"), baseline, log)
            _evaluate(plan, baseline, log)

    outputs: dict[str, Any] = {"out_dir": str(out)}
    if {"E1", "E2", "baseline", "adapted"} & wanted:
        outputs["report"] = report.report([out], output=out / "results")
    if adaptations:
        outputs["adaptation_gains"] = gains.write_gains(adaptations, out / "adaptation_gains")
    if fingerprints:
        results, labels = analysis_results.expand_classes(
            list(fingerprints.values()), list(fingerprints)
        )
        options = fingerprint.options_from_config(schema.base_config().analysis)
        outputs["fingerprints"] = plots.plot_compare(
            results,
            labels,
            str(out / "fingerprints.png"),
            metric=options["metric"],
            reference=options["reference"],
        )
        outputs["analysis_dirs"] = [
            str(Path(r.get("workdir", "")) / analysis_results.ANALYSIS_DIR)
            for r in fingerprints.values()
        ]
        outputs["class_figures"] = [
            str(Path(r["workdir"]) / analysis_results.ANALYSIS_DIR / "classes.png")
            for r in fingerprints.values() if "classes" in r
        ]
    (out / "study.json").write_text(json.dumps(_jsonable(outputs), indent=2))
    return outputs


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, str):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x
    return str(x)
