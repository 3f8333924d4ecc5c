"""The calibration plan: what it refuses, the runs it trains (in order, with their configs)
and the evaluations of each."""

from __future__ import annotations

import pytest

from jdiffseg.study import calibration as cal


@pytest.mark.parametrize("fields, message", [
    ({"flavours": ("lesion", "bones")}, r"unknown flavours \['bones'\]"),
    ({"flavours": ("lesion",), "long_flavours": ("nuclei",)},
     r"long_flavours \['nuclei'\] are not among flavours"),
    ({"seeds": 0}, "seeds=0"),
    ({"ensemble_sizes": ()}, "ensemble_sizes"),
    ({"raters": 1}, "raters=1"),
    ({"small_steps": 0}, "small_steps=0 must be >= 1"),
])
def test_plan_refuses_bad_fields(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        cal.CalibrationPlan(out_dir=str(tmp_path), **fields)


def _plan(tmp_path):
    return cal.CalibrationPlan(
        out_dir=str(tmp_path), flavours=("lesion", "lesion_raters"), seeds=3, raters=3,
        e1_steps=40, e2_steps=80, long_flavours=("lesion",), long_steps=120,
        small_flavours=("lesion",), small_train=8, small_steps=30, early_flavours=("lesion",),
        ddpm_flavours=("lesion_raters",), ddpm_images=2, test_images=6, ensemble_sizes=(2, 4),
        overrides={"data.image_size": 16})


def test_run_specs_train_main_runs_first_with_their_configs(tmp_path):
    specs = cal.run_specs(_plan(tmp_path))
    names = [(s.flavour, s.name) for s in specs]
    assert names == [
        ("lesion", "ensemdiff_E1_feedforward"), ("lesion", "ensemdiff_E2_diffusion"),
        ("lesion_raters", "ensemdiff_E1_feedforward"),
        ("lesion_raters", "ensemdiff_E2_diffusion"),
        ("lesion", "ensemdiff_E4_image_generation"), ("lesion", "ensemdiff_E1_small8"),
        ("lesion", "ensemdiff_E2_small8"), ("lesion", "ensemdiff_E2_steps120")]
    by_name = {(s.flavour, s.name): s for s in specs}
    steps = {k: int(s.config.train.steps) for k, s in by_name.items()}
    assert [steps[n] for n in names] == [40, 80, 40, 80, 80, 30, 30, 120]
    assert all(int(s.config.train.population) == 3 for s in specs)  # E4 too
    small = by_name[("lesion", "ensemdiff_E1_small8")].config
    assert small.data.num_train_examples == 8 and small.model.mode == "feedforward"
    raters = by_name[("lesion_raters", "ensemdiff_E2_diffusion")].config
    assert raters.data.variant == "lesion" and raters.data.raters == 3
    assert by_name[("lesion", "ensemdiff_E2_diffusion")].config.data.raters == 0
    assert all(s.config.data.image_size == 16 and s.config.train.eval_every == 100
               for s in specs)
    assert by_name[("lesion", "ensemdiff_E4_image_generation")].workdir == (
        tmp_path / "lesion" / "ensemdiff_E4_image_generation")


def test_evaluations_cover_samplers_checkpoints_and_the_chain_last(tmp_path):
    plan = _plan(tmp_path)
    chosen = cal.evaluations(plan, cal.run_specs(plan))
    got = [(e.spec.flavour, e.spec.name, e.eval_dir) for e in chosen]
    assert got[-1] == ("lesion_raters", "ensemdiff_E2_diffusion", "calibration/ddpm_full_best")
    assert ("lesion", "ensemdiff_E1_small8", "calibration/feedforward_latest") in got
    assert ("lesion", "ensemdiff_E2_small8", "calibration/ddim_eta1_latest") in got
    assert ("lesion", "ensemdiff_E2_steps120", "calibration/ddim_eta1_best") in got
    assert ("lesion", "ensemdiff_E2_diffusion", "calibration/ddim_eta0_best") in got
    assert not any("E4" in name for _, name, _ in got)
    assert len(got) == 12  # lesion 8 (E1, E2 x2, small 4, long), raters 4
    chain = chosen[-1].overrides
    assert chain["eval.sampler"] == "ddpm" and chain["eval.sampling_steps"] == 0
    assert chain["eval.num_examples"] == 2 and chain["eval.ensemble_size"] == 4
    assert chain["eval.reference"] == "all" and chain["eval.save_members"]
    ddim = next(e for e in chosen if e.eval_dir == "calibration/ddim_eta0_best").overrides
    assert (ddim["eval.sampler"], ddim["eval.eta"], ddim["eval.sampling_steps"]) == (
        "ddim", 0.0, plan.ddim_steps)
    assert ddim["eval.num_examples"] == 6 and "eval.reference" not in ddim
    e1 = next(e for e in chosen if e.spec.experiment == "E1").overrides
    assert "eval.ensemble_size" not in e1
