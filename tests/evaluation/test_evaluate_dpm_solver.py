"""`jdiffseg evaluate --config.eval.sampler=dpmpp_2m --config.eval.sampling_steps=10` for every
architecture and mask encoding, on 16 px runs with random parameters (written as training
leaves a workdir: sampling does not need a trained model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jdiffseg.cli import evaluate as cli_evaluate
from jdiffseg.config import parsing

ROOT = Path(__file__).resolve().parents[2]

from run_support import write_run  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize(
    ("arch", "encoding"),
    [("ensemdiff", "zero_one"), ("medsegdiff", "zero_one"), ("segdiff", "plus_minus_one")],
)
def test_evaluate_with_dpm_solver_for_every_architecture(tmp_path, data_dir, arch, encoding):
    config = parsing.load_config_file(ROOT / "configs" / f"{arch}.py", "preset=tiny")
    assert config.diffusion.mask_encoding == encoding
    config.data.image_size, config.data.data_dir = 16, str(data_dir)
    config.data.num_train_examples, config.data.num_val_examples = 8, 2
    config.data.num_test_examples = config.data.eval_batch_size = 2
    workdir = tmp_path / arch
    write_run(workdir, config)
    argv = [
        f"--workdir={workdir}",
        "--config.eval.sampler=dpmpp_2m",
        "--config.eval.sampling_steps=10",
        "--config.eval.ensemble_size=2",
        "--config.eval.num_cases=1",
        "--config.eval.bootstrap_resamples=10",
    ]
    assert cli_evaluate.main(argv) == 0
    result = json.loads((workdir / "eval" / "metrics.json").read_text())
    prediction = result["prediction"]
    assert (prediction["sampler"], prediction["sampling_steps"], prediction["eta"]) == (
        "dpmpp_2m",
        10,
        None,
    )
    assert (prediction["dpm_spacing"], prediction["dpm_lower_order_final"]) == ("logsnr", True)
    assert result["num_images"] == 2
    dice = result["summary"]["dice"]["mean"]
    assert np.isfinite(dice) and 0.0 <= dice <= 1.0
    assert 0.0 <= result["dataset"]["ece_top_label"] <= 1.0
