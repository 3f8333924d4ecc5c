"""Foreground probabilities from a trained model: the ensemble for diffusion modes, the sigmoid
for feed-forward ones. Used by validation during training, by evaluation and by the analysis.

A diffusion model draws `ensemble_size` masks per image with DDPM or (respaced) DDIM; each
member is decoded into the {0, 1} scale and clipped to [0, 1], and the ensemble probability is
their mean (EnsemDiff and SegDiff fuse that mean by thresholding). A feed-forward model gives
one member, sigmoid(logits). Everything runs in one `jax.jit`, sharded over the batch when a
mesh is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jdiffseg import diffusion, objectives, sharding
from jdiffseg.diffusion import Schedule

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
    (B, H, W, C) in [-1, 1]. 'members' is (B, n, H, W, 1) and 'mean' (B, H, W, 1), both
    foreground probabilities in [0, 1]. With `mesh`, images and outputs are sharded over its
    'data' axis and the variables replicated. Modes: 'diffusion', 'feedforward' and
    'mask_only' (unconditional masks; the images only set the batch size).
    """
    obj = objectives.from_config(config)
    if obj.mode == "image_generation":
        raise ValueError("predict: model.mode='image_generation' produces images, not masks")
    schedule = diffusion.from_config(config.diffusion) if schedule is None else schedule
    low, high = diffusion.value_range(obj.encoding)

    def apply(variables, x_t, t, image):
        return model.apply(variables, x_t, objectives.model_timesteps(obj, t), image, train=False)

    def predict(variables: Any, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        images = images.astype(jnp.float32)
        B, H, W, _ = images.shape
        if obj.mode == "feedforward":
            t = jnp.full((B,), obj.feedforward_t, jnp.int32)
            out = apply(variables, jnp.zeros((B, H, W, 1), jnp.float32), t, images)
            members = jax.nn.sigmoid(out["out"][..., :1].astype(jnp.float32))[:, None]
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
                sample_shape=(H, W, 1),
                sampler=options.sampler,
                **kwargs,
            )
            members = diffusion.decode_mask(samples, obj.encoding, clip=True)
        return {"members": members, "mean": jnp.mean(members, axis=1)}

    if mesh is None:
        return jax.jit(predict)
    rep, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(predict, in_shardings=(rep, batch, rep), out_shardings=batch)


def predict_probabilities(
    config: Any,
    model: Any,
    variables: Any,
    images: jax.Array,
    key: jax.Array,
    options: SamplingOptions | None = None,
    *,
    mesh: Mesh | None = None,
) -> dict[str, jax.Array]:
    """One-off convenience around `make_predictor` (build the predictor once for many batches)."""
    options = options_from_config(config) if options is None else options
    return make_predictor(config, model, options, mesh=mesh)(variables, images, key)
