"""A three-class synthetic run trains, evaluates and is analysed end to end (16 px, a couple of
steps): every diffusion architecture in E2, and E1 and E3 for EnsemDiff."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_support import tiny_config

from jdiffseg.analysis import analyze
from jdiffseg.analysis import results as analysis_results
from jdiffseg.evaluation import evaluate, report
from jdiffseg.runtime import run_dir
from jdiffseg.training import train

NAMES = ["background", "organ", "core", "spots"]
EVAL = {
    "eval.ensemble_size": 2,
    "eval.sampling_steps": 2,
    "eval.num_examples": 4,
    "eval.bootstrap_resamples": 20,
    "eval.num_cases": 2,
}


def _config(data_dir, arch: str, mode: str):
    c = tiny_config(data_dir, mode=mode, arch=arch, steps=1)
    c.data.variant, c.data.num_classes = "organs", 3
    c.data.num_test_examples = 4
    c.model.base_channels, c.model.norm_groups, c.model.channel_mult = 16, 8, (1,)
    c.model.encoder_base_channels, c.model.encoder_max_channels = 4, 16
    c.model.encoder_num_pool = 3
    c.model.rrdb_blocks, c.model.rrdb_channels, c.model.rrdb_growth = 1, 8, 8
    c.train.eval_every = c.train.checkpoint_every = 1
    c.analysis.num_images, c.analysis.t_stride, c.analysis.chunk_size = 4, 16, 5
    if arch == "ensemdiff" and mode != "feedforward":  # learned σ: 2 (C + 1) output channels
        c.model.learn_sigma, c.diffusion.variance, c.diffusion.use_vb = True, "learned_range", True
    if mode == "mask_only":
        c.diffusion.prediction, c.diffusion.variance = "x0", "fixed_large"
        c.diffusion.use_vb = c.model.learn_sigma = False
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("multiclass") / "data"


def _train_and_evaluate(data_dir, workdir, arch, mode):
    result = train.train_and_evaluate(_config(data_dir, arch, mode), str(workdir))
    assert 0.0 <= result["val_dice"] <= 1.0 and np.isfinite(result["val_ece_classwise"])
    metrics = evaluate.evaluate(workdir, EVAL)
    assert metrics["class_names"] == NAMES
    for name in NAMES[1:]:
        assert 0.0 <= metrics["summary"][f"dice_{name}"]["mean"] <= 1.0
    mean_of_classes = np.mean([metrics["summary"][f"dice_{n}"]["mean"] for n in NAMES[1:]])
    assert metrics["summary"]["dice"]["mean"] == pytest.approx(mean_of_classes, abs=1e-6)
    confusion = np.asarray(metrics["dataset"]["confusion"]["rows_truth_columns_prediction"])
    assert confusion.shape == (4, 4) and confusion.sum() == metrics["dataset"]["num_pixels"]
    assert (workdir / "eval" / "reliability.png").is_file()
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["segdiff", "medsegdiff"])
def test_diffusion_architectures_train_evaluate_and_analyse(data_dir, tmp_path, arch):
    workdir = tmp_path / arch
    _train_and_evaluate(data_dir, workdir, arch, "diffusion")
    result = analyze.analyze(str(workdir), log=lambda _: None)
    assert sorted(result["classes"]) == sorted(NAMES[1:])
    assert (workdir / "analysis" / "classes.png").is_file()


@pytest.mark.slow
def test_ensemdiff_e1_e2_e3_analysis_report_and_adaptation(data_dir, tmp_path):
    runs = {mode: tmp_path / mode for mode in ("diffusion", "mask_only", "feedforward")}
    for mode, workdir in runs.items():
        if mode == "mask_only":
            train.train_and_evaluate(_config(data_dir, "ensemdiff", mode), str(workdir))
        else:
            _train_and_evaluate(data_dir, workdir, "ensemdiff", mode)
    result = analyze.analyze(
        str(runs["diffusion"]), mask_only_workdir=str(runs["mask_only"]), log=lambda _: None
    )
    saved = analysis_results.load_results(str(runs["diffusion"]))
    assert saved["class_names"] == NAMES and len(saved["timesteps"]) == 5
    for name in NAMES[1:]:
        entry = saved["classes"][name]
        for key in ("dice_image", "dice_blank", "dice_mask_only", "mse_image", "loss_image"):
            assert len(entry["curves"][key]) == 5
        assert "half_life_image" in entry["fingerprint"]
        assert len(entry["contribution_sem"]["dice_mask_only"]) == 5
    # the top-level curves are the class average; the loss is shared
    average = np.mean([saved["classes"][n]["curves"]["dice_image"] for n in NAMES[1:]], 0)
    np.testing.assert_allclose(saved["curves"]["dice_image"], average)
    assert saved["classes"]["core"]["curves"]["loss_image"] == saved["curves"]["loss_image"]
    # adaptation says what it derives from
    config = run_dir.read_config(str(runs["diffusion"]))
    source = analysis_results.adaptation_source(result, config.analysis)
    assert source["derived_from"] == "the average over the foreground classes"
    with config.unlocked():
        config.analysis.adapt_class = "spots"
    assert analysis_results.adaptation_source(result, config.analysis)["class"] == "spots"
    config.analysis.adapt_class = "liver"
    with pytest.raises(KeyError, match="no class 'liver'"):
        analysis_results.adaptation_source(result, config.analysis)
    table = report.report([tmp_path], output=tmp_path / "results")
    assert "Dice per class" in table["markdown"] and "organ" in table["markdown"]
    assert (
        json.loads((runs["diffusion"] / "eval" / "metrics.json").read_text())["dataset"][
            "per_class"
        ]["spots"]["dice_pooled"]
        >= 0.0
    )
