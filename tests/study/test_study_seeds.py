"""The study over seeds: E2 and the adapted run train as populations, seed k of the adapted run
adapts to seed k's own fingerprint, the table has one row per procedure over the seeds, and the
adaptation gains pair the two runs image by image and seed by seed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jdiffseg.analysis import fingerprint
from jdiffseg.config import population
from jdiffseg.runtime import run_dir
from jdiffseg.study import study

SEEDS = 2


def _overrides(data_dir) -> dict:
    return {
        "data.data_dir": str(data_dir), "data.image_size": 16,
        "data.batch_size": 4, "data.eval_batch_size": 4,
        "data.num_train_examples": 16, "data.num_val_examples": 4, "data.num_test_examples": 4,
        "model.base_channels": 8, "model.channel_mult": (1,), "model.norm_groups": 8,
        "model.attention_resolutions": (), "diffusion.num_timesteps": 50,
        "train.steps": 2, "train.warmup_steps": 1, "train.eval_every": 2,
        "train.checkpoint_every": 2, "eval.val_num_examples": 4, "eval.val_ensemble_size": 1,
        "eval.val_sampling_steps": 2,
    }


def _per_image_dice(path) -> dict[str, float]:
    with open(path) as f:
        return {row["id"]: float(row["dice"]) for row in csv.DictReader(f)}


@pytest.mark.slow
def test_populations_adapt_per_seed_and_gains_pair_seeds(tmp_path, monkeypatch):
    # two training steps leave Δ(t) within noise; the adaptation is derived regardless here
    monkeypatch.setattr(fingerprint, "check_significant", lambda *a, **k: None)
    plan = study.Plan(
        out_dir=str(tmp_path / "study"), datasets=("lesion",), archs=("ensemdiff",),
        experiments=("E2", "E3", "adapted"), overrides=_overrides(tmp_path / "data"),
        eval_overrides={"eval.num_examples": 4, "eval.ensemble_size": 2,
                        "eval.sampling_steps": 2, "eval.num_cases": 2,
                        "eval.bootstrap_resamples": 20},
        analysis_overrides={"analysis.num_images": 4, "analysis.t_stride": 10,
                            "analysis.chunk_size": 5},
        seeds=SEEDS,
    )
    outputs = study.run_study(plan, log=lambda _: None)
    root = tmp_path / "study" / "lesion"
    e2, e3 = root / "ensemdiff_E2_diffusion", root / "ensemdiff_E3_mask_only"
    adapted = root / "ensemdiff_E2_adapted_weights"
    assert population.size(run_dir.read_config(e2)) == SEEDS
    assert population.size(run_dir.read_config(e3)) == 1  # the reference, trained once

    # seed k of the adapted run trains with seed k's weights, under seed k
    config = run_dir.read_config(adapted)
    replicas = population.replica_configs(config)
    e2_seeds = [c.seed for c in population.replica_configs(run_dir.read_config(e2))]
    assert [c.seed for c in replicas] == e2_seeds
    for k, replica in enumerate(replicas):
        table = json.loads((e2 / "analysis" / f"replica_{k}" / "adapted_config.json").read_text())
        wanted = table["methods"]["weights"]["diffusion.timestep_weights"]
        np.testing.assert_allclose(replica.diffusion.timestep_weights, wanted, rtol=1e-6)
        assert replica.diffusion.timestep_sampling == "weights"
    assert (replicas[0].diffusion.timestep_weights != replicas[1].diffusion.timestep_weights)

    # one table row per procedure, over both seeds
    rows = {r["procedure"]: r for r in outputs["report"]["rows"] if r["mode"] == "diffusion"}
    assert set(rows) == {"", "weighted t"} and {r["runs"] for r in rows.values()} == {SEEDS}

    # gains: adapted minus E2 on the same image, per seed; then over seeds
    gains = json.loads((tmp_path / "study" / "adaptation_gains.json").read_text())[0]
    per_seed = []
    for k, g in enumerate(gains["per_seed"]):
        base = _per_image_dice(e2 / "eval" / f"replica_{k}" / "per_image.csv")
        new = _per_image_dice(adapted / "eval" / f"replica_{k}" / "per_image.csv")
        diff = [new[i] - base[i] for i in base]
        assert g["dice"]["mean"] == pytest.approx(sum(diff) / len(diff), abs=1e-6)
        assert g["dice"]["images_improved"] == sum(d > 0 for d in diff)
        per_seed.append(sum(diff) / len(diff))
    over = gains["over_seeds"]["dice"]
    assert over["mean"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert over["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    assert "| lesion | ensemdiff_E2_diffusion | 2 |" in outputs["adaptation_gains"]["markdown"]


def test_seeds_refuse_a_per_seed_schedule():
    with pytest.raises(ValueError, match="adapt_method='schedule'"):
        study.Plan(out_dir="unused", seeds=3, adapt_method="schedule")
    with pytest.raises(ValueError, match="seeds=0"):
        study.Plan(out_dir="unused", seeds=0)
