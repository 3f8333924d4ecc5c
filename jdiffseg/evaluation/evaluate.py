"""`jdiffseg evaluate`: a trained run on its test split — ensembles, fusion, metrics, figures.

    jdiffseg evaluate --workdir=runs/ens
    jdiffseg evaluate --workdir=runs/ens --config.eval.sampler=ddpm --config.eval.sampling_steps=0

The run's resolved `config.json` is read back and `--config.*` flags override it (normally
only `eval.*`; changing `model.*` makes the config disagree with the checkpoint, which is
reported). Variables come from the best (or latest) checkpoint, EMA parameters by default.

* Diffusion (and mask-only) models draw `eval.ensemble_size` masks per image with DDPM or
  (respaced) DDIM; all members of all images of a batch are one jitted computation sharded
  over the devices (`jdiffseg.scoring.predictors`). Feed-forward models give sigmoid
  probabilities, optionally as a test-time ensemble (`eval.ff_ensemble`: flips/rotations or
  MC dropout).
* Dice and IoU score the fused mask (`eval.fusion`: mean-threshold, majority vote or STAPLE;
  all three are also reported). Calibration (ECE top-label and foreground, Brier, NLL) scores
  the ensemble's predictive probability, the mean of the members. Per-image values are
  summarised as mean ± std with a percentile-bootstrap 95 % interval; dataset-level values pool
  all pixels (ECE, Brier, NLL) or all TP/FP/FN (pooled Dice/IoU).
* Uncertainty per pixel: ensemble variance, predictive entropy, mutual information.
* Reference-repository protocols (`eval.extra_protocols`) are reported separately, labelled,
  and never replace the default metrics.
* Multi-class runs (`data.num_classes` >= 2) are scored per class instead
  (`jdiffseg.evaluation.multiclass`): per-class and foreground-mean Dice/IoU of the fused label
  map, the confusion matrix, top-label and classwise ECE, Brier and NLL over the classes.

* Volumetric datasets (nnunet, brats): each case's slices are also put back into its volume
  and scored per case (`jdiffseg.evaluation.per_case`: Dice, IoU, sensitivity, precision,
  HD95 and ASSD in mm, per class and region for label maps); the per-slice figures stay.

Writes `WORKDIR/eval/` (or `eval_dir`): metrics.json, per_image.csv, reliability.png, cases.png,
per_case.csv for volumetric datasets, samples.npz (every member) with `eval.save_members`; with
`config.train.tensorboard` also the two figures as images into the run's TensorBoard events.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg.config import population
from jdiffseg.data import pipeline
from jdiffseg.evaluation import multiclass as multiclass_eval
from jdiffseg.evaluation import per_case
from jdiffseg.evaluation import results as results_io
from jdiffseg.evaluation.scores import EXTRA_PROTOCOLS, extra_protocols, score_batch
from jdiffseg.models import build_model
from jdiffseg.runtime import run_dir, runlog, sharding, tensorboard, variables
from jdiffseg.scoring import fusion, metrics, multiclass, predictors, raters, stats

EVAL_DIR = "eval"
POPULATION_FILE = "population.json"
# per-image scores against all raters (`eval.reference='all'`), as 'rater_<name>'
RATER_PER_IMAGE = ("ged", "diversity", "hungarian_iou", "ece_soft", "brier_soft", "nll_soft")


def _check_eval_config(config: ml_collections.ConfigDict) -> None:
    e = config.eval
    if config.model.mode == "image_generation":
        raise ValueError(
            "config.model.mode='image_generation' models images, not masks; there is "
            "nothing to segment (use `jdiffseg analyze` for its loss curve)"
        )
    if e.fusion not in fusion.FUSION_METHODS:
        raise ValueError(
            f"config.eval.fusion={e.fusion!r} is not one of {fusion.FUSION_METHODS}"
        )
    if e.ff_ensemble not in predictors.FF_ENSEMBLES:
        raise ValueError(
            f"config.eval.ff_ensemble={e.ff_ensemble!r} is not one of {predictors.FF_ENSEMBLES}"
        )
    unknown = [p for p in extra_protocols(config) if p not in EXTRA_PROTOCOLS]
    if unknown:
        raise ValueError(
            f"config.eval.extra_protocols has unknown {unknown}; known: {sorted(EXTRA_PROTOCOLS)}"
        )
    if not 0.0 < float(e.threshold) < 1.0:
        raise ValueError(f"config.eval.threshold={e.threshold} must lie in (0, 1)")
    if int(e.num_bins) < 1:
        raise ValueError(f"config.eval.num_bins={e.num_bins} must be >= 1")
    if float(e.band_px) < 0:
        raise ValueError(f"config.eval.band_px={e.band_px} must be >= 0")
    if str(e.reference) == "all" and int(config.data.num_classes) > 1:
        raise ValueError("config.eval.reference='all' scores binary masks against every rater; "
                         f"this run has config.data.num_classes={config.data.num_classes}")


def count_batches(split_size: int, num_examples: int, process_count: int, per_process: int
                  ) -> tuple[int, int]:
    """(images evaluated, batches every process runs) for the first `num_examples` (-1: all).

    The evaluation loader gives each process a contiguous shard padded to the same number of
    batches; only as many batches as the process with the most wanted images needs are run.
    """
    wanted = split_size if num_examples < 0 else min(int(num_examples), split_size)
    batches = max(
        math.ceil(int(np.sum((idx >= 0) & (idx < wanted))) / per_process)
        for idx in (pipeline.eval_indices(split_size, (p, process_count), per_process)
                    for p in range(process_count))
    )
    return wanted, batches


def test_batches(
    config: ml_collections.ConfigDict, per_process: int
) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """This process's test batches ({'image', 'mask', 'valid' (bool), 'index'}, and 'raters'
    (b, R, H, W, 1) with config.eval.reference='all' on multi-rater data) and the number
    of images evaluated over all processes; rows past `config.eval.num_examples` are invalid."""
    e = config.eval
    try:
        size = pipeline.split_size(config, e.split)
    except ValueError as err:
        raise ValueError(f"evaluate: config.eval.split={e.split!r}: {err}") from err
    wanted, num_batches = count_batches(size, int(e.num_examples), jax.process_count(),
                                        per_process)
    if wanted == 0:
        raise ValueError(
            f"evaluate: split {e.split!r} of dataset {config.data.name!r} is empty "
            f"({size} examples, config.eval.num_examples={e.num_examples}, "
            f"data_dir={config.data.data_dir})"
        )
    loader = pipeline.make_loader(
        config, e.split, train=False, seed=int(config.seed),
        shard=(jax.process_index(), jax.process_count()),
    )

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for batch, _ in zip(loader, range(num_batches), strict=False):
            index = np.asarray(batch["index"], np.int32)
            valid = (np.asarray(batch["valid"]) > 0) & (index >= 0) & (index < wanted)
            out = {"image": np.asarray(batch["image"], np.float32),
                   "mask": np.asarray(batch["mask"], np.float32),
                   "valid": valid, "index": index}
            if "raters" in batch:  # config.eval.reference='all' on multi-rater data
                out["raters"] = np.asarray(batch["raters"], np.float32)
            yield out

    return batches(), wanted


def evaluate(
    workdir: str | os.PathLike[str],
    config_overrides: Mapping[str, Any] | None = None,
    replica: int | None = None,
    eval_dir: str = EVAL_DIR,
) -> dict[str, Any]:
    """Evaluates the run in `workdir` on `config.eval.split`; writes and returns metrics.json.

    Outputs go to `WORKDIR/<eval_dir>/`, so that several evaluations of one run (samplers,
    checkpoints) can sit side by side.

    `config_overrides` maps dotted config keys to values (`{"eval.sampler": "ddpm"}`). A
    population run is evaluated replica by replica (`eval/replica_<k>/`, or replica `replica`
    alone), each as the ordinary run with its seed and values; with all of them,
    `eval/population.json` adds mean, std and a 95 % interval over replicas, and is returned.
    """
    workdir = Path(workdir)
    config = run_dir.read_config(workdir, config_overrides)
    size = population.size(config)
    if size == 1 and replica is None:
        return _evaluate_one(workdir, config, workdir / eval_dir, None)
    chosen = range(size) if replica is None else [replica]
    results = [_evaluate_one(workdir, population.replica_config(config, k),
                             workdir / eval_dir / run_dir.replica_name(k), k) for k in chosen]
    if replica is not None:
        return results[0]
    summary = population_summary(results, [population.replica_config(config, k).seed
                                           for k in chosen])
    if jax.process_index() == 0:
        run_dir.atomic_write(workdir / eval_dir / POPULATION_FILE,
                             json.dumps(summary, indent=2) + "\n")
    return summary


def population_summary(results: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-replica headline metrics and, over replicas, mean, std and a bootstrap 95 % interval
    (`scoring.stats.summarize`)."""
    rows = []
    for k, (r, seed) in enumerate(zip(results, seeds, strict=True)):
        values = {m: float(r["summary"][m]["mean"]) for m in ("dice", "iou") if m in r["summary"]}
        values.update({m: float(v) for m, v in r["dataset"].items()
                       if m.startswith("ece") and np.ndim(v) == 0})
        rows.append({"replica": k, "seed": int(seed), "values": values})
    over = {m: stats.summarize([row["values"][m] for row in rows], name=m)
            for m in rows[0]["values"]}
    return {"num_replicas": len(rows), "replicas": rows, "summary": over}


def _add_rater_scores(host: dict[str, Any], keep: np.ndarray, e: ml_collections.ConfigDict,
                      per_image: dict[str, list[np.ndarray]],
                      bins: dict[str, metrics.BinStats] | None
                      ) -> dict[str, metrics.BinStats]:
    """Scores the kept rows of a batch against all its raters (`scoring.raters`): per-image
    values go to `per_image` as 'rater_<name>', and the calibration bins add up to `bins`."""
    scored = raters.rater_metrics(host["members"][keep], host["raters"][keep],
                                  num_bins=int(e.num_bins), band_px=float(e.band_px),
                                  threshold=float(e.threshold))
    for name in RATER_PER_IMAGE:
        per_image.setdefault(f"rater_{name}", []).append(np.asarray(scored[f"{name}_per_image"]))
    if bins is None:
        return scored["bins"]
    return {k: jax.tree.map(np.add, bins[k], scored["bins"][k]) for k in bins}


def _evaluate_one(workdir: Path, config: ml_collections.ConfigDict, out_dir: Path,
                  replica: int | None) -> dict[str, Any]:
    """`evaluate` of one run (or one replica of a population), written to `out_dir`."""
    _check_eval_config(config)
    sharding.maybe_initialize_distributed(config.train)
    e = config.eval
    variables.require_checkpoint(workdir)
    if tensorboard.enabled(config):
        tensorboard.require()

    mesh = sharding.make_mesh()
    per_process = sharding.check_batch_size(
        int(config.data.eval_batch_size), mesh, "config.data.eval_batch_size")
    batches, wanted = test_batches(config, per_process)
    volumes = (per_case.volume_scores(config, e.split)
               if jax.process_index() == 0 else None)
    first = next(batches)
    image_shape = tuple(first["image"].shape[1:])

    channels = predictors.mask_channels(config)
    model = build_model(config.model, image_channels=image_shape[-1], mask_channels=channels)
    params, meta = variables.restore(workdir, config, model, image_shape,
                                     which=e.checkpoint, use_ema=bool(e.use_ema),
                                     replica=replica)
    params = jax.device_put(params, sharding.replicated(mesh))
    predict, prediction = predictors.make_eval_predictor(config, model, params, image_shape, mesh)

    sweep = "threshold_sweep" in extra_protocols(config)
    rep = sharding.replicated(mesh)
    names = pipeline.class_names_of(config)
    if channels > 1:
        update = jax.jit(multiclass.update, out_shardings=rep)
        acc_probs = acc_fused = jax.device_put(multiclass.init(channels, int(e.num_bins)), rep)
    else:
        update = jax.jit(metrics.update, out_shardings=rep)
        acc_probs = acc_fused = jax.device_put(metrics.init(int(e.num_bins)), rep)
    per_image: dict[str, list[np.ndarray]] = {}
    save = bool(e.save_members)
    samples: dict[str, list[np.ndarray]] = {}
    rater_bins: dict[str, metrics.BinStats] | None = None
    indices: list[np.ndarray] = []
    cases: dict[str, list[np.ndarray]] = {}
    key = jax.random.key(int(config.seed))
    start, predict_seconds = time.perf_counter(), 0.0
    progress = runlog.progress_bar(wanted, "evaluate", "img", enabled=jax.process_index() == 0)
    compiled, compile_seconds = None, 0.0
    for step, batch in enumerate(itertools.chain([first], batches)):
        arrays = pipeline.to_global(batch, mesh)
        step_key = jax.random.fold_in(key, step)
        if compiled is None:  # compile once, outside the timed prediction
            tick = time.perf_counter()
            compiled = predict.lower(params, arrays["image"], step_key).compile()
            compile_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        out = compiled(params, arrays["image"], step_key)
        jax.block_until_ready(out["members"])
        predict_seconds += time.perf_counter() - tick
        if channels > 1:
            scored = multiclass_eval.score_batch(out["members"], arrays["mask"], method=e.fusion,
                                                 num_bins=int(e.num_bins), class_names=names)
            labels = jnp.argmax(arrays["mask"], axis=-1)
            acc_probs = update(acc_probs, scored["mean"], labels, arrays["valid"])
            acc_fused = update(acc_fused, multiclass.one_hot(scored["fused"], channels), labels,
                               arrays["valid"])
        else:
            scored = score_batch(out["members"], arrays["mask"], method=e.fusion,
                                 threshold=float(e.threshold), num_bins=int(e.num_bins),
                                 sweep=sweep)
            acc_probs = update(acc_probs, scored["mean"], arrays["mask"], float(e.threshold),
                               arrays["valid"])
            acc_fused = update(acc_fused, scored["fused"], arrays["mask"], 0.5, arrays["valid"])
        host = sharding.fetch({"per": scored["per_image"], "valid": arrays["valid"],
                               "index": arrays["index"],
                               **({"fused": scored["fused"]} if volumes is not None else {}),
                               **({"members": out["members"]}
                                  if "raters" in arrays or save else {}),
                               **({"mask": arrays["mask"]} if save else {}),
                               **({"raters": arrays["raters"]} if "raters" in arrays else {})})
        keep = np.asarray(host["valid"], bool)
        if save:
            for name in ("members", "mask", "raters"):
                if name in host:
                    samples.setdefault(name, []).append(np.asarray(host[name])[keep])
        if "raters" in host and keep.any():
            rater_bins = _add_rater_scores(host, keep, e, per_image, rater_bins)
        if volumes is not None:
            volumes.add(np.asarray(host["index"])[keep], np.asarray(host["fused"])[keep])
        for name, values in host["per"].items():
            per_image.setdefault(name, []).append(np.asarray(values)[keep])
        indices.append(np.asarray(host["index"])[keep])
        if sum(len(c) for c in cases.get("image", [])) < int(e.num_cases):
            shown = sharding.fetch({"image": arrays["image"], "label": arrays["mask"],
                                    "members": out["members"], "fused": scored["fused"],
                                    "entropy": scored["entropy"]})
            if channels > 1:
                shown = multiclass_eval.display_cases(shown, channels - 1)
            for name, values in shown.items():
                cases.setdefault(name, []).append(np.asarray(values)[keep])
        progress.update(int(keep.sum()))
    progress.close()

    per = {k: np.concatenate(v) for k, v in per_image.items()}
    ids = [f"{e.split}/{i}" for i in np.concatenate(indices)]
    count = len(ids)
    if count != wanted:
        raise RuntimeError(f"evaluate: expected {wanted} images of split {e.split!r}, got {count}")
    acc_probs, acc_fused = sharding.fetch((acc_probs, acc_fused))
    if channels > 1:
        dataset = multiclass_eval.dataset_metrics(acc_probs, acc_fused, names)
    else:
        dataset = results_io.binary_dataset_metrics(acc_probs, acc_fused)
    results = results_io.build_results(config, workdir, meta, prediction, per, dataset, names,
                       count, {"compile_seconds": compile_seconds,
                               "predict_seconds": predict_seconds,
                               "total_seconds": time.perf_counter() - start})
    if volumes is not None:
        results["volumes"] = volumes.results()
    if rater_bins is not None:
        results["dataset"]["raters"] = {
            "reference": "all", "num_raters": int(first["raters"].shape[1]),
            "band_px": float(e.band_px),
            **{f"ece_{k}": raters.pooled_ece(b) for k, b in rater_bins.items()}}
    if jax.process_index() == 0:
        results_io.write_outputs(out_dir, results, ids, per, acc_probs, cases, config,
                                 volumes.rows if volumes is not None else None,
                                 samples if save else None)
        if tensorboard.enabled(config):
            files = results["files"]
            tensorboard.write_pngs(workdir, results["checkpoint"]["step"] or 0, {
                "eval/cases": files["cases"], "eval/reliability": files["reliability"]})
    return results
