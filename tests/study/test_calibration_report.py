"""The calibration report: seeds paired by replica in the verdict, mean ± sd over seeds, and
the tables and figures written from gathered scores (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from jdiffseg.study import calibration_report as report

MAIN = {"E1": "net_E1", "E2": "net_E2"}


def _row(flavour, run, experiment, method, replica, size, images="test", checkpoint="best",
         **values):
    base = {"dice": 0.8, "ece": 0.1, "ece_image": 0.1, "brier": 0.05, "nll": 0.2,
            "accuracy": 0.95, "confidence": 0.9, "binarity": 0.5, "num_images": 4.0}
    return {"flavour": flavour, "run": run, "experiment": experiment, "method": method,
            "checkpoint": checkpoint, "replica": replica, "size": size, "images": images,
            **base, **values}


def test_mean_sd_over_seeds():
    assert report.mean_sd([0.1, 0.2, 0.3]) == "0.200 ± 0.100"
    assert report.mean_sd([0.25]) == "0.250"


def test_verdict_pairs_seeds_by_replica_whatever_the_row_order():
    e1 = [_row("lesion", "net_E1", "E1", "feedforward", k, 1, ece=v)
          for k, v in ((2, 0.30), (0, 0.10), (1, 0.20))]
    e2 = [_row("lesion", "net_E2", "E2", "ddim_eta1", k, 5, ece=v)
          for k, v in ((1, 0.25), (2, 0.20), (0, 0.05))]
    other = [_row("lesion", "net_E2", "E2", "ddim_eta1", 0, 5, checkpoint="latest", ece=9.0),
             _row("nuclei", "net_E1", "E1", "feedforward", 0, 1, ece=9.0)]
    got = report.verdict(e1 + e2 + other, "lesion", MAIN, "ddim_eta1", 5)
    np.testing.assert_allclose(got["difference"], [-0.05, 0.05, -0.10])
    assert got["seeds_better"] == 2 and got["seeds"] == 3
    assert got["summary"] == report.mean_sd([-0.05, 0.05, -0.10])
    assert report.verdict(e1 + e2, "lesion", MAIN, "ddim_eta0", 5) is None
    assert report.verdict(e1 + e2, "lesion", MAIN, "ddim_eta1", 5, "rater_ged") is None


def _collected():
    rows = []
    for k in range(2):
        rows.append(_row("lesion_raters", "net_E1", "E1", "feedforward", k, 1, rater_ged=0.5,
                         rater_hungarian_iou=0.6, rater_diversity=0.0, rater_ece_soft=0.2,
                         rater_ece_band=0.3, rater_nll_soft=0.4))
        for method in ("ddim_eta0", "ddim_eta1"):
            for size in (1, 2):
                rows.append(_row("lesion_raters", "net_E2", "E2", method, k, size, ece=0.05,
                                 rater_ged=0.4, rater_hungarian_iou=0.7, rater_diversity=0.1,
                                 rater_ece_soft=0.1, rater_ece_band=0.2, rater_nll_soft=0.3))
        for method, run, exp, size in (("ddpm_full", "net_E2", "E2", 2),
                                       ("feedforward", "net_E1", "E1", 1)):
            rows.append(_row("lesion_raters", run, exp, method, k, size, images="chain",
                             rater_ged=0.4, rater_ece_soft=0.1))
        rows += [_row("lesion_raters", "net_E1_small8", "E1", "feedforward", k, 1,
                      checkpoint=c, nll=n) for c, n in (("best", 0.3), ("latest", 0.9))]
    steps = [2, 4, 6, 8]
    convergence = [{"flavour": "lesion_raters", "run": run, "experiment": exp, "replica": k,
                    "steps": steps, "val_dice": [0.2, 0.5, 0.6, 0.6], "best": 0.6,
                    "best_step": 6, "plateau_step": 6, "last_step": 8,
                    "gain_last_quarter": 0.0, "reached": True}
                   for run, exp in (("net_E1", "E1"), ("net_E2", "E2")) for k in range(2)]
    t = list(range(5))
    early = {"lesion_raters": {"timesteps": t, "images": 4,
                               "e2_replicas": [{"target_mse": [0.3, 0.2, 0.1, 0.2, 0.4]}],
                               "e4_replicas": [{"target_mse": [0.9, 0.5, 0.3, 0.2, 0.1]}]}}
    plan = {"flavours": ["lesion_raters"], "ensemble_sizes": [1, 2]}
    return {"plan": plan, "main_runs": MAIN, "ensembles": rows, "convergence": convergence,
            "early_t": early}


def test_write_report_tables_and_figures(tmp_path):
    out = report.write_report(_collected(), tmp_path)
    md = (tmp_path / "calibration.md").read_text()
    assert md == out["markdown"]
    for heading in ("## Ensemble size and sampler", "against all raters", "the full chain",
                    "## Verdict", "## Convergence", "## Small training set", "## The loss at"):
        assert heading in md, heading
    # E2 ECE 0.05 against E1's 0.1 for both seeds: diffusion better on both
    ece = [v for v in out["verdicts"] if v["key"] == "ece" and v["method"] == "ddim_eta1"]
    assert ece[0]["difference"] == pytest.approx([-0.05, -0.05])
    assert "| lesion_raters | ece | E2 DDIM η=1 | 2 | -0.050 ± 0.000 | 2 of 2 |" in md
    assert "| lesion_raters | net_E1_small8 | latest | E1 feed-forward | 0.800 ± 0.000 | " \
           "0.100 ± 0.000 | 0.900 ± 0.000 |" in md
    # E2's lowest ε-MSE at t = 2, then rising to 4x that
    assert "| lesion_raters | E2 | 1 | 2 | 0.3000 | 0.1000 | 0.4000 | 300.0 |" in md
    assert set(out["files"]) == {"calibration_size", "convergence", "sampler_chain",
                                 "ambiguity", "early_t"}
    for path in out["files"].values():
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
