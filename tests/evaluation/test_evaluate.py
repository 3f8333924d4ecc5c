"""`jdiffseg evaluate`: ensembles, fusion, metrics and outputs of a run, and its error cases.

Runs are 16 px and tiny. Most tests write a checkpoint of perturbed initial parameters (as a
training run would lay it out) so they stay fast; one slow test trains for real first.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from run_support import write_run

from jdiffseg.cli import evaluate as cli_evaluate
from jdiffseg.config import parsing, schema
from jdiffseg.evaluation import evaluate, scores
from jdiffseg.runtime import checkpoint, run_dir, variables
from jdiffseg.scoring import predictors

SIZE = 16
NUM_TEST = 6


def _tiny_config(data_dir: Path, mode: str = "diffusion") -> ml_collections.ConfigDict:
    c = schema.base_config()
    c.model.arch, c.model.mode = "ensemdiff", mode
    c.model.base_channels, c.model.channel_mult = 32, (1, 2)
    c.model.attention_resolutions = ()
    c.data.image_size, c.data.data_dir = SIZE, str(data_dir)
    c.data.batch_size = c.data.eval_batch_size = 4
    c.data.num_train_examples, c.data.num_val_examples = 8, 4
    c.data.num_test_examples = NUM_TEST
    c.diffusion.num_timesteps = 100
    c.eval.ensemble_size, c.eval.sampling_steps = 3, 3
    c.eval.bootstrap_resamples = 200
    c.train.steps, c.train.warmup_steps = 4, 1
    c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 4
    c.eval.val_num_examples, c.eval.val_ensemble_size, c.eval.val_sampling_steps = 4, 2, 2
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """A diffusion workdir whose EMA params are half its raw params (tests must not edit it)."""
    workdir = tmp_path_factory.mktemp("runs") / "diffusion"
    return workdir, write_run(workdir, _tiny_config(data_dir), ema_scale=0.5)


# ------------------------------------------------------------------------------ scoring


def _np_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, pred.ndim))
    tp = np.sum(pred & truth, axes)
    den = np.sum(pred, axes) + np.sum(truth, axes)
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def _score(members: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """score_batch with majority fusion and the threshold sweep (one compilation for all)."""
    out = scores.score_batch(members, labels, method="majority", threshold=0.5, num_bins=10,
                               sweep=True)
    return {"fused": np.asarray(out["fused"]),
            **{k: np.asarray(v) for k, v in out["per_image"].items()}}


def test_identical_members_fuse_to_the_member_with_zero_uncertainty():
    rng = np.random.default_rng(0)
    member = (rng.random((3, 1, 8, 8, 1)) > 0.5).astype(np.float32)
    labels = (rng.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    per = _score(np.repeat(member, 4, axis=1), labels)
    np.testing.assert_array_equal(per["fused"], member[:, 0])
    expected = _np_dice(member[:, 0] > 0.5, labels > 0.5)
    for name in ("dice", "dice_mean", "dice_majority", "dice_staple", "member_dice"):
        np.testing.assert_allclose(per[name], expected, rtol=1e-6, err_msg=name)
    for name in scores.UNCERTAINTY_KEYS:
        np.testing.assert_allclose(per[f"uncertainty_{name}"], 0.0, atol=1e-6)


def test_score_batch_matches_numpy_on_random_members():
    rng = np.random.default_rng(1)
    members = rng.random((3, 4, 8, 8, 1)).astype(np.float32)
    labels = (rng.random((3, 8, 8, 1)) > 0.6).astype(np.float32)
    per = _score(members, labels)
    truth = labels > 0.5
    mean = members.mean(axis=1)
    np.testing.assert_allclose(per["dice_mean"], _np_dice(mean > 0.5, truth), rtol=1e-6)
    votes = (members > 0.5).sum(axis=1)
    np.testing.assert_allclose(per["dice_majority"], _np_dice(votes > 2, truth), rtol=1e-6)
    np.testing.assert_array_equal(per["dice"], per["dice_majority"])  # the chosen fusion
    member_dice = np.stack([_np_dice(members[:, j] > 0.5, truth) for j in range(4)], 1)
    np.testing.assert_allclose(per["member_dice"], member_dice.mean(1), rtol=1e-6)
    np.testing.assert_allclose(per["brier"], ((mean - labels) ** 2).mean((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(per["uncertainty_variance"], members.var(1).mean((1, 2, 3)),
                               rtol=1e-5)
    sweep = np.mean([_np_dice(mean > th, truth) for th in scores.SWEEP_THRESHOLDS], axis=0)
    np.testing.assert_allclose(per["dice_threshold_sweep"], sweep, rtol=1e-6)


def test_flip_ensemble_of_an_equivariant_predictor_repeats_its_output():
    def pointwise(variables, images, key):
        members = jax.nn.sigmoid(images[..., :1] * variables)[:, None]
        return {"members": members, "mean": members[:, 0]}

    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    for k in range(8):
        back = predictors._dihedral(predictors._dihedral(images, k), k, inverse=True)
        np.testing.assert_array_equal(back, images)
    tta = predictors._flip_ensemble(pointwise, 8, square=True)
    out = tta(2.0, images, jax.random.key(0))
    assert out["members"].shape == (2, 8, 8, 8, 1)
    expected = pointwise(2.0, images, None)["members"]
    np.testing.assert_allclose(out["members"], np.repeat(expected, 8, axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="ff_ensemble_size=3"):
        predictors._flip_ensemble(pointwise, 3, square=False)


def test_count_batches_covers_the_wanted_images_on_every_process():
    assert evaluate.count_batches(10, -1, 1, 4) == (10, 3)
    assert evaluate.count_batches(10, 5, 1, 4) == (5, 2)
    assert evaluate.count_batches(10, 0, 1, 4) == (0, 0)
    # two processes read [0..4] and [5..9]: the first 3 images all live on process 0
    assert evaluate.count_batches(10, 3, 2, 2) == (3, 2)
    assert evaluate.count_batches(10, 20, 2, 2) == (10, 3)


def test_check_variables_match_names_the_differences():
    template = {"params": {"a": jax.ShapeDtypeStruct((3, 4), jnp.float32),
                           "b": jax.ShapeDtypeStruct((4,), jnp.float32)}}
    variables.check_variables_match({"params": {"a": np.zeros((3, 4)), "b": np.zeros(4)}},
                                   template, "here")
    with pytest.raises(ValueError, match="does not match") as err:
        variables.check_variables_match(
            {"params": {"a": np.zeros((3, 5)), "c": np.zeros(2)}, "batch_stats": {}},
            template, "cfg vs step 7")
    text = str(err.value)
    assert "cfg vs step 7" in text
    assert "params['a']: checkpoint (3, 5) vs config (3, 4)" in text
    assert "params['b']: missing from the checkpoint" in text
    assert "params['c']: in the checkpoint" in text
    assert "'batch_stats'" in text


# ------------------------------------------------------------------------------ config


def test_load_config_fills_missing_eval_keys_and_rejects_unknown_overrides(tmp_path, data_dir):
    config = _tiny_config(data_dir)
    as_dict = json.loads(parsing.to_json(config))
    del as_dict["eval"]["num_cases"]  # a run written before the key existed
    tmp_path.joinpath("config.json").write_text(json.dumps(as_dict))
    loaded = run_dir.read_config(tmp_path, {"eval.sampler": "ddpm", "eval.ensemble_size": 7})
    assert loaded.eval.num_cases == schema.base_config().eval.num_cases
    assert (loaded.eval.sampler, loaded.eval.ensemble_size) == ("ddpm", 7)
    assert loaded.model.channel_mult == (1, 2)
    with pytest.raises(KeyError, match=r"eval\.no_such_key"):
        run_dir.read_config(tmp_path, {"eval.no_such_key": 1})


# ------------------------------------------------------------------------------ runs


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_evaluate_command_writes_all_outputs(diffusion_run, capsys):
    workdir, _ = diffusion_run
    argv = [f"--workdir={workdir}", "--config.eval.fusion=majority",
            "--config.eval.ensemble_size=3", "--config.eval.num_cases=2"]
    assert cli_evaluate.main(argv) == 0
    assert "6 images: dice" in capsys.readouterr().out

    out = workdir / "eval"
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_images"] == NUM_TEST
    assert result["checkpoint"]["step"] == 3 and result["checkpoint"]["ema"] is True
    assert result["prediction"] == {
        "kind": "diffusion_ensemble", "ensemble_size": 3, "sampler": "ddim", "sampling_steps": 3,
        "eta": 0.0, "dpm_spacing": None, "dpm_lower_order_final": None, "clip_x0": True,
        "num_timesteps": 100}
    assert result["fusion"] == "majority"
    for name in ("dice", "iou", "ece_top_label", "ece_foreground", "brier", "nll",
                 "member_dice", "uncertainty_entropy", "uncertainty_variance"):
        s = result["summary"][name]
        assert s["n"] == NUM_TEST and s["ci_low"] <= s["mean"] <= s["ci_high"], name
    assert set(result["dataset"]) >= {"dice_pooled", "iou_pooled", "ece_top_label",
                                      "ece_foreground", "brier", "nll"}
    assert result["dataset"]["num_pixels"] == NUM_TEST * SIZE * SIZE
    assert set(result["fusion_methods"]) == {"mean", "majority", "staple"}
    assert result["fusion_methods"]["majority"]["dice"] == result["summary"]["dice"]
    assert result["extra_protocols"] == {}  # reference protocols only when asked for

    with (out / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"test/{i}" for i in range(NUM_TEST)]
    assert all(r["dice"] == r["dice_majority"] for r in rows)
    dice = np.array([float(r["dice"]) for r in rows])
    assert result["summary"]["dice"]["mean"] == pytest.approx(dice.mean(), abs=1e-5)
    assert _png_size(out / "reliability.png") == (800, 500)
    # 2 cases x (image, truth, 3 members, fused, entropy) cells of 150 px
    assert _png_size(out / "cases.png") == (7 * 150, 2 * 150)


def test_evaluate_feedforward_sigmoid_and_test_time_ensembles(tmp_path, data_dir):
    workdir = tmp_path / "ff"
    config = _tiny_config(data_dir, mode="feedforward")
    state = write_run(workdir, config)
    result = evaluate.evaluate(workdir, {"eval.num_examples": 5,
                                         "eval.extra_protocols": "threshold_sweep"})
    assert result["prediction"] == {"kind": "sigmoid"}
    assert result["num_images"] == 5
    assert result["summary"]["uncertainty_variance"]["mean"] == 0.0
    assert result["summary"]["member_dice"] == result["summary"]["dice"]
    sweep = result["extra_protocols"]["threshold_sweep"]
    assert "MedSegDiff" in sweep["description"] and sweep["dice"]["n"] == 5
    assert "dice_threshold_sweep" not in result["summary"]  # never mixed with the defaults

    variables = {"params": state["params"]}
    config.eval.ff_ensemble, config.eval.ff_ensemble_size = "flip", 4
    _, described = predictors.make_eval_predictor(config, None, variables, (SIZE, SIZE, 3), None)
    assert described == {"kind": "flip_tta", "ensemble_size": 4}
    config.eval.ff_ensemble = "dropout"
    with pytest.raises(ValueError, match="trained with dropout"):
        predictors.make_eval_predictor(config, None, variables, (SIZE, SIZE, 3), None)
    config.model.dropout = 0.1
    with pytest.raises(ValueError, match="BatchNorm"):
        predictors.make_eval_predictor(
            config, None, {**variables, "batch_stats": {}}, (SIZE,) * 2, None
        )


def test_restore_takes_ema_params_unless_told_otherwise(diffusion_run):
    workdir, state = diffusion_run
    config = run_dir.read_config(workdir)
    variables, meta = checkpoint.load_variables(workdir, "best", use_ema=config.eval.use_ema)
    assert meta["step"] == 3
    np.testing.assert_allclose(jax.tree.leaves(variables["params"])[0],
                               jax.tree.leaves(state["ema_params"])[0])
    config.eval.use_ema = False
    variables, _ = checkpoint.load_variables(workdir, "best", use_ema=config.eval.use_ema)
    np.testing.assert_allclose(jax.tree.leaves(variables["params"])[0],
                               jax.tree.leaves(state["params"])[0])


def test_errors_name_the_problem(tmp_path, data_dir, diffusion_run, capsys):
    config = _tiny_config(data_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.evaluate(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        evaluate.evaluate(bare)
    run_dir.write_config(str(bare), config)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        evaluate.evaluate(bare)
    assert cli_evaluate.main([f"--workdir={bare}"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err

    run = tmp_path / "run"
    shutil.copytree(diffusion_run[0], run)
    assert cli_evaluate.main([f"--workdir={run}", "--config.eval.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is empty"):
        evaluate.evaluate(run, {"eval.num_examples": 0})
    with pytest.raises(ValueError, match="image_generation"):
        evaluate.evaluate(run, {"model.mode": "image_generation"})
    with pytest.raises(ValueError, match=r"eval\.fusion='vote'"):
        evaluate.evaluate(run, {"eval.fusion": "vote"})
    config.model.base_channels = 64  # the config no longer describes the checkpoint
    run_dir.write_config(str(run), config)
    with pytest.raises(ValueError, match=r"does not match the checkpoint .*config.json"):
        evaluate.evaluate(run)


@pytest.mark.slow
def test_trained_run_evaluates_with_full_ddpm_chain(tmp_path, data_dir):
    from jdiffseg.training import train

    config = _tiny_config(data_dir)
    config.diffusion.num_timesteps = 50
    workdir = tmp_path / "trained"
    train.train_and_evaluate(config, str(workdir))
    result = evaluate.evaluate(workdir, {"eval.sampler": "ddpm", "eval.sampling_steps": 0,
                                         "eval.ensemble_size": 2, "eval.fusion": "staple"})
    assert result["checkpoint"]["step"] == 4
    assert result["prediction"]["sampler"] == "ddpm"
    assert result["prediction"]["sampling_steps"] == 0
    assert result["num_images"] == NUM_TEST
    assert result["fusion_methods"]["staple"]["dice"] == result["summary"]["dice"]
    assert (workdir / "eval" / "cases.png").exists()
