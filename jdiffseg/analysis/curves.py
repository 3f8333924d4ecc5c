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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdiffseg.diffusion import encoding as mask_encoding
from jdiffseg.diffusion import gaussian, losses, objectives
from jdiffseg.diffusion.schedules import Schedule
from jdiffseg.runtime import sharding
from jdiffseg.scoring import metrics, multiclass

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
        terms = objectives.diffusion_terms(
            obj, s, outputs["out"].astype(jnp.float32), x0, x_t, t, noise
        )
        target_mse, per_example = terms["target_mse"], terms["loss"]
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
            scores = recovery_scores if mask.shape[-1] == 1 else class_recovery_scores
            for key, value in scores(pred, mask, other, encoding).items():
                metrics_t[f"{key}_{name}"] = value
            terms = model.loss_terms(schedule, outputs, x0, x_t, tb, noise, mask)
            metrics_t[f"loss_{name}"] = terms["loss"]
            metrics_t[f"target_mse_{name}"] = terms["target_mse"]
        return metrics_t

    return step


def recovery_scores(
    pred: jax.Array, mask: jax.Array, other: jax.Array, encoding: str
) -> dict[str, jax.Array]:
    """x0 MSE, Dice, IoU and chance Dice (against `other`) of a predicted one-channel x0,
    read as a probability (decoded and clipped), each (N,)."""
    prob = mask_encoding.decode_mask(pred, encoding, clip=True)
    return {
        "mse": losses.mean_flat(jnp.square(prob - mask)),
        "dice": metrics.dice(prob, mask),
        "iou": metrics.iou(prob, mask),
        "chance_dice": metrics.dice(prob, other),
    }


def class_recovery_scores(
    pred: jax.Array, mask: jax.Array, other: jax.Array, encoding: str
) -> dict[str, jax.Array]:
    """The same per foreground class, each (N, C): MSE of each class channel's probability,
    Dice / IoU / chance Dice of the arg-max label map, one class against the rest."""
    prob = mask_encoding.class_probabilities(pred, encoding)
    k = prob.shape[-1]
    labels = multiclass.predict(prob)
    conf = multiclass.confusion_matrix(labels, jnp.argmax(mask, -1), k)
    chance = multiclass.confusion_matrix(labels, jnp.argmax(other, -1), k)
    return {
        "mse": jnp.mean(jnp.square(prob - mask), axis=(1, 2))[:, 1:],
        "dice": multiclass.dice_from_confusion(conf)[:, 1:],
        "iou": multiclass.iou_from_confusion(conf)[:, 1:],
        "chance_dice": multiclass.dice_from_confusion(chance)[:, 1:],
    }


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
    """Host arrays for `segmentation_step`: images, {0, 1} masks (or one-hot masks, checked),
    shifted masks, fixed noise."""
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    if images.ndim != 4 or masks.ndim != 4:
        raise ValueError(
            f"analysis: need images (N, H, W, C) and masks (N, H, W, 1) or one-hot "
            f"(N, H, W, C + 1), got {images.shape} and {masks.shape}"
        )
    if masks.shape[-1] == 1:
        masks = (masks > 0.5).astype(np.float32)
    else:
        mask_encoding.check_one_hot(masks, "analysis masks")
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


def prior_scores(masks: np.ndarray) -> dict[str, Any]:
    """Dice/IoU of the mask prior (pixel-wise mean mask > 0.5; for one-hot masks the arg-max
    of the mean) against each mask, averaged over masks; per foreground class, (C,), for
    one-hot masks."""
    masks = np.asarray(masks, np.float32)
    if masks.shape[-1] > 1:
        k = masks.shape[-1]
        prior = np.broadcast_to(np.argmax(masks.mean(axis=0), -1), masks.shape[:-1])
        conf = multiclass.confusion_matrix(jnp.asarray(prior), jnp.argmax(masks, -1), k)
        return {
            "prior_dice": np.mean(multiclass.dice_from_confusion(conf), 0)[1:],
            "prior_iou": np.mean(multiclass.iou_from_confusion(conf), 0)[1:],
        }
    masks = (masks > 0.5).astype(np.float32)
    prior = np.broadcast_to(masks.mean(axis=0, keepdims=True), masks.shape)
    return {
        "prior_dice": float(np.mean(metrics.dice(prior, masks))),
        "prior_iou": float(np.mean(metrics.iou(prior, masks))),
    }


def split_classes(
    per_image: Mapping[str, np.ndarray], class_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Per-class curves (K, N, C) of a multi-class analysis -> (class average, {class name:
    curves}); per-image curves (K, N), the losses, go unchanged into both."""
    average = {k: v.mean(-1) if v.ndim == 3 else v for k, v in per_image.items()}
    per_class = {
        name: {k: v[..., c] if v.ndim == 3 else v for k, v in per_image.items()}
        for c, name in enumerate(class_names)
    }
    return average, per_class
