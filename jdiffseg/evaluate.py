"""`jdiffseg evaluate`: a trained run on its test split — ensembles, fusion, metrics, figures.

    jdiffseg evaluate --workdir=runs/ens
    jdiffseg evaluate --workdir=runs/ens --config.eval.sampler=ddpm --config.eval.sampling_steps=0

The run's resolved `config.json` is read back and `--config.*` flags override it (normally
only `eval.*`; changing `model.*` makes the config disagree with the checkpoint, which is
reported). Variables come from the best (or latest) checkpoint, EMA parameters by default.

* Diffusion (and mask-only) models draw `eval.ensemble_size` masks per image with DDPM or
  (respaced) DDIM; all members of all images of a batch are one jitted computation sharded
  over the devices (`jdiffseg.inference`). Feed-forward models give sigmoid probabilities,
  optionally as a test-time ensemble (`eval.ff_ensemble`: flips/rotations or MC dropout).
* Dice and IoU score the fused mask (`eval.fusion`: mean-threshold, majority vote or STAPLE;
  all three are also reported). Calibration (ECE top-label and foreground, Brier, NLL) scores
  the ensemble's predictive probability, the mean of the members. Per-image values are
  summarised as mean ± std with a percentile-bootstrap 95 % interval; dataset-level values pool
  all pixels (ECE, Brier, NLL) or all TP/FP/FN (pooled Dice/IoU).
* Uncertainty per pixel: ensemble variance, predictive entropy, mutual information.
* Reference-repository protocols (`eval.extra_protocols`) are reported separately, labelled,
  and never replace the default metrics.

Writes `WORKDIR/eval/`: metrics.json, per_image.csv, reliability.png, cases.png.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from jdiffseg import (
    checkpoint,
    configlib,
    figures,
    fusion,
    inference,
    metrics,
    objectives,
    runlog,
    sharding,
    stats,
)
from jdiffseg.data import pipeline
from jdiffseg.models import build_model

EVAL_DIR = "eval"
CONFIG_FILE = "config.json"
FF_ENSEMBLES = ("none", "flip", "dropout")
# Reference-repository protocols, each reported apart from the default metrics.
EXTRA_PROTOCOLS = {
    "threshold_sweep": (
        "Dice and IoU of the ensemble-mean probability binarised at each of thresholds "
        "(0.1, 0.3, 0.5, 0.7, 0.9), averaged over the thresholds (MedSegDiff's eval_seg); "
        "not comparable with the single-threshold scores"
    ),
}
SWEEP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
UNCERTAINTY_KEYS = ("variance", "entropy", "mutual_information")

Predict = Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]


# --------------------------------------------------------------------------- config


def load_config(
    workdir: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The run's config.json, with `eval` keys it lacks taken from the defaults, then overrides.

    Raises FileNotFoundError when the workdir or its config.json is missing and KeyError for an
    override that names an unknown key.
    """
    path = Path(workdir) / CONFIG_FILE
    if not Path(workdir).is_dir():
        raise FileNotFoundError(f"evaluate: workdir {workdir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate: {path} not found; is {workdir} a workdir written by `jdiffseg train`?"
        )
    try:
        config = configlib.from_json(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"evaluate: cannot parse {path}: {e}") from e
    defaults = configlib.base_config()
    for section in ("eval", "data", "model", "diffusion", "train"):
        if section not in config:
            raise KeyError(f"evaluate: {path} has no {section!r} section")
    with config.unlocked():
        for key, value in defaults.eval.items():
            if key not in config.eval:
                config.eval[key] = value
    configlib.update(config, dict(overrides or {}))
    return config


def extra_protocols(config: ml_collections.ConfigDict) -> list[str]:
    """The names in the comma-separated `config.eval.extra_protocols`."""
    return [p.strip() for p in str(config.eval.extra_protocols).split(",") if p.strip()]


def _check_eval_config(config: ml_collections.ConfigDict) -> None:
    e = config.eval
    if config.model.mode == "image_generation":
        raise ValueError(
            "evaluate: config.model.mode='image_generation' models images, not masks; there is "
            "nothing to segment (use `jdiffseg analyze` for its loss curve)"
        )
    if e.fusion not in fusion.FUSION_METHODS:
        raise ValueError(
            f"config.eval.fusion={e.fusion!r} is not one of {fusion.FUSION_METHODS}"
        )
    if e.ff_ensemble not in FF_ENSEMBLES:
        raise ValueError(f"config.eval.ff_ensemble={e.ff_ensemble!r} is not one of {FF_ENSEMBLES}")
    unknown = [p for p in extra_protocols(config) if p not in EXTRA_PROTOCOLS]
    if unknown:
        raise ValueError(
            f"config.eval.extra_protocols has unknown {unknown}; known: {sorted(EXTRA_PROTOCOLS)}"
        )
    if not 0.0 < float(e.threshold) < 1.0:
        raise ValueError(f"config.eval.threshold={e.threshold} must lie in (0, 1)")
    if int(e.num_bins) < 1:
        raise ValueError(f"config.eval.num_bins={e.num_bins} must be >= 1")


# --------------------------------------------------------------------------- model


def _abstract_variables(
    model: Any, config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
) -> Any:
    """Shapes of the variables `model.init` creates for one image of `image_shape` (H, W, C)."""
    H, W, _ = image_shape
    image = jnp.zeros((1, *image_shape), jnp.float32)
    x_t = jnp.zeros((1, H, W, 1), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    use_image = config.model.mode in ("diffusion", "feedforward")
    key = jax.random.key(0)
    return jax.eval_shape(
        lambda: model.init(
            {"params": key, "dropout": key}, x_t, t, image if use_image else None, train=False
        )
    )


def _shape_map(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def check_variables_match(
    variables: Mapping[str, Any], template: Mapping[str, Any], where: str
) -> None:
    """Raises ValueError listing how restored variables differ from what the config builds."""
    problems = []
    for collection in sorted(set(template) | set(variables)):
        if collection not in variables:
            problems.append(f"collection {collection!r} missing from the checkpoint")
            continue
        if collection not in template:
            problems.append(f"checkpoint has collection {collection!r} the model does not use")
            continue
        have, want = _shape_map(variables[collection]), _shape_map(template[collection])
        for path in sorted(set(have) | set(want)):
            name = f"{collection}{path}"
            if path not in have:
                problems.append(f"{name}: missing from the checkpoint (config wants {want[path]})")
            elif path not in want:
                problems.append(f"{name}: in the checkpoint {have[path]} but not built by config")
            elif have[path] != want[path]:
                problems.append(f"{name}: checkpoint {have[path]} vs config {want[path]}")
    if problems:
        shown = "\n  ".join(problems[:8])
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(
            f"evaluate: the config does not match the checkpoint ({where}); "
            f"{len(problems)} difference(s):\n  {shown}{more}"
        )


def restore(
    workdir: str | os.PathLike[str], config: ml_collections.ConfigDict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, meta) of the checkpoint `config.eval.checkpoint`, EMA params if asked for."""
    directory = checkpoint.checkpoint_dir(str(workdir))
    if not os.path.isdir(directory) or not any(
        name.isdigit() for name in os.listdir(directory)
    ):
        raise FileNotFoundError(
            f"evaluate: no checkpoint in {directory}; train the run first "
            f"(`jdiffseg train --workdir={workdir}`)"
        )
    which = config.eval.checkpoint
    return checkpoint.load_variables(str(workdir), which, use_ema=bool(config.eval.use_ema))


# --------------------------------------------------------------------------- prediction


def _dihedral(x: jax.Array, k: int, inverse: bool = False) -> jax.Array:
    """Transform k of the 8 symmetries of the square on (B, H, W, C) (rot90 k % 4, then flip)."""
    rot, flip = k % 4, k >= 4
    if not inverse:
        x = jnp.rot90(x, rot, axes=(1, 2))
        return jnp.flip(x, axis=2) if flip else x
    x = jnp.flip(x, axis=2) if flip else x
    return jnp.rot90(x, -rot, axes=(1, 2))


def _flip_ensemble(predict: Predict, size: int, square: bool) -> Predict:
    """Test-time augmentation: predict each transformed image, map the masks back, stack."""
    transforms = list(range(8)) if square else [0, 4]
    if not 1 <= size <= len(transforms):
        raise ValueError(
            f"config.eval.ff_ensemble_size={size} must be in [1, {len(transforms)}] for flip "
            f"test-time augmentation ({'square' if square else 'non-square'} images)"
        )

    def run(variables: Any, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        members = []
        for k in transforms[:size]:
            out = predict(variables, _dihedral(images, k), key)["members"]  # (B, 1, H, W, 1)
            members.append(_dihedral(out[:, 0], k, inverse=True)[:, None])
        stacked = jnp.concatenate(members, axis=1)
        return {"members": stacked, "mean": jnp.mean(stacked, axis=1)}

    return jax.jit(run)


def _dropout_ensemble(
    config: ml_collections.ConfigDict, model: Any, size: int, mesh: Any
) -> Predict:
    """MC dropout: `size` feed-forward passes with dropout on, each with its own rng."""
    obj = objectives.from_config(config)

    def run(variables: Any, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        images = images.astype(jnp.float32)
        B, H, W, _ = images.shape
        x_t = jnp.zeros((B, H, W, 1), jnp.float32)
        t = objectives.model_timesteps(obj, jnp.full((B,), obj.feedforward_t, jnp.int32))

        def one(k: jax.Array) -> jax.Array:
            out = model.apply(variables, x_t, t, images, train=True, rngs={"dropout": k})
            return jax.nn.sigmoid(out["out"][..., :1].astype(jnp.float32))

        members = jax.vmap(one, out_axes=1)(jax.random.split(key, size))
        return {"members": members, "mean": jnp.mean(members, axis=1)}

    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(run, in_shardings=(rep, batch, rep), out_shardings=batch)


def make_predict(
    config: ml_collections.ConfigDict,
    model: Any,
    variables: Mapping[str, Any],
    image_shape: tuple[int, ...],
    mesh: Any,
) -> tuple[Predict, dict[str, Any]]:
    """The jitted `predict(variables, images, key)` for this run and a description of it."""
    e = config.eval
    mode = config.model.mode
    if mode != "feedforward":
        options = inference.options_from_config(config)
        kind = "diffusion_ensemble" if mode == "diffusion" else "mask_only_ensemble"
        described = {"kind": kind, **options.describe(),
                     "num_timesteps": int(config.diffusion.num_timesteps)}
        return inference.make_predictor(config, model, options, mesh=mesh), described
    size = int(e.ff_ensemble_size)
    if e.ff_ensemble == "none":
        options = inference.options_from_config(config)
        return inference.make_predictor(config, model, options, mesh=mesh), {"kind": "sigmoid"}
    if e.ff_ensemble == "flip":
        base = inference.make_predictor(
            config, model, inference.options_from_config(config), mesh=mesh
        )
        square = image_shape[0] == image_shape[1]
        return _flip_ensemble(base, size, square), {"kind": "flip_tta", "ensemble_size": size}
    if "batch_stats" in variables:
        raise ValueError(
            "config.eval.ff_ensemble='dropout' needs a model without BatchNorm: dropout at test "
            f"time would also switch {config.model.arch}'s BatchNorm to batch statistics"
        )
    if float(config.model.dropout) <= 0.0:
        raise ValueError(
            "config.eval.ff_ensemble='dropout' needs a model trained with dropout; "
            f"config.model.dropout={config.model.dropout}"
        )
    if size < 1:
        raise ValueError(f"config.eval.ff_ensemble_size={size} must be >= 1")
    return _dropout_ensemble(config, model, size, mesh), {"kind": "mc_dropout",
                                                          "ensemble_size": size}


# --------------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnames=("method", "num_bins", "sweep"))
def score_batch(
    members: jax.Array,
    labels: jax.Array,
    *,
    method: str,
    threshold: float,
    num_bins: int,
    sweep: bool = False,
) -> dict[str, Any]:
    """Fusion, per-image metrics and uncertainty of one batch of members (B, n, H, W, 1).

    Returns 'per_image' (dict of (B,) arrays), 'fused' (B, H, W, 1) of `method`, 'mean' and
    'entropy' maps (B, H, W, 1). Dice/IoU score the fused mask, calibration the member mean.
    """
    mean = fusion.ensemble_mean(members)
    per = metrics.per_image_metrics(mean, labels, threshold, num_bins)
    fused = {name: fusion.fuse(members, name, threshold=threshold).mask
             for name in fusion.FUSION_METHODS}
    for name, mask in fused.items():
        per[f"dice_{name}"] = metrics.dice(mask, labels)
        per[f"iou_{name}"] = metrics.iou(mask, labels)
    per["dice"], per["iou"] = per[f"dice_{method}"], per[f"iou_{method}"]
    B, n = members.shape[:2]
    flat_members = members.reshape(B * n, *members.shape[2:])
    flat_labels = jnp.repeat(labels, n, axis=0)
    per["member_dice"] = metrics.dice(flat_members, flat_labels, threshold).reshape(B, n).mean(1)
    per["member_iou"] = metrics.iou(flat_members, flat_labels, threshold).reshape(B, n).mean(1)
    maps = fusion.uncertainty_maps(members)
    for name in UNCERTAINTY_KEYS:
        per[f"uncertainty_{name}"] = jnp.mean(maps[name], axis=(1, 2, 3))
    per["foreground_true"] = jnp.mean(labels > 0.5, axis=(1, 2, 3))
    per["foreground_pred"] = jnp.mean(fused[method], axis=(1, 2, 3))
    if sweep:
        per["dice_threshold_sweep"] = jnp.mean(
            jnp.stack([metrics.dice(mean, labels, th) for th in SWEEP_THRESHOLDS]), axis=0)
        per["iou_threshold_sweep"] = jnp.mean(
            jnp.stack([metrics.iou(mean, labels, th) for th in SWEEP_THRESHOLDS]), axis=0)
    return {"per_image": per, "fused": fused[method], "mean": mean, "entropy": maps["entropy"]}


# --------------------------------------------------------------------------- data


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


def _batches(
    config: ml_collections.ConfigDict, per_process: int
) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """This process's test batches ({'image', 'mask', 'valid' (bool), 'index'}) and the number
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
            yield {"image": np.asarray(batch["image"], np.float32),
                   "mask": np.asarray(batch["mask"], np.float32),
                   "valid": valid, "index": index}

    return batches(), wanted


# --------------------------------------------------------------------------- evaluate


def _summaries(
    per_image: Mapping[str, np.ndarray], resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    return stats.summarize_all(per_image, num_resamples=resamples, seed=seed)


def _write_csv(path: Path, ids: list[str], per_image: Mapping[str, np.ndarray]) -> None:
    columns = list(per_image)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "id", *columns])
        for i, name in enumerate(ids):
            writer.writerow([i, name, *(f"{float(per_image[c][i]):.6g}" for c in columns)])


def evaluate(
    workdir: str | os.PathLike[str], config_overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluates the run in `workdir` on `config.eval.split`; writes and returns metrics.json.

    `config_overrides` maps dotted config keys to values (`{"eval.sampler": "ddpm"}`).
    """
    workdir = Path(workdir)
    config = load_config(workdir, config_overrides)
    _check_eval_config(config)
    sharding.maybe_initialize_distributed(config.train)
    e = config.eval
    variables, meta = restore(workdir, config)

    mesh = sharding.make_mesh()
    per_process = sharding.check_batch_size(
        int(config.data.eval_batch_size), mesh, "config.data.eval_batch_size")
    batches, wanted = _batches(config, per_process)
    first = next(batches)
    image_shape = tuple(first["image"].shape[1:])

    model = build_model(config.model, image_channels=image_shape[-1])
    where = f"{workdir / CONFIG_FILE} vs checkpoint step {meta.get('step')}"
    check_variables_match(variables, _abstract_variables(model, config, image_shape), where)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    predict, prediction = make_predict(config, model, variables, image_shape, mesh)

    sweep = "threshold_sweep" in extra_protocols(config)
    rep = sharding.replicated(mesh)
    update = jax.jit(metrics.update, out_shardings=rep)
    acc_probs = acc_fused = jax.device_put(metrics.init(int(e.num_bins)), rep)
    per_image: dict[str, list[np.ndarray]] = {}
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
            compiled = predict.lower(variables, arrays["image"], step_key).compile()
            compile_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        out = compiled(variables, arrays["image"], step_key)
        jax.block_until_ready(out["members"])
        predict_seconds += time.perf_counter() - tick
        scored = score_batch(out["members"], arrays["mask"], method=e.fusion,
                             threshold=float(e.threshold), num_bins=int(e.num_bins), sweep=sweep)
        acc_probs = update(acc_probs, scored["mean"], arrays["mask"], float(e.threshold),
                           arrays["valid"])
        acc_fused = update(acc_fused, scored["fused"], arrays["mask"], 0.5, arrays["valid"])
        host = sharding.fetch({"per": scored["per_image"], "valid": arrays["valid"],
                               "index": arrays["index"]})
        keep = np.asarray(host["valid"], bool)
        for name, values in host["per"].items():
            per_image.setdefault(name, []).append(np.asarray(values)[keep])
        indices.append(np.asarray(host["index"])[keep])
        if sum(len(c) for c in cases.get("image", [])) < int(e.num_cases):
            shown = sharding.fetch({"image": arrays["image"], "label": arrays["mask"],
                                    "members": out["members"], "fused": scored["fused"],
                                    "entropy": scored["entropy"]})
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
    results = _results(config, workdir, meta, prediction, per, acc_probs, acc_fused,
                       count, {"compile_seconds": compile_seconds,
                               "predict_seconds": predict_seconds,
                               "total_seconds": time.perf_counter() - start})
    if jax.process_index() == 0:
        _write_outputs(workdir / EVAL_DIR, results, ids, per, acc_probs, cases, config)
    return results


def _results(
    config: ml_collections.ConfigDict,
    workdir: Path,
    meta: Mapping[str, Any],
    prediction: dict[str, Any],
    per: dict[str, np.ndarray],
    acc_probs: metrics.MetricState,
    acc_fused: metrics.MetricState,
    count: int,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The content of metrics.json."""
    e = config.eval
    resamples, seed = int(e.bootstrap_resamples), int(config.seed)
    extra_keys = {"dice_threshold_sweep", "iou_threshold_sweep"}
    fusion_keys = {f"{m}_{f}" for m in ("dice", "iou") for f in fusion.FUSION_METHODS}
    main_per = {k: v for k, v in per.items() if k not in extra_keys | fusion_keys}
    probs = {k: float(v) for k, v in metrics.compute(acc_probs).items()}
    fused = metrics.compute(acc_fused)
    extra: dict[str, Any] = {}
    if "threshold_sweep" in extra_protocols(config):
        extra["threshold_sweep"] = {
            "description": EXTRA_PROTOCOLS["threshold_sweep"],
            "thresholds": list(SWEEP_THRESHOLDS),
            **_summaries({"dice": per["dice_threshold_sweep"],
                          "iou": per["iou_threshold_sweep"]}, resamples, seed),
        }
    return {
        "workdir": str(workdir),
        "checkpoint": {"which": e.checkpoint, "step": meta.get("step"),
                       "ema": bool(e.use_ema), "val_metrics": meta.get("metrics", {})},
        "run": {"arch": config.model.arch, "preset": config.model.preset,
                "mode": config.model.mode, "dataset": config.data.name,
                "variant": config.data.variant, "image_size": int(config.data.image_size),
                "split": e.split},
        "prediction": prediction,
        "fusion": e.fusion,
        "threshold": float(e.threshold),
        "num_bins": int(e.num_bins),
        "num_images": count,
        "summary": _summaries(main_per, resamples, seed),
        "dataset": {
            "dice_pooled": float(fused["dice_pooled"]),
            "iou_pooled": float(fused["iou_pooled"]),
            **{k: probs[k] for k in ("ece_top_label", "ece_foreground", "brier", "nll")},
            "num_pixels": int(probs["num_pixels"]),
        },
        "fusion_methods": {
            name: _summaries({"dice": per[f"dice_{name}"], "iou": per[f"iou_{name}"]},
                             resamples, seed)
            for name in fusion.FUSION_METHODS
        },
        "extra_protocols": extra,
        "definitions": {
            "dice_iou": f"of the fused mask ({e.fusion}), per image, empty/empty = 1",
            "calibration": "of the member-mean probability over all pixels; ECE with "
                           f"{e.num_bins} equal-width bins",
            "interval": f"percentile bootstrap {stats.DEFAULT_CONFIDENCE:.0%} of the mean over "
                        f"images, {resamples} resamples",
        },
        "timing": {**seconds,
                   "images_per_second": count / max(seconds["predict_seconds"], 1e-9),
                   "devices": jax.device_count(), "platform": jax.devices()[0].platform},
    }


def _write_outputs(
    out_dir: Path,
    results: dict[str, Any],
    ids: list[str],
    per: dict[str, np.ndarray],
    acc_probs: metrics.MetricState,
    cases: dict[str, list[np.ndarray]],
    config: ml_collections.ConfigDict,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = results["run"]
    title = f"{run['arch']} · {run['dataset']} · {run['mode']}"
    files = {
        "metrics": out_dir / "metrics.json",
        "per_image": out_dir / "per_image.csv",
        "reliability": out_dir / "reliability.png",
        "cases": out_dir / "cases.png",
    }
    _write_csv(files["per_image"], ids, per)
    figures.reliability_diagram(acc_probs, files["reliability"], title=title)
    shown = {k: np.concatenate(v) for k, v in cases.items()}
    figures.case_grid(
        files["cases"], shown["image"], shown["label"], shown["members"], shown["fused"],
        shown["entropy"], ids=ids[: len(shown["image"])], uncertainty_name="entropy (bits)",
        max_cases=int(config.eval.num_cases),
    )
    results["files"] = {k: str(v) for k, v in files.items()}
    tmp = files["metrics"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False))
    os.replace(tmp, files["metrics"])


# --------------------------------------------------------------------------- command


def _workdir_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _usage() -> str:
    """Help text: the flags and the `eval` keys most often overridden, with their defaults."""
    keys = "\n".join(f"  --config.eval.{k}={v if v != '' else repr(v)}"
                     for k, v in configlib.base_config().eval.items() if not k.startswith("val_"))
    return (
        "usage: jdiffseg evaluate --workdir=DIR [--config.SECTION.KEY=VALUE ...]\n\n"
        "  --workdir: a trained run's directory (holds config.json and checkpoints/)\n"
        "  --config.SECTION.KEY=VALUE: overrides a key of the run's config.json\n\n"
        f"eval keys (defaults shown; a run's config.json may differ):\n{keys}\n\n"
        f"writes DIR/{EVAL_DIR}/: metrics.json, per_image.csv, reliability.png, cases.png"
    )


def main(argv: list[str]) -> int:
    """`jdiffseg evaluate --workdir=DIR [--config.eval.KEY=VALUE ...]`; returns the exit status.

    The `--config.*` overrides are typed by the run's own config.json.
    """
    from jdiffseg.main import parse_flags

    if any(a in ("-h", "--help", "-help") for a in argv):
        print(_usage())
        return 0
    workdir = _workdir_from_argv(argv)
    try:
        base = load_config(workdir) if workdir else configlib.base_config()
    except (FileNotFoundError, KeyError, ValueError):
        base = configlib.base_config()  # the real error is reported by evaluate() below
    fv = flags.FlagValues()
    try:  # a config_dict flag resolves the `--config.*` paths as it is defined
        config_flags.DEFINE_config_dict(
            "config", base, "the run's config.json; override keys with --config.eval.KEY=VALUE",
            flag_values=fv, lock_config=True, sys_argv=["jdiffseg", *argv],
        )
    except (AttributeError, KeyError) as err:
        print(f"jdiffseg evaluate: bad config key: {err}", file=sys.stderr)
        return 2
    flags.DEFINE_string("workdir", None, "a trained run's directory", flag_values=fv)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)
    parse_flags(fv, "evaluate", argv)
    overrides = config_flags.get_override_values(fv["config"])
    try:
        results = evaluate(fv.workdir, overrides)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"jdiffseg evaluate: {err}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:
        return 0
    summary = results["summary"]
    line = ", ".join(
        f"{k} {stats.format_summary(summary[k])}" for k in ("dice", "iou") if k in summary)
    d = results["dataset"]
    print(f"{results['num_images']} images: {line}; ECE top-label {d['ece_top_label']:.4f}, "
          f"foreground {d['ece_foreground']:.4f}; wrote {results['files']['metrics']}")
    return 0
