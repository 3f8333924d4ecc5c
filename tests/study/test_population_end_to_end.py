"""A population of 3 seeds of the tiny default end to end: trains, is evaluated and analysed
per replica with mean ± sd over replicas, is reported as one row over its seeds, and exports a
replica as an ordinary run. (Its bit-exact resume after SIGTERM and SIGKILL is
tests/training/test_train_resilience.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from prediction_support import write_images
from train_support import shrink_model, tiny_config

from jdiffseg.analysis import analyze
from jdiffseg.cli import evaluate as cli_evaluate
from jdiffseg.cli import export_replica as cli_export
from jdiffseg.evaluation import report
from jdiffseg.prediction import predict
from jdiffseg.runtime import checkpoint, run_dir, runlog
from jdiffseg.training import train

K = 3
SMALL_EVAL = {"eval.num_examples": 4, "eval.ensemble_size": 2, "eval.sampling_steps": 2,
              "eval.num_cases": 2, "eval.bootstrap_resamples": 50}


def _state(workdir: Path, step: int) -> dict:
    ckpt = checkpoint.Checkpointer(str(workdir), best_metric=None, read_only=True)
    state, _ = ckpt.restore(step)
    ckpt.close()
    return jax.tree.map(np.asarray, state)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    config = shrink_model(tiny_config(root / "data", steps=2))
    config.seed = 10
    config.train.population = K
    config.train.eval_every, config.train.checkpoint_every = 0, 1  # validation at the end
    workdir = root / "run"
    train.train_and_evaluate(config, str(workdir))
    return workdir, config


@pytest.mark.slow
def test_trains_and_logs_per_replica(trained):
    workdir, _ = trained
    records = runlog.read_metrics(str(workdir))
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(len(x) == K for x in losses)
    assert [r["frozen"] for r in records if "frozen" in r][-1] == [0.0] * K
    final = [r for r in records if "val_dice" in r][-1]
    assert {f"val_dice_replica{k}" for k in range(K)} <= set(final)
    assert final["val_dice"] == pytest.approx(np.mean([final[f"val_dice_replica{k}"]
                                                       for k in range(K)]))
    full = _state(workdir, 2)
    assert np.asarray(full["step"]).tolist() == [2] * K
    # the replicas started from different seeds
    leaf = jax.tree.leaves(full["params"])[0]
    assert not np.allclose(leaf[0], leaf[1])


@pytest.mark.slow
def test_evaluate_analyze_report_and_export(trained, tmp_path, capsys):
    workdir, _ = trained
    flags = [f"--config.{k}={v}" for k, v in SMALL_EVAL.items()]
    assert cli_evaluate.main([f"--workdir={workdir}", *flags]) == 0
    out = capsys.readouterr().out
    assert "replica 2 (seed 12)" in out and f"over {K} replicas" in out
    summary = json.loads((workdir / "eval" / "population.json").read_text())
    dice = [r["values"]["dice"] for r in summary["replicas"]]
    assert summary["summary"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["summary"]["dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    assert summary["summary"]["dice"]["ci_low"] <= summary["summary"]["dice"]["ci_high"]

    table = report.report([str(workdir)], tmp_path / "report")
    [row] = table["rows"]
    assert row["runs"] == K and row["dice_mean"] == pytest.approx(np.mean(dice))
    assert row["dice_std"] == pytest.approx(np.std(dice, ddof=1))
    assert f"{np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}" in table["markdown"]

    config = run_dir.read_config(workdir, {"analysis.num_images": 2, "analysis.t_stride": 25,
                                           "analysis.chunk_size": 2})
    result = analyze.analyze(str(workdir), config=config, log=lambda _: None)
    assert len(result["fingerprints"]) == K
    assert (workdir / "analysis" / "replica_1" / "timesteps.json").is_file()
    assert (workdir / "analysis" / "population.json").is_file()

    exported = tmp_path / "replica1"
    assert cli_export.main([f"--workdir={workdir}", "--replica=1", f"--out={exported}"]) == 0
    one = run_dir.read_config(exported)
    assert one.seed == 11 and one.train.population == 1
    variables, meta = checkpoint.load_variables(str(exported), "latest", use_ema=False)
    full = _state(workdir, meta["step"])
    for a, b in zip(jax.tree.leaves(variables["params"]),
                    jax.tree.leaves(jax.tree.map(lambda x: x[1], full["params"])), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cli_evaluate.main([f"--workdir={workdir}", "--replica=7"]) == 1
    assert "the population has 3" in capsys.readouterr().err

    write_images(tmp_path / "in", [(20, 24)])
    small = {k: v for k, v in SMALL_EVAL.items() if k != "eval.num_cases"}
    with pytest.raises(ValueError, match="--replica"):
        predict.predict(workdir, tmp_path / "in", tmp_path / "all", small)
    summary = predict.predict(workdir, tmp_path / "in", tmp_path / "one", small, replica=1)
    assert summary.written == ["case_0"]
    assert (tmp_path / "one" / "case_0_mask.png").is_file()
