"""PNG figures: reliability diagrams, ensemble case grids and mask overlays.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend state), so it
works headless and in worker processes. Every ``save`` function writes a PNG of exactly
``figure inches x dpi`` pixels and returns its path. Images follow the pipeline convention
(float in [-1, 1]) unless ``value_range`` says otherwise; uint8 images are read as [0, 255].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jdiffseg.scoring import metrics

OVERLAY_COLOR = (1.0, 0.25, 0.1)
_VARIANT_TITLES = {"top_label": "top-label", "foreground": "foreground probability"}


def to_display(image: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] for display from (H, W, C) or (H, W).

    uint8 input is divided by 255; float input is mapped from ``value_range``. One channel is
    shown as grey, three as RGB, any other count by its first channel.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"figures: expected an (H, W, C) image, got shape {img.shape}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        lo, hi = value_range
        img = (img.astype(np.float32) - lo) / (hi - lo)
    if img.shape[-1] != 3:
        img = np.repeat(img[..., :1], 3, axis=-1)
    return np.clip(img, 0.0, 1.0)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    color: tuple[float, float, float] = OVERLAY_COLOR,
    alpha: float = 0.45,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Blend ``color`` into the image where ``mask > 0.5``; returns (H, W, 3) float in [0, 1]."""
    rgb = to_display(image, value_range)
    m = np.asarray(mask, np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"figures: mask shape {m.shape} does not match image {rgb.shape[:2]}")
    sel = (m > 0.5)[..., None]
    blended = (1.0 - alpha) * rgb + alpha * np.asarray(color, np.float32)
    return np.where(sel, blended, rgb)


def _new_figure(
    width_in: float, height_in: float, dpi: int, layout: str | None = None
) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def _show(ax: Axes, img: np.ndarray, title: str, **kwargs: object) -> None:
    ax.imshow(img, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def _plot_reliability(ax: Axes, hist_ax: Axes, bins: dict[str, np.ndarray], title: str) -> None:
    edges = bins["edges"]
    width = edges[1] - edges[0]
    centres = edges[:-1] + width / 2
    filled = bins["count"] > 0
    acc = np.where(filled, bins["accuracy"], 0.0)
    conf = np.where(filled, bins["confidence"], 0.0)
    ax.bar(centres[filled], acc[filled], width=width, edgecolor="black", linewidth=0.5,
           color="tab:blue", label="accuracy")
    ax.bar(centres[filled], (conf - acc)[filled], bottom=acc[filled], width=width,
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy / frequency")
    ax.set_title(f"{title}  (ECE {bins['ece']:.4f})", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax.tick_params(labelbottom=False)
    hist_ax.bar(centres, bins["fraction"], width=width, color="grey", edgecolor="black",
                linewidth=0.5)
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("confidence")
    hist_ax.set_ylabel("pixels", fontsize=8)


def reliability_diagram(
    state: metrics.MetricState,
    path: str | Path,
    *,
    variants: Sequence[str] = metrics.ECE_VARIANTS,
    title: str | None = None,
    panel_inches: float = 4.0,
    dpi: int = 100,
) -> Path:
    """Reliability diagram(s) from an accumulator: one panel per ECE variant, side by side.

    The PNG is ``len(variants) * panel_inches`` by ``1.25 * panel_inches`` inches.
    """
    if not variants:
        raise ValueError("figures: reliability_diagram needs at least one variant")
    fig = _new_figure(panel_inches * len(variants), 1.25 * panel_inches, dpi, "constrained")
    grid = fig.add_gridspec(2, len(variants), height_ratios=(4, 1))
    for col, variant in enumerate(variants):
        bins = metrics.reliability_bins(state, variant)
        ax = fig.add_subplot(grid[0, col])
        hist_ax = fig.add_subplot(grid[1, col], sharex=ax)
        _plot_reliability(ax, hist_ax, bins, _VARIANT_TITLES[variant])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def case_grid(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    members: np.ndarray,
    fused: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    ids: Sequence[str] | None = None,
    uncertainty_name: str = "uncertainty",
    max_cases: int = 4,
    cell_inches: float = 1.5,
    dpi: int = 100,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """One row per case: image, ground truth, each member, fused mask, uncertainty map.

    Shapes: images (B, H, W, C), labels and fused (B, H, W, 1), members (B, n, H, W, 1),
    uncertainty (B, H, W, 1) or None. The PNG is ``columns * cell_inches`` by
    ``rows * cell_inches`` inches with ``columns = n + 3 (+1 with uncertainty)``.
    """
    images, labels = np.asarray(images), np.asarray(labels, np.float32)
    members, fused = np.asarray(members, np.float32), np.asarray(fused, np.float32)
    unc = None if uncertainty is None else np.asarray(uncertainty, np.float32)
    batch = images.shape[0]
    if members.ndim != 5:
        raise ValueError(f"figures: members must be (B, n, H, W, 1), got {members.shape}")
    for name, arr in (("labels", labels), ("members", members), ("fused", fused),
                      ("uncertainty", unc)):
        if arr is not None and arr.shape[0] != batch:
            raise ValueError(f"figures: {name} has batch {arr.shape[0]}, images have {batch}")
    rows = min(batch, max_cases)
    if rows < 1:
        raise ValueError("figures: case_grid needs at least one case")
    n = members.shape[1]
    cols = n + 3 + (unc is not None)
    fig = _new_figure(cols * cell_inches, rows * cell_inches, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / rows,
                        wspace=0.05, hspace=0.25)
    vmax = max(float(unc[:rows].max()), 1e-6) if unc is not None else 1.0
    for r in range(rows):
        name = ids[r] if ids is not None else f"case {r}"
        row = axes[r]
        _show(row[0], to_display(images[r], value_range), name)
        _show(row[1], labels[r, ..., 0], "ground truth", cmap="gray", vmin=0, vmax=1)
        for j in range(n):
            _show(row[2 + j], members[r, j, ..., 0], f"member {j + 1}", cmap="gray",
                  vmin=0, vmax=1)
        _show(row[2 + n], fused[r, ..., 0], "fused", cmap="gray", vmin=0, vmax=1)
        if unc is not None:
            _show(row[3 + n], unc[r, ..., 0], uncertainty_name, cmap="magma", vmin=0, vmax=vmax)
    return _save(fig, path)


def overlay_grid(
    path: str | Path,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    ids: Sequence[str] | None = None,
    ncols: int = 4,
    cell_inches: float = 2.0,
    dpi: int = 100,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Grid of images with their masks overlaid (e.g. for ``jdiffseg data show``).

    images (B, H, W, C), masks (B, H, W, 1). The PNG is ``min(B, ncols) * cell_inches`` by
    ``ceil(B / ncols) * cell_inches`` inches.
    """
    images, masks = np.asarray(images), np.asarray(masks, np.float32)
    batch = images.shape[0]
    if batch < 1 or masks.shape[0] != batch:
        raise ValueError(
            f"figures: overlay_grid needs matching non-empty batches, got images "
            f"{images.shape} and masks {masks.shape}"
        )
    cols = min(batch, ncols)
    rows = math.ceil(batch / cols)
    fig = _new_figure(cols * cell_inches, rows * cell_inches, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / rows,
                        wspace=0.05, hspace=0.2)
    for k, ax in enumerate(axes.flat):
        if k >= batch:
            ax.set_axis_off()
            continue
        title = ids[k] if ids is not None else f"#{k}"
        _show(ax, overlay_mask(images[k], masks[k], value_range=value_range), title)
    return _save(fig, path)
