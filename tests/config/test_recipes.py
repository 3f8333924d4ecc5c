"""The experiment recipes live in the package: the study and the demo resolve their configs from
any install, with the repository's `configs/` folder out of reach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jdiffseg
from jdiffseg.config import parsing, recipes

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import jdiffseg, pathlib, sys
from jdiffseg.study import study
from jdiffseg.cli import demo
assert pathlib.Path(jdiffseg.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve()
plan = study.Plan(out_dir="unused", overrides=demo.DEMO_OVERRIDES)
for arch in ("ensemdiff", "segdiff", "medsegdiff"):
    for mode in ("diffusion", "feedforward", "mask_only", "image_generation"):
        config = study.run_config(plan, arch, "nuclei", mode)
        assert config.model.arch == arch and config.model.mode == mode
config = study.run_config(plan, "nnunet", "lesion", "feedforward")
print("resolved", config.data.variant, config.model.arch)
"""


def test_study_configs_resolve_from_a_copy_of_the_installed_package(tmp_path):
    shutil.copytree(Path(jdiffseg.__file__).parent, tmp_path / "jdiffseg")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resolved lesion nnunet" in result.stdout


@pytest.mark.parametrize("arch", ["ensemdiff", "segdiff", "medsegdiff", "nnunet", "segformer"])
def test_config_files_are_the_recipes(arch):
    arg = "dataset=synthetic,variant=tissue,preset=tiny"
    from_file = parsing.load_config_file(REPO / "configs" / f"{arch}.py", arg)
    assert from_file.to_dict() == recipes.get_config(arch, arg).to_dict()


def test_feedforward_only_architecture_refuses_other_modes():
    with pytest.raises(ValueError, match="feed-forward only"):
        recipes.get_config("nnunet", "mode=diffusion")
    with pytest.raises(ValueError, match="unknown architecture"):
        recipes.get_config("unet3000")
