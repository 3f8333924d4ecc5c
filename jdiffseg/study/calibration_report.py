"""The calibration study's tables and figures, from what `calibration.collect` gathered.

Every number is the mean ± sd over the seeds (population replicas) of the per-seed value; the
verdict pairs diffusion with feed-forward seed by seed. Writes `calibration.md` and the figures
`calibration_size.png` (scores against ensemble size and sampler), `sampler_chain.png` (the full
chain beside DDIM on its images), `convergence.png` (validation Dice against step),
`ambiguity.png` (GED, Hungarian IoU and soft-label ECE, multi-rater flavour) and `early_t.png`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METHOD_LABELS = {"feedforward": "E1 feed-forward", "ddim_eta0": "E2 DDIM η=0",
                 "ddim_eta1": "E2 DDIM η=1", "ddpm_full": "E2 DDPM full chain"}
ACCURACY_COLUMNS = {"dice": "Dice ↑", "ece": "ECE ↓", "ece_image": "ECE per image ↓",
                    "brier": "Brier ↓", "nll": "NLL ↓", "under_confidence": "acc − conf",
                    "binarity": "binarity"}
RATER_COLUMNS = {"rater_ged": "GED ↓", "rater_hungarian_iou": "Hungarian IoU ↑",
                 "rater_diversity": "diversity", "rater_ece_soft": "soft ECE ↓",
                 "rater_ece_band": "band ECE ↓", "rater_nll_soft": "soft NLL ↓"}


def _values(rows: Iterable[Mapping[str, Any]], key: str) -> np.ndarray:
    rows = sorted(rows, key=lambda r: r["replica"])
    if key == "under_confidence":
        return np.asarray([r["accuracy"] - r["confidence"] for r in rows])
    return np.asarray([r[key] for r in rows], np.float64)


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """'m ± sd' over seeds (sd with ddof=1; just 'm' for one seed)."""
    v = np.asarray(values, np.float64)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def select(rows: Sequence[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    """The rows whose fields equal `match`."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in lines)]


def _ensemble_lines(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str],
                    methods: Sequence[str]) -> list[list[str]]:
    lines = []
    for method in methods:
        for size in sorted({r["size"] for r in select(rows, method=method)}):
            chosen = select(rows, method=method, size=size)
            lines.append([METHOD_LABELS[method], str(size), str(len(chosen)),
                          *(mean_sd(_values(chosen, c)) for c in columns)])
    return lines


def _main_rows(ensembles: Sequence[Mapping[str, Any]], flavour: str,
               main_runs: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """The rows of the main E1 and E2 of a flavour at their best checkpoint, test images."""
    return [r for r in select(ensembles, flavour=flavour, checkpoint="best", images="test")
            if r["run"] == main_runs.get(r["experiment"])]


def ensemble_tables(ensembles: Sequence[Mapping[str, Any]], flavours: Sequence[str],
                    main_runs: Mapping[str, str]) -> list[str]:
    """Ensemble size and sampler against E1, per flavour, on the test images; the multi-rater
    flavour also against all raters; the full chain beside DDIM on its own images."""
    md = []
    header = ["method", "members", "seeds", *ACCURACY_COLUMNS.values()]
    for flavour in flavours:
        rows = _main_rows(ensembles, flavour, main_runs)
        if not rows:
            continue
        md += [f"**{flavour}** (first {int(rows[0]['num_images'])} test images)", ""]
        md += _table(header, _ensemble_lines(rows, ACCURACY_COLUMNS,
                                             ("feedforward", "ddim_eta0", "ddim_eta1")))
        if "rater_ged" in rows[0]:
            md += ["", f"**{flavour}** against all raters", ""]
            md += _table(["method", "members", "seeds", *RATER_COLUMNS.values()],
                         _ensemble_lines(rows, RATER_COLUMNS,
                                         ("feedforward", "ddim_eta0", "ddim_eta1")))
        chain = select(ensembles, flavour=flavour, images="chain")
        if chain:
            columns = {**{k: v for k, v in ACCURACY_COLUMNS.items()
                          if k in ("dice", "ece", "nll", "binarity")},
                       **({k: RATER_COLUMNS[k] for k in ("rater_ged", "rater_ece_soft")}
                          if "rater_ged" in chain[0] else {})}
            md += ["", f"**{flavour}**, the full chain beside DDIM on the same "
                       f"{int(chain[0]['num_images'])} test images per seed", ""]
            md += _table(["method", "members", "seeds", *columns.values()],
                         _ensemble_lines(chain, columns,
                                         ("feedforward", "ddpm_full", "ddim_eta0", "ddim_eta1")))
        md.append("")
    return md


def verdict(ensembles: Sequence[Mapping[str, Any]], flavour: str, main_runs: Mapping[str, str],
            method: str, size: int, key: str = "ece") -> dict[str, Any] | None:
    """`key` of E2 (`method`, `size` members) minus E1's, paired by seed: per-seed differences,
    mean ± sd and how many seeds had the lower (better) value with diffusion."""
    ff = select(ensembles, flavour=flavour, run=main_runs.get("E1"), method="feedforward",
                checkpoint="best", images="test")
    dm = select(ensembles, flavour=flavour, run=main_runs.get("E2"), method=method, size=size,
                checkpoint="best", images="test")
    if not ff or not dm or key not in ff[0]:
        return None
    diff = _values(dm, key) - _values(ff, key)
    return {"flavour": flavour, "key": key, "method": method, "size": size,
            "diffusion": _values(dm, key).tolist(), "feedforward": _values(ff, key).tolist(),
            "difference": diff.tolist(), "summary": mean_sd(diff),
            "seeds_better": int(np.sum(diff < 0)), "seeds": len(diff)}


def convergence_table(convergence: Sequence[Mapping[str, Any]],
                      ensembles: Sequence[Mapping[str, Any]], method: str, size: int
                      ) -> list[str]:
    """Per run: where validation Dice stopped improving, and the test scores at the best
    (plateau) checkpoint."""
    lines = []
    runs = dict.fromkeys((r["flavour"], r["run"]) for r in convergence)
    for flavour, run in runs:
        curves = select(convergence, flavour=flavour, run=run)
        if "_small" in run:
            continue
        tested = [r for r in select(ensembles, flavour=flavour, run=run, checkpoint="best",
                                    images="test")
                  if r["method"] in ("feedforward", method) and r["size"] in (1, size)]
        lines.append([
            flavour, run, str(curves[0]["last_step"]),
            mean_sd([c["plateau_step"] for c in curves], 0),
            f"{sum(c['reached'] for c in curves)} of {len(curves)}",
            mean_sd([c["gain_last_quarter"] for c in curves]),
            mean_sd([c["best"] for c in curves]),
            *((mean_sd(_values(tested, k)) for k in ("dice", "ece")) if tested else ("–", "–")),
        ])
    return _table(["flavour", "run", "steps", "plateau step", "levelled off",
                   "val Dice gain, last quarter", "best val Dice",
                   "test Dice (best ckpt)", "test ECE (best ckpt)"], lines)


def small_set_table(ensembles: Sequence[Mapping[str, Any]], size: int) -> list[str]:
    """Best beside last checkpoint of the small-training-set runs."""
    lines = []
    for run in sorted({r["run"] for r in ensembles if "_small" in r["run"]}):
        for checkpoint in ("best", "latest"):
            rows = [r for r in select(ensembles, run=run, checkpoint=checkpoint, images="test")
                    if r["size"] in (1, size)]
            if rows:
                lines.append([rows[0]["flavour"], run, checkpoint, METHOD_LABELS[rows[0]["method"]],
                              *(mean_sd(_values(rows, k)) for k in
                                ("dice", "ece", "nll", "under_confidence"))])
    return _table(["flavour", "run", "checkpoint", "method", "Dice ↑", "ECE ↓", "NLL ↓",
                   "acc − conf"], lines)


def early_t_summary(early: Mapping[str, Any]) -> list[str]:
    """Per flavour: where E2's ε-MSE (and full loss) is lowest for t < T_early and how much it
    rises after, beside E4's."""
    lines = []
    for flavour, result in early.items():
        t = np.asarray(result["timesteps"])
        for name in ("E2", "E4"):
            curves = [r["target_mse"] for r in result[f"{name.lower()}_replicas"]]
            c = np.asarray(curves)
            argmin = np.argmin(c, axis=1)
            rise = [(row[-1] - row[i]) / row[i] for row, i in zip(c, argmin, strict=True)]
            lines.append([flavour, name, str(len(c)), mean_sd(t[argmin], 0),
                          mean_sd(c[:, 0], 4), mean_sd(np.min(c, axis=1), 4),
                          mean_sd(c[:, -1], 4), mean_sd(np.asarray(rise) * 100, 1)])
    return _table(["flavour", "run", "seeds", "t of lowest ε-MSE", "ε-MSE at t=0",
                   "lowest", f"at t={int(t[-1])}", "rise after the lowest, %"], lines)


def _grid(rows: int, cols: int, width: float, height: float) -> tuple[Figure, list[list[Axes]]]:
    """A figure on the Agg canvas (no pyplot state) and its rows x cols axes."""
    fig = Figure(figsize=(width * cols, height * rows), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [list(r) for r in axes]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


SAMPLER_STYLES = {"ddim_eta0": "o-", "ddim_eta1": "s-", "ddpm_full": "^-"}


def _plot_sizes(rows_of: Mapping[str, Sequence[Mapping[str, Any]]], keys: Mapping[str, str],
                path: Path) -> Path:
    """Scores against ensemble size, a column per flavour (`rows_of[flavour]`), a line per
    sampler with the seeds' sd as error bars, E1 as a dashed line."""
    fig, axes = _grid(len(keys), len(rows_of), 3.2, 2.6)
    for col, (flavour, rows) in enumerate(rows_of.items()):
        for row_i, (key, label) in enumerate(keys.items()):
            ax = axes[row_i][col]
            for method, style in SAMPLER_STYLES.items():
                sizes = sorted({r["size"] for r in select(rows, method=method)})
                values = [_values(select(rows, method=method, size=s), key) for s in sizes]
                if sizes:
                    ax.errorbar(sizes, [np.mean(v) for v in values],
                                yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values],
                                fmt=style, capsize=3, label=METHOD_LABELS[method])
            ff = select(rows, method="feedforward")
            if ff and key in ff[0]:
                ax.axhline(np.mean(_values(ff, key)), color="k", ls="--", label="E1")
            ax.set_xscale("log")
            ax.set_xlabel("members")
            ax.set_title(f"{flavour}: {label}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _plot_convergence(convergence: Sequence[Mapping[str, Any]], flavours: Sequence[str],
                      path: Path) -> Path:
    """Validation Dice against training step, a column per flavour, a line per run (mean over
    seeds, the seeds' range shaded)."""
    fig, axes = _grid(1, len(flavours), 3.6, 2.8)
    for ax, flavour in zip(axes[0], flavours, strict=True):
        rows = select(convergence, flavour=flavour)
        for n, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
            curves = select(rows, run=run)
            steps = curves[0]["steps"]
            values = np.asarray([c["val_dice"] for c in curves if c["steps"] == steps])
            ax.plot(steps, values.mean(axis=0), color=f"C{n}", label=run.split("_", 1)[1])
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=f"C{n}",
                            alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("validation Dice")
        ax.set_title(flavour, fontsize=9)
        ax.legend(fontsize=6)
    return _save(fig, path)


def _plot_early_t(early: Mapping[str, Any], path: Path) -> Path:
    fig, axes = _grid(1, len(early), 4.2, 3.2)
    for ax, (flavour, result) in zip(axes[0], early.items(), strict=True):
        t = result["timesteps"]
        for name, color in (("E2", "C0"), ("E4", "C3")):
            for k, r in enumerate(result[f"{name.lower()}_replicas"]):
                ax.plot(t, r["target_mse"], color=color, alpha=0.7,
                        label=f"{name} ε-MSE (per seed)" if k == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(f"{flavour}: t < {len(t)}", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(collected: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Writes calibration.md and the figures into `out_dir`; returns the markdown, the
    verdicts and the paths."""
    plan = collected["plan"]
    ensembles = collected["ensembles"]
    flavours = list(plan["flavours"])
    size = max(plan["ensemble_sizes"])
    main_runs = collected["main_runs"]
    verdicts = [v for f in flavours for key in ("ece", "nll", "rater_ece_soft", "rater_ged")
                for method in ("ddim_eta0", "ddim_eta1")
                if (v := verdict(ensembles, f, main_runs, method, size, key)) is not None]
    md = ["# Calibration: diffusion (E2) against feed-forward (E1)", "",
          "Mean ± sd over seeds. Members are drawn once per image and scored as nested "
          "ensembles of their first k.", "", "## Ensemble size and sampler", ""]
    md += ensemble_tables(ensembles, flavours, main_runs)
    md += ["## Verdict: E2 minus E1, paired by seed", ""]
    md += _table(["flavour", "score", "E2 sampler", "members", "E2 − E1", "seeds E2 better"],
                 [[v["flavour"], v["key"], METHOD_LABELS[v["method"]], str(v["size"]),
                   v["summary"], f"{v['seeds_better']} of {v['seeds']}"] for v in verdicts])
    md += ["", "## Convergence", ""]
    md += convergence_table(collected["convergence"], ensembles, "ddim_eta1", size)
    if any("_small" in r["run"] for r in ensembles):
        md += ["", "## Small training set: best beside last checkpoint", ""]
        md += small_set_table(ensembles, size)
    main_rows = {f: _main_rows(ensembles, f, main_runs) for f in flavours}
    files = {"calibration_size": _plot_sizes(
        main_rows, {"ece": "ECE (top-label)", "nll": "NLL", "dice": "Dice"},
        out_dir / "calibration_size.png"),
        "convergence": _plot_convergence(collected["convergence"], flavours,
                                         out_dir / "convergence.png")}
    chain_rows = {f: rows for f in flavours
                  if (rows := select(ensembles, flavour=f, checkpoint="best", images="chain"))}
    if chain_rows:
        files["sampler_chain"] = _plot_sizes(
            chain_rows, {"ece": "ECE (top-label)", "dice": "Dice"},
            out_dir / "sampler_chain.png")
    rater_rows = {f: rows for f, rows in main_rows.items() if rows and "rater_ged" in rows[0]}
    if rater_rows:
        files["ambiguity"] = _plot_sizes(
            rater_rows, {"rater_ged": "GED", "rater_hungarian_iou": "Hungarian IoU",
                         "rater_ece_soft": "soft-label ECE"}, out_dir / "ambiguity.png")
    if collected["early_t"]:
        md += ["", "## The loss at early t", ""]
        md += early_t_summary(collected["early_t"])
        files["early_t"] = _plot_early_t(collected["early_t"], out_dir / "early_t.png")
    text = "\n".join(md) + "\n"
    (out_dir / "calibration.md").write_text(text)
    return {"markdown": text, "verdicts": verdicts, "files": {k: str(v) for k, v in files.items()}}
