"""Sweep packing: runs differing only in population keys become population jobs whose command
lines parse into the population configs of the packed runs (no training is run)."""

from __future__ import annotations

import shlex
from pathlib import Path

from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.config import population
from jdiffseg.study import sweep

REPO = Path(__file__).resolve().parents[2]
SWEEP = """
def sweep(add):
    for lr in (1e-4, 3e-4):
        for seed in (0, 1, 2):
            add("configs/default.py", seed=seed, **{"train.lr": lr})
    add("configs/default.py:variant=nuclei", name="nuclei")          # alone: launched as today
    add("configs/default.py", name="wide", model__base_channels=64)  # a shape change: alone
"""


def _parse_train_argv(argv: list[str]):
    fv = flags.FlagValues()
    args = [a for a in argv[4:] if not a.startswith("--workdir")]
    holder = cli_flags.define_config_flag(fv, args)
    cli_flags.parse_flags(fv, "train", args)
    return holder.value


def test_print_launcher_shows_the_packing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "seeds.py"
    path.write_text(SWEEP)
    code = sweep.launch(str(path), launcher="print", sweep_dir=str(tmp_path / "out"),
                        population_max=4)
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    headers = [line for line in lines if line.startswith("# population")]
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert headers == ["# population of 4: default_seed=0_lr=0.0001, default_seed=1_lr=0.0001, "
                       "default_seed=2_lr=0.0001, default_seed=0_lr=0.0003",
                       "# population of 2: default_seed=1_lr=0.0003, default_seed=2_lr=0.0003"]
    assert len(commands) == 4  # two population jobs, then the two runs that cannot be packed
    assert any("--workdir=" + str(tmp_path / "out" / "nuclei") in c for c in commands)
    assert any("--config.model.base_channels=64" in c for c in commands)
    first = _parse_train_argv(commands[0])
    replicas = population.replica_configs(first)
    assert [(r.seed, r.train.lr) for r in replicas] == [(0, 1e-4), (1, 1e-4), (2, 1e-4),
                                                        (0, 3e-4)]
    second = population.replica_configs(_parse_train_argv(commands[1]))
    assert [(r.seed, r.train.lr) for r in second] == [(1, 3e-4), (2, 3e-4)]


def test_no_packing_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "seeds.py"
    path.write_text(SWEEP)
    runs = sweep.expand(str(path), str(tmp_path))
    assert sweep.pack(runs, 1) == runs
