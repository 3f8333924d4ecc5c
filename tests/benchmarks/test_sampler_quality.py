"""benchmarks/sampler_quality.py on a tiny run with random parameters: every setting kind runs,
the reference row and GED are consistent, and the JSON holds the table. No timings are checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks")]

import sampler_quality  # noqa: E402
from run_support import write_run  # noqa: E402
from train_support import tiny_config  # noqa: E402


def test_parse_setting_reads_every_kind_and_rejects_others():
    label, options = sampler_quality.parse_setting("ddim-20-1", "logsnr")
    assert (label, options.sampler, options.sampling_steps, options.eta) == (
        "DDIM-20 η=1",
        "ddim",
        20,
        1.0,
    )
    label, options = sampler_quality.parse_setting("dpmpp_3m-5", "time_quadratic")
    assert (options.sampler, options.sampling_steps, options.dpm_spacing) == (
        "dpmpp_3m",
        5,
        "time_quadratic",
    )
    for bad in ("ddim-20", "plms-10", "dpmpp_2m-x"):
        with pytest.raises(ValueError, match="--settings"):
            sampler_quality.parse_setting(bad, "logsnr")


def test_cheapest_setting_within_the_dice_margin_of_the_reference():
    rows = [
        {"setting": "DDPM", "dice": 0.80, "nfe_per_image": 500, "seconds_per_image": 9.0},
        {"setting": "a", "dice": 0.785, "nfe_per_image": 10, "seconds_per_image": 0.1},
        {"setting": "b", "dice": 0.792, "nfe_per_image": 20, "seconds_per_image": 0.2},
        {"setting": "c", "dice": 0.81, "nfe_per_image": 20, "seconds_per_image": 0.1},
    ]
    assert sampler_quality.cheapest_within(rows)["setting"] == "c"


def test_script_evaluates_each_setting_against_full_chain_ddpm(tmp_path):
    config = tiny_config(tmp_path / "data")
    config.data.num_test_examples, config.diffusion.num_timesteps = 3, 25
    workdir = tmp_path / "run"
    write_run(workdir, config)
    out = tmp_path / "quality.json"
    result = sampler_quality.main(
        [
            f"--workdir={workdir}",
            "--num_examples=3",
            "--ensemble_size=2",
            "--settings=ddpm,ddim-5-0,dpmpp_2m-4",
            "--dpm_spacings=logsnr,time_uniform",
            f"--json={out}",
        ]
    )
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert [(r["sampler"], r["steps"], r["nfe_per_image"]) for r in rows] == [
        ("ddpm", 25, 50),
        ("ddim", 5, 10),
        ("dpmpp_2m", 4, 8),
        ("dpmpp_2m", 4, 8),
    ]
    assert [r["dpm_spacing"] for r in rows[2:]] == ["logsnr", "time_uniform"]
    assert rows[0]["ged"] is None and all(abs(r["ged"]) <= 2.0 for r in rows[1:])
    for r in rows:
        assert r["num_images"] == 3 and 0 <= r["iou"] <= r["dice"] <= 1 and r["ece_top_label"] >= 0
    assert result["cheapest_within_0.01_dice"] in {r["setting"] for r in rows}
