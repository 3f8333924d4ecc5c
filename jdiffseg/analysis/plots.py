"""Figures of the timestep analysis: losses, recovery with and without the image, Δ(t).

matplotlib's object API on the Agg canvas (no pyplot state), as `jdiffseg.evaluation.figures`.
The x axis is t/(T−1), so runs with different chain lengths (an E4 run, other datasets) share
one axis.
Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jdiffseg.analysis import fingerprint

DPI = 120
_STYLE = {
    "image": dict(color="C0", ls="-", label="with image"),
    "blank": dict(color="C1", ls="--", label="blank image"),
    "mask_only": dict(color="C2", ls="-.", label="mask-only model"),
}


def _figure(ncols: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(4.6 * ncols, 3.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _t_fraction(result: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(result["timesteps"], np.float64) / (int(result["num_timesteps"]) - 1)


def _normalised(values: Sequence[float]) -> np.ndarray:
    """Min–max scaled to [0, 1] (a flat curve becomes 0)."""
    v = np.asarray(values, np.float64)
    span = np.max(v) - np.min(v)
    return (v - np.min(v)) / span if span > 0 else np.zeros_like(v)


def _variants(result: Mapping[str, Any]) -> list[str]:
    return [v for v in _STYLE if f"dice_{v}" in result["curves"]]


def plot_loss(result: Mapping[str, Any], path: str) -> str:
    """Loss vs t/(T−1): E2 (and E4 when analysed), each curve scaled to its own range.

    Left the full objective, min–max normalised. Right its prediction-target part alone (the
    ε-MSE of an ε model) over its minimum on a log axis: a learned variance's VB term, whose
    decoder NLL peaks at t = 0, flattens the left panel, and the log shows where a curve turns.
    """
    fig, (ax_loss, ax_target) = _figure(2)
    x = _t_fraction(result)
    gen = result.get("image_generation")
    gx = (np.asarray(gen["timesteps"], np.float64) / (int(gen["num_timesteps"]) - 1)
          if gen else None)
    for v in _variants(result):
        style = dict(_STYLE[v])
        style["label"] = f"segmentation, {style['label']}"
        ax_loss.plot(x, _normalised(result["curves"][f"loss_{v}"]), **style)
        if f"target_mse_{v}" in result["curves"]:
            ax_target.plot(x, _over_minimum(result["curves"][f"target_mse_{v}"]), **style)
    if gen:
        ax_loss.plot(gx, _normalised(gen["loss"]), color="k", ls="--", label="image generation")
        if "target_mse" in gen:
            ax_target.plot(gx, _over_minimum(gen["target_mse"]), color="k", ls="--",
                           label="image generation")
    ax_loss.set(xlabel="t / (T-1)", ylabel="min-max normalised", title="Training objective at t")
    ax_target.set(xlabel="t / (T-1)", ylabel="error / its minimum", yscale="log",
                  title="Target error at t (no VB)")
    ax_loss.legend(fontsize=7)
    ax_target.legend(fontsize=7)
    return _save(fig, path)


def _over_minimum(values: Sequence[float]) -> np.ndarray:
    """Each value over the curve's smallest positive value (1 at the minimum)."""
    v = np.asarray(values, np.float64)
    positive = v[v > 0]
    return v / positive.min() if positive.size else np.ones_like(v)


def plot_recovery(result: Mapping[str, Any], path: str) -> str:
    """Dice and x0 MSE of the x0 prediction vs t/(T−1), with and without the image."""
    fig, (ax_dice, ax_mse) = _figure(2)
    x = _t_fraction(result)
    curves, std = result["curves"], result.get("std", {})
    for v in _variants(result):
        dice = np.asarray(curves[f"dice_{v}"])
        ax_dice.plot(x, dice, **_STYLE[v])
        if f"dice_{v}" in std:
            s = np.asarray(std[f"dice_{v}"])
            ax_dice.fill_between(x, dice - s, dice + s, color=_STYLE[v]["color"], alpha=0.12)
        ax_dice.plot(x, curves[f"chance_dice_{v}"], color=_STYLE[v]["color"], ls=":", lw=1)
        ax_mse.plot(x, curves[f"mse_{v}"], **_STYLE[v])
    if "prior_dice" in result:
        ax_dice.axhline(result["prior_dice"], color="grey", ls="--", lw=1, label="mask prior")
    ax_dice.set(xlabel="t / (T-1)", ylabel="Dice of thresholded x0", ylim=(-0.02, 1.02),
                title="Recovery of the mask (dotted: chance)")
    ax_mse.set(xlabel="t / (T-1)", ylabel="x0 MSE", title="x0 error")
    ax_dice.legend(fontsize=7)
    return _save(fig, path)


def plot_contribution(
    result: Mapping[str, Any],
    path: str,
    *,
    metric: str = "mse",
    reference: str = "blank",
    fraction: float = 0.1,
) -> str:
    """Δ(t), the image's contribution, for every metric; for `metric` a band of ±2 standard
    errors over images and its useful range (when significant) shaded."""
    fig, (ax,) = _figure(1)
    x = _t_fraction(result)
    T = int(result["num_timesteps"])
    sem = result.get("contribution_sem", {})
    for m, color in zip(fingerprint.METRICS, ("C3", "C4", "C5"), strict=True):
        _, delta = fingerprint.contribution(result, m, reference)
        ax.plot(x, delta, color=color, lw=2 if m == metric else 1, label=f"Δ {m}")
        if m == metric and f"{m}_{reference}" in sem:
            band = fingerprint.SIGNIFICANCE * np.asarray(sem[f"{m}_{reference}"])
            ax.fill_between(x, delta - band, delta + band, color=color, alpha=0.15)
    useful = fingerprint.summary(result, metric=metric, reference=reference,
                                 fraction=fraction)["useful_range"]
    if useful:
        ax.axvspan(useful[0] / (T - 1), useful[1] / (T - 1), color="C3", alpha=0.1,
                   label="useful range")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set(xlabel="t / (T-1)", ylabel="recovery with image - without",
           title=f"Image contribution (vs {reference})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_run(
    result: Mapping[str, Any], out_dir: str, *, metric: str = "mse", reference: str = "blank",
    fraction: float = 0.1,
) -> list[str]:
    """loss.png, recovery.png and contribution.png of one analysed run in `out_dir`."""
    return [
        plot_loss(result, os.path.join(out_dir, "loss.png")),
        plot_recovery(result, os.path.join(out_dir, "recovery.png")),
        plot_contribution(result, os.path.join(out_dir, "contribution.png"), metric=metric,
                          reference=reference, fraction=fraction),
    ]


def plot_classes(
    result: Mapping[str, Any], path: str, *, metric: str = "mse", reference: str = "blank",
    fraction: float = 0.1,
) -> str:
    """A multi-class run, one column per foreground class: Dice of the arg-max x0 per variant
    (top) and Δ(t) of `metric` with a band of ±2 standard errors over images (bottom)."""
    names = list(result["classes"])
    fig = Figure(figsize=(4.0 * len(names), 6.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(names), squeeze=False)
    x = _t_fraction(result)
    for col, name in enumerate(names):
        entry = {**result, **result["classes"][name]}
        top, bottom = axes[0, col], axes[1, col]
        for v in _variants(entry):
            top.plot(x, entry["curves"][f"dice_{v}"], **_STYLE[v])
        top.set(title=name, xlabel="t / (T-1)", ylabel="Dice of arg-max x0", ylim=(-0.02, 1.02))
        _, delta = fingerprint.contribution(entry, metric, reference)
        band = fingerprint.SIGNIFICANCE * np.asarray(
            entry["contribution_sem"].get(f"{metric}_{reference}", np.zeros_like(delta)))
        bottom.plot(x, delta, color="C3")
        bottom.fill_between(x, delta - band, delta + band, color="C3", alpha=0.15)
        bottom.axhline(0.0, color="k", lw=0.5)
        half = entry["fingerprint"].get("half_life_image")
        if half is not None:
            top.axvline(half, color="grey", ls=":", lw=1, label="half-life (image)")
        bottom.set(xlabel="t / (T-1)", ylabel=f"Δ {metric} (image - {reference})")
        top.legend(fontsize=7)
    return _save(fig, path)


def plot_compare(
    results: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    path: str,
    *,
    metric: str = "mse",
    reference: str = "blank",
) -> str:
    """Several runs' fingerprints overlaid: Δ(t) and Dice with/without the image vs t/(T−1)."""
    fig, (ax_delta, ax_dice) = _figure(2)
    for i, (result, label) in enumerate(zip(results, labels, strict=True)):
        color = f"C{i % 10}"
        x = _t_fraction(result)
        _, delta = fingerprint.contribution(result, metric, reference)
        ax_delta.plot(x, delta, color=color, label=label)
        ax_dice.plot(x, result["curves"]["dice_image"], color=color, label=f"{label}, image")
        ax_dice.plot(x, result["curves"][f"dice_{reference}"], color=color, ls="--",
                     label=f"{label}, {reference}")
    ax_delta.axhline(0.0, color="k", lw=0.5)
    ax_delta.set(xlabel="t / (T-1)", ylabel=f"Δ {metric} (image - {reference})",
                 title="Image contribution")
    ax_dice.set(xlabel="t / (T-1)", ylabel="Dice of thresholded x0", ylim=(-0.02, 1.02),
                title="Recovery (solid: image, dashed: without)")
    ax_delta.legend(fontsize=7)
    ax_dice.legend(fontsize=6)
    return _save(fig, path)
