"""A task's fingerprint from the timestep analysis, and diffusion adapted to it.

The image's contribution at timestep t is Δ(t) = recovery with the image − recovery without it,
where recovery is one of the analysis curves (x0 MSE, Dice or IoU of the x0 prediction) and
"without" is the blank-image prediction of the same model or the mask-only (E3) model. Δ(t) is
signed so that positive means "the image helps": Δ = MSE_without − MSE_with for MSE,
Dice_with − Dice_without for Dice/IoU. Curves analysed with a stride are linearly interpolated
onto all T timesteps before anything is derived from them.

Summary numbers (`summary`): the mean and peak of Δ and where the peak lies; the range where
Δ ≥ fraction · peak and the share of the chain outside it (where the image adds ~nothing) —
None / 1.0 when the peak is not `SIGNIFICANCE` standard errors (over images) above zero; and
"half-lives": the t/(T−1) at which a Dice curve has fallen halfway from its t=0 value to its
chance level (the mean chance Dice over the last tenth of the chain) — early for many small
objects, late for one large one.

Adapted diffusion (the journal version's proposal) turns Δ into config overrides for a new
training run (`adapted_overrides`):

* ``range``: train only on [t_min, t_max], the timesteps where Δ ≥ fraction · peak
  (`diffusion.timestep_sampling='range'`);
* ``weights``: sample t with probability ∝ max(Δ⁺/peak, floor), normalised to sum to one
  (`timestep_sampling='weights'`, `timestep_weights`);
* ``schedule``: the same noise levels re-spaced so that more of the T steps fall where Δ is
  large: with density ρ = those weights and F its normalised cumulative (trapezoid) sum, new
  step u sits at old time τ_u = F⁻¹(u / (T−1)) and gets log ᾱ interpolated there
  (`schedule='custom'`, `custom_betas`). The endpoints ᾱ_0 and ᾱ_{T−1} are unchanged, and a
  constant Δ gives back the original schedule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jdiffseg.config import parsing
from jdiffseg.diffusion import schedules, timesteps

METRICS = ("mse", "dice", "iou")
REFERENCES = ("blank", "mask_only")
METHODS = ("range", "weights", "schedule")
CHANCE_TAIL = 0.1  # the last tenth of the chain estimates a curve's chance level
SIGNIFICANCE = 2.0  # adapt only to a peak of Δ this many standard errors above zero


def options_from_config(analysis_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fingerprint options of `config.analysis`: metric, reference, fraction."""
    return {
        "metric": analysis_config.adapt_metric,
        "reference": analysis_config.adapt_reference,
        "fraction": float(analysis_config.adapt_fraction),
    }


def _check(metric: str, reference: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"config.analysis.adapt_metric={metric!r} is not one of {METRICS}")
    if reference not in REFERENCES:
        raise ValueError(
            f"config.analysis.adapt_reference={reference!r} is not one of {REFERENCES}"
        )


def _curve(result: Mapping[str, Any], name: str) -> np.ndarray:
    curves = result["curves"]
    if name not in curves:
        where = result.get("path") or result.get("workdir") or "the analysis result"
        hint = " (analyse with --mask_only_workdir)" if name.endswith("mask_only") else ""
        raise KeyError(f"{where}: no curve {name!r}{hint}; have {sorted(curves)}")
    return np.asarray(curves[name], np.float64)


def contribution(
    result: Mapping[str, Any], metric: str = "mse", reference: str = "blank"
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, Δ) of an analysis result; Δ > 0 where the image improves recovery."""
    _check(metric, reference)
    with_image = _curve(result, f"{metric}_image")
    without = _curve(result, f"{metric}_{reference}")
    delta = without - with_image if metric == "mse" else with_image - without
    return np.asarray(result["timesteps"], np.int64), delta


def dense(
    timesteps: Sequence[int] | np.ndarray, values: np.ndarray, num_timesteps: int
) -> np.ndarray:
    """`values` at `timesteps` linearly interpolated onto 0..T−1."""
    t = np.asarray(timesteps, np.float64)
    if t.ndim != 1 or len(t) != len(values) or len(t) < 1:
        raise ValueError(f"need one value per timestep, got {len(values)} for {len(t)} timesteps")
    if np.any(np.diff(t) <= 0) or t[0] < 0 or t[-1] > num_timesteps - 1:
        raise ValueError(f"timesteps must increase within [0, {num_timesteps - 1}]")
    return np.interp(np.arange(num_timesteps, dtype=np.float64), t, np.asarray(values, np.float64))


def check_significant(result: Mapping[str, Any], metric: str, reference: str) -> None:
    """Raises unless the peak of Δ(t) is more than `SIGNIFICANCE` standard errors (over the
    analysed images, stored by the analysis as 'contribution_sem') above zero."""
    sem = result.get("contribution_sem", {}).get(f"{metric}_{reference}")
    if sem is None:
        return
    _, delta = contribution(result, metric, reference)
    i = int(np.argmax(delta))
    if not delta[i] > SIGNIFICANCE * sem[i]:
        raise ValueError(
            f"the image's largest contribution (Δ{metric} = {delta[i]:.3g} at "
            f"t={result['timesteps'][i]}) is within {SIGNIFICANCE:g} standard errors "
            f"({sem[i]:.3g}) of zero over {result.get('num_images', '?')} images: not a "
            "fingerprint to adapt to; analyse more images or a better-trained model"
        )


def _positive_peak(delta: np.ndarray) -> float:
    peak = float(np.max(delta))
    if not peak > 0.0:
        raise ValueError(
            "the image never improves recovery (max Δ(t) = "
            f"{peak:.3g}); there is nothing to adapt the diffusion to"
        )
    return peak


def adapted_range(delta: np.ndarray, fraction: float = 0.1) -> tuple[int, int]:
    """(t_min, t_max), inclusive: first and last t with Δ(t) ≥ fraction · max Δ (dense Δ)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"config.analysis.adapt_fraction must lie in [0, 1], got {fraction}")
    peak = _positive_peak(delta)
    idx = np.flatnonzero(delta >= fraction * peak)
    return int(idx[0]), int(idx[-1])


def adapted_weights(delta: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Per-t probabilities ∝ max(Δ⁺ / max Δ, floor), summing to one (dense Δ)."""
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"config.analysis.adapt_floor must lie in (0, 1], got {floor}")
    peak = _positive_peak(delta)
    w = np.maximum(np.clip(delta, 0.0, None) / peak, floor)
    return w / np.sum(w)


def warped_alphas_cumprod(density: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """ᾱ re-spaced so that step density follows `density` (> 0, one value per t).

    New step u sits at old time τ_u = F⁻¹(u / (T−1)), F the normalised cumulative trapezoid
    sum of `density`; log ᾱ is interpolated there. Endpoints are kept.
    """
    density = np.asarray(density, np.float64)
    ac = np.asarray(alphas_cumprod, np.float64)
    if density.shape != ac.shape or density.ndim != 1 or len(ac) < 2:
        raise ValueError(f"density {density.shape} and alphas_cumprod {ac.shape} must match")
    if np.any(density <= 0) or not np.all(np.isfinite(density)):
        raise ValueError("the step density must be positive and finite")
    T = len(ac)
    F = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])
    F /= F[-1]
    old = np.arange(T, dtype=np.float64)
    tau = np.interp(np.linspace(0.0, 1.0, T), F, old)
    return np.exp(np.interp(tau, old, np.log(ac)))


def adapted_betas(delta: np.ndarray, base_betas: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Custom betas: the base schedule's noise levels with more steps where Δ is large."""

    base = np.asarray(base_betas, np.float64)
    if len(base) != len(delta):
        raise ValueError(f"{len(delta)} values of Δ for a schedule of {len(base)} steps")
    ac = warped_alphas_cumprod(adapted_weights(delta, floor), np.cumprod(1.0 - base))
    return schedules.betas_from_alphas_cumprod(ac)


def adapted_overrides(
    result: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    method: str,
    *,
    metric: str = "mse",
    reference: str = "blank",
    fraction: float = 0.1,
    floor: float = 0.1,
) -> dict[str, Any]:
    """Dotted config overrides (`parsing.update` / `--config.k=v`) for an adapted run.

    `config` is the analysed run's config; its schedule is the base of the 'schedule' method.
    """

    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; expected one of {METHODS}")
    T = int(result["num_timesteps"])
    if int(config.diffusion.num_timesteps) != T:
        raise ValueError(
            f"the analysis has T={T} but config.diffusion.num_timesteps is "
            f"{config.diffusion.num_timesteps}"
        )
    check_significant(result, metric, reference)
    t, delta = contribution(result, metric, reference)
    delta = dense(t, delta, T)
    if method == "range":
        lo, hi = adapted_range(delta, fraction)
        return {"diffusion.timestep_sampling": "range", "diffusion.t_min": lo,
                "diffusion.t_max": hi}
    if method == "weights":
        w = adapted_weights(delta, floor)
        return {"diffusion.timestep_sampling": "weights",
                "diffusion.timestep_weights": tuple(float(x) for x in w)}
    base = np.asarray(schedules.from_config(config.diffusion).betas, np.float64)
    betas = adapted_betas(delta, base, floor)
    return {"diffusion.schedule": "custom",
            "diffusion.custom_betas": tuple(float(x) for x in betas)}


def write_adapted(
    result: Mapping[str, Any], config: ml_collections.ConfigDict, out_dir: str
) -> tuple[list[str], dict[str, Any]]:
    """Writes adapted_config.json and adapted_<method>.flags for every method.

    Returns (paths written, the table in adapted_config.json).

    Each override set is checked by loading it into a copy of `config` and building its noise
    schedule and timestep sampler. A method that cannot be derived is recorded with its reason.
    """

    a = config.analysis
    opts = {**options_from_config(a), "floor": float(a.adapt_floor)}
    table: dict[str, Any] = {"source": result.get("path") or result.get("workdir"), **opts,
                             "methods": {}}
    if "derived_from" in result:  # a multi-class run: which class (or their average)
        table["derived_from"] = result["derived_from"]
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for method in METHODS:
        try:
            overrides = adapted_overrides(result, config, method, **opts)
        except ValueError as e:
            table["methods"][method] = {"error": str(e)}
            continue
        trial = parsing.from_json(parsing.to_json(config))
        parsing.update(trial, overrides)
        schedules.from_config(trial.diffusion)
        timesteps.from_config(trial.diffusion)
        table["methods"][method] = overrides
        path = os.path.join(out_dir, f"adapted_{method}.flags")
        with open(path, "w") as f:
            f.write("\n".join(parsing.override_flags(overrides)) + "\n")
        paths.append(path)
    json_path = os.path.join(out_dir, "adapted_config.json")
    with open(json_path, "w") as f:
        json.dump(table, f, indent=2)
    return [json_path, *paths], table


def half_life(
    timesteps: np.ndarray, recovery: np.ndarray, chance: float, num_timesteps: int
) -> float | None:
    """t/(T−1) where `recovery` first falls halfway from its t=0 value to `chance`.

    Linear interpolation between the two analysed timesteps around the crossing; None when the
    curve starts at or below chance or never falls that far.
    """
    start = float(recovery[0])
    if start <= chance:
        return None
    level = (start + chance) / 2.0
    below = np.flatnonzero(recovery < level)
    if not below.size:
        return None
    i = int(below[0])
    t0, t1, r0, r1 = timesteps[i - 1], timesteps[i], recovery[i - 1], recovery[i]
    t_cross = t0 + (r0 - level) / (r0 - r1) * (t1 - t0)
    return float(t_cross / (num_timesteps - 1))


def _chance_level(result: Mapping[str, Any], variant: str) -> float:
    chance = _curve(result, f"chance_dice_{variant}")
    tail = max(1, round(CHANCE_TAIL * len(chance)))
    return float(np.mean(chance[-tail:]))


def summary(
    result: Mapping[str, Any],
    *,
    metric: str = "mse",
    reference: str = "blank",
    fraction: float = 0.1,
) -> dict[str, Any]:
    """The fingerprint's numbers (see the module docstring); JSON-serialisable."""
    T = int(result["num_timesteps"])
    t, delta = contribution(result, metric, reference)
    d = dense(t, delta, T)
    peak_i = int(np.argmax(d))
    out: dict[str, Any] = {
        "metric": metric,
        "reference": reference,
        "mean_contribution": float(np.mean(d)),
        "peak_contribution": float(d[peak_i]),
        "peak_t": peak_i,
        "peak_t_fraction": peak_i / (T - 1),
    }
    try:
        check_significant(result, metric, reference)
        lo, hi = adapted_range(d, fraction)
        out["useful_range"] = [lo, hi]
        out["no_gain_fraction"] = float(np.mean(d < fraction * d[peak_i]))
    except ValueError:
        out["useful_range"] = None
        out["no_gain_fraction"] = 1.0
    variants = [v for v in ("image", "blank", "mask_only") if f"dice_{v}" in result["curves"]]
    for v in variants:
        chance = _chance_level(result, v)
        out[f"chance_dice_{v}"] = chance
        out[f"half_life_{v}"] = half_life(t, _curve(result, f"dice_{v}"), chance, T)
    return out


def format_summary(s: Mapping[str, Any]) -> str:
    """One line of the main fingerprint numbers."""
    parts = [
        f"Δ{s['metric']} vs {s['reference']}: mean {s['mean_contribution']:.4g}",
        f"peak {s['peak_contribution']:.4g} at t={s['peak_t']} ({s['peak_t_fraction']:.2f})",
        f"useful range {s['useful_range']}",
    ]
    for key in ("half_life_image", "half_life_blank", "half_life_mask_only"):
        if key in s:
            value = s[key]
            parts.append(f"{key} {'-' if value is None else f'{value:.2f}'}")
    return "; ".join(parts)
