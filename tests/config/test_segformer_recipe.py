"""The SegFormer recipe: presets b0..b5/tiny, the scale argument, the schema's defaults, and
the study's SegFormer-B0 baseline row."""

from __future__ import annotations

import pytest

from jdiffseg.config import recipes, schema
from jdiffseg.models import build_model, segformer
from jdiffseg.study import study


def test_published_presets_default_to_the_paper_scale():
    config = recipes.get_config("segformer", "dataset=isic2016,preset=b2")
    assert config.model.arch == "segformer" and config.model.mode == "feedforward"
    assert config.model.segformer_depths == (3, 4, 6, 3)
    assert config.data.image_size == 256 and config.train.steps == 100_000
    assert config.train.lr == 6e-5 and config.train.weight_decay == 0.01
    tiny = recipes.get_config("segformer", "dataset=isic2016,preset=b2,scale=tiny")
    assert tiny.data.image_size == 32 and tiny.train.steps == 1_000
    assert tiny.model.segformer_depths == (3, 4, 6, 3)
    model = build_model(tiny.model, image_channels=3)
    assert model.depths == (3, 4, 6, 3) and model.decoder_channels == 768


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match=r"preset='paper' is not one of \('b0'"):
        recipes.get_config("segformer", "preset=paper")
    with pytest.raises(ValueError, match="preset='b0' is not one of"):
        recipes.get_config("nnunet", "preset=b0")
    with pytest.raises(ValueError, match="scale='huge'"):
        recipes.get_config("segformer", "preset=b0,scale=huge")
    with pytest.raises(ValueError, match="feed-forward only"):
        recipes.get_config("segformer", "mode=diffusion")


def test_schema_defaults_are_the_tiny_preset():
    model = schema.base_config().model
    for key, value in segformer.PRESETS["tiny"].items():
        assert model[key] == value, key
    assert model.pretrained == ""


def test_study_baseline_is_segformer_b0_at_the_plans_scale():
    plan = study.Plan(out_dir="unused")
    config = study.run_config(plan, "segformer", "lesion", "feedforward")
    assert config.model.preset == "b0" and config.model.segformer_hidden_sizes == (32, 64, 160, 256)
    assert config.data.image_size == 32 and config.data.variant == "lesion"
    assert study.run_config(plan, "nnunet", "lesion", "feedforward").model.preset == "tiny"
    with pytest.raises(ValueError, match="unknown baselines"):
        study.Plan(out_dir="unused", baselines=("unet3000",))
