"""The calibration study end to end on a micro plan: populations trained, every sampler's
members saved and scored as nested ensembles (against all raters on the multi-rater flavour),
the full chain beside DDIM and E1 on its images, the early-t losses, the report; a second run
does no work again. (The small-set runs differ only in their overrides: see the plan tests.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jdiffseg.evaluation import results
from jdiffseg.study import calibration as cal

SEEDS = 2


def _plan(tmp_path) -> cal.CalibrationPlan:
    micro = {
        "data.data_dir": str(tmp_path / "data"), "data.image_size": 16,
        "data.batch_size": 4, "data.eval_batch_size": 4, "data.num_train_examples": 16,
        "data.num_val_examples": 4, "data.num_test_examples": 4,
        "model.base_channels": 8, "model.channel_mult": (1,), "model.norm_groups": 8,
        "model.attention_resolutions": (), "diffusion.num_timesteps": 50,
        "train.warmup_steps": 1, "train.log_every": 1, "train.eval_every": 2,
        "train.checkpoint_every": 2, "eval.val_num_examples": 4, "eval.val_ensemble_size": 1,
        "eval.val_sampling_steps": 2, "eval.num_cases": 1, "eval.bootstrap_resamples": 10,
    }
    flavour = (cal.RATER_FLAVOUR,)
    return cal.CalibrationPlan(
        out_dir=str(tmp_path / "calibration"), flavours=flavour, seeds=SEEDS, raters=3,
        e1_steps=4, e2_steps=4, long_flavours=(), small_flavours=(), early_flavours=flavour,
        early_t=4, early_images=4,
        ensemble_sizes=(1, 2), ddim_steps=2, test_images=4, ddpm_flavours=flavour,
        ddpm_images=1, overrides=micro)


@pytest.mark.slow
def test_calibration_study_end_to_end(tmp_path):
    plan = _plan(tmp_path)
    messages: list[str] = []
    outputs = cal.run_calibration(plan, log=messages.append)
    out = tmp_path / "calibration"
    collected = json.loads((out / "calibration.json").read_text())
    rows = collected["ensembles"]

    # DDIM: two replicas x two nested sizes x two samplers on the 4 test images, all raters
    ddim = [r for r in rows if r["run"] == "ensemdiff_E2_diffusion" and r["images"] == "test"]
    assert sorted((r["method"], r["replica"], r["size"]) for r in ddim) == sorted(
        (m, k, s) for m in ("ddim_eta0", "ddim_eta1") for k in range(SEEDS) for s in (1, 2))
    assert all(r["num_images"] == 4 and "rater_ged" in r for r in ddim)
    samples = results.read_samples(
        out / cal.RATER_FLAVOUR / "ensemdiff_E2_diffusion" / "calibration" / "ddim_eta1_best"
        / "replica_1" / results.SAMPLES_FILE)
    assert samples["members"].shape == (4, 2, 16, 16, 1)
    assert samples["raters"].shape == (4, 3, 16, 16, 1)
    assert np.all((samples["members"] >= 0) & (samples["members"] <= 1))

    # the full chain, and DDIM and E1 again on its one image
    chain = [r for r in rows if r["images"] == "chain"]
    assert {(r["method"], r["num_images"]) for r in chain} == {
        ("ddpm_full", 1.0), ("ddim_eta0", 1.0), ("ddim_eta1", 1.0), ("feedforward", 1.0)}
    # validation every 2 steps of 4: a curve of two points per replica and run
    curves = [c for c in collected["convergence"] if c["run"] == "ensemdiff_E2_diffusion"]
    assert [c["steps"] for c in curves] == [[2, 4]] * SEEDS
    early = collected["early_t"][cal.RATER_FLAVOUR]
    assert early["timesteps"] == [0, 1, 2, 3]
    for name in ("e2_replicas", "e4_replicas"):
        assert len(early[name]) == SEEDS
        assert np.all(np.isfinite([r["target_mse"] for r in early[name]]))
        assert np.shape([r["loss"] for r in early[name]]) == (SEEDS, 4)

    assert "## Verdict" in outputs["markdown"]
    assert {v["key"] for v in outputs["verdicts"]} >= {"ece", "rater_ged"}
    for path in outputs["files"].values():
        assert (out / path).is_file()
    assert json.loads((out / "plan.json").read_text())["raters"] == 3

    # everything is found done: nothing trains or samples again
    messages.clear()
    cal.run_calibration(plan, log=messages.append)
    assert not any("training" in m or "calibration/" in m or "loss at t" in m for m in messages)
