"""`jdiffseg import`: a state dict in the authors' key layout becomes a run that evaluate,
analyze and predict use; bad state dicts and a missing torch stop it and write nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from importer_support import random_state, unet_keys
from prediction_support import write_images

from jdiffseg.cli import main as cli_main
from jdiffseg.importing import authors
from jdiffseg.runtime import checkpoint, run_dir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _argv(checkpoint_path: Path, workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    """`jdiffseg import` of a tiny EnsemDiff whose modules `importer_support` describes."""
    return ["import", f"--checkpoint={checkpoint_path}", f"--workdir={workdir}",
            f"--config={CONFIGS / 'ensemdiff.py'}:dataset=synthetic,preset=tiny",
            "--config.model.channel_mult=(1,2)", "--config.model.attention_resolutions=(2,)",
            "--config.model.num_heads=2", "--config.data.image_size=16",
            f"--config.data.data_dir={data_dir}", "--config.data.num_train_examples=4",
            "--config.data.num_val_examples=4", "--config.data.num_test_examples=4",
            "--config.data.eval_batch_size=4", "--config.diffusion.num_timesteps=50",
            "--config.eval.ensemble_size=2", "--config.eval.sampler=ddim",
            "--config.eval.sampling_steps=2", "--config.eval.bootstrap_resamples=50",
            "--config.analysis.num_images=4", "--config.analysis.t_stride=25", *extra]


def _leaf(variables: dict, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        variables = variables[key]
    return np.asarray(variables)


@pytest.mark.slow
def test_authors_state_dict_imports_then_evaluates_analyses_and_predicts(tmp_path, capsys):
    state = random_state(unet_keys(4, 2))
    ema = {k: 0.5 * v for k, v in state.items()}
    np.savez(tmp_path / "savedmodel000100.npz", **{f"module.{k}": v for k, v in state.items()})
    np.savez(tmp_path / "emasavedmodel_0.9999_000100.npz", **ema)
    workdir = tmp_path / "imported"
    argv = _argv(tmp_path / "savedmodel000100.npz", workdir, tmp_path / "data",
                 f"--ema={tmp_path / 'emasavedmodel_0.9999_000100.npz'}")
    assert cli_main.dispatch(argv) == 0, capsys.readouterr().err

    record = run_dir.read_imported(workdir)
    sources = record["sources"]
    assert sources["params"]["file"] == "savedmodel000100.npz"
    want = hashlib.sha256((tmp_path / "savedmodel000100.npz").read_bytes()).hexdigest()
    assert sources["params"]["sha256"] == want
    assert sources["ema_params"]["file"] == "emasavedmodel_0.9999_000100.npz"
    path = ("unet", "input_blocks_0_0", "kernel")
    for use_ema, source in ((False, state), (True, ema)):
        variables, meta = checkpoint.load_variables(str(workdir), "best", use_ema=use_ema)
        assert meta["step"] == 0
        np.testing.assert_array_equal(_leaf(variables["params"], path),
                                      source["input_blocks.0.0.weight"].transpose(2, 3, 1, 0))

    assert cli_main.dispatch(["evaluate", f"--workdir={workdir}"]) == 0
    assert json.loads((workdir / "eval" / "metrics.json").read_text())["num_images"] == 4
    assert cli_main.dispatch(["analyze", f"--workdir={workdir}"]) == 0
    assert (workdir / "analysis" / "timesteps.json").is_file()
    write_images(tmp_path / "in", [(20, 30)])
    assert cli_main.dispatch(["predict", f"--workdir={workdir}", f"--input={tmp_path / 'in'}",
                              f"--output={tmp_path / 'out'}"]) == 0
    assert np.load(tmp_path / "out" / "case_0_probs.npy").shape == (20, 30)


def test_a_mismatched_state_dict_lists_its_keys_and_writes_nothing(tmp_path, capsys):
    state = random_state(unet_keys(4, 2))
    del state["middle_block.1.qkv.bias"]
    state["label_emb.weight"] = np.zeros((10, 128), np.float32)
    state["out.2.weight"] = np.zeros((3, 32, 3, 3), np.float32)
    np.savez(tmp_path / "bad.npz", **state)
    workdir = tmp_path / "run"
    assert cli_main.dispatch(_argv(tmp_path / "bad.npz", workdir, tmp_path / "data")) == 1
    err = capsys.readouterr().err
    for key in ("label_emb.weight", "middle_block.1.qkv.bias", "out.2.weight (3, 32, 3, 3)"):
        assert key in err
    assert not workdir.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.npz"]


def test_without_torch_it_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "savedmodel.pt").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    argv = _argv(tmp_path / "savedmodel.pt", tmp_path / "run", tmp_path / "data")
    assert cli_main.dispatch(argv) == 1
    assert "pip install 'jdiffseg[torch]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_wrapped_torch_checkpoints_with_the_module_prefix_are_read(tmp_path):
    torch = pytest.importorskip("torch", reason="reading .pt files needs torch")
    state = random_state(unet_keys(4, 2))
    tensors = {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}
    for wrapper in ("state_dict", "model", None):
        path = tmp_path / f"savedmodel_{wrapper}.pt"
        torch.save({wrapper: tensors, "step": 100} if wrapper else tensors, path)
        got = authors.read_checkpoint(path)
        assert set(got) == set(state)
        np.testing.assert_array_equal(got["out.0.bias"], state["out.0.bias"])
