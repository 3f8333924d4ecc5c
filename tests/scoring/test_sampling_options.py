"""The sampling options every predictor reads from `config.eval` (evaluation, validation during
training, analysis), DPM-Solver++'s included."""

from __future__ import annotations

import pytest

from jdiffseg.config import schema
from jdiffseg.scoring import predictors


def test_options_from_config_carry_the_dpm_solver_keys_to_validation_too():
    config = schema.base_config()
    config.eval.sampler, config.eval.sampling_steps, config.eval.val_sampling_steps = (
        "dpmpp_3m",
        12,
        6,
    )
    config.eval.dpm_spacing, config.eval.dpm_lower_order_final = "time_quadratic", False
    for validation, steps in ((False, 12), (True, 6)):
        options = predictors.options_from_config(config, validation=validation)
        assert options.sampler_kwargs() == {
            "steps": steps,
            "spacing": "time_quadratic",
            "lower_order_final": False,
        }
        assert options.describe()["dpm_spacing"] == "time_quadratic"


def test_each_sampler_gets_only_its_own_options():
    ddim = predictors.SamplingOptions(sampler="ddim", sampling_steps=0, eta=0.5)
    assert ddim.sampler_kwargs() == {"timesteps": None, "eta": 0.5}
    assert predictors.SamplingOptions(sampler="ddpm").sampler_kwargs() == {"timesteps": 25}
    described = predictors.SamplingOptions(sampler="ddpm").describe()
    assert described["eta"] is None and described["dpm_spacing"] is None


def test_unknown_sampler_or_spacing_is_a_clear_error():
    with pytest.raises(ValueError, match="dpm_spacing 'karras' is not one of"):
        predictors.SamplingOptions(sampler="dpmpp_2m", dpm_spacing="karras")
    with pytest.raises(ValueError, match="sampler 'dpmpp_4m' is not one of"):
        predictors.SamplingOptions(sampler="dpmpp_4m")
