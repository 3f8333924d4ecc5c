"""The analysis of a trained run end to end, and the comparison of analysed runs.

    jdiffseg analyze --workdir=runs/ens [--mask_only_workdir=runs/ens_e3]
        [--image_generation_workdir=runs/ens_e4] [--emit_adapted_config]
    jdiffseg analyze --compare runs/lesion runs/nuclei runs/tissue [--out=fingerprints.png]

Multi-class runs (one-hot masks of C + 1 channels) are analysed per class: x0 becomes class
probabilities (clipped to [0, 1] and renormalised), its arg-max label map is scored per class
(Dice, IoU, chance Dice) and the MSE is taken per class channel; the losses stay per image.
timesteps.json then holds every curve, Δ(t) standard error, mask-prior score and fingerprint
per foreground class under 'classes', and the top-level curves are their class average;
`config.analysis.adapt_class` picks the class the adapted diffusion derives from ('' = the
class average). classes.png has one panel per class; `--compare` overlays classes.

Outputs: DIR/analysis/timesteps.json (mean curves, their std over images, the standard error
of Δ(t) per metric, the mask prior's Dice/IoU, the fingerprint summary of
`jdiffseg.analysis.fingerprint`), timesteps.csv (one row per t), loss.png, recovery.png,
contribution.png, and with
`--emit_adapted_config` adapted_config.json plus one adapted_<method>.flags file per method.
"""


from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from jdiffseg.analysis import curves, fingerprint, plots, runs
from jdiffseg.analysis import results as results_io
from jdiffseg.config import population
from jdiffseg.runtime import run_dir
from jdiffseg.scoring import stats

POPULATION_FILE = "population.json"


def analyze(
    workdir: str,
    *,
    config: ml_collections.ConfigDict | None = None,
    mask_only_workdir: str | None = None,
    image_generation_workdir: str | None = None,
    log: Callable[[str], None] = print,
    replica: int | None = None,
) -> dict[str, Any]:
    """Runs the analysis of `workdir`; writes DIR/analysis/{timesteps.json,.csv,*.png}.

    `config` is the run's config with any `--config.analysis.*` overrides (default: its
    config.json); its `analysis` section also decides how the other runs are loaded. A
    population run is analysed replica by replica (`analysis/replica_<k>/`, or `replica`
    alone); with all of them, `analysis/population.json` (returned) holds each replica's
    fingerprint and, over replicas, mean, std and a 95 % interval of its numbers.
    """
    config = run_dir.read_config(workdir) if config is None else config
    size = population.size(config)
    kwargs = dict(mask_only_workdir=mask_only_workdir,
                  image_generation_workdir=image_generation_workdir, log=log)
    if size == 1 and replica is None:
        return _analyze_one(workdir, config, None, os.path.join(workdir, results_io.ANALYSIS_DIR),
                            **kwargs)
    chosen = range(size) if replica is None else [replica]
    out = [_analyze_one(workdir, population.replica_config(config, k), k,
                        os.path.join(workdir, results_io.ANALYSIS_DIR, run_dir.replica_name(k)),
                        **kwargs) for k in chosen]
    if replica is not None:
        return out[0]
    prints = [r["fingerprint"] for r in out]
    numbers = [k for k, v in prints[0].items()
               if isinstance(v, int | float) and not isinstance(v, bool)
               and all(np.isfinite(p.get(k, np.nan)) for p in prints)]
    summary = {"num_replicas": size, "fingerprints": prints,
               "summary": {k: stats.summarize([p[k] for p in prints], name=k) for k in numbers}}
    if jax.process_index() == 0:
        run_dir.atomic_write(os.path.join(workdir, results_io.ANALYSIS_DIR, POPULATION_FILE),
                             json.dumps(summary, indent=2) + "\n")
    return summary


def _analyze_one(
    workdir: str,
    config: ml_collections.ConfigDict,
    replica: int | None,
    out_dir: str,
    *,
    mask_only_workdir: str | None,
    image_generation_workdir: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`analyze` of one run (or one replica of a population), written to `out_dir`."""
    a = config.analysis
    images, masks = runs.load_images(config)
    load = dict(checkpoint=a.checkpoint, use_ema=bool(a.use_ema), image_shape=images.shape[1:])
    run = runs.load_analysed_run(workdir, mode="diffusion", config=config, replica=replica,
                                 **load)
    T = run.schedule.num_timesteps
    timesteps = curves.analysis_timesteps(T, int(a.t_stride))
    log(f"analysis of {workdir} (step {run.step}): {len(timesteps)} timesteps x "
        f"{len(images)} images on {jax.device_count()} device(s)")
    mask_only = None
    if mask_only_workdir:
        mask_only = runs.load_analysed_run(mask_only_workdir, mode="mask_only", **load)
        runs.check_same_process(run, mask_only)
    per_image = curves.compute_segmentation_curves(
        run.denoiser, run.variables, run.schedule, images, masks, timesteps,
        mask_only=mask_only.denoiser if mask_only else None,
        mask_only_params=mask_only.variables if mask_only else None,
        seed=int(a.seed), chunk_size=int(a.chunk_size),
    )
    names = runs.class_names(config)
    per_class: dict[str, dict[str, Any]] = {}
    if len(names) > 2:
        per_image, per_class = curves.split_classes(per_image, names[1:])
    mean, std = results_io.summarize_curves(per_image)
    prior = curves.prior_scores(masks)
    result: dict[str, Any] = {
        "workdir": os.path.abspath(workdir),
        "step": run.step,
        "dataset": config.data.name,
        "variant": config.data.variant,
        "arch": config.model.arch,
        "split": a.split,
        "num_images": len(images),
        "num_timesteps": T,
        "mask_encoding": config.diffusion.mask_encoding,
        "prediction": config.diffusion.prediction,
        "blank_image": "zeros in the normalised [-1, 1] image space",
        "mask_only_workdir": os.path.abspath(mask_only_workdir) if mask_only_workdir else None,
        "timesteps": timesteps.tolist(),
        "curves": mean,
        "std": std,
        "contribution_sem": results_io.contribution_sem(per_image),
        **{k: float(np.mean(v)) for k, v in prior.items()},
    }
    if image_generation_workdir:
        gen = runs.load_analysed_run(image_generation_workdir, mode="image_generation", **load)
        gen_t = curves.analysis_timesteps(gen.schedule.num_timesteps, int(a.t_stride))
        gen_curves = curves.compute_generation_curves(
            gen.denoiser, gen.variables, gen.schedule, images, gen_t,
            seed=int(a.seed), chunk_size=int(a.chunk_size),
        )
        gen_mean, gen_std = results_io.summarize_curves(gen_curves)
        result["image_generation"] = {
            "workdir": os.path.abspath(image_generation_workdir),
            "num_timesteps": gen.schedule.num_timesteps,
            "timesteps": gen_t.tolist(),
            "loss": gen_mean["loss"],
            "loss_std": gen_std["loss"],
            "target_mse": gen_mean["target_mse"],
        }
    options = fingerprint.options_from_config(a)
    result["fingerprint"] = fingerprint.summary(result, **options)
    if per_class:
        result["class_names"] = list(names)
        result["classes"] = {}
        for c, (name, class_curves) in enumerate(per_class.items()):
            c_mean, c_std = results_io.summarize_curves(class_curves)
            entry = {"curves": c_mean, "std": c_std,
                     "contribution_sem": results_io.contribution_sem(class_curves),
                     **{k: float(v[c]) for k, v in prior.items()}}
            entry["fingerprint"] = fingerprint.summary({**result, **entry}, **options)
            result["classes"][name] = entry
    if jax.process_index() == 0:
        paths = [*results_io.write_results(result, out_dir),
                 *plots.plot_run(result, out_dir, **options)]
        if per_class:
            paths.append(plots.plot_classes(result, os.path.join(out_dir, "classes.png"),
                                            **options))
        log("wrote " + ", ".join(paths))
    return result


def compare(
    dirs: Sequence[str],
    labels: Sequence[str] | None,
    out: str,
    analysis_config: ml_collections.ConfigDict,
) -> tuple[dict[str, Any], str, str]:
    """Overlays the fingerprints of analysed runs; returns (summary per label, figure path,
    summary table path). Labels default to the directories' names."""
    results = [results_io.load_results(d) for d in dirs]
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in dirs]
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} analysed runs")
    results, labels = results_io.expand_classes(results, labels)
    options = fingerprint.options_from_config(analysis_config)
    table = {lab: fingerprint.summary(r, **options) for lab, r in zip(labels, results, strict=True)}
    figure = plots.plot_compare(
        results, labels, out, metric=options["metric"], reference=options["reference"]
    )
    table_path = os.path.splitext(out)[0] + ".json"
    with open(table_path, "w") as f:
        json.dump(table, f, indent=2)
    return table, figure, table_path
