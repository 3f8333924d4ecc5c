"""The training loop end to end on a 16 px synthetic set: logs, checkpoints, resume past a
damaged checkpoint and a dead trainer's lock, a second trainer refused, Ctrl-C, NaN stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from lock_support import dead_pid, plant_lock
from train_support import tiny_config

from jdiffseg.config import parsing
from jdiffseg.models import build_model
from jdiffseg.runtime import checkpoint, lock, runlog, variables
from jdiffseg.training import train


def _params(workdir: Path, which="latest") -> dict:
    variables, meta = checkpoint.load_variables(str(workdir), which, use_ema=False)
    return jax.tree.map(np.asarray, variables["params"]), meta


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object, dict]:
    root = tmp_path_factory.mktemp("train")
    config = tiny_config(root / "data")
    workdir = root / "run"
    result = train.train_and_evaluate(config, str(workdir))
    return workdir, config, result


def test_run_writes_config_metrics_and_checkpoints(trained):
    workdir, config, result = trained
    saved = parsing.from_json((workdir / "config.json").read_text())
    assert saved.to_dict() == parsing.from_json(parsing.to_json(config)).to_dict()
    records = runlog.read_metrics(str(workdir))
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records if "loss" in r)
    assert all("images_per_sec" in r and "lr" in r for r in records if "loss" in r)
    val = [r for r in records if "val_dice" in r]
    assert [r["step"] for r in val] == [2, 4]
    for key in ("val_dice", "val_iou", "val_ece_top_label", "val_loss"):
        assert 0.0 <= val[-1][key] < 10.0
    assert result["val_dice"] == pytest.approx(val[-1]["val_dice"])
    ckpt = checkpoint.Checkpointer(str(workdir), keep=2, best_metric="val_dice", read_only=True)
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    assert json.loads((workdir / "finished.json").read_text())["step"] == 4


def _unfinished_copy(workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "finished.json").unlink()
    return copy


def _listing(workdir: Path) -> list[str]:
    return sorted(os.listdir(workdir / "checkpoints"))


def test_resume_past_a_damaged_checkpoint_reproduces_the_uninterrupted_run(
    trained, tmp_path, caplog
):
    workdir, config, _ = trained
    final, _ = _params(workdir)
    copy = _unfinished_copy(workdir, tmp_path)
    # The run died after step 4, which a crashed storage node left with its data files cut short.
    for path in (copy / "checkpoints" / "4" / "state").rglob("*"):
        if path.parent.name == "d":
            os.truncate(path, 10)
    # Readers (evaluate, analyze) restore through `variables.restore`: they use step 2, name the
    # skipped step 4 and write nothing; asking for step 4 explicitly fails.
    model = build_model(config.model, image_channels=3)
    image_shape = (tiny_config(".").data.image_size,) * 2 + (3,)
    _, meta = variables.restore(copy, config, model, image_shape, which="latest", use_ema=True)
    assert meta["step"] == 2
    assert any(r.getMessage().startswith("checkpoint step 4 in ") and
               r.getMessage().endswith("skipped it, using step 2") for r in caplog.records)
    assert variables.restore(copy, config, model, image_shape, which="best",
                             use_ema=True)[1]["step"] == 2
    with pytest.raises(checkpoint.CheckpointRestoreError, match=r"step 4 in .* does not restore"):
        variables.restore(copy, config, model, image_shape, which=4, use_ema=True)
    assert _listing(copy) == ["2", "4"]
    # The dead trainer's lock is still there; its process is gone, so it is taken over.
    dead = dead_pid()
    plant_lock(copy, pid=dead, token="killed")
    caplog.clear()
    train.train_and_evaluate(config, str(copy))
    resumed, meta = _params(copy)
    assert meta["step"] == 4
    jax.tree.map(np.testing.assert_array_equal, resumed, final)  # bit-exact from step 2
    steps = [r["step"] for r in runlog.read_metrics(str(copy)) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the re-run steps are logged once
    assert _listing(copy) == ["2", "4", "4.corrupt"]  # moved aside by the trainer, not deleted
    messages = [r.getMessage() for r in caplog.records]
    skipped = [m for m in messages if m.startswith("checkpoint step 4 does not restore")]
    assert len(skipped) == 1 and skipped[0].endswith("resuming from step 2")
    assert any(f"process {dead} is gone" in m for m in messages)
    assert not (copy / lock.LOCK_FILE).exists()  # released at the end


def test_second_trainer_on_a_workdir_is_refused(trained, tmp_path):
    workdir, config, _ = trained
    copy = _unfinished_copy(workdir, tmp_path)
    plant_lock(copy)  # a live trainer: this test's parent process
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with pytest.raises(lock.WorkdirLockedError, match=f"PID {os.getppid()}, started"):
        train.train_and_evaluate(config, str(copy))
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_saves_a_checkpoint_and_exits_130(trained, tmp_path, monkeypatch, capsys):
    _, config, _ = trained
    workdir = tmp_path / "run"
    preempted = train._preempted

    def ctrl_c_before_the_first_step(stop, step):  # the key pressed as the loop starts
        if stop.signum is None:
            os.kill(os.getpid(), signal.SIGINT)
        return preempted(stop, step)

    monkeypatch.setattr(train, "_preempted", ctrl_c_before_the_first_step)
    with pytest.raises(SystemExit) as info:
        train.train_and_evaluate(config, str(workdir))
    assert info.value.code == 130
    assert "SIGINT: saved a checkpoint at step 0; exiting" in capsys.readouterr().err
    assert _listing(workdir) == ["0"] and not (workdir / "finished.json").exists()
    assert not (workdir / lock.LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_finished_run_is_not_retrained(trained):
    workdir, config, result = trained
    before, _ = _params(workdir)
    again = train.train_and_evaluate(config, str(workdir))
    after, _ = _params(workdir)
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert again == pytest.approx(result)


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(trained, tmp_path):
    workdir, config, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    good, _ = _params(copy)
    config = parsing.from_json(parsing.to_json(config))
    with config.unlocked():
        config.train.steps, config.train.lr = 8, 1e30
        config.train.warmup_steps, config.train.lr_schedule = 0, "constant"
    expected = r"at step [56].*Last good checkpoint: step 4"
    with pytest.raises(train.NonFiniteLossError, match=expected):
        train.train_and_evaluate(config, str(copy))
    kept, meta = _params(copy)
    assert meta["step"] == 4
    jax.tree.map(np.testing.assert_array_equal, kept, good)


def test_changed_model_config_refuses_to_resume(trained):
    workdir, config, _ = trained
    config = parsing.from_json(parsing.to_json(config))
    with config.unlocked():
        config.model.base_channels = 64
    with pytest.raises(ValueError, match=r"different config.model \(keys \['base_channels'\]\)"):
        train.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("arch", ["ensemdiff", "segdiff", "medsegdiff", "nnunet", "segformer"])
def test_arch_configs_give_a_train_step_for_every_mode(arch):
    import importlib.util

    import jax.numpy as jnp

    from jdiffseg.models import build_model
    from jdiffseg.training import optim

    path = Path(__file__).resolve().parents[2] / "configs" / f"{arch}.py"
    spec = importlib.util.spec_from_file_location(arch, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    modes = ["feedforward"] if arch in ("nnunet", "segformer") else [
        "diffusion", "feedforward", "mask_only", "image_generation"]
    batch = {"image": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32),
             "mask": jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)}
    for mode in modes:
        config = module.get_config(f"mode={mode},dataset=monuseg")
        assert config.model.arch == arch and config.data.name == "monuseg"
        model = build_model(config.model, image_channels=3)
        tx = optim.make_optimizer(config.train)
        abstract = jax.eval_shape(train.init_train_state(config, model, tx, (2, 16, 16, 3)),
                                  jax.random.key(0))
        _, scalars = jax.eval_shape(train.make_train_step(config, model, tx), abstract, batch)
        assert "loss" in scalars and "grad_norm" in scalars
