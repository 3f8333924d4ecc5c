"""Training objectives, one per model mode, built on `jdiffseg.diffusion`.

* ``diffusion`` (E2): noise the encoded mask to x_t, predict the target of
  `config.diffusion.prediction` (ε, x0 or v) from (x_t, t, image); squared error averaged over
  pixels (`loss_reduction='mean'`, EnsemDiff, MedSegDiff) or summed per image (`'sum'`,
  SegDiff), plus the VB term when the variance is learned (`use_vb`), times the per-example
  timestep weight. MedSegDiff's calibration head adds `cal_loss_weight` × MSE(sigmoid cal, mask).
* ``feedforward`` (E1): x_t is all zeros and t = `config.train.feedforward_t`; the output is
  mask logits; soft Dice + binary cross-entropy (plus the calibration loss when a 'cal' head
  exists). With one-hot multi-class masks (C + 1 channels): softmax, soft Dice averaged over
  the foreground classes + cross-entropy over all classes, as nnU-Net trains.
* ``mask_only`` (E3): no image; squared error of the x0 implied by the output (under the
  configured prediction target) against the encoded mask, plus VB when learned.
* ``image_generation`` (E4): the diffusion objective on the images themselves, no condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdiffseg import diffusion
from jdiffseg.diffusion import timesteps
from jdiffseg.diffusion.schedules import Schedule
from jdiffseg.models import modes

DICE_SMOOTH = 1.0

LossFn = Callable[..., tuple[jax.Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """Static settings of a loss (hashable, read from the config once)."""

    mode: str
    prediction: str
    variance: str
    encoding: str
    reduction: str
    use_vb: bool
    rescale_timesteps: bool
    num_timesteps: int
    feedforward_t: int
    cal_loss_weight: float


def from_config(config: Any) -> Objective:
    """Reads and validates the loss settings of a full config."""
    mode = config.model.mode
    if mode not in modes.MODES:
        raise ValueError(f"config.model.mode={mode!r} is not one of {modes.MODES}")
    d = config.diffusion
    T = int(d.num_timesteps)
    if not 0 <= int(config.train.feedforward_t) < T:
        raise ValueError(
            f"config.train.feedforward_t={config.train.feedforward_t} must lie in [0, {T - 1}]"
        )
    return Objective(
        mode=mode,
        prediction=d.prediction,
        variance=d.variance,
        encoding=d.mask_encoding,
        reduction=d.loss_reduction,
        use_vb=bool(d.use_vb),
        rescale_timesteps=bool(d.rescale_timesteps),
        num_timesteps=T,
        feedforward_t=int(config.train.feedforward_t),
        cal_loss_weight=float(config.train.cal_loss_weight),
    )


def model_timesteps(obj: Objective, t: jax.Array) -> jax.Array:
    """What the network sees for timestep t: t itself, or t·1000/T (improved-diffusion's
    `rescale_timesteps`, used by SegDiff)."""
    if obj.rescale_timesteps:
        return diffusion.scale_timesteps(t, obj.num_timesteps)
    return t


def soft_dice_loss(logits: jax.Array, mask01: jax.Array) -> jax.Array:
    """Per-image 1 - soft Dice of sigmoid(logits) against a {0, 1} mask (smoothed by 1)."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    axes = tuple(range(1, p.ndim))
    inter = jnp.sum(p * mask01, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(mask01, axis=axes)
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)


def softmax_dice_loss(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """Per-image 1 - soft Dice of softmax(logits) against one-hot masks (B, H, W, C + 1),
    averaged over the foreground classes 1 … C (smoothed by 1 per class)."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    axes = tuple(range(1, p.ndim - 1))
    inter = jnp.sum(p * onehot, axis=axes)
    denom = jnp.sum(p, axis=axes) + jnp.sum(onehot, axis=axes)
    dice = (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    return 1.0 - jnp.mean(dice[:, 1:], axis=-1)


def softmax_ce_loss(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """Per-image mean cross-entropy of softmax(logits) against one-hot masks."""
    ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
    return diffusion.mean_flat(ce)


def bce_loss(logits: jax.Array, mask01: jax.Array) -> jax.Array:
    """Per-image mean binary cross-entropy with logits."""
    ce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), mask01)
    return diffusion.mean_flat(ce)


def calibration_loss(cal: jax.Array, mask01: jax.Array) -> jax.Array:
    """MedSegDiff's per-image calibration loss: mean squared error of its sigmoid head."""
    return diffusion.mean_flat(jnp.square(cal.astype(jnp.float32) - mask01))


def diffusion_terms(
    obj: Objective,
    schedule: Schedule,
    model_out: jax.Array,
    x0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    noise: jax.Array,
) -> dict[str, jax.Array]:
    """The per-example objective of the diffusion-type modes at t, (B,) each: 'loss' (the
    prediction-target error plus VB when learned), 'target_mse' (that error alone; for mask-only
    runs the error of the implied x0) and 'vb'. Training and the analysis both call this."""
    terms = diffusion.training_losses(
        schedule, model_out, x0, x_t, t, noise, prediction=obj.prediction,
        variance=obj.variance, reduction=obj.reduction, use_vb=obj.use_vb,
    )
    if obj.mode != "mask_only":
        return {"loss": terms["loss"], "target_mse": terms["mse"], "vb": terms["vb"]}
    mean_out, _ = diffusion.split_model_output(model_out.astype(jnp.float32), x_t, obj.variance)
    x0_hat = diffusion.predict_x0(schedule, mean_out, x_t, t, obj.prediction)
    reduce = diffusion.mean_flat if obj.reduction == "mean" else diffusion.sum_flat
    x0_mse = reduce(jnp.square(x0_hat - x0))
    return {"loss": x0_mse + terms["vb"], "target_mse": x0_mse, "vb": terms["vb"]}


def _positive(weight: float | jax.Array) -> bool:
    """Whether a loss term is on; a traced weight (a population's per-replica value, all
    replicas positive) is."""
    return not isinstance(weight, int | float) or weight > 0


def make_loss_fn(
    obj: Objective,
    model: Any,
    schedule: Schedule,
    sampler: timesteps.TimestepSampler,
) -> LossFn:
    """`loss_fn(params, batch_stats, batch, key, ts_state, train) -> (loss, aux)`.

    `batch` holds 'image' (B, H, W, C) in [-1, 1] and 'mask' (B, H, W, 1) in {0, 1} (or
    one-hot (B, H, W, C + 1); every diffusion term then works per channel). `aux` has
    'metrics' (scalars), 'batch_stats' (updated when training a BatchNorm model), 't' and
    'per_example' (the unweighted per-example loss, fed to the importance sampler).
    """

    def apply(params, batch_stats, x_t, t, image, key, train):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        kwargs: dict[str, Any] = {"train": train}
        if train:
            kwargs["rngs"] = {"dropout": key}
        t_in = model_timesteps(obj, t)
        if batch_stats and train:
            out, updates = model.apply(
                variables, x_t, t_in, image, mutable=["batch_stats"], **kwargs
            )
            return out, updates["batch_stats"]
        return model.apply(variables, x_t, t_in, image, **kwargs), batch_stats

    def loss_fn(params, batch_stats, batch, key, ts_state, train=True):
        t_key, noise_key, model_key = jax.random.split(key, 3)
        mask01 = batch["mask"].astype(jnp.float32)
        image = batch["image"].astype(jnp.float32)
        B = mask01.shape[0]
        metrics: dict[str, jax.Array] = {}

        if obj.mode == "feedforward":
            t = jnp.full((B,), obj.feedforward_t, jnp.int32)
            out, new_stats = apply(
                params, batch_stats, jnp.zeros_like(mask01), t, image, model_key, train
            )
            logits = out["out"][..., : mask01.shape[-1]]
            if mask01.shape[-1] == 1:
                dice_l, ce_l = soft_dice_loss(logits, mask01), bce_loss(logits, mask01)
            else:
                dice_l, ce_l = softmax_dice_loss(logits, mask01), softmax_ce_loss(logits, mask01)
            per_example = dice_l + ce_l
            weighted = per_example
            metrics.update(dice_loss=jnp.mean(dice_l), bce=jnp.mean(ce_l))
        else:
            t, weights = timesteps.sample(sampler, ts_state, t_key, B)
            if obj.mode == "image_generation":
                x0, cond = image, None
            else:
                x0 = diffusion.encode_mask(mask01, obj.encoding)
                cond = image if obj.mode == "diffusion" else None
            noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
            x_t = diffusion.q_sample(schedule, x0, t, noise)
            out, new_stats = apply(params, batch_stats, x_t, t, cond, model_key, train)
            terms = diffusion_terms(obj, schedule, out["out"], x0, x_t, t, noise)
            per_example = terms["loss"]
            metrics["x0_mse" if obj.mode == "mask_only" else "mse"] = jnp.mean(terms["target_mse"])
            if obj.use_vb and obj.variance == "learned_range":
                metrics["vb"] = jnp.mean(terms["vb"])
            weighted = per_example * weights

        loss = jnp.mean(weighted)
        if "cal" in out and _positive(obj.cal_loss_weight) and modes.uses_image(obj.mode):
            cal = jnp.mean(calibration_loss(out["cal"], mask01))
            metrics["cal_loss"] = cal
            loss = loss + obj.cal_loss_weight * cal
        metrics["loss"] = loss
        aux = {"metrics": metrics, "batch_stats": new_stats, "t": t, "per_example": per_example}
        return loss, aux

    return loss_fn
