"""The timestep analysis: how much of the mask each model recovers at every step of the chain.

For every timestep t (all T, or every `t_stride`-th) and every analysed (image, mask) pair the
true mask is noised to x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε and the trained segmentation model predicts
x0 three ways:

* ``image``: with the real image (what it was trained to do);
* ``blank``: with a blank image, i.e. zeros in the normalised image space ([-1, 1] pixels, so
  zero is mid-grey). The network then has only x_t, t and its learned mask prior;
* ``mask_only``: with the E3 mask-only model (no image branch), when one is given.

Each prediction is read as a probability (decoded to [0, 1] and clipped) and scored against the
true mask: x0 MSE, and Dice / IoU of the prediction thresholded at 0.5. ``chance_dice_*`` scores
the same prediction against the mask of another image (image i against image i − 1, cyclically):
when a prediction carries no information about its own mask, the two Dice values agree, so
this is the chance level of every curve. The training loss at t (the model's own objective:
ε/x0/v MSE, plus the VB term when the run trains one) is recorded for each variant, together
with its prediction-target part alone (``target_mse_*``, the ε-MSE of an ε model), and for an
image-generation run (E4) both on the images.

Noise: one standard-normal ε per analysed image, drawn from `fold_in(seed, image index)`, is
used at every t and by every variant. The variants are therefore compared on identical x_t,
curves are smooth in t, and results do not depend on how the images are split over devices.

The computation is one jitted function: the per-t step is mapped over the timesteps with
`lax.map(..., batch_size=chunk_size)`, i.e. vmapped over chunks of `chunk_size` timesteps
(bounding memory) and scanned over the chunks; the images are sharded over the mesh's 'data'
axis. `looped_curves` runs the same step in a Python loop over t, for checks and benchmarks.

    jdiffseg analyze --workdir=runs/ens [--mask_only_workdir=runs/ens_e3]
        [--image_generation_workdir=runs/ens_e4] [--emit_adapted_config]
    jdiffseg analyze --compare runs/lesion runs/nuclei runs/tissue [--out=fingerprints.png]

Outputs: DIR/analysis/timesteps.json (mean curves, their std over images, the standard error
of Δ(t) per metric, the mask prior's Dice/IoU, the fingerprint summary of
`jdiffseg.fingerprint`), timesteps.csv (one row per t), loss.png, recovery.png,
contribution.png, and with
`--emit_adapted_config` adapted_config.json plus one adapted_<method>.flags file per method.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg import metrics, objectives, sharding
from jdiffseg.diffusion import encoding as mask_encoding
from jdiffseg.diffusion import gaussian, losses
from jdiffseg.diffusion.schedules import Schedule

RESULT_FILE = "timesteps.json"
ANALYSIS_DIR = "analysis"

# (variables, x_t, t as the network sees it, image or None) -> the network's output dict.
ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A trained network and how to read it (static and hashable; variables travel apart).

    apply: the forward pass at inference (`train=False`); `objective` says what its output
    means (prediction target, variance, encoding, loss) and how it sees t; `clip_x0` clips the
    predicted x0 into the encoding's range, as the run's sampler does.
    """

    apply: ApplyFn
    objective: objectives.Objective
    clip_x0: bool = True

    def __call__(
        self, variables: Any, x_t: jax.Array, t: jax.Array, image: jax.Array | None
    ) -> dict[str, jax.Array]:
        """The network's outputs at timestep indices `t` (rescaled as in training)."""
        return self.apply(variables, x_t, objectives.model_timesteps(self.objective, t), image)

    def pred_x0(self, s: Schedule, out: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The mask x0 implied by the raw output 'out' (clipped to the encoding's range)."""
        obj = self.objective
        clip_range = mask_encoding.value_range(obj.encoding)
        return gaussian.p_mean_variance(
            s, out.astype(jnp.float32), x_t, t, prediction=obj.prediction,
            variance=obj.variance, clip_x0=self.clip_x0, clip_range=clip_range,
        )["pred_x0"]

    def loss_terms(
        self,
        s: Schedule,
        outputs: Mapping[str, jax.Array],
        x0: jax.Array,
        x_t: jax.Array,
        t: jax.Array,
        noise: jax.Array,
        mask01: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """The per-example training objective at t and its prediction-target part, (B,) each.

        'loss' is the objective as `objectives` defines it — diffusion / image_generation:
        ε/x0/v error (+ VB when learned); mask_only: x0 error (+ VB); a calibration head
        ('cal', MedSegDiff) adds `cal_loss_weight` × its MSE. 'target_mse' is the error in the
        prediction target alone (the ε-MSE of an ε model), free of the VB term whose decoder
        NLL dominates the objective near t = 0.
        """
        obj = self.objective
        out = outputs["out"].astype(jnp.float32)
        terms = losses.training_losses(
            s, out, x0, x_t, t, noise, prediction=obj.prediction, variance=obj.variance,
            reduction=obj.reduction, use_vb=obj.use_vb,
        )
        if obj.mode == "mask_only":
            mean_out, _ = gaussian.split_model_output(out, x_t, obj.variance)
            sq = jnp.square(gaussian.predict_x0(s, mean_out, x_t, t, obj.prediction) - x0)
            flat = losses.mean_flat if obj.reduction == "mean" else losses.sum_flat
            target_mse = flat(sq)
            per_example = target_mse + terms["vb"]
        else:
            target_mse, per_example = terms["mse"], terms["loss"]
        if obj.mode == "diffusion" and "cal" in outputs and obj.cal_loss_weight > 0:
            if mask01 is None:
                raise ValueError("the calibration loss at t needs the {0, 1} mask")
            per_example = per_example + obj.cal_loss_weight * objectives.calibration_loss(
                outputs["cal"], mask01
            )
        return {"loss": per_example, "target_mse": target_mse}


def denoiser_from_config(config: ml_collections.ConfigDict, apply: ApplyFn) -> Denoiser:
    """A `Denoiser` reading the outputs of `apply` as the run's config says."""
    return Denoiser(apply, objectives.from_config(config), clip_x0=bool(config.diffusion.clip_x0))


# ---------------------------------------------------------------------------------------------
# The per-timestep step and its two drivers (vmapped/chunked, and a Python loop).
# ---------------------------------------------------------------------------------------------

StepFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], dict[str, jax.Array]]


def segmentation_step(
    seg: Denoiser, schedule: Schedule, mask_only: Denoiser | None = None
) -> StepFn:
    """The analysis at one timestep t (a scalar) for all images of `data`.

    `params` is `(seg_variables, mask_only_variables)`; `data` holds 'image' (N, H, W, C),
    'mask' and 'other_mask' ({0, 1}, (N, H, W, 1)) and 'noise' (N, H, W, 1). Returns per-image
    metrics of shape (N,): mse_*, dice_*, iou_*, chance_dice_*, loss_*, target_mse_* for each
    variant.
    """
    encoding = seg.objective.encoding

    def step(params: Any, data: Mapping[str, jax.Array], t: jax.Array) -> dict[str, jax.Array]:
        seg_vars, mask_only_vars = params
        mask, other, noise = data["mask"], data["other_mask"], data["noise"]
        x0 = mask_encoding.encode_mask(mask, encoding)
        tb = jnp.full((mask.shape[0],), t, jnp.int32)
        x_t = gaussian.q_sample(schedule, x0, tb, noise)
        calls: list[tuple[str, Denoiser, Any, jax.Array | None]] = [
            ("image", seg, seg_vars, data["image"]),
            ("blank", seg, seg_vars, jnp.zeros_like(data["image"])),
        ]
        if mask_only is not None:
            calls.append(("mask_only", mask_only, mask_only_vars, None))
        metrics_t: dict[str, jax.Array] = {}
        for name, model, variables, image in calls:
            outputs = model(variables, x_t, tb, image)
            pred = model.pred_x0(schedule, outputs["out"], x_t, tb)
            prob = mask_encoding.decode_mask(pred, encoding, clip=True)
            metrics_t[f"mse_{name}"] = losses.mean_flat(jnp.square(prob - mask))
            metrics_t[f"dice_{name}"] = metrics.dice(prob, mask)
            metrics_t[f"iou_{name}"] = metrics.iou(prob, mask)
            metrics_t[f"chance_dice_{name}"] = metrics.dice(prob, other)
            terms = model.loss_terms(schedule, outputs, x0, x_t, tb, noise, mask)
            metrics_t[f"loss_{name}"] = terms["loss"]
            metrics_t[f"target_mse_{name}"] = terms["target_mse"]
        return metrics_t

    return step


def generation_step(gen: Denoiser, schedule: Schedule) -> StepFn:
    """The image-generation (E4) loss and its target part at one timestep t on 'image'."""

    def step(params: Any, data: Mapping[str, jax.Array], t: jax.Array) -> dict[str, jax.Array]:
        x0, noise = data["image"], data["image_noise"]
        tb = jnp.full((x0.shape[0],), t, jnp.int32)
        x_t = gaussian.q_sample(schedule, x0, tb, noise)
        return gen.loss_terms(schedule, gen(params, x_t, tb, None), x0, x_t, tb, noise)

    return step


def vmapped_curves(step: StepFn, chunk_size: int) -> Callable[..., dict[str, jax.Array]]:
    """`run(params, data, timesteps) -> {name: (K, N)}`: one jitted call over all K timesteps.

    Timesteps are vmapped in chunks of `chunk_size` and the chunks scanned (`lax.map`), so
    memory grows with chunk_size × N images, not with K.
    """
    if chunk_size < 1:
        raise ValueError(f"config.analysis.chunk_size must be >= 1, got {chunk_size}")

    @jax.jit
    def run(params: Any, data: Mapping[str, jax.Array], timesteps: jax.Array) -> dict:
        return jax.lax.map(
            lambda t: step(params, data, t), timesteps, batch_size=min(chunk_size, len(timesteps))
        )

    return run


def looped_curves(step: StepFn) -> Callable[..., dict[str, jax.Array]]:
    """The same computation as `vmapped_curves`, one jitted call per timestep (the reference)."""
    jitted = jax.jit(step)

    def run(params: Any, data: Mapping[str, jax.Array], timesteps: jax.Array) -> dict:
        rows = [jitted(params, data, t) for t in np.asarray(timesteps)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)

    return run


# ---------------------------------------------------------------------------------------------
# Inputs: timesteps, fixed noise, sharded arrays.
# ---------------------------------------------------------------------------------------------


def analysis_timesteps(num_timesteps: int, stride: int = 1) -> np.ndarray:
    """0, stride, 2·stride, … and always T − 1 (the end of the chain), as int32."""
    if stride < 1:
        raise ValueError(f"config.analysis.t_stride must be >= 1, got {stride}")
    ts = np.arange(0, num_timesteps, stride)
    if ts[-1] != num_timesteps - 1:
        ts = np.append(ts, num_timesteps - 1)
    return ts.astype(np.int32)


def fixed_noise(seed: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal noise of `shape` for images 0..count-1, image i from fold_in(seed, i)."""
    key = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(count))
    return np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys))


def segmentation_data(images: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Host arrays for `segmentation_step`: images, {0, 1} masks, shifted masks, fixed noise."""
    images = np.asarray(images, np.float32)
    masks = (np.asarray(masks, np.float32) > 0.5).astype(np.float32)
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 1:
        raise ValueError(
            f"analysis: need images (N, H, W, C) and masks (N, H, W, 1), got {images.shape} "
            f"and {masks.shape}"
        )
    if images.shape[:3] != masks.shape[:3]:
        raise ValueError(f"analysis: images {images.shape} and masks {masks.shape} differ")
    return {
        "image": images,
        "mask": masks,
        "other_mask": np.roll(masks, 1, axis=0),
        "noise": fixed_noise(seed, len(masks), masks.shape[1:]),
    }


def shard_data(
    data: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
) -> tuple[dict[str, jax.Array], int]:
    """Global arrays split over the mesh's 'data' axis, padded to a multiple of its size.

    Every process passes the same full arrays; padding repeats the first images and is cut
    off the results. Returns (arrays, number of real images).
    """
    n = len(next(iter(data.values())))
    size = mesh.devices.size
    padded = -(-n // size) * size
    idx = np.arange(padded) % n
    per_process = padded // jax.process_count()
    lo = jax.process_index() * per_process
    spec = sharding.batch_sharding(mesh)
    arrays = {
        k: jax.make_array_from_process_local_data(spec, np.asarray(v)[idx][lo : lo + per_process])
        for k, v in data.items()
    }
    return arrays, n


def fetch_curves(curves: Mapping[str, jax.Array], n: int) -> dict[str, np.ndarray]:
    """Host (K, n) float64 arrays, padding images dropped."""
    host = sharding.fetch(dict(curves))
    return {k: np.asarray(v, np.float64)[:, :n] for k, v in host.items()}


def compute_segmentation_curves(
    seg: Denoiser,
    seg_params: Any,
    schedule: Schedule,
    images: np.ndarray,
    masks: np.ndarray,
    timesteps: np.ndarray,
    *,
    mask_only: Denoiser | None = None,
    mask_only_params: Any = None,
    seed: int = 0,
    chunk_size: int = 16,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Per-image curves {name: (K, N)} over `timesteps` (see `segmentation_step`)."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    data, n = shard_data(segmentation_data(images, masks, seed), mesh)
    run = vmapped_curves(segmentation_step(seg, schedule, mask_only), chunk_size)
    return fetch_curves(run((seg_params, mask_only_params), data, jnp.asarray(timesteps)), n)


def compute_generation_curves(
    gen: Denoiser,
    params: Any,
    schedule: Schedule,
    images: np.ndarray,
    timesteps: np.ndarray,
    *,
    seed: int = 0,
    chunk_size: int = 16,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Per-image image-generation curves {'loss', 'target_mse': (K, N)} over `timesteps`."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    images = np.asarray(images, np.float32)
    host = {"image": images, "image_noise": fixed_noise(seed + 1, len(images), images.shape[1:])}
    data, n = shard_data(host, mesh)
    run = vmapped_curves(generation_step(gen, schedule), chunk_size)
    return fetch_curves(run(params, data, jnp.asarray(timesteps)), n)


def prior_scores(masks: np.ndarray) -> dict[str, float]:
    """Dice/IoU of the mask prior (pixel-wise mean mask > 0.5) against each mask, averaged."""
    masks = (np.asarray(masks, np.float32) > 0.5).astype(np.float32)
    prior = np.broadcast_to(masks.mean(axis=0, keepdims=True), masks.shape)
    return {
        "prior_dice": float(np.mean(metrics.dice(prior, masks))),
        "prior_iou": float(np.mean(metrics.iou(prior, masks))),
    }


# ---------------------------------------------------------------------------------------------
# Results: summary over images, JSON and CSV.
# ---------------------------------------------------------------------------------------------


def summarize_curves(per_image: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(mean over images, std over images) of each (K, N) curve, as lists of K floats."""
    mean = {k: np.mean(v, axis=1).tolist() for k, v in per_image.items()}
    std = {k: np.std(v, axis=1).tolist() for k, v in per_image.items()}
    return mean, std


def contribution_sem(per_image: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Standard error over images of the per-image Δ(t) = with image − without, per metric
    and reference ('mse_blank', 'dice_mask_only', ...): how far Δ is from noise."""
    out = {}
    for key, with_image in per_image.items():
        metric, _, variant = key.partition("_")
        if metric not in ("mse", "dice", "iou") or variant in ("image", ""):
            continue
        diff = with_image - per_image[f"{metric}_image"]
        n = diff.shape[1]
        out[key] = (np.std(diff, axis=1, ddof=1) / np.sqrt(n) if n > 1
                    else np.zeros(len(diff))).tolist()
    return out


def write_results(result: Mapping[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes timesteps.json and timesteps.csv (one row per t) to `out_dir`; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, RESULT_FILE)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    csv_path = os.path.join(out_dir, "timesteps.csv")
    names = list(result["curves"])
    T = result["num_timesteps"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "t_fraction", *names, *(f"{k}_std" for k in names)])
        for i, t in enumerate(result["timesteps"]):
            row = [t, t / (T - 1)]
            row += [result["curves"][k][i] for k in names]
            row += [result["std"][k][i] for k in names]
            writer.writerow(row)
    return json_path, csv_path


def load_results(path: str) -> dict[str, Any]:
    """A timesteps.json given as the file, its analysis directory or the run's workdir."""
    candidates = [path, os.path.join(path, RESULT_FILE),
                  os.path.join(path, ANALYSIS_DIR, RESULT_FILE)]
    for p in candidates:
        if os.path.isfile(p):
            with open(p) as f:
                result = json.load(f)
            if "curves" not in result or "timesteps" not in result:
                raise ValueError(f"{p}: not an analysis result (no 'curves'/'timesteps')")
            result.setdefault("path", p)
            return result
    raise FileNotFoundError(
        f"no {RESULT_FILE} at {path!r} (looked in {', '.join(candidates[1:])}); "
        f"run `jdiffseg analyze --workdir={path}` first"
    )


# ---------------------------------------------------------------------------------------------
# Trained runs: config, model, parameters, validation images.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run loaded for analysis."""

    workdir: str
    config: ml_collections.ConfigDict
    denoiser: Denoiser
    variables: Any
    schedule: Schedule
    step: int


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config.json (locked); `analysis` keys it predates get today's defaults."""
    from jdiffseg import configlib

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; is {workdir!r} a training workdir?")
    with open(path) as f:
        config = configlib.from_json(f.read())
    defaults = configlib.base_config().analysis
    with config.unlocked():
        if "analysis" not in config:
            config.analysis = defaults
        for key, value in defaults.items():
            if key not in config.analysis:
                config.analysis[key] = value
    return config


def load_run(
    workdir: str,
    *,
    mode: str,
    checkpoint: str = "best",
    use_ema: bool = True,
    config: ml_collections.ConfigDict | None = None,
) -> Run:
    """Config, model and (EMA) variables of the run in `workdir`, checked to be in `mode`."""
    from jdiffseg import checkpoint as ckpt
    from jdiffseg.diffusion import schedules
    from jdiffseg.models import build_model

    config = read_config(workdir) if config is None else config
    if config.model.mode != mode:
        raise ValueError(
            f"{os.path.join(workdir, 'config.json')}: model.mode is {config.model.mode!r}; "
            f"the analysis needs a {mode!r} run there"
        )
    model = build_model(config.model, image_channels=3, mask_channels=1)
    variables, meta = ckpt.load_variables(workdir, checkpoint, use_ema=use_ema)

    def apply(variables: Any, x_t: jax.Array, t: jax.Array, image: jax.Array | None) -> dict:
        return model.apply(variables, x_t, t, image, train=False)

    return Run(
        workdir=workdir, config=config, denoiser=denoiser_from_config(config, apply),
        variables=variables, schedule=schedules.from_config(config.diffusion),
        step=int(meta.get("step", -1)),
    )


def check_same_process(a: Run, b: Run) -> None:
    """The mask-only run must diffuse masks exactly as the analysed run does."""
    da, db = a.config.diffusion, b.config.diffusion
    if da.mask_encoding != db.mask_encoding:
        raise ValueError(
            f"{b.workdir}: mask_encoding {db.mask_encoding!r} differs from {a.workdir}'s "
            f"{da.mask_encoding!r}; the mask-only run must noise masks the same way"
        )
    betas_a, betas_b = np.asarray(a.schedule.betas), np.asarray(b.schedule.betas)
    if betas_a.shape != betas_b.shape or not np.allclose(betas_a, betas_b):
        raise ValueError(
            f"{b.workdir}: its noise schedule ({db.schedule}, T={db.num_timesteps}) differs "
            f"from {a.workdir}'s ({da.schedule}, T={da.num_timesteps}); the mask-only run "
            f"must use the same schedule"
        )


def load_images(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The first `config.analysis.num_images` (image, mask) pairs of `config.analysis.split`.

    Every process reads the same images (they are split over devices later); padding rows of
    the evaluation loader (`valid == 0`) are dropped.
    """
    from jdiffseg.data.pipeline import make_loader

    want = int(config.analysis.num_images)
    if want < 1:
        raise ValueError(f"config.analysis.num_images must be >= 1, got {want}")
    loader = make_loader(config, config.analysis.split, train=False, seed=config.seed,
                         shard=(0, 1))
    images, masks, have = [], [], 0
    for batch in loader:
        keep = np.asarray(batch["valid"]) > 0 if "valid" in batch else slice(None)
        images.append(np.asarray(batch["image"])[keep])
        masks.append(np.asarray(batch["mask"])[keep])
        have += len(images[-1])
        if have >= want:
            break
    if not have:
        raise ValueError(f"split {config.analysis.split!r} of {config.data.name!r} is empty")
    return np.concatenate(images)[:want], np.concatenate(masks)[:want]


# ---------------------------------------------------------------------------------------------
# The analysis of a workdir, end to end.
# ---------------------------------------------------------------------------------------------


def analyze(
    workdir: str,
    *,
    config: ml_collections.ConfigDict | None = None,
    mask_only_workdir: str | None = None,
    image_generation_workdir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the analysis of `workdir`; writes DIR/analysis/{timesteps.json,.csv,*.png}.

    `config` is the run's config with any `--config.analysis.*` overrides (default: its
    config.json); its `analysis` section also decides how the other runs are loaded.
    """
    from jdiffseg import analysis_plots, fingerprint

    config = read_config(workdir) if config is None else config
    a = config.analysis
    load = dict(checkpoint=a.checkpoint, use_ema=bool(a.use_ema))
    run = load_run(workdir, mode="diffusion", config=config, **load)
    T = run.schedule.num_timesteps
    timesteps = analysis_timesteps(T, int(a.t_stride))
    images, masks = load_images(config)
    log(f"analysis of {workdir} (step {run.step}): {len(timesteps)} timesteps x "
        f"{len(images)} images on {jax.device_count()} device(s)")
    mask_only = None
    if mask_only_workdir:
        mask_only = load_run(mask_only_workdir, mode="mask_only", **load)
        check_same_process(run, mask_only)
    per_image = compute_segmentation_curves(
        run.denoiser, run.variables, run.schedule, images, masks, timesteps,
        mask_only=mask_only.denoiser if mask_only else None,
        mask_only_params=mask_only.variables if mask_only else None,
        seed=int(a.seed), chunk_size=int(a.chunk_size),
    )
    mean, std = summarize_curves(per_image)
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
        "contribution_sem": contribution_sem(per_image),
        **prior_scores(masks),
    }
    if image_generation_workdir:
        gen = load_run(image_generation_workdir, mode="image_generation", **load)
        gen_t = analysis_timesteps(gen.schedule.num_timesteps, int(a.t_stride))
        gen_curves = compute_generation_curves(
            gen.denoiser, gen.variables, gen.schedule, images, gen_t,
            seed=int(a.seed), chunk_size=int(a.chunk_size),
        )
        gen_mean, gen_std = summarize_curves(gen_curves)
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
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, ANALYSIS_DIR)
        paths = [*write_results(result, out_dir),
                 *analysis_plots.plot_run(result, out_dir, **options)]
        log("wrote " + ", ".join(paths))
    return result


# ---------------------------------------------------------------------------------------------
# The `jdiffseg analyze` command.
# ---------------------------------------------------------------------------------------------


def _expand_compare(argv: Sequence[str]) -> list[str]:
    """Turns `--compare A B C` (space-separated directories) into `--compare=A,B,C`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--compare":
            dirs = []
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                dirs.append(argv[i])
                i += 1
            out.append("--compare=" + ",".join(dirs))
        else:
            out.append(argv[i])
            i += 1
    return out


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=v` or `--name v` in argv, before the flags are parsed."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main(argv: list[str]) -> int:
    """`jdiffseg analyze`: the timestep analysis of a run, or a comparison of several.

    `--config.a.b=v` overrides apply to the run's own config (read from DIR/config.json),
    e.g. `--config.analysis.t_stride=10 --config.analysis.num_images=64`.
    """
    from absl import flags
    from ml_collections import config_flags

    from jdiffseg import configlib, fingerprint
    from jdiffseg.main import parse_flags

    argv = _expand_compare(list(argv))
    workdir = _flag_value(argv, "workdir")
    try:
        base = read_config(workdir) if workdir else configlib.base_config()
    except (FileNotFoundError, ValueError) as e:
        print(f"jdiffseg analyze: {e}", file=sys.stderr)
        return 2
    fv = flags.FlagValues()
    try:
        config = config_flags.DEFINE_config_dict(
            "config", base, "the run's config; override keys with --config.a.b=v",
            flag_values=fv, lock_config=True, sys_argv=["jdiffseg", *argv],
        )
    except (KeyError, AttributeError) as e:  # an unknown --config.a.b key
        print(f"jdiffseg analyze: bad config key: {e}", file=sys.stderr)
        return 2
    flags.DEFINE_string("workdir", None, "trained diffusion-segmentation (E2) run", flag_values=fv)
    flags.DEFINE_string("mask_only_workdir", None, "trained mask-only (E3) run", flag_values=fv)
    flags.DEFINE_string("image_generation_workdir", None, "trained image-generation (E4) run",
                        flag_values=fv)
    flags.DEFINE_list("compare", None, "analysed workdirs whose fingerprints to overlay "
                      "(space- or comma-separated)", flag_values=fv)
    flags.DEFINE_list("labels", None, "legend labels for --compare (default: directory names)",
                      flag_values=fv)
    flags.DEFINE_string("out", "fingerprints.png", "figure written by --compare", flag_values=fv)
    flags.DEFINE_bool("emit_adapted_config", False, "write adapted-diffusion config overrides "
                      "derived from the fingerprint", flag_values=fv)
    flags.DEFINE_bool("reuse", False, "reuse DIR/analysis/timesteps.json instead of recomputing",
                      flag_values=fv)
    parse_flags(fv, "analyze", argv)

    if fv.compare:
        return _compare(fv.compare, fv.labels, fv.out, config.value.analysis)
    if not fv.workdir:
        print("jdiffseg analyze: give --workdir=DIR (or --compare DIR_A DIR_B ...)",
              file=sys.stderr)
        return 2
    if fv.reuse:
        result = load_results(fv.workdir)
    else:
        result = analyze(fv.workdir, config=config.value,
                         mask_only_workdir=fv.mask_only_workdir,
                         image_generation_workdir=fv.image_generation_workdir)
    print(fingerprint.format_summary(result["fingerprint"]))
    if fv.emit_adapted_config and jax.process_index() == 0:
        out_dir = os.path.join(fv.workdir, ANALYSIS_DIR)
        paths, table = fingerprint.write_adapted(result, config.value, out_dir)
        for method, overrides in table["methods"].items():
            if "error" in overrides:
                print(f"adapted {method}: not derived: {overrides['error']}")
        print("wrote " + ", ".join(paths))
    return 0


def _compare(
    dirs: Sequence[str], labels: Sequence[str] | None, out: str,
    analysis_config: ml_collections.ConfigDict,
) -> int:
    """`--compare`: overlays the runs' fingerprints; writes the figure and a summary table."""
    from jdiffseg import analysis_plots, fingerprint

    results = [load_results(d) for d in dirs]
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in dirs]
    if len(labels) != len(results):
        print(f"jdiffseg analyze: {len(labels)} --labels for {len(results)} --compare dirs",
              file=sys.stderr)
        return 2
    options = fingerprint.options_from_config(analysis_config)
    table = {lab: fingerprint.summary(r, **options) for lab, r in zip(labels, results, strict=True)}
    figure = analysis_plots.plot_compare(
        results, labels, out, metric=options["metric"], reference=options["reference"]
    )
    table_path = os.path.splitext(out)[0] + ".json"
    with open(table_path, "w") as f:
        json.dump(table, f, indent=2)
    for lab, summary in table.items():
        print(f"{lab}: {fingerprint.format_summary(summary)}")
    print(f"wrote {figure}, {table_path}")
    return 0
