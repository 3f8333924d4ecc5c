"""Noise schedules: betas, alphas, cumulative products, log-SNR and posterior coefficients.

Everything is computed in float64 NumPy once, when a schedule is built (as guided-diffusion
does), and stored as float32 `jax.Array`s in a `Schedule`, a pytree that can be passed into
jitted functions. Timesteps are 0-based: index t holds the quantities of diffusion step t + 1
of the papers, so `alphas_cumprod[0] = 1 - betas[0]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "custom")
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-timestep coefficients of a Gaussian diffusion process, each of shape (T,).

    `timestep_map[i]` is the timestep of the original process that index i stands for; it is
    the identity unless the schedule was made by `respace`. Models are always called with
    `timestep_map[i]`, so a respaced sampler runs a model trained on the full chain.
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    log_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    log_snr: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    log_betas: jax.Array
    fixed_large_variance: jax.Array
    fixed_large_log_variance: jax.Array
    timestep_map: jax.Array

    @property
    def num_timesteps(self) -> int:
        """Number of steps T of this (possibly respaced) process."""
        return self.betas.shape[0]


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s linear betas rescaled by 1000/T (T=1000: 1e-4…0.02, T=100: 0.001…0.2)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, offset: float = COSINE_OFFSET) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule, betas clipped at 0.999."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + offset) / (1.0 + offset) * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), MAX_BETA)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def betas_from_alphas_cumprod(alphas_cumprod: Sequence[float] | np.ndarray) -> np.ndarray:
    """Betas of the process whose cumulative products are `alphas_cumprod` (validated)."""
    alphas_cumprod = _validate_alphas_cumprod(alphas_cumprod, "alphas_cumprod")
    previous = np.concatenate([[1.0], alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / previous


def schedule_from_betas(
    betas: Sequence[float] | np.ndarray,
    timestep_map: Sequence[int] | np.ndarray | None = None,
    *,
    where: str = "betas",
) -> Schedule:
    """Build a `Schedule` from betas; `where` names the source in error messages."""
    b = _validate_betas(betas, where)
    alphas = 1.0 - b
    ac = np.cumprod(alphas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at t=0; its log is clipped to the value at t=1.
    post_var_clipped = np.concatenate([post_var[1:2], post_var[1:]])
    # guided-diffusion's fixed_large uses the posterior variance at t=0 for a better decoder NLL.
    large_var = np.concatenate([post_var[1:2], b[1:]])
    if timestep_map is None:
        timestep_map = np.arange(len(b))
    arrays = {
        "betas": b,
        "alphas": alphas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0),
        "log_snr": np.log(ac) - np.log(1.0 - ac),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(post_var_clipped),
        "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "log_betas": np.log(b),
        "fixed_large_variance": large_var,
        "fixed_large_log_variance": np.log(large_var),
    }
    fields = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()}
    return Schedule(**fields, timestep_map=jnp.asarray(timestep_map, dtype=jnp.int32))


def make_schedule(
    name: str,
    num_timesteps: int | None = None,
    *,
    betas: Sequence[float] | np.ndarray | None = None,
    alphas_cumprod: Sequence[float] | np.ndarray | None = None,
) -> Schedule:
    """A named schedule ('linear', 'cosine') of T steps, or 'custom' from betas or alphas_cumprod.

    For 'custom' give exactly one of `betas` / `alphas_cumprod`; `num_timesteps`, if given,
    must match its length.
    """
    if name in ("linear", "cosine"):
        if betas is not None or alphas_cumprod is not None:
            raise ValueError(f"schedule {name!r} takes no betas/alphas_cumprod; use 'custom'")
        if num_timesteps is None or int(num_timesteps) < 2:
            raise ValueError(f"schedule {name!r} needs num_timesteps >= 2, got {num_timesteps}")
        t = int(num_timesteps)
        make = linear_betas if name == "linear" else cosine_betas
        return schedule_from_betas(make(t), where=f"{name} schedule with num_timesteps={t}")
    if name != "custom":
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")
    if (betas is None) == (alphas_cumprod is None):
        raise ValueError("custom schedule needs exactly one of betas= or alphas_cumprod=")
    if betas is not None:
        b, where = np.asarray(betas, dtype=np.float64), "custom betas"
    else:
        b, where = betas_from_alphas_cumprod(alphas_cumprod), "custom alphas_cumprod"
    if num_timesteps is not None and b.ndim == 1 and len(b) != int(num_timesteps):
        raise ValueError(f"{where} has {len(b)} values but num_timesteps is {num_timesteps}")
    return schedule_from_betas(b, where=where)


def from_config(diffusion_config: Any) -> Schedule:
    """The schedule described by `config.diffusion` (num_timesteps, schedule, custom_betas)."""
    name = diffusion_config.schedule
    num_timesteps = int(diffusion_config.num_timesteps)
    if name not in SCHEDULES:
        raise ValueError(f"config.diffusion.schedule={name!r} is not one of {SCHEDULES}")
    if name != "custom":
        return make_schedule(name, num_timesteps)
    custom = diffusion_config.custom_betas
    if not custom:
        raise ValueError("config.diffusion.schedule='custom' needs config.diffusion.custom_betas")
    if len(custom) != num_timesteps:
        raise ValueError(
            f"config.diffusion.custom_betas has {len(custom)} values but "
            f"config.diffusion.num_timesteps is {num_timesteps}"
        )
    b = np.asarray(custom, dtype=np.float64)
    return schedule_from_betas(b, where="config.diffusion.custom_betas")


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Timesteps kept from a T-step process, with guided-diffusion's `space_timesteps` semantics.

    `section_counts` is an int or a list ("10,15,20" or [10, 15, 20]) of step counts, one per
    equal-sized section of the chain, each section strided evenly with rounding; or "ddimN" for
    the DDIM paper's fixed integer stride giving exactly N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride"
            )
        section_counts = [int(c) for c in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    counts = list(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def respace(schedule: Schedule, kept_timesteps: Iterable[int]) -> Schedule:
    """The process that visits only `kept_timesteps` (indices into `schedule`).

    As guided-diffusion's `SpacedDiffusion`: ᾱ is kept at the kept steps and betas are
    recomputed from consecutive kept ᾱ; `timestep_map` maps each new index to the original t.
    Needs concrete arrays (call it outside of jit).
    """
    alphas_cumprod = concrete_alphas_cumprod(schedule, "respace")
    old_map = np.asarray(schedule.timestep_map)
    kept = sorted({int(k) for k in kept_timesteps})
    if len(kept) < 2 or kept[0] < 0 or kept[-1] >= len(alphas_cumprod):
        raise ValueError(
            f"kept timesteps must be at least 2 distinct steps in [0, {len(alphas_cumprod) - 1}], "
            f"got {kept}"
        )
    new_betas = betas_from_alphas_cumprod(alphas_cumprod[kept])
    return schedule_from_betas(new_betas, old_map[kept], where="respaced betas")


def concrete_alphas_cumprod(schedule: Schedule, caller: str) -> np.ndarray:
    """ᾱ of `schedule` in float64, recomputed from its betas: 1 − ᾱ stays accurate near t = 0.

    Needs concrete arrays; `caller` names the function in the error raised under jit.
    """
    try:
        betas32 = np.asarray(schedule.betas)
    except jax.errors.TracerArrayConversionError as e:
        raise ValueError(f"{caller} needs a concrete schedule; call it outside jax.jit") from e
    return np.cumprod(1.0 - betas32.astype(np.float64))


def scale_timesteps(t: jax.Array, original_num_timesteps: int) -> jax.Array:
    """t·1000/T as float32: improved-diffusion's `rescale_timesteps=True` model input (SegDiff)."""
    return t.astype(jnp.float32) * (1000.0 / original_num_timesteps)


def _validate_betas(betas: Sequence[float] | np.ndarray, where: str) -> np.ndarray:
    return _validate_unit_interval(betas, where, "beta")


def _validate_alphas_cumprod(values: Sequence[float] | np.ndarray, where: str) -> np.ndarray:
    ac = _validate_unit_interval(values, where, "value")
    rising = np.flatnonzero(np.diff(ac) >= 0.0)
    if rising.size:
        i = int(rising[0]) + 1
        raise ValueError(
            f"{where}: must be strictly decreasing; value[{i}] = {float(ac[i])!r} >= "
            f"value[{i - 1}] = {float(ac[i - 1])!r}"
        )
    return ac


def _validate_unit_interval(values: Sequence[float] | np.ndarray, where: str, name: str
                            ) -> np.ndarray:
    """A 1-D float64 array of at least 2 finite entries, each strictly inside (0, 1)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) < 2:
        raise ValueError(f"{where}: need a 1-D array of at least 2 {name}s, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a) | (a <= 0.0) | (a >= 1.0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: every {name} must lie in (0, 1); {name}[{i}] = {float(a[i])!r}")
    return a
