"""Foreground probabilities from a trained model: the ensemble for diffusion modes, the sigmoid
for feed-forward ones, optionally as a test-time ensemble (flips and rotations, or MC dropout).
Used by validation during training and by evaluation.

A diffusion model draws `ensemble_size` masks per image with DDPM or (respaced) DDIM; each
member is decoded into the {0, 1} scale and clipped to [0, 1], and the ensemble probability is
their mean (EnsemDiff and SegDiff fuse that mean by thresholding). A feed-forward model gives
one member, sigmoid(logits). Everything runs in one `jax.jit`, sharded over the batch when a
mesh is given. With multi-class masks (`config.data.num_classes` >= 2) the probabilities are
over the C + 1 classes: each member's x0 is decoded, clipped to [0, 1] and renormalised over
the classes (`diffusion.class_probabilities`), and a feed-forward model gives the softmax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jdiffseg import diffusion
from jdiffseg.diffusion import Schedule, objectives
from jdiffseg.runtime import sharding

Predictor = Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How masks are drawn: members per image, sampler, its steps (0: all T), DDIM's eta and
    DPM-Solver++'s time grid and lower-order final steps."""

    ensemble_size: int = 5
    sampler: str = "ddim"
    sampling_steps: int = 25
    eta: float = 0.0
    clip_x0: bool = True
    dpm_spacing: str = "logsnr"
    dpm_lower_order_final: bool = True

    def __post_init__(self) -> None:
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.sampler not in diffusion.SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {diffusion.SAMPLERS}")
        if self.sampling_steps < 0:
            raise ValueError(
                f"sampling_steps must be >= 0 (0: the full chain), got {self.sampling_steps}"
            )
        if self.dpm_spacing not in diffusion.SPACINGS:
            raise ValueError(f"dpm_spacing {self.dpm_spacing!r} is not one of {diffusion.SPACINGS}")

    def sampler_kwargs(self) -> dict[str, Any]:
        """The chosen sampler's step options for `diffusion.ensemble_sample`."""
        steps = self.sampling_steps or None
        if self.sampler in diffusion.SOLVERS:
            return {
                "steps": steps,
                "spacing": self.dpm_spacing,
                "lower_order_final": self.dpm_lower_order_final,
            }
        return {"timesteps": steps, **({"eta": self.eta} if self.sampler == "ddim" else {})}

    def describe(self) -> dict[str, Any]:
        """The sampling settings as recorded with evaluation results."""
        dpm = self.sampler in diffusion.SOLVERS
        return {
            "ensemble_size": self.ensemble_size,
            "sampler": self.sampler,
            "sampling_steps": self.sampling_steps,
            "eta": self.eta if self.sampler == "ddim" else None,
            "dpm_spacing": self.dpm_spacing if dpm else None,
            "dpm_lower_order_final": self.dpm_lower_order_final if dpm else None,
            "clip_x0": self.clip_x0,
        }


def options_from_config(config: Any, *, validation: bool = False) -> SamplingOptions:
    """`config.eval`'s sampling settings (the smaller `val_*` ensemble when `validation`)."""
    e = config.eval
    return SamplingOptions(
        ensemble_size=int(e.val_ensemble_size if validation else e.ensemble_size),
        sampler=e.sampler,
        sampling_steps=int(e.val_sampling_steps if validation else e.sampling_steps),
        eta=float(e.eta),
        clip_x0=bool(config.diffusion.clip_x0),
        dpm_spacing=str(e.dpm_spacing),
        dpm_lower_order_final=bool(e.dpm_lower_order_final),
    )


def mask_channels(config: Any) -> int:
    """Channels of the run's masks: 1, or C + 1 one-hot channels for C >= 2 classes (runs
    whose config.json predates `data.num_classes` are binary)."""
    return diffusion.mask_channels(int(config.data.get("num_classes", 1)))


def feedforward_probabilities(logits: jax.Array, channels: int) -> jax.Array:
    """Class probabilities of feed-forward logits: sigmoid of the one mask channel, or the
    softmax over the C + 1 class channels."""
    logits = logits[..., :channels].astype(jnp.float32)
    return jax.nn.sigmoid(logits) if channels == 1 else jax.nn.softmax(logits, axis=-1)


def member_probabilities(samples: jax.Array, encoding: str) -> jax.Array:
    """Sampled masks in the diffusion encoding -> probabilities: decoded and clipped (one
    channel), or clipped and renormalised over the class channels."""
    if samples.shape[-1] == 1:
        return diffusion.decode_mask(samples, encoding, clip=True)
    return diffusion.class_probabilities(samples, encoding)


def make_predictor(
    config: Any,
    model: Any,
    options: SamplingOptions,
    *,
    schedule: Schedule | None = None,
    mesh: Mesh | None = None,
) -> Predictor:
    """A jitted `predict(variables, images, key) -> {'members', 'mean'}`.

    `variables` is the Flax variable dict ({'params': ..., 'batch_stats'?: ...}); `images`
    (B, H, W, C) in [-1, 1]. 'members' is (B, n, H, W, K) and 'mean' (B, H, W, K), both
    probabilities in [0, 1]: of the foreground (K = 1) or of each of K = C + 1 classes. With
    `mesh`, images and outputs are sharded over its 'data' axis and the variables replicated.
    Modes: 'diffusion', 'feedforward' and 'mask_only' (unconditional masks; the images only
    set the batch size).
    """
    obj = objectives.from_config(config)
    if obj.mode == "image_generation":
        raise ValueError("predict: model.mode='image_generation' produces images, not masks")
    schedule = diffusion.from_config(config.diffusion) if schedule is None else schedule
    low, high = diffusion.value_range(obj.encoding)
    channels = mask_channels(config)

    def apply(variables, x_t, t, image):
        return model.apply(variables, x_t, objectives.model_timesteps(obj, t), image, train=False)

    def predict(variables: Any, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        images = images.astype(jnp.float32)
        B, H, W, _ = images.shape
        if obj.mode == "feedforward":
            t = jnp.full((B,), obj.feedforward_t, jnp.int32)
            out = apply(variables, jnp.zeros((B, H, W, channels), jnp.float32), t, images)
            members = feedforward_probabilities(out["out"], channels)[:, None]
        else:
            use_image = obj.mode == "diffusion"

            def model_fn(x, t, cond):
                return apply(variables, x, t, cond if use_image else None)["out"]

            kwargs: dict[str, Any] = {
                "prediction": obj.prediction,
                "variance": obj.variance,
                "clip_x0": options.clip_x0,
                "clip_range": (low, high),
                **options.sampler_kwargs(),
            }
            samples = diffusion.ensemble_sample(
                model_fn,
                schedule,
                images,
                options.ensemble_size,
                key,
                sample_shape=(H, W, channels),
                sampler=options.sampler,
                **kwargs,
            )
            members = member_probabilities(samples, obj.encoding)
        return {"members": members, "mean": jnp.mean(members, axis=1)}

    if mesh is None:
        return jax.jit(predict)
    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(predict, in_shardings=(rep, batch, rep), out_shardings=batch)


# Feed-forward test-time ensembles (`config.eval.ff_ensemble`).
FF_ENSEMBLES = ("none", "flip", "dropout")


def _dihedral(x: jax.Array, k: int, inverse: bool = False) -> jax.Array:
    """Transform k of the 8 symmetries of the square on (B, H, W, C) (rot90 k % 4, then flip)."""
    rot, flip = k % 4, k >= 4
    if not inverse:
        x = jnp.rot90(x, rot, axes=(1, 2))
        return jnp.flip(x, axis=2) if flip else x
    x = jnp.flip(x, axis=2) if flip else x
    return jnp.rot90(x, -rot, axes=(1, 2))


def _flip_ensemble(predict: Predictor, size: int, square: bool) -> Predictor:
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
    config: Any, model: Any, size: int, mesh: Any
) -> Predictor:
    """MC dropout: `size` feed-forward passes with dropout on, each with its own rng."""
    obj = objectives.from_config(config)
    channels = mask_channels(config)

    def run(variables: Any, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        images = images.astype(jnp.float32)
        B, H, W, _ = images.shape
        x_t = jnp.zeros((B, H, W, channels), jnp.float32)
        t = objectives.model_timesteps(obj, jnp.full((B,), obj.feedforward_t, jnp.int32))

        def one(k: jax.Array) -> jax.Array:
            out = model.apply(variables, x_t, t, images, train=True, rngs={"dropout": k})
            return feedforward_probabilities(out["out"], channels)

        members = jax.vmap(one, out_axes=1)(jax.random.split(key, size))
        return {"members": members, "mean": jnp.mean(members, axis=1)}

    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(run, in_shardings=(rep, batch, rep), out_shardings=batch)


def make_eval_predictor(
    config: Any,
    model: Any,
    variables: Mapping[str, Any],
    image_shape: tuple[int, ...],
    mesh: Any,
) -> tuple[Predictor, dict[str, Any]]:
    """The jitted `predict(variables, images, key)` for this run and a description of it."""
    e = config.eval
    mode = config.model.mode
    if mode != "feedforward":
        options = options_from_config(config)
        kind = "diffusion_ensemble" if mode == "diffusion" else "mask_only_ensemble"
        described = {"kind": kind, **options.describe(),
                     "num_timesteps": int(config.diffusion.num_timesteps)}
        return make_predictor(config, model, options, mesh=mesh), described
    size = int(e.ff_ensemble_size)
    if e.ff_ensemble == "none":
        options = options_from_config(config)
        return make_predictor(config, model, options, mesh=mesh), {"kind": "sigmoid"}
    if e.ff_ensemble == "flip":
        base = make_predictor(
            config, model, options_from_config(config), mesh=mesh
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
