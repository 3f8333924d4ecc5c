"""`jdiffseg evaluate` on a run trained on the nnU-Net fixture: per-case volume metrics."""

import csv
import json

import numpy as np
import pytest
from train_support import tiny_config
from volume_fixtures import SHAPE, write_nnunet

from jdiffseg.cli import evaluate as cli_evaluate
from jdiffseg.data.registry import make_builder
from jdiffseg.scoring.surface import VOLUME_METRICS
from jdiffseg.training import train


@pytest.mark.slow
def test_evaluate_writes_per_case_volume_metrics(tmp_path, capsys):
    config = tiny_config(tmp_path / "data", mode="feedforward", steps=1)
    config.model.channel_mult = (1,)
    config.train.eval_every = config.train.checkpoint_every = 1
    config.data.name, config.data.variant = "nnunet", "fixture"
    config.data.manual_dir = str(write_nnunet(tmp_path / "raw", n=5).parent)
    config.data.test_fraction, config.data.val_fraction = 0.4, 0.2  # 2 test cases
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    assert cli_evaluate.main([f"--workdir={workdir}"]) == 0
    capsys.readouterr()

    meta = make_builder(config.data).info.metadata
    test_cases = meta["cases"]["test"]
    assert len(test_cases) == 2
    result = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert result["num_images"] == 2 * SHAPE[2]  # the per-slice figures stay
    vol = result["volumes"]
    assert vol["num_cases"] == 2 and vol["target"] == "foreground"
    assert vol["target_values"] == [1, 2] and "HD95" in vol["definition"]
    with (workdir / "eval" / "per_case.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == test_cases
    assert result["files"]["per_case"].endswith("per_case.csv")
    for r in rows:
        assert r["structure"] == "foreground" and int(r["slices"]) == SHAPE[2]
        for m in ("dice", "iou", "hd95", "assd"):
            assert np.isfinite(float(r[m])) and float(r[m]) >= 0
    for m in VOLUME_METRICS:
        values = [float(r[m]) for r in rows if r[m] != "nan"]
        summary = vol["summary"]["foreground"][m]
        assert summary["n"] == len(values)
        if values:
            assert summary["mean"] == pytest.approx(np.mean(values), rel=1e-5)
