"""Config parsing helpers: typed args, locked updates, JSON round trip."""

from __future__ import annotations

import pytest

from jdiffseg.config import parsing, schema


def test_parse_arg_converts_to_the_defaults_types():
    args = parsing.parse_arg(
        "steps=5,lr=0.5,ema=false,name=x", steps=1, lr=1.0, ema=True, name=""
    )
    assert (args.steps, args.lr, args.ema, args.name) == (5, 0.5, False, "x")


@pytest.mark.parametrize("arg", ["steps", "ema=maybe"])
def test_parse_arg_rejects_malformed_items(arg):
    with pytest.raises(ValueError):
        parsing.parse_arg(arg, steps=1, ema=True)


def test_base_config_is_locked_and_update_names_unknown_keys():
    config = schema.base_config()
    config.lock()
    parsing.update(config, {"train.lr": 0.25, "data.augment.flip": False})
    assert config.train.lr == 0.25 and config.data.augment.flip is False
    with pytest.raises(KeyError, match=r"train\.lrr"):
        parsing.update(config, {"train.lrr": 1.0})
    with pytest.raises(KeyError, match="trian"):
        parsing.update(config, {"trian.lr": 1.0})
    with pytest.raises(AttributeError):
        config.train.new_key = 1


def test_json_round_trip_keeps_values_and_tuples():
    config = schema.base_config()
    config.model.channel_mult = (1, 2, 4)
    back = parsing.from_json(parsing.to_json(config))
    assert back.model.channel_mult == (1, 2, 4)
    assert back.to_dict() == config.to_dict()
    assert back.is_locked
