"""Evaluation against every rater (`eval.reference='all'`): per-image ambiguity scores and a
data-set soft-label ECE whose bins add up over batches to the ECE of the whole set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from train_support import shrink_model, tiny_config

from jdiffseg.evaluation import evaluate
from jdiffseg.scoring import raters
from jdiffseg.training import train

R = 3


def test_bins_add_up_over_batches_to_the_whole_set():
    rng = np.random.default_rng(0)
    members = rng.uniform(size=(6, 2, 8, 8, 1)).astype(np.float32)
    masks = (rng.uniform(size=(6, R, 8, 8, 1)) > 0.6).astype(np.float32)
    masks[:, :, 2:6, 2:6] = 1.0  # every image has a boundary
    whole = raters.rater_metrics(members, masks)
    parts = [raters.rater_metrics(members[s], masks[s]) for s in (slice(0, 4), slice(4, 6))]
    for k in ("soft", "band"):
        summed = type(whole["bins"][k])(*(a + b for a, b in zip(parts[0]["bins"][k],
                                                                  parts[1]["bins"][k],
                                                                  strict=True)))
        assert raters.pooled_ece(summed) == pytest.approx(whole[f"ece_{k}"], abs=1e-6)
    # the pooled soft ECE, independently: bins over p, |mean q - mean p| weighted by count
    p = members.mean(axis=1).ravel()
    q = (masks > 0.5).mean(axis=1).ravel()
    which = np.minimum((p * 10).astype(int), 9)
    expected = sum(abs(q[which == b].mean() - p[which == b].mean()) * np.sum(which == b)
                   for b in range(10) if np.any(which == b)) / p.size
    assert whole["ece_soft"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_evaluate_scores_against_all_raters(tmp_path):
    config = shrink_model(tiny_config(tmp_path / "data", steps=1))
    config.data.raters = R
    config.data.num_test_examples = 4
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    small = {"eval.num_examples": 4, "eval.ensemble_size": 2, "eval.sampling_steps": 2,
             "eval.num_cases": 2, "eval.bootstrap_resamples": 20}
    result = evaluate.evaluate(workdir, {**small, "eval.reference": "all"})
    scores = result["dataset"]["raters"]
    assert scores["num_raters"] == R and 0.0 <= scores["ece_soft"] <= 1.0
    for name in evaluate.RATER_PER_IMAGE:
        assert np.isfinite(result["summary"][f"rater_{name}"]["mean"])
    assert 0.0 <= result["summary"]["rater_hungarian_iou"]["mean"] <= 1.0
    with open(workdir / "eval" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(0.0 <= float(r["member_binarity"]) <= 1.0 for r in rows)
    # against the majority alone there are no rater scores; the binarity is always there
    majority = evaluate.evaluate(workdir, small)
    assert "raters" not in majority["dataset"] and "member_binarity" in majority["summary"]
    saved = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert "rater_ged" not in saved["summary"]
