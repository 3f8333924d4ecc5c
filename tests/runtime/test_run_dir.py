"""The run directory: reading a run's config back, its markers, and which checkpoint is best."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_support import SIZE, tiny_config

from jdiffseg.analysis import runs
from jdiffseg.models import build_model
from jdiffseg.runtime import checkpoint, run_dir, variables


def test_read_config_fills_new_defaults_and_applies_overrides(tmp_path):
    config = tiny_config(tmp_path)
    run_dir.write_config(str(tmp_path), config)
    saved = json.loads((tmp_path / run_dir.CONFIG_FILE).read_text())
    del saved["analysis"], saved["eval"]["num_cases"]  # a run from an older version
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(saved))
    loaded = run_dir.read_config(tmp_path, {"eval.ensemble_size": 7})
    assert loaded.eval.ensemble_size == 7 and loaded.eval.num_cases == 4
    assert loaded.analysis.t_stride == 1 and loaded.model.arch == "ensemdiff"
    with pytest.raises(KeyError, match=r"eval\.no_such_key"):
        run_dir.read_config(tmp_path, {"eval.no_such_key": 1})
    with pytest.raises(AttributeError):
        loaded.eval.typo = 1  # locked


def test_a_run_that_predates_new_keys_loads_and_resumes(tmp_path):
    config = tiny_config(tmp_path)
    run_dir.write_config(str(tmp_path), config)
    saved = json.loads((tmp_path / run_dir.CONFIG_FILE).read_text())
    del saved["data"]["raters"], saved["data"]["augment"]["color_jitter"]
    del saved["train"]["population"]
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(saved))
    loaded = run_dir.read_config(tmp_path)
    assert loaded.data.raters == 0 and loaded.train.population == 1
    assert loaded.data.augment.color_jitter == 0.0
    run_dir.check_resume_config(str(tmp_path), config)  # today's defaults: the same run
    config.data.raters = 3
    with pytest.raises(ValueError, match=r"config\.data \(keys \['raters'\]\)"):
        run_dir.check_resume_config(str(tmp_path), config)


def test_read_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_dir.read_config(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        run_dir.read_config(tmp_path)
    (tmp_path / run_dir.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse"):
        run_dir.read_config(tmp_path)
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError, match="not a run's config"):
        run_dir.read_config(tmp_path)


@pytest.mark.parametrize(
    ("mode", "metric"),
    [("diffusion", "val_dice"), ("feedforward", "val_dice"), ("mask_only", "val_loss"),
     ("image_generation", "val_loss")],
)
def test_best_metric_follows_the_mode(tmp_path, mode, metric):
    assert run_dir.best_metric_name(tiny_config(tmp_path, mode=mode)) == metric


def _state(model, mode: str, scale: float) -> dict:
    """Constant parameters of the model's shapes, `scale` everywhere (no compilation)."""
    x_t, t, image = (jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1,), jnp.int32),
                     None if mode == "mask_only" else jnp.zeros((1, SIZE, SIZE, 3)))
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, x_t, t, image))
    params = jax.tree.map(lambda s: np.full(s.shape, scale, np.float32), shapes["params"])
    return {"params": params, "ema_params": params, "batch_stats": {}}


def test_best_of_a_mask_only_run_is_its_lowest_validation_loss(tmp_path):
    """E3 runs keep their best checkpoint by val_loss; evaluate and analyze must resolve
    'best' to that step, not silently to the latest."""
    config = tiny_config(tmp_path / "data", mode="mask_only")
    workdir = tmp_path / "e3"
    workdir.mkdir()
    run_dir.write_config(str(workdir), config)
    model = build_model(config.model, image_channels=3)
    ckpt = checkpoint.Checkpointer(str(workdir), keep=2, async_save=False,
                                   best_metric=run_dir.best_metric_name(config))
    ckpt.save(2, _state(model, "mask_only", 0.25), metrics={"val_loss": 0.1})
    ckpt.save(4, _state(model, "mask_only", 0.5), metrics={"val_loss": 0.9})
    ckpt.close()

    _, meta = checkpoint.load_variables(str(workdir), "best")
    assert meta["step"] == 2
    params, meta = variables.restore(workdir, config, model, (SIZE, SIZE, 3), which="best",
                                     use_ema=True)  # what evaluate calls
    assert meta["step"] == 2
    assert float(jax.tree.leaves(params)[0].ravel()[0]) == 0.25
    run = runs.load_analysed_run(str(workdir), mode="mask_only", image_shape=(SIZE, SIZE, 3))
    assert run.step == 2
    _, latest = checkpoint.load_variables(str(workdir), "latest")
    assert latest["step"] == 4


def test_markers(tmp_path):
    assert not run_dir.is_finished(tmp_path)
    run_dir.write_finished(str(tmp_path), {"step": 3})
    assert run_dir.is_finished(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
