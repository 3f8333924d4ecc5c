"""Population configs: per-replica values from text or JSON, replica configs, refused keys."""

from __future__ import annotations

import pytest

from jdiffseg.config import population, schema


def _config(k: int, overrides: str = ""):
    c = schema.base_config()
    c.seed, c.train.population, c.train.population_overrides = 7, k, overrides
    return c


def test_seeds_default_to_consecutive_and_values_apply_per_replica():
    c = _config(3, "train.lr=1e-4,3e-4,1e-3;diffusion.timestep_weights=[1,2],[3,4],[5,6]")
    replicas = population.replica_configs(c)
    assert [r.seed for r in replicas] == [7, 8, 9]
    assert [r.train.lr for r in replicas] == [1e-4, 3e-4, 1e-3]
    assert replicas[2].diffusion.timestep_weights == (5, 6)
    assert all(r.train.population == 1 and r.train.population_overrides == "" for r in replicas)
    assert c.train.lr == 3e-4  # the base is untouched


def test_json_and_text_forms_agree():
    text = population.parse_overrides("seed=1,2;train.ema_decay=0.9,0.99")
    as_json = population.parse_overrides(population.format_overrides(text))
    assert text == as_json == {"seed": [1, 2], "train.ema_decay": [0.9, 0.99]}


@pytest.mark.parametrize("key", ["model.base_channels", "data.batch_size",
                                 "diffusion.timestep_sampling"])
def test_a_key_that_changes_shapes_or_the_graph_is_refused_naming_it(key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        population.replica_values(_config(2, f"{key}=1,2"))


def test_wrong_number_of_values_is_refused():
    with pytest.raises(ValueError, match=r"3 values for config\.train\.population=2"):
        population.replica_values(_config(2, "train.lr=1,2,3"))
