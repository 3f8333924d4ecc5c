"""The `jdiffseg` command: subcommand listing, errors, and config flag handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from jdiffseg.cli import flags as cli_flags
from jdiffseg.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jdiffseg.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_subcommand_with_one_line():
    result = _run("--help")
    assert result.returncode == 0
    for name in ("train", "evaluate", "analyze", "sweep", "data", "demo", "report"):
        lines = [line for line in result.stdout.splitlines() if line.strip().startswith(name + " ")]
        assert len(lines) == 1, (name, result.stdout)


def test_unknown_subcommand_exits_nonzero_and_names_it():
    result = _run("trian")
    assert result.returncode == 2
    assert "'trian'" in result.stderr


def test_missing_entry_point_says_not_available(monkeypatch, capsys):
    monkeypatch.setitem(main._ENTRY_POINTS, "demo", "jdiffseg.no_such_module:demo_main")
    assert main.dispatch(["demo"]) == 2
    assert "not available" in capsys.readouterr().err


def _parse(argv: list[str]):
    fv = flags.FlagValues()
    holder = cli_flags.define_config_flag(fv, argv)
    cli_flags.parse_flags(fv, "train", argv)
    return holder.value


def test_config_file_arg_and_override_are_applied():
    config = _parse(
        [f"--config={ROOT}/configs/default.py:variant=nuclei", "--config.train.lr=0.125"]
    )
    assert config.data.variant == "nuclei"
    assert config.train.lr == 0.125


def test_unknown_override_key_fails_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse([f"--config={ROOT}/configs/default.py", "--config.train.lrr=0.1"])
    assert exit_info.value.code == 2
    assert "lrr" in capsys.readouterr().err


def test_unknown_config_file_argument_fails_naming_it(capsys):
    with pytest.raises(SystemExit):
        _parse([f"--config={ROOT}/configs/default.py:variantt=nuclei"])
    assert "variantt" in capsys.readouterr().err
