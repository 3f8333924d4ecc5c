"""`jdiffseg report`: the results table from evaluated workdirs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jdiffseg.cli import report as cli_report
from jdiffseg.config import parsing, schema
from jdiffseg.evaluation import report


def _summary(mean: float, std: float) -> dict[str, float]:
    return {"mean": mean, "std": std, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 4}


def _fake_run(path: Path, arch: str, mode: str, dice: float, ece: float,
              variant: str = "lesion", evaluated: bool = True, **diffusion) -> Path:
    config = schema.base_config()
    config.model.arch, config.model.mode, config.data.variant = arch, mode, variant
    config.diffusion.update(diffusion)
    path.mkdir(parents=True)
    (path / "config.json").write_text(parsing.to_json(config))
    if evaluated:
        (path / "eval").mkdir()
        metrics = {
            "num_images": 4,
            "summary": {"dice": _summary(dice, 0.05), "iou": _summary(dice - 0.1, 0.04)},
            "dataset": {"ece_top_label": ece, "ece_foreground": ece / 2, "brier": 0.1,
                        "nll": 0.3},
        }
        (path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_report_of_a_sweep_directory_builds_markdown_and_csv(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "a", "ensemdiff", "diffusion", 0.8, 0.02)
    _fake_run(sweep / "b", "ensemdiff", "feedforward", 0.85, 0.06)
    _fake_run(sweep / "c" / "seed1", "segdiff", "diffusion", 0.7, 0.03, variant="nuclei")
    _fake_run(sweep / "c" / "seed2", "segdiff", "diffusion", 0.6, 0.05, variant="nuclei")
    _fake_run(sweep / "d", "segdiff", "feedforward", 0.0, 0.0, evaluated=False)

    result = report.report([sweep])

    rows = {(r["arch"], r["dataset"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {
        ("ensemdiff", "synthetic/lesion", "diffusion"),
        ("ensemdiff", "synthetic/lesion", "feedforward"),
        ("segdiff", "synthetic/nuclei", "diffusion"),
    }
    single = rows["ensemdiff", "synthetic/lesion", "diffusion"]
    assert single["runs"] == 1
    assert single["dice_mean"] == pytest.approx(0.8)
    assert single["dice_std"] == pytest.approx(0.05)  # spread over images for one run
    pair = rows["segdiff", "synthetic/nuclei", "diffusion"]
    assert pair["runs"] == 2 and pair["images"] == 8
    assert pair["dice_mean"] == pytest.approx(0.65)
    assert pair["dice_std"] == pytest.approx(0.0707107, abs=1e-6)  # spread over runs
    assert pair["ece_top_label_mean"] == pytest.approx(0.04)
    assert result["skipped"] == [str((sweep / "d").resolve())]

    md = (sweep / "report.md").read_text()
    assert md.startswith("| architecture | dataset | mode | Dice")
    assert "| ensemdiff | synthetic/lesion | E2 diffusion | 0.800 ± 0.050 |" in md
    assert "E1 feed-forward" in md
    with (sweep / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    assert list(table[0]) == report.csv_fields()
    assert sorted(float(r["dice_mean"]) for r in table) == pytest.approx([0.65, 0.8, 0.85])


def test_adapted_runs_get_rows_of_their_own(tmp_path):
    _fake_run(tmp_path / "e2", "ensemdiff", "diffusion", 0.8, 0.1)
    _fake_run(tmp_path / "range", "ensemdiff", "diffusion", 0.9, 0.2,
              timestep_sampling="range", t_min=200, t_max=999)
    _fake_run(tmp_path / "weights", "ensemdiff", "diffusion", 0.7, 0.3,
              timestep_sampling="weights")
    rows = report.report([tmp_path])["rows"]
    assert [(r["procedure"], r["runs"], r["dice_mean"]) for r in rows] == [
        ("", 1, pytest.approx(0.8)), ("t in [200, 999]", 1, pytest.approx(0.9)),
        ("weighted t", 1, pytest.approx(0.7))]
    md = report.to_markdown(rows)
    assert "| E2 diffusion, t in [200, 999] | 0.900 ± 0.050 |" in md
    assert "| E2 diffusion, weighted t | 0.700 ± 0.050 |" in md


def test_report_main_takes_workdirs_and_output_prefix(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", "medsegdiff", "diffusion", 0.75, 0.01)
    b = _fake_run(tmp_path / "b", "nnunet", "feedforward", 0.9, 0.05)
    out = tmp_path / "tables" / "paper"
    assert cli_report.main([str(a), str(b), f"--output={out}", "--digits=2"]) == 0
    printed = capsys.readouterr().out
    assert "| medsegdiff | synthetic/lesion | E2 diffusion | 0.75 ± 0.05 |" in printed
    assert (tmp_path / "tables" / "paper.md").read_text() == printed
    assert (tmp_path / "tables" / "paper.csv").exists()


def test_report_errors_are_clear(tmp_path, capsys):
    assert cli_report.main([str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert cli_report.main([str(tmp_path)]) == 1
    assert "no workdir" in capsys.readouterr().err
    _fake_run(tmp_path / "a", "ensemdiff", "diffusion", 0.8, 0.02, evaluated=False)
    assert cli_report.main([str(tmp_path)]) == 1
    assert "jdiffseg evaluate" in capsys.readouterr().err
    assert cli_report.main([]) == 1
